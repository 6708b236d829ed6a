"""Bad input and lost sockets never end a call: scripted hostile bots, injected RTP and ARI
garbage, and an events socket cut in the middle of a call."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve

from bridge.call.runner import Call
from rtp.packet import RtpPacket
from tests.integration.conftest import Rig, running_rig
from tests.integration.test_replay import assert_nothing_left, assert_rtp_stream


@dataclass
class ScriptedBot:
    """A bot that is not Pipecat: it plays a script and records what the bridge sends."""

    url: str = ""
    received: list[dict[str, object]] = field(default_factory=list)
    marks: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    stream_sid: asyncio.Queue[str] = field(default_factory=asyncio.Queue)


BotScript = Callable[[ServerConnection, ScriptedBot], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_bot(script: BotScript) -> AsyncIterator[ScriptedBot]:
    bot = ScriptedBot()

    async def handler(ws: ServerConnection) -> None:
        reader = asyncio.get_running_loop().create_task(_read(ws, bot))
        try:
            await script(ws, bot)
            await reader
        finally:
            reader.cancel()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        bot.url = f"ws://127.0.0.1:{port}/ws"
        yield bot


async def _read(ws: ServerConnection, bot: ScriptedBot) -> None:
    with contextlib.suppress(Exception):
        async for message in ws:
            data = json.loads(message)
            bot.received.append(data)
            if data.get("event") == "mark":
                bot.marks.put_nowait(data["mark"]["name"])
            elif data.get("event") == "start":
                bot.stream_sid.put_nowait(data["streamSid"])
    bot.closed.set()  # the bridge closed the socket


def media(stream_sid: str, byte: int, frames: int) -> str:
    payload = base64.b64encode(bytes([byte]) * 160 * frames).decode()
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


async def wait_start(bot: ScriptedBot, ws: ServerConnection) -> str:
    return await asyncio.wait_for(bot.stream_sid.get(), 5)


def only_call(rig: Rig) -> Call:
    (call,) = rig.controller.calls.values()
    return call


def payloads(sim_call: object) -> list[bytes]:
    return [RtpPacket.parse(d).payload for _t, d, _a in sim_call.rtp_received]  # type: ignore[attr-defined]


async def test_garbage_from_bot_rtp_and_ari_is_dropped_and_counted() -> None:
    async def script(ws: ServerConnection, bot: ScriptedBot) -> None:
        sid = await wait_start(bot, ws)
        for junk in ("not json", "[1, 2]", '{"event": "media", "media": {"payload": "!!"}}',
                     '{"event": "teleport"}', b"\x00\x01binary"):
            await ws.send(junk)
        await ws.send(media(sid, 0x55, 3))
        await ws.send(mark(sid, "after-3-frames"))
        await bot.closed.wait()

    async with scripted_bot(script) as bot, running_rig(bot_url=bot.url) as rig:
        sim_call = await rig.sim.place_call("caller_hangup")
        await asyncio.wait_for(sim_call.bridged, 5)
        call = only_call(rig)
        rig.sim.send_raw_event("{this is not json")
        rig.sim.send_raw_event('{"type": "StasisStart"}')
        assert sim_call.media is not None
        sim_call.media.send(b"\x00" * 20)  # from Asterisk's address, not RTP
        sim_call.media.send(b"\x80\x08" + b"\x00" * 170)  # RTP, wrong payload type
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            good = sim_call.rtp_sent[0][1] if sim_call.rtp_sent else b"\x80\x00" + b"\0" * 170
            stranger.sendto(good, ("127.0.0.1", call.leg.port))  # type: ignore[attr-defined]
        assert await asyncio.wait_for(bot.marks.get(), 5) == "after-3-frames"
        await asyncio.wait_for(sim_call.ended, 10)
        await rig.wait_idle()

        assert sim_call.hung_up_by == "caller"
        assert call.bot_bad_messages == 5
        assert rig.controller.events.bad_events == 2
        stats = call.leg.stats()
        assert stats["rx_bad"] == 1
        assert stats["rx_wrong_pt"] == 1
        assert stats["rx_wrong_source"] == 1
        assert payloads(sim_call).count(b"\x55" * 160) == 3
        assert_rtp_stream(sim_call)
        assert [m["event"] for m in bot.received][-1] == "stop"
        assert_nothing_left(rig)


async def test_clear_drops_queued_audio_and_releases_marks() -> None:
    async def script(ws: ServerConnection, bot: ScriptedBot) -> None:
        sid = await wait_start(bot, ws)
        await ws.send(media(sid, 0x55, 10))  # 200 ms
        await ws.send(mark(sid, "greeting-heard"))
        await ws.send(media(sid, 0x56, 90))  # 1.8 s the caller will talk over
        await ws.send(mark(sid, "never-played"))
        assert await asyncio.wait_for(bot.marks.get(), 5) == "greeting-heard"
        await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
        assert await asyncio.wait_for(bot.marks.get(), 5) == "never-played"
        await bot.closed.wait()

    async with scripted_bot(script) as bot, running_rig(bot_url=bot.url) as rig:
        sim_call = await rig.sim.place_call("caller_hangup")
        await asyncio.wait_for(sim_call.ended, 10)
        await rig.wait_idle()
        sent = payloads(sim_call)
        assert sent.count(b"\x55" * 160) == 10
        # Barge-in: at most the frame in flight when the clear arrived, not 1.8 s of audio.
        assert sent.count(b"\x56" * 160) <= 2
        assert_nothing_left(rig)


async def test_bot_audio_of_any_size_goes_out_as_even_frames() -> None:
    sizes = [320, 760, 1100, 16000, 1, 159, 161]  # 40 ms, 95 ms, 137.5 ms, 2 s, odd bits

    async def script(ws: ServerConnection, bot: ScriptedBot) -> None:
        sid = await wait_start(bot, ws)
        for index, size in enumerate(sizes):
            chunk = bytes([0x10 + index]) * size
            payload = base64.b64encode(chunk).decode()
            await ws.send(json.dumps({"event": "media", "streamSid": sid,
                                      "media": {"payload": payload}}))
        await ws.close(1000)

    async with scripted_bot(script) as bot, running_rig(bot_url=bot.url,
                                                        max_queue_ms=4000) as rig:
        sim_call = await rig.sim.place_call("caller_hangup", hangup_after=30)
        await asyncio.wait_for(sim_call.ended, 10)  # the bot closed: play out, then hang up
        await rig.wait_idle()
        assert sim_call.hung_up_by == "app"
        audio = b"".join(payloads(sim_call))
        expected = b"".join(bytes([0x10 + i]) * size for i, size in enumerate(sizes))
        assert expected in audio  # in order, nothing lost, nothing duplicated
        assert_rtp_stream(sim_call)
        assert_nothing_left(rig)
        del bot


async def test_events_socket_cut_mid_call_media_flows_and_resync_ends_gone_caller() -> None:
    async with running_rig() as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=0.3)
        await asyncio.wait_for(call.bridged, 5)
        await rig.sim.drop_event_sockets()
        # The caller hangs up 0.3 s after bridging, while no events socket exists: Asterisk
        # drops those events and replays nothing (facts §16). Reconnecting takes >= 0.5 s.
        await asyncio.wait_for(call.ended, 5)
        assert rig.controller.calls, "the bridge cannot know yet"
        await asyncio.wait_for(rig.sim.wait_app_active(), 10)
        await rig.wait_idle()
        assert rig.controller.events.connects == 2
        assert any(r.path == "/ari/applications/pipecat" for r in rig.sim.requests)
        assert_nothing_left(rig)


async def test_events_socket_cut_does_not_touch_a_live_call() -> None:
    async with running_rig(hangup_after=None, caller_silence_fill=False) as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=3.0)
        await asyncio.wait_for(call.bridged, 5)
        await rig.sim.drop_event_sockets()
        await asyncio.wait_for(rig.sim.wait_app_active(), 10)
        assert len(rig.controller.calls) == 1  # resync found the caller still there
        await asyncio.wait_for(call.ended, 10)
        await rig.wait_idle()
        assert_rtp_stream(call)  # one unbroken 20 ms stream across the outage
        assert rig.bot.stats.calls[0].audio_frames == len(call.rtp_sent)
        assert_nothing_left(rig)
