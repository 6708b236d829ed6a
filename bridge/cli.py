"""`pipecat-bridge run ...`: the systemd entry point."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from bridge.config import Settings, parse_settings
from bridge.controller import Controller
from bridge.errors import ConfigError
from bridge.logs import configure_logging, get_logger

log = get_logger("bridge.cli")


async def serve(settings: Settings) -> None:
    """Run the controller until SIGTERM or SIGINT, then clean up and return."""
    controller = Controller(settings)
    loop = asyncio.get_running_loop()
    task = loop.create_task(controller.run())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, task, sig)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _on_signal(task: asyncio.Task[None], sig: signal.Signals) -> None:
    log.info("signal_received", signal=sig.name)
    task.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"pipecat-bridge: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
