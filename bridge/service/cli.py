"""`pipecat-bridge run ...`: the systemd entry point; `pipecat-bridge check ...`: the same
settings checked against Asterisk, the bot and this machine (`bridge.service.check`).
`run --workers N` (N > 1) supervises N such processes (`bridge.service.supervisor`)."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from bridge.errors import ConfigError
from bridge.logs import configure_logging, get_logger
from bridge.ops.sdnotify import Notifier
from bridge.service.check import run_check
from bridge.service.config import Settings, build_parser, settings_from
from bridge.service.controller import Controller
from bridge.service.supervisor import Supervisor, check_plans
from bridge.service.workers import HTTP_ADDRESS, default_instance_id

log = get_logger("bridge.service.cli")


async def serve(settings: Settings) -> None:
    """Run the controller until SIGTERM or SIGINT, then clean up and return.

    The first signal drains: new callers get the fallback, calls in progress go on for up to
    --drain-timeout, then the rest are hung up. A second signal skips the wait: every call is
    hung up now. Either way everything is cleaned up before this returns (exit 0).

    Under systemd (Type=notify) it says READY=1 once it can take calls, STATUS= with the calls
    active on every change, WATCHDOG=1 from this very event loop (a stuck loop stops the pings
    and systemd restarts the service) and STOPPING=1 when the drain starts."""
    controller = Controller(settings)
    loop = asyncio.get_running_loop()
    notifier = Notifier.from_env()
    notifier.start_watchdog(loop)
    controller.observers.append(lambda _view, _change: notifier.status(_status(controller)))
    task = loop.create_task(controller.run())
    ready = loop.create_task(_announce_ready(controller, notifier))
    stopper = _Stopper(controller, task, settings.drain_timeout, notifier)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopper.on_signal, sig)
    # `systemctl reload` (ExecReload= sends SIGHUP) replaces workers only with --workers > 1;
    # here it must not end the process, which is SIGHUP's default.
    loop.add_signal_handler(signal.SIGHUP, _reload_ignored)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        stopper.cancel()
        ready.cancel()
        notifier.close()


async def _announce_ready(controller: Controller, notifier: Notifier) -> None:
    """READY=1 once calls can be taken: the listeners are bound and, with ARI, the events
    socket is connected (which registers the Stasis app) and the start-up sweep is done (a
    caller arriving during it could be taken for one gone; a --workers reload waits for it)."""
    await controller.listening.wait()
    await controller.http_api.started.wait()
    if controller.http_api.address is not None:
        # Before READY=1: a --workers supervisor asks this API about the worker even while
        # it is not ready (/readyz says why). Its port may have been any free one (0).
        notifier.assign(HTTP_ADDRESS, "{}:{}".format(*controller.http_api.address))
    if controller.settings.ari_enabled:
        await controller.events.connected.wait()
        await controller.resynced.wait()
    notifier.ready(_status(controller))
    log.info("service_ready", systemd=notifier.enabled)


def _reload_ignored() -> None:
    log.info("reload_ignored", reason="one process: a rolling replace needs --workers > 1")


def _status(controller: Controller) -> str:
    state = "draining: " if controller.draining else ""
    return f"{state}{len(controller.registry.active)} calls active"


class _Stopper:
    def __init__(
        self,
        controller: Controller,
        task: asyncio.Task[None],
        drain_s: float,
        notifier: Notifier,
    ) -> None:
        self._controller = controller
        self._task = task
        self._drain_s = drain_s
        self._notifier = notifier
        self._drain: asyncio.Task[None] | None = None

    def on_signal(self, sig: signal.Signals) -> None:
        if self._drain is None:
            log.info(
                "signal_received", signal=sig.name, action="drain", drain_timeout_s=self._drain_s
            )
            self._notifier.stopping(f"draining: {len(self._controller.registry.active)} calls")
            self._drain = asyncio.get_running_loop().create_task(self._drain_then_stop())
        else:
            log.info("signal_received", signal=sig.name, action="stop now")
            self._task.cancel()

    async def _drain_then_stop(self) -> None:
        await self._controller.drain(self._drain_s)
        self._task.cancel()

    def cancel(self) -> None:
        if self._drain is not None:
            self._drain.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    namespace = build_parser().parse_args(argv)
    try:
        settings = settings_from(namespace, os.environ)
    except ConfigError as exc:
        print(f"pipecat-bridge: {exc}", file=sys.stderr)
        return 2
    if namespace.command == "check":
        etc = namespace.asterisk_etc or os.environ.get("BRIDGE_ASTERISK_ETC", "")
        return asyncio.run(run_check(settings, etc))
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers > 1:
        return _supervise(settings, argv)
    # A watchdog kill is SIGABRT: with this the journal shows where the loop was stuck.
    faulthandler.enable()
    # Everything imported so far lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise stall the event loop (and so the 20 ms RTP
    # clock) for ~100 ms every few seconds under load (measured in the 10k-call soak).
    gc.collect()
    gc.freeze()
    _run(serve(settings))
    return 0


def _supervise(settings: Settings, argv: Sequence[str]) -> int:
    """--workers N > 1: this process runs N workers (bridge.service.supervisor)."""
    instance = settings.instance_id or default_instance_id(socket.gethostname())
    try:
        check_plans(settings, instance)
    except ConfigError as exc:
        print(f"pipecat-bridge: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(Supervisor(settings, argv, instance, Notifier.from_env()).run())
    except ConfigError as exc:  # the host's --http-listen cannot be bound
        print(f"pipecat-bridge: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    """On uvloop when it is installed: -19% CPU per call-second at 200 calls (make bench)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    sys.exit(main())
