"""The notify protocol against a fake systemd: a real AF_UNIX datagram socket, bound in tmp_path
or in the abstract namespace, that the tests read from. Nothing sleeps to wait for a datagram;
the one synchronous wait is the stuck event loop under test."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from structlog.testing import capture_logs

from bridge.ops.sdnotify import (
    Notifier,
    StatusThrottle,
    next_ping,
    notify_address,
    watchdog_interval,
)

WATCHDOG_USEC = 100_000  # 0.1 s: a ping every 50 ms
HALF = WATCHDOG_USEC / 2e6
DEADLINE_S = 5.0  # only a broken test waits this long


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env = {"NOTIFY_SOCKET": env_value}

    async def receive(self) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 4096), DEADLINE_S)

    def pending(self) -> list[bytes]:
        """What has arrived and not been read yet, without waiting."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096))
            except BlockingIOError:
                return out


def _bound(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    if request.param == "path":
        path = str(tmp_path / "notify")
        assert len(path) < 108, "sun_path is 108 bytes"
        sock, env_value = _bound(path), path
    else:
        name = f"pipecat-bridge-test-{uuid.uuid4().hex}"
        sock, env_value = _bound(b"\0" + name.encode()), "@" + name
    yield FakeSystemd(sock, env_value)
    sock.close()


def watchdog_env(systemd: FakeSystemd, **extra: str) -> dict[str, str]:
    return {**systemd.env, "WATCHDOG_USEC": str(WATCHDOG_USEC), **extra}


# ---- the messages ------------------------------------------------------------------------------


async def test_each_message_arrives_exactly_as_specified(systemd: FakeSystemd) -> None:
    now = [100.0]
    notifier = Notifier(notify_address(systemd.env["NOTIFY_SOCKET"]), clock=lambda: now[0])
    assert notifier.enabled

    notifier.ready()
    assert await systemd.receive() == b"READY=1"
    notifier.status("0 calls active")
    assert await systemd.receive() == b"STATUS=0 calls active"
    now[0] += 1
    notifier.ready("listening on 127.0.0.1:9092")
    assert await systemd.receive() == b"READY=1\nSTATUS=listening on 127.0.0.1:9092"
    notifier.stopping()
    assert await systemd.receive() == b"STOPPING=1"
    notifier.stopping("draining: 3 calls active")
    assert await systemd.receive() == b"STOPPING=1\nSTATUS=draining: 3 calls active"
    notifier.close()
    assert notifier.sent == 5 and notifier.failures == 0


async def test_from_env_reads_the_socket_and_the_watchdog(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env(watchdog_env(systemd))
    assert notifier.enabled and notifier.watchdog_s == pytest.approx(0.1)
    notifier.ready()
    assert await systemd.receive() == b"READY=1"
    notifier.close()


async def test_an_assignment_of_our_own(systemd: FakeSystemd) -> None:
    """Where a worker's HTTP API listens, for its --workers supervisor (systemd ignores it)."""
    notifier = Notifier.from_env(systemd.env)
    notifier.assign("X_PIPECAT_HTTP", "127.0.0.1:8090\nREADY=1")
    assert await systemd.receive() == b"X_PIPECAT_HTTP=127.0.0.1:8090 READY=1"
    notifier.close()


async def test_a_status_cannot_start_another_assignment(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env(systemd.env)
    notifier.status("2 calls\nREADY=1")
    assert await systemd.receive() == b"STATUS=2 calls READY=1"
    notifier.close()


async def test_status_rate_limited_and_the_newest_text_sent_late(systemd: FakeSystemd) -> None:
    notifier = Notifier(notify_address(systemd.env["NOTIFY_SOCKET"]), status_interval=0.05)
    loop = asyncio.get_running_loop()
    notifier.status("1 call active")
    notifier.status("2 calls active")
    notifier.status("3 calls active")
    first_at = loop.time()
    assert await systemd.receive() == b"STATUS=1 call active"
    assert await systemd.receive() == b"STATUS=3 calls active"
    assert loop.time() - first_at >= 0.04
    assert notifier.sent == 2
    notifier.close()


def test_status_throttle_by_hand() -> None:
    throttle = StatusThrottle(interval=1.0)
    assert throttle.offer("a", now=10.0) == "a"
    assert throttle.offer("a", now=20.0) is None  # unchanged: nothing to send
    assert throttle.offer("b", now=20.5) == "b"
    assert throttle.offer("c", now=20.6) is None
    assert throttle.offer("d", now=20.7) is None
    assert throttle.next_timer() == 21.5
    assert throttle.handle_timer(21.4) is None
    assert throttle.handle_timer(21.5) == "d"
    assert throttle.next_timer() is None
    assert throttle.offer("e", now=21.6) is None
    assert throttle.offer("d", now=21.7) is None  # back to what is shown: nothing held
    assert throttle.next_timer() is None
    throttle.offer("f", now=21.8)
    throttle.record("g", now=21.9)  # sent with READY=1: the held "f" is stale
    assert throttle.next_timer() is None


# ---- the environment ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/systemd/notify", b"/run/systemd/notify"),
        ("@/org/freedesktop/systemd1/notify/42", b"\0/org/freedesktop/systemd1/notify/42"),
        ("", None),
        (None, None),
        ("vsock:2:1234", None),
        ("relative/path", None),
    ],
)
def test_notify_address(value: str | None, expected: bytes | None) -> None:
    assert notify_address(value) == expected


async def test_without_notify_socket_nothing_happens() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    assert not notifier.enabled and notifier.watchdog_s is None
    notifier.ready("up")
    notifier.status("1 call active")
    notifier.start_watchdog()
    notifier.stopping()
    notifier.stop_watchdog()
    notifier.close()
    assert notifier.sent == 0 and notifier.failures == 0


def test_an_unsupported_socket_is_logged_and_ignored() -> None:
    with capture_logs() as logs:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    notifier.ready()
    assert [e["event"] for e in logs] == ["sd_notify_unsupported_socket"]


# ---- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["path", "abstract"])
def test_an_unreachable_socket_is_logged_once_and_never_raises(where: str, tmp_path: Path) -> None:
    value = str(tmp_path / "nobody") if where == "path" else f"@nobody-{uuid.uuid4().hex}"
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    with capture_logs() as logs:
        notifier.ready()
        notifier.status("1 call active")
        notifier.stopping()
    assert notifier.failures == 3 and notifier.sent == 0
    assert [(e["event"], e["log_level"]) for e in logs] == [("sd_notify_failed", "warning")]
    assert logs[0]["notify_socket"] == value
    notifier.close()


def test_a_full_socket_never_blocks_the_service(tmp_path: Path) -> None:
    """systemd not reading: the kernel's datagram queue fills, and sends fail at once."""
    receiver = _bound(str(tmp_path / "notify"))
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    with capture_logs() as logs:
        for _ in range(200):
            notifier.ready()
    assert notifier.sent > 0 and notifier.failures > 0
    assert notifier.sent + notifier.failures == 200
    assert [e["event"] for e in logs] == ["sd_notify_failed"]
    notifier.close()
    receiver.close()


# ---- the watchdog ------------------------------------------------------------------------------


def test_next_ping() -> None:
    assert next_ping(10.0, now=10.001, period=0.5) == 10.5  # on time: the absolute deadline
    assert next_ping(10.0, now=10.7, period=0.5) == pytest.approx(11.2)  # late: resync, no burst


async def assert_pings_at_half_the_interval(systemd: FakeSystemd) -> None:
    loop = asyncio.get_running_loop()
    notifier = Notifier.from_env(watchdog_env(systemd))
    notifier.start_watchdog(loop)
    arrivals = []
    for _ in range(5):
        assert await systemd.receive() == b"WATCHDOG=1"
        arrivals.append(loop.time())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(HALF * 0.6 < gap < HALF * 4 for gap in gaps), gaps
    assert sum(gaps) / len(gaps) == pytest.approx(HALF, rel=0.5)
    timer = notifier._watchdog_timer
    notifier.stop_watchdog()
    assert timer is not None and timer.cancelled()
    notifier.close()


async def assert_a_stuck_loop_sends_no_ping(systemd: FakeSystemd) -> None:
    loop = asyncio.get_running_loop()
    notifier = Notifier.from_env(watchdog_env(systemd))
    notifier.start_watchdog(loop)
    assert await systemd.receive() == b"WATCHDOG=1"
    threading.Event().wait(6 * HALF)  # the loop is stuck in a callback for 3 intervals
    assert systemd.pending() == []
    assert await systemd.receive() == b"WATCHDOG=1"  # the late ping, once the loop is back
    resumed = loop.time()
    assert await systemd.receive() == b"WATCHDOG=1"
    assert loop.time() - resumed > HALF * 0.6  # then half an interval on: no burst of catch-ups
    notifier.close()


@pytest.mark.parametrize(
    "scenario", [assert_pings_at_half_the_interval, assert_a_stuck_loop_sends_no_ping]
)
@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_watchdog(
    scenario: Callable[[FakeSystemd], Coroutine[Any, Any, None]],
    run: Callable[[Coroutine[Any, Any, None]], None],
    systemd: FakeSystemd,
) -> None:
    run(scenario(systemd))


def test_watchdog_for_another_process_is_not_ours(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env(watchdog_env(systemd, WATCHDOG_PID=str(os.getpid() + 1)))
    assert notifier.enabled and notifier.watchdog_s is None
    loop = asyncio.new_event_loop()
    try:
        notifier.start_watchdog(loop)
        assert notifier._watchdog_timer is None
    finally:
        notifier.close()
        loop.close()
