"""`--workers N`: one service per host, N worker processes, one per core.

Theory of operation. The supervisor holds no call and speaks to no Asterisk; it runs N
ordinary single-process bridges (`python -m bridge.service.cli <argv> <overrides>`), each
with its own app, id prefix and ports (bridge.service.workers), and reads each worker's
sd_notify datagrams on a socket of its own (the worker's $NOTIFY_SOCKET): READY=1 tells it
the worker's app is registered, STATUS= its calls, X_PIPECAT_HTTP= where its loopback HTTP
API listens. The supervisor serves the host's one HTTP API and /metrics on --http-listen
(bridge.ops.host_api), asking the workers' APIs. A subprocess rather than multiprocessing:
a worker is exactly today's process (uvloop, gc.freeze, its own signal handling), configured
through the same flags, and a reload starts the code that is on disk now.

    start        every slot's generation 0; READY=1 to systemd once all are ready
    worker dies  restarted under the same plan (same app name: its start-up sweep finds what
                 the dead one left) after 1 s, 2 s, 4 s ... 30 s; the count starts again
                 once a worker stayed up longer than the cap
    SIGHUP       one slot at a time: start generation g+1 (new app name, the other half of
                 the ports), wait for its READY, SIGTERM generation g (it drains)
    SIGTERM      forwarded to every worker (they drain); a second one is forwarded too (they
                 stop at once); exit 0 once all have exited

To systemd (NotifyAccess=main): READY=1, STATUS= with workers and calls, RELOADING=1 and
READY=1 around a reload, STOPPING=1, and WATCHDOG=1 from this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence

from bridge.logs import get_logger
from bridge.ops.fanout import WorkerSeat
from bridge.ops.host_api import HostApi
from bridge.ops.sdnotify import Notifier
from bridge.ops.spool import default_spool_path
from bridge.service.config import Settings
from bridge.service.workers import (
    BACKOFF_CAP_S,
    HTTP_ADDRESS,
    WorkerPlan,
    backoff_delay,
    calls_in_status,
    parse_http_address,
    parse_notify,
    plan_worker,
)

log = get_logger("bridge.service.supervisor")

# How long a new worker of a reload may take to be ready before the reload gives up on it.
READY_TIMEOUT_S = 90.0
# What systemd set for the supervisor; a worker gets a notify socket of ours instead.
_SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


class Worker:
    """One plan and the process that runs it now (a new one after each restart)."""

    def __init__(self, plan: WorkerPlan, notify_path: str) -> None:
        self.plan = plan
        self.notify_path = notify_path
        self.process: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()  # this incarnation said READY=1
        self.retired = False  # replaced by a reload or stopping: never restarted
        self.calls = 0
        self.restarts = 0
        self.sock: socket.socket | None = None  # where its sd_notify datagrams arrive
        self.http: tuple[str, int] | None = None  # its HTTP API, as this incarnation said

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def seat(self) -> WorkerSeat:
        plan = self.plan
        return WorkerSeat(tag=plan.tag, slot=plan.slot, generation=plan.generation,
                          address=self.http, running=self.alive, ready=self.ready.is_set(),
                          draining=self.retired, calls=self.calls,
                          restarts=self.restarts)  # fmt: skip

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        argv: Sequence[str],
        instance: str,
        notifier: Notifier,
        env: Mapping[str, str] = os.environ,
    ) -> None:
        self.settings = settings
        self.instance = instance
        self._argv = list(argv)
        self._env = dict(env)
        self._notifier = notifier
        self._spool_base = settings.webhook_spool or (
            str(default_spool_path(env)) if env.get("STATE_DIRECTORY") else ""
        )
        self.current: dict[int, Worker] = {}
        self._keepers: dict[Worker, asyncio.Task[None]] = {}
        self._runtime = tempfile.mkdtemp(prefix="pipecat-bridge-")  # 0700: only we can send
        self._stop = asyncio.Event()
        self._signals = 0
        self._reload: asyncio.Task[None] | None = None
        self.host_api = HostApi(settings, self.seats)

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Start every slot, serve until SIGTERM/SIGINT, wait for every worker; return."""
        loop = asyncio.get_running_loop()
        self._notifier.start_watchdog(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.on_reload_signal)
        log.info("supervisor_starting", workers=self.settings.workers, instance=self.instance)
        try:
            await self.host_api.start()  # ConfigError if --http-listen cannot be bound
            for slot in range(self.settings.workers):
                self._start(self._plan(slot, 0))
            ready = loop.create_task(self._announce_ready())
            await self._stop.wait()
            ready.cancel()
            if self._reload is not None:
                self._reload.cancel()
            await asyncio.gather(*self._keepers.values(), return_exceptions=True)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for worker in list(self._keepers):
                worker.signal(signal.SIGKILL)  # only if this very task was cancelled
                self._unlisten(worker)
            await self.host_api.close()
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._notifier.close()
            log.info("supervisor_stopped")

    def on_stop_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        action = "drain" if self._signals == 1 else "stop now"
        log.info("signal_received", signal=sig.name, action=action)
        if self._signals == 1:
            self._notifier.stopping(f"draining: {self.status()}")
        self._stop.set()
        for worker in self._keepers:
            worker.retired = True
            worker.signal(signal.SIGTERM)

    def on_reload_signal(self) -> None:
        if self._stop.is_set():
            return
        if self._reload is not None and not self._reload.done():
            log.info("reload_ignored", reason="a reload is in progress")
            return
        self._reload = asyncio.get_running_loop().create_task(self._rolling_replace())

    def status(self) -> str:
        ready = sum(1 for w in self.current.values() if w.ready.is_set())
        calls = sum(w.calls for w in self._keepers)
        return f"{ready}/{self.settings.workers} workers ready, {calls} calls active"

    def seats(self) -> list[WorkerSeat]:
        """Every worker kept now (a draining one too), for the host API."""
        return sorted((w.seat() for w in self._keepers), key=lambda s: (s.slot, s.generation))

    # ---- workers ------------------------------------------------------------------------

    def _plan(self, slot: int, generation: int) -> WorkerPlan:
        return plan_worker(self.settings, self.instance, slot, generation, self._spool_base)

    def _start(self, plan: WorkerPlan) -> Worker:
        path = os.path.join(self._runtime, f"{plan.tag}.sock")
        worker = Worker(plan, path)
        self._listen(worker)
        self.current[plan.slot] = worker
        self._keepers[worker] = asyncio.get_running_loop().create_task(self._keep(worker))
        return worker

    async def _keep(self, worker: Worker) -> None:
        """Run the worker's plan until it is retired; restart it with backoff when it dies."""
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while not worker.retired:
                started = loop.time()
                code = await self._run_once(worker)
                if worker.retired:
                    break
                attempt = 1 if loop.time() - started > BACKOFF_CAP_S else attempt + 1
                delay = backoff_delay(attempt)
                log.warning("worker_exited", worker=worker.plan.tag, app=worker.plan.app,
                            returncode=code, restart_in_s=delay)  # fmt: skip
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                worker.restarts += 1
        finally:
            self._keepers.pop(worker, None)
            self._unlisten(worker)
            self._update_status()

    async def _run_once(self, worker: Worker) -> int:
        worker.ready.clear()
        worker.calls = 0
        worker.http = None
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.service.cli", *self._argv, *worker.plan.flags(),
            env=self._worker_env(worker),
            # Its own session: a terminal's Ctrl-C reaches only us, and we forward it once.
            start_new_session=True,
        )  # fmt: skip
        worker.process = process
        log.info("worker_started", worker=worker.plan.tag, app=worker.plan.app,
                 pid=process.pid, rtp_ports="{}-{}".format(*worker.plan.rtp_ports))  # fmt: skip
        if worker.retired:  # stopped while it was being started
            worker.signal(signal.SIGTERM)
        code = await process.wait()
        log.info("worker_stopped", worker=worker.plan.tag, pid=process.pid, returncode=code)
        worker.ready.clear()
        worker.calls = 0
        worker.http = None
        return code

    def _worker_env(self, worker: Worker) -> dict[str, str]:
        env = {k: v for k, v in self._env.items() if k not in _SYSTEMD_VARS}
        env["NOTIFY_SOCKET"] = worker.notify_path
        env["BRIDGE_WORKERS"] = "1"
        return env

    async def _announce_ready(self) -> None:
        await asyncio.gather(*(w.ready.wait() for w in list(self.current.values())))
        self._notifier.ready(self.status())
        log.info("service_ready", workers=self.settings.workers, systemd=self._notifier.enabled)

    async def _rolling_replace(self) -> None:
        """SIGHUP: each slot in turn gets a new generation; the old one drains."""
        self._notifier.reloading(f"reloading: {self.status()}")
        log.info("reload_started", workers=self.settings.workers)
        # A slot's old generation may still drain from the last reload: it holds the ports
        # the next generation needs.
        draining = [t for w, t in self._keepers.items() if w.retired]
        if draining:
            log.info("reload_waits_for_drain", workers=len(draining))
            await asyncio.gather(*draining, return_exceptions=True)
        for slot in sorted(self.current):
            old = self.current[slot]
            new = self._start(self._plan(slot, old.plan.generation + 1))
            try:
                await asyncio.wait_for(new.ready.wait(), READY_TIMEOUT_S)
            except TimeoutError:
                log.error("reload_failed", worker=new.plan.tag, reason="not ready in time")
                new.retired = True
                new.signal(signal.SIGTERM)
                self.current[slot] = old
                break
            old.retired = True
            old.signal(signal.SIGTERM)
            log.info("worker_replaced", old=old.plan.app, new=new.plan.app)
        self._notifier.ready(self.status())
        log.info("reload_finished", apps=[w.plan.app for w in self.current.values()])

    # ---- the workers' sd_notify ---------------------------------------------------------

    def _listen(self, worker: Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.notify_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(worker.notify_path)
        sock.setblocking(False)
        worker.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_notify, sock, worker)

    def _on_notify(self, sock: socket.socket, worker: Worker) -> None:
        while True:
            try:
                datagram = sock.recv(4096)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("worker_notify_failed", worker=worker.plan.tag, error=str(exc))
                return
            fields = parse_notify(datagram)
            if HTTP_ADDRESS in fields:
                worker.http = parse_http_address(fields[HTTP_ADDRESS])
            if "STATUS" in fields:
                worker.calls = calls_in_status(fields["STATUS"]) or 0
            if fields.get("READY") == "1" and not worker.ready.is_set():
                worker.ready.set()
                pid = worker.process.pid if worker.process else None
                log.info("worker_ready", worker=worker.plan.tag, app=worker.plan.app, pid=pid)
            self._update_status()

    def _update_status(self) -> None:
        self._notifier.status(self.status())

    def _unlisten(self, worker: Worker) -> None:
        sock, worker.sock = worker.sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(worker.notify_path)


def check_plans(settings: Settings, instance: str) -> None:
    """Every slot of both halves can be planned (ConfigError otherwise), before any start."""
    for generation in (0, 1):
        for slot in range(settings.workers):
            plan_worker(settings, instance, slot, generation)
