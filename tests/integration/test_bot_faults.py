"""A bot that fails mid-call ends its own call, not the others: the full rig (simulated Asterisk,
the real service, a real Pipecat echo bot) plus one hostile bot beside it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve

from tests.integration.conftest import running_rig
from tests.integration.test_faults import media, payloads
from tests.integration.test_replay import assert_nothing_left, assert_rtp_stream

STALL_TIMEOUT = 0.5


@dataclass
class HungBot:
    """Behaves for `healthy_frames` of caller audio, answers with some audio, then reads
    nothing more: not media, not pings, not the close frame."""

    url: str = ""
    healthy_frames: int = 10
    media_received: int = 0
    stopped_reading: asyncio.Event = field(default_factory=asyncio.Event)
    stopped_at: float = 0.0


@contextlib.asynccontextmanager
async def hung_bot() -> AsyncIterator[HungBot]:
    bot = HungBot()

    async def handler(ws: ServerConnection) -> None:
        stream_sid = ""
        async for message in ws:
            data = json.loads(message)
            if data["event"] == "start":
                stream_sid = data["streamSid"]
            elif data["event"] == "media":
                bot.media_received += 1
                if bot.media_received == bot.healthy_frames:
                    break
        await ws.send(media(stream_sid, 0x55, 5))
        ws.transport.pause_reading()
        bot.stopped_at = asyncio.get_running_loop().time()
        bot.stopped_reading.set()
        await ws.wait_closed()  # at shutdown: not reading, it never notices the bridge's abort

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # close_timeout: at shutdown the paused connection never reads the server's close frame.
    async with serve(handler, sock=sock, compression=None, close_timeout=0.1):
        bot.url = f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
        yield bot


async def test_bot_that_stops_reading_ends_its_call_while_another_keeps_flowing() -> None:
    loop = asyncio.get_running_loop()
    async with hung_bot() as hung, running_rig(bot_stall_timeout=STALL_TIMEOUT) as rig:
        healthy = await rig.sim.place_call("basic_ulaw", hangup_after=3.0)
        await asyncio.wait_for(healthy.bridged, 5)
        # The Stasis argument sends this one call to the hung bot.
        hostile = await rig.sim.place_call("basic_ulaw", args=[hung.url], hangup_after=30)
        await asyncio.wait_for(hung.stopped_reading.wait(), 5)
        assert hung.media_received == hung.healthy_frames  # it was a live call until then
        await asyncio.wait_for(hostile.ended, 5)
        detected_in = loop.time() - hung.stopped_at
        assert not healthy.ended.done(), "the healthy call ended with the hostile one"
        during = [t for t, _d, _s in healthy.rtp_received if hung.stopped_at <= t]
        await asyncio.wait_for(healthy.ended, 10)
        await rig.wait_idle()

    assert hostile.hung_up_by == "app"  # the bridge hung the caller up (fallback: hangup)
    assert detected_in < STALL_TIMEOUT + 0.5
    assert payloads(hostile).count(b"\x55" * 160) == 5  # its audio before the hang was played
    assert healthy.hung_up_by == "caller"
    assert len(during) >= detected_in / 0.020 * 0.8  # its echo never paused
    assert_rtp_stream(healthy)  # one unbroken 20 ms stream across the other call's failure
    (echo_call,) = rig.bot.stats.calls
    assert echo_call.audio_frames > 100
    assert_nothing_left(rig)
