"""systemd's notify protocol (man sd_notify), for a `Type=notify` unit with a watchdog.

The protocol is one datagram per notification, newline-separated `KEY=value` assignments, sent
to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or the abstract namespace when it starts
with '@'). $WATCHDOG_USEC is the watchdog interval, for us only when $WATCHDOG_PID is unset or
our pid. What this service sends:

    READY=1      start-up is done: ARI connected and the app registered (or, with no ARI, the
                 media listeners bound)
    STATUS=...   one line for `systemctl status`: the calls active, on every change
    WATCHDOG=1   every WATCHDOG_USEC / 2, from a timer on the event loop itself: a loop stuck
                 in a callback stops the pings, and systemd kills and restarts the service
    STOPPING=1   the drain has begun
    RELOADING=1  (the `--workers` supervisor) a rolling replace has begun; READY=1 ends it
    X_PIPECAT_HTTP=host:port   where the HTTP API listens, for a `--workers` supervisor
                 (systemd ignores assignments it does not know; sd_notify(3) asks for X_)

Hand-written because it is a few lines and the libraries are not worth a dependency: the
`sdnotify` package on PyPI has had no release since 2017, and systemd-python (`systemd.daemon`)
builds against libsystemd's headers.

`Notifier` never raises into the service: without $NOTIFY_SOCKET it does nothing, the socket is
non-blocking, and a failed send is counted, logged once at warning (later ones at debug) and
dropped. `StatusThrottle` is the pure part: at most one STATUS= a second, the latest text always
sent, late rather than never.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping

from bridge.logs import get_logger

log = get_logger("bridge.ops.sdnotify")

STATUS_MIN_INTERVAL_S = 1.0


class StatusThrottle:
    """At most one status per `interval`; a text offered too soon is held, and the newest held
    text goes out once the interval has passed (`next_timer()`, `handle_timer(now)`)."""

    __slots__ = ("_held", "_sent", "_sent_at", "interval")

    def __init__(self, interval: float = STATUS_MIN_INTERVAL_S) -> None:
        self.interval = interval
        self._sent: str | None = None
        self._sent_at = float("-inf")
        self._held: str | None = None

    def offer(self, text: str, now: float) -> str | None:
        """The text to send now, or None: it is what was sent last, or it is held."""
        if text == self._sent:
            self._held = None
            return None
        if now < self._sent_at + self.interval:
            self._held = text
            return None
        return self.record(text, now)

    def next_timer(self) -> float | None:
        return None if self._held is None else self._sent_at + self.interval

    def handle_timer(self, now: float) -> str | None:
        if self._held is None or now < self._sent_at + self.interval:
            return None
        return self.record(self._held, now)

    def record(self, text: str, now: float) -> str:
        """`text` was sent at `now` (by the throttle, or with READY=1/STOPPING=1)."""
        self._sent, self._sent_at, self._held = text, now, None
        return text


def next_ping(deadline: float, now: float, period: float) -> float:
    """The watchdog's next deadline: one period after the last, or after now when late."""
    deadline += period
    return deadline if deadline > now else now + period


def notify_address(value: str | None) -> bytes | None:
    """$NOTIFY_SOCKET as a sendto() address; None when unset or not an AF_UNIX name."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None  # e.g. systemd 254's vsock:CID:PORT, which this service does not run under


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """$WATCHDOG_USEC in seconds when the watchdog is on and for `pid`, else None."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        owner = int(env["WATCHDOG_PID"]) if env.get("WATCHDOG_PID") else pid
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 and owner == pid else None


class Notifier:
    """The service's end of sd_notify. Call from the event loop's thread."""

    def __init__(
        self,
        address: bytes | None,
        *,
        watchdog_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        status_interval: float = STATUS_MIN_INTERVAL_S,
    ) -> None:
        self.address = address
        self.watchdog_s = watchdog_s if address is not None else None
        self.sent = 0
        self.failures = 0
        self._clock = clock
        self._throttle = StatusThrottle(status_interval)
        self._status_timer: asyncio.TimerHandle | None = None
        self._watchdog_timer: asyncio.TimerHandle | None = None
        self._watchdog_deadline = 0.0
        self._sock: socket.socket | None = None
        if address is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            except OSError as exc:
                self._failed(exc)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, pid: int | None = None) -> Notifier:
        raw = env.get("NOTIFY_SOCKET")
        address = notify_address(raw)
        if raw and address is None:
            log.warning("sd_notify_unsupported_socket", notify_socket=raw)
        return cls(address, watchdog_s=watchdog_interval(env, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self, status: str | None = None) -> None:
        self._send_with_status("READY=1", status)

    def stopping(self, status: str | None = None) -> None:
        self._send_with_status("STOPPING=1", status)

    def reloading(self, status: str | None = None) -> None:
        """RELOADING=1 (with the MONOTONIC_USEC systemd >= 253 asks for); READY=1 ends it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send_with_status(f"RELOADING=1\nMONOTONIC_USEC={usec}", status)

    def assign(self, name: str, value: str) -> None:
        """One assignment of this service's own (an X_ name), sent now."""
        self._send(f"{name}={_one_line(value)}")

    def status(self, text: str) -> None:
        """STATUS=text, at most one a second; from a coroutine or callback on the loop, a text
        held back is sent once its second is up (elsewhere, with the next call)."""
        if not self.enabled:
            return
        due = self._throttle.offer(_one_line(text), self._clock())
        if due is not None:
            self._send(f"STATUS={due}")
        elif self._status_timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop to send it later
                self._arm_status(asyncio.get_running_loop())

    def start_watchdog(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """WATCHDOG=1 now and every interval / 2 from a timer on `loop` (default: the running
        one), until stop_watchdog(). Nothing when systemd set no watchdog for this process."""
        if self.watchdog_s is None or not self.enabled or self._watchdog_timer is not None:
            return
        loop = loop or asyncio.get_running_loop()
        self._watchdog_deadline = loop.time()
        self._on_watchdog(loop)

    def stop_watchdog(self) -> None:
        if self._watchdog_timer is not None:
            self._watchdog_timer.cancel()
            self._watchdog_timer = None

    def close(self) -> None:
        self.stop_watchdog()
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ---- the adapter: feed, drain, re-arm ---------------------------------------------------

    def _on_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        self._send("WATCHDOG=1")
        assert self.watchdog_s is not None
        now = loop.time()
        self._watchdog_deadline = next_ping(self._watchdog_deadline, now, self.watchdog_s / 2)
        self._watchdog_timer = loop.call_at(self._watchdog_deadline, self._on_watchdog, loop)

    def _arm_status(self, loop: asyncio.AbstractEventLoop) -> None:
        at = self._throttle.next_timer()
        if at is not None:
            delay = max(0.0, at - self._clock())
            self._status_timer = loop.call_later(delay, self._on_status_timer, loop)

    def _on_status_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._status_timer = None
        due = self._throttle.handle_timer(self._clock())
        if due is not None:
            self._send(f"STATUS={due}")
        self._arm_status(loop)

    def _send_with_status(self, message: str, status: str | None) -> None:
        if status is not None:
            status = _one_line(status)
            self._throttle.record(status, self._clock())
            message = f"{message}\nSTATUS={status}"
        self._send(message)

    def _send(self, message: str) -> None:
        if self._sock is None or self.address is None:
            return
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:  # BlockingIOError (systemd not reading) included
            self._failed(exc)
        else:
            self.sent += 1

    def _failed(self, exc: OSError) -> None:
        self.failures += 1
        report = log.warning if self.failures == 1 else log.debug
        report(
            "sd_notify_failed",
            notify_socket=_printable(self.address),
            error=exc.strerror or repr(exc),
            failures=self.failures,
        )


def _one_line(text: str) -> str:
    """A newline would start another assignment in the datagram."""
    return " ".join(text.splitlines())


def _printable(address: bytes | None) -> str | None:
    if address is None:
        return None
    return "@" + os.fsdecode(address[1:]) if address.startswith(b"\0") else os.fsdecode(address)
