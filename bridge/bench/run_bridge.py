"""`python -m bridge.bench.run_bridge --loop uvloop run ...`: the unmodified bridge CLI on uvloop.

Only so the bench can measure what uvloop would buy the service without touching
bridge/cli.py; everything after `--loop X` is handed to `bridge.cli.main` as it is.
"""

from __future__ import annotations

import asyncio
import sys

from bridge import cli


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    loop = "asyncio"
    if args[:1] == ["--loop"] and len(args) >= 2:
        loop, args = args[1], args[2:]
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif loop != "asyncio":
        print(f"run_bridge: unknown loop {loop!r}", file=sys.stderr)
        return 2
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
