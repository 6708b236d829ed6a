"""Lifecycle webhooks from a real call: signed the Standard Webhooks way, one per event id."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from tests.integration.conftest import running_rig

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver:
    """A webhook receiver on loopback that verifies every delivery."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.changed = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(SECRET).verify(body, dict(request.headers))  # raises if the signature is bad
        self.ids.append(request.headers["webhook-id"])
        self.events.append(json.loads(body))
        self.changed.set()
        return web.Response(status=204)

    async def wait_for(self, event_type: str, count: int = 1, within: float = 10.0) -> None:
        async def seen() -> None:
            while sum(e["type"] == event_type for e in self.events) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(seen(), within)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rx.url = f"http://127.0.0.1:{port}/hooks"
    try:
        yield rx
    finally:
        await runner.cleanup()


def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "webhook.secret"
    path.write_text(SECRET + "\n")
    os.chmod(path, 0o600)
    return str(path)


async def test_a_call_sends_started_bot_connected_and_ended_signed(tmp_path: Path) -> None:
    async with receiver() as rx, running_rig(
        hangup_after=1.0, webhook_urls=(rx.url,), webhook_secret_file=secret_file(tmp_path),
        webhook_spool=str(tmp_path / "spool.sqlite"),
    ) as rig:  # fmt: skip
        call = await rig.sim.place_call("basic_ulaw", caller_number="5551000")
        await rx.wait_for("call.ended")
        await rig.wait_idle()
    types = [e["type"] for e in rx.events]
    assert types == ["call.started", "call.bot_connected", "call.ended"]
    assert len(set(rx.ids)) == len(rx.ids)  # one id per event: the receiver's idempotency key
    ended = rx.events[-1]["data"]
    assert ended["channel_id"] == call.caller_id
    assert ended["caller"] == "5551000"
    assert (ended["ended_by"], ended["state"], ended["direction"]) == ("bot", "ended", "inbound")
    assert ended["duration"] > 0.5 and ended["talk_time"] > 0.5
    assert ended["media"]["rx_packets"] > 0
    assert rx.events[-1]["timestamp"].endswith("Z")


async def test_a_failed_call_sends_failed_then_ended_also_to_its_own_receiver(
    tmp_path: Path,
) -> None:
    async with receiver() as rx, running_rig(
        bot_url="ws://127.0.0.1:9/nobody", bot_connect_timeout=0.5,
        webhook_secret_file=secret_file(tmp_path),
    ) as rig:  # fmt: skip
        await rig.sim.place_call("basic_ulaw", args=[f"webhook_url={rx.url}"])
        await rx.wait_for("call.ended")
        await rig.wait_idle()
    assert [e["type"] for e in rx.events] == ["call.started", "call.failed", "call.ended"]
    failed = rx.events[1]["data"]
    assert failed["failure"]["step"] == "bot"
    assert failed["fallback"] is True
    assert failed["ended_by"] == "bot"
