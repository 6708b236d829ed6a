"""WebhookSender over real HTTP on 127.0.0.1: an aiohttp server plays the receiver and checks
every delivery's signature with `standardwebhooks`. Time is a hand clock; the tests await
`sender.settled()` and the receiver's requests, never sleep."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from bridge.errors import ConfigError
from bridge.ops.spool import Spool
from bridge.ops.webhooks import WebhookSender, load_webhook_secret

KEY = base64.b64encode(b"k" * 32).decode()
SECRET = f"whsec_{KEY}"
VIEW = {"id": "pcb-1", "state": "ended", "caller": "+15550100", "media": {"rx": 10}}


@dataclass
class HandClock:
    now: float = field(default_factory=time.time)  # near the real time: signatures must verify

    def __call__(self) -> float:
        return self.now


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """Answers with the statuses in `script` ("hang": never answers), then 200."""

    def __init__(self) -> None:
        self.script: deque[int | str] = deque()
        self.requests: list[Received] = []
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(request.path, dict(request.headers), await request.read()))
        action = self.script.popleft() if self.script else 200
        if action == "hang":
            await self.release.wait()
            action = 200
        assert isinstance(action, int)
        return web.Response(status=action)

    def verified(self, secret: str = SECRET) -> list[dict[str, Any]]:
        """Every request's payload, each checked against its signature."""
        return [Webhook(secret).verify(r.body, r.headers) for r in self.requests]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rx.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rx
    rx.release.set()
    await runner.cleanup()


@pytest.fixture
def clock() -> HandClock:
    return HandClock()


@pytest.fixture
async def make_sender(tmp_path: Path, clock: HandClock) -> AsyncIterator[Callable[..., Any]]:
    senders: list[WebhookSender] = []

    async def make(urls: list[str], secret: str | None = SECRET, **kw: Any) -> WebhookSender:
        kw.setdefault("clock", clock)
        sender = WebhookSender(urls, secret, kw.pop("spool", tmp_path / "webhooks.sqlite"), **kw)
        await sender.start()
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        await sender.close()


async def settle(sender: WebhookSender) -> None:
    await asyncio.wait_for(sender.settled(), 10)


async def advance(sender: WebhookSender, clock: HandClock, seconds: float) -> None:
    clock.now += seconds
    sender.check_timers()
    await settle(sender)


def spooled(path: Path) -> int:
    spool = Spool(path)
    spool.open()
    try:
        return spool.count()
    finally:
        spool.close()


def assert_counters(sender: WebhookSender, **expected: int) -> None:
    actual = {name: getattr(sender.counters, name) for name in expected}
    assert actual == expected


# ---- delivery and signatures ---------------------------------------------------------------


async def test_delivery_is_signed_standard_webhooks(
    receiver: Receiver, make_sender: Callable[..., Any], clock: HandClock
) -> None:
    sender = await make_sender([f"{receiver.url}/hook"])
    msg_id = sender.send("call.ended", VIEW)
    await settle(sender)

    [payload] = receiver.verified()
    assert payload["type"] == "call.ended"
    assert payload["data"] == VIEW
    assert payload["timestamp"].endswith("Z")
    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.id == msg_id and msg_id is not None and msg_id.startswith("msg_")
    assert request.headers["webhook-timestamp"] == str(int(clock.now))
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.headers["Content-Type"] == "application/json"
    assert_counters(sender, delivered=1, failed_attempts=0, dropped=0, pending=0)


async def test_a_wrong_secret_does_not_verify(
    receiver: Receiver, make_sender: Callable[..., Any]
) -> None:
    sender = await make_sender([receiver.url])
    sender.send("call.started", VIEW)
    await settle(sender)
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    with pytest.raises(Exception, match="No matching signature"):
        receiver.verified(other)


async def test_global_and_per_call_urls_share_the_id(
    receiver: Receiver, make_sender: Callable[..., Any]
) -> None:
    sender = await make_sender([f"{receiver.url}/a", f"{receiver.url}/b"])
    with capture_logs() as logs:
        msg_id = sender.send(
            "call.answered",
            VIEW,
            extra_urls=[f"{receiver.url}/c", "ftp://nope", f"{receiver.url}/a"],
        )
    await settle(sender)
    assert sorted(r.path for r in receiver.requests) == ["/a", "/b", "/c"]
    assert {r.id for r in receiver.requests} == {msg_id}
    assert len(receiver.verified()) == 3
    assert [e["event"] for e in logs] == ["webhook_url_skipped"]
    assert_counters(sender, delivered=3, pending=0)


async def test_no_url_no_event(make_sender: Callable[..., Any]) -> None:
    sender = await make_sender([])
    assert sender.send("call.started", VIEW) is None
    assert_counters(sender, delivered=0, dropped=0, pending=0)


async def test_unsigned_without_a_secret(
    receiver: Receiver, make_sender: Callable[..., Any]
) -> None:
    with capture_logs() as logs:
        sender = await make_sender([receiver.url], secret=None)
        sender.send("call.started", VIEW)
        sender.send("call.ended", VIEW)
        await settle(sender)
    assert [e["event"] for e in logs].count("webhooks_unsigned") == 1
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        assert "webhook-signature" not in request.headers
        assert request.headers["webhook-id"] and request.headers["webhook-timestamp"]


async def test_unknown_event_type_is_a_bug(make_sender: Callable[..., Any]) -> None:
    sender = await make_sender(["http://127.0.0.1:9/"])
    with pytest.raises(ValueError, match="unknown webhook event type"):
        sender.send("call.exploded", VIEW)


# ---- retries --------------------------------------------------------------------------------


async def test_500_then_200_same_id_first_retry_within_5s(
    receiver: Receiver, make_sender: Callable[..., Any], clock: HandClock
) -> None:
    sender = await make_sender([receiver.url])
    receiver.script.append(500)
    msg_id = sender.send("call.bot_connected", VIEW)
    await settle(sender)
    assert len(receiver.requests) == 1
    assert_counters(sender, delivered=0, failed_attempts=1, pending=1)

    await advance(sender, clock, 0.99)
    assert len(receiver.requests) == 1  # not yet
    await advance(sender, clock, 0.01)  # 1 s after the failure: well within 5 s
    assert [r.id for r in receiver.requests] == [msg_id, msg_id]
    assert len(receiver.verified()) == 2
    assert_counters(sender, delivered=1, failed_attempts=1, dropped=0, pending=0)


async def test_a_timeout_is_retried(
    receiver: Receiver, make_sender: Callable[..., Any], clock: HandClock
) -> None:
    sender = await make_sender([receiver.url], timeout=0.05)
    receiver.script.append("hang")
    msg_id = sender.send("call.ended", VIEW)
    await settle(sender)  # the 50 ms timeout is what is being tested: a real wait
    assert_counters(sender, failed_attempts=1, pending=1)
    await advance(sender, clock, 1.0)
    assert [r.id for r in receiver.requests] == [msg_id, msg_id]
    assert_counters(sender, delivered=1, pending=0)


async def test_a_dead_port_is_retried(make_sender: Callable[..., Any], clock: HandClock) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sender = await make_sender([f"http://127.0.0.1:{port}/"])
    sender.send("call.ended", VIEW)
    await settle(sender)
    assert_counters(sender, failed_attempts=1, pending=1, dropped=0)


async def test_dropped_after_the_window(
    receiver: Receiver, make_sender: Callable[..., Any], clock: HandClock, tmp_path: Path
) -> None:
    sender = await make_sender([receiver.url])
    receiver.script.extend([503] * 20)
    with capture_logs() as logs:
        sender.send("call.failed", VIEW)
        await settle(sender)
        start = clock.now
        for offset in (1, 5, 20, 80, 380, 1280, 3080):  # bridge.ops.delivery's schedule
            await advance(sender, clock, start + offset - 0.01 - clock.now)
            assert sender.counters.dropped == 0
            tries = len(receiver.requests)
            await advance(sender, clock, 0.01)
            assert len(receiver.requests) == tries + 1
    assert_counters(sender, delivered=0, failed_attempts=8, dropped=1, pending=0)
    [dropped] = [e for e in logs if e["event"] == "webhook_dropped"]
    assert (dropped["reason"], dropped["attempts"], dropped["status"]) == ("window", 8, 503)
    assert len({r.id for r in receiver.requests}) == 1
    assert spooled(tmp_path / "webhooks.sqlite") == 0
    await advance(sender, clock, 7200)
    assert len(receiver.requests) == 8


@pytest.mark.parametrize(
    ("status", "final"), [(400, True), (404, True), (408, False), (429, False)]
)
async def test_4xx_final_except_408_429(
    receiver: Receiver, make_sender: Callable[..., Any], status: int, final: bool
) -> None:
    sender = await make_sender([receiver.url])
    receiver.script.append(status)
    with capture_logs() as logs:
        sender.send("call.ended", VIEW)
        await settle(sender)
    if final:
        assert_counters(sender, failed_attempts=1, dropped=1, pending=0)
        assert [e["reason"] for e in logs if e["event"] == "webhook_dropped"] == ["refused"]
    else:
        assert_counters(sender, failed_attempts=1, dropped=0, pending=1)


# ---- restarts -------------------------------------------------------------------------------


async def test_a_restart_delivers_pending_once_with_the_original_id(
    receiver: Receiver, make_sender: Callable[..., Any], clock: HandClock, tmp_path: Path
) -> None:
    first = await make_sender([receiver.url])
    receiver.script.append(500)
    msg_id = first.send("call.ended", VIEW)
    await settle(first)
    await first.close()
    assert spooled(tmp_path / "webhooks.sqlite") == 1

    second = await make_sender([receiver.url])
    assert_counters(second, pending=1)
    await settle(second)
    assert len(receiver.requests) == 1  # the retry keeps its time: 1 s after the failure
    await advance(second, clock, 1.0)
    assert [r.id for r in receiver.requests] == [msg_id, msg_id]
    assert_counters(second, delivered=1, pending=0)
    await second.close()

    third = await make_sender([receiver.url])
    await settle(third)
    assert_counters(third, pending=0)
    assert len(receiver.requests) == 2
    assert spooled(tmp_path / "webhooks.sqlite") == 0


async def test_close_spools_what_was_never_tried(
    receiver: Receiver, make_sender: Callable[..., Any], tmp_path: Path
) -> None:
    first = await make_sender([receiver.url])
    ids = [first.send("call.started", VIEW), first.send("call.answered", VIEW)]
    await first.close()  # before the worker ran
    assert receiver.requests == []

    second = await make_sender([receiver.url])
    await settle(second)
    assert [r.id for r in receiver.requests] == ids
    assert len(receiver.verified()) == 2


async def test_close_with_grace_lets_queued_events_go(
    receiver: Receiver, make_sender: Callable[..., Any]
) -> None:
    sender = await make_sender([receiver.url])
    msg_id = sender.send("call.ended", VIEW)
    await sender.close(grace=5.0)
    assert [r.id for r in receiver.requests] == [msg_id]
    assert_counters(sender, delivered=1, pending=0)


async def test_window_over_while_down(
    receiver: Receiver, make_sender: Callable[..., Any], clock: HandClock, tmp_path: Path
) -> None:
    first = await make_sender([receiver.url])
    receiver.script.append(500)
    first.send("call.ended", VIEW)
    await settle(first)
    await first.close()
    clock.now += 3601
    with capture_logs() as logs:
        second = await make_sender([receiver.url])
    await settle(second)
    assert_counters(second, dropped=1, pending=0)
    assert [e["reason"] for e in logs if e["event"] == "webhook_dropped"] == ["window"]
    assert len(receiver.requests) == 1
    assert spooled(tmp_path / "webhooks.sqlite") == 0


async def test_send_after_close_is_dropped(make_sender: Callable[..., Any]) -> None:
    sender = await make_sender(["http://127.0.0.1:9/"])
    await sender.close()
    with capture_logs() as logs:
        assert sender.send("call.ended", VIEW) is None
    assert [e["reason"] for e in logs] == ["closed"]
    assert_counters(sender, dropped=1)


# ---- the media path's cost --------------------------------------------------------------------


async def test_a_hung_receiver_does_not_block_send(
    receiver: Receiver, make_sender: Callable[..., Any]
) -> None:
    sender = await make_sender([receiver.url], timeout=30.0, max_concurrency=2)
    receiver.script.extend(["hang"] * 10)
    sender.send("call.started", VIEW)
    await asyncio.sleep(0)  # let the worker start trying
    costs = []
    for _ in range(2000):
        start = time.perf_counter()
        sender.send("call.ended", VIEW)
        costs.append(time.perf_counter() - start)
    median_us = statistics.median(costs) * 1e6
    print(f"send(): median {median_us:.1f} µs, max {max(costs) * 1e6:.1f} µs")
    assert median_us < 200
    assert_counters(sender, pending=2001, dropped=0)


async def test_backlog_full_drops_new_events(make_sender: Callable[..., Any]) -> None:
    sender = await make_sender(["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"], max_pending=10)
    with capture_logs() as logs:
        accepted = [sender.send("call.ended", VIEW) for _ in range(8)]
    assert sum(1 for msg_id in accepted if msg_id) == 5
    assert_counters(sender, pending=10, dropped=6)
    assert {e["reason"] for e in logs if e["event"] == "webhook_dropped"} == {"backlog_full"}


async def test_large_payload_delivered_huge_one_refused(
    receiver: Receiver, make_sender: Callable[..., Any]
) -> None:
    sender = await make_sender([receiver.url])
    large = {**VIEW, "blob": "x" * 200_000}
    with capture_logs() as logs:
        assert sender.send("call.ended", large) is not None
        assert sender.send("call.ended", {**VIEW, "blob": "x" * 2_000_000}) is None
        await settle(sender)
    [payload] = receiver.verified()
    assert payload["data"] == large
    [dropped] = [e for e in logs if e["event"] == "webhook_dropped"]
    assert dropped["reason"] == "too_large" and dropped["size"] > dropped["limit"]
    assert_counters(sender, delivered=1, dropped=1, pending=0)


async def test_data_that_is_not_json_is_dropped(make_sender: Callable[..., Any]) -> None:
    sender = await make_sender(["http://127.0.0.1:9/"])
    with capture_logs() as logs:
        assert sender.send("call.ended", {"x": object()}) is None
    assert [e["reason"] for e in logs] == ["not_json"]
    assert_counters(sender, dropped=1, pending=0)


# ---- the secret -------------------------------------------------------------------------------


async def test_the_secret_never_reaches_a_log(
    receiver: Receiver, make_sender: Callable[..., Any], clock: HandClock
) -> None:
    receiver.script.extend([500, 401])
    with capture_logs() as logs:
        sender = await make_sender([receiver.url + "/?token=abc"])
        sender.send("call.started", VIEW)
        sender.send("call.ended", VIEW)
        sender.send("call.ended", VIEW, extra_urls=["gopher://x"])
        await settle(sender)
        await advance(sender, clock, 1.0)
        await sender.close()
    assert logs, "expected failure lines"
    text = repr(logs) + repr(sender)
    assert SECRET not in text and KEY not in text
    assert "token=abc" not in text


def test_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    os.chmod(path, 0o640)
    assert load_webhook_secret(str(path)) == SECRET
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="world-readable"):
        load_webhook_secret(str(path))
    with pytest.raises(ConfigError, match="cannot read --webhook-secret-file"):
        load_webhook_secret(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "bad", ["whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()]
)
def test_bad_secret_refused_without_echoing_it(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "secret"
    path.write_text(bad)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as info:
        load_webhook_secret(str(path))
    assert bad.removeprefix("whsec_") not in str(info.value)
    with pytest.raises(ConfigError):
        WebhookSender([], bad, None)


def test_bad_url_refused() -> None:
    with pytest.raises(ConfigError, match="http"):
        WebhookSender(["ftp://user:pw@host/"], None, None)
