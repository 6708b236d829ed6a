"""`python -m bridge.tools.bench.run_bridge --loop uvloop run ...`: the bridge CLI on uvloop.

Only so the bench can measure what uvloop would buy the service without touching
bridge/service/cli.py; everything after `--loop X` is handed to `bridge.service.cli.main` as it is.
BENCH_GC_LOG=1 prints every garbage collection that took over 2 ms to stderr (a stall of the
event loop shows up as a pacing gap on every call at once).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from typing import Any

from bridge.service import cli

_GC_REPORT_S = 0.002


def _log_slow_collections() -> None:
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        if took >= _GC_REPORT_S:
            print(f"gc gen{info['generation']} {took * 1e3:.1f} ms collected {info['collected']} "
                  f"at {time.time():.3f}", file=sys.stderr, flush=True)  # fmt: skip

    gc.callbacks.append(callback)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    loop = "asyncio"
    if args[:1] == ["--loop"] and len(args) >= 2:
        loop, args = args[1], args[2:]
    if os.environ.get("BENCH_GC_LOG"):
        _log_slow_collections()
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif loop != "asyncio":
        print(f"run_bridge: unknown loop {loop!r}", file=sys.stderr)
        return 2
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
