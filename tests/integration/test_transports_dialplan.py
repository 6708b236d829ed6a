"""Calls from the dialplan alone, end to end: the simulated Asterisk dials the bridge's
AudioSocket and chan_websocket listeners (`AudioSocket()`, `Dial(AudioSocket/...)`,
`Dial(WebSocket/...)`), the real service runs each as a DialplanCallMachine towards a real
Pipecat echo bot, with ARI off entirely and with ARI on beside it.

Also: bad input on those listeners is refused with a clear log line, opens no bot session and
leaves a call in progress alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from bridge.service.controller import Controller
from bridge.tools.demo.echo_bot import run_echo_bot
from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.audiosocket import Kind
from bridge.tools.sim.dialplan import DialplanAudioSocketCall, DialplanCall, DialplanWebSocketCall
from tests.integration.conftest import Rig, bridge_running, settings_for
from tests.integration.test_transports_ari import (
    CALLER_AUDIO,
    DIGITS,
    UNREACHABLE_BOT,
    assert_nothing_left,
    assert_paced,
    assert_wideband_echo,
    best_correlation,
    samples,
    tone_6khz,
)

BOT_NAME = "support"


@contextlib.asynccontextmanager
async def dialplan_rig(
    *,
    ari: bool,
    hangup_after: float | None = None,
    bot_dialect: str = "twilio",
    **overrides: Any,
) -> AsyncIterator[Rig]:
    """The bridge with ARI on (as conftest's rig) or off (no ARI password: dialplan calls
    only), its listeners on 127.0.0.1:0; bot_map names the echo bot as BOT_NAME (path
    /ws/support)."""
    echo_bot = run_echo_bot(hangup_after=hangup_after, dialect=bot_dialect)
    async with SimulatedAsterisk(seed=11) as sim, echo_bot as bot:
        if "bot_map" not in overrides:
            overrides["bot_map"] = ((BOT_NAME, f"{bot.url}/{BOT_NAME}"),)
        if ari:
            async with bridge_running(sim, bot, **overrides) as rig:
                yield rig
            return
        controller = Controller(settings_for(sim, bot.url, ari_password="", **overrides))
        assert not controller.settings.ari_enabled
        task = asyncio.get_running_loop().create_task(controller.run())
        try:
            await asyncio.wait_for(controller.listening.wait(), 5)
            yield Rig(sim, bot, controller, task)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert sim.requests == [], "ARI is off: the bridge must not talk to it"


def audiosocket_address(rig: Rig) -> tuple[str, int]:
    listener = rig.controller.media.audiosocket
    assert listener is not None and listener.address is not None
    return listener.address


def websocket_url(rig: Rig) -> str:
    server = rig.controller.media.websocket
    assert server is not None and server.address is not None
    return f"ws://127.0.0.1:{server.address[1]}/media"


async def dial(rig: Rig, form: str, **options: Any) -> DialplanCall:
    """One dialplan form: "app" AudioSocket(), "dial_as" Dial(AudioSocket/.../c(slin16)),
    "dial_ws" Dial(WebSocket/pipecat_bridge/c(slin16)v(from=,to=,bot=))."""
    sim = rig.sim
    if form == "app":
        return await sim.dial_audiosocket(audiosocket_address(rig), **options)
    if form == "dial_as":
        return await sim.dial_audiosocket(audiosocket_address(rig), slin16=True,
                                          application=False, **options)  # fmt: skip
    variables = {"from": "+15551000", "to": "200", "bot": BOT_NAME}
    return await sim.dial_websocket(websocket_url(rig), variables=variables, **options)


def bridge_audio(call: DialplanCall) -> list[tuple[float, bytes]]:
    if isinstance(call, DialplanAudioSocketCall):
        return [(f.t, f.payload) for f in call.received if 0x10 <= f.kind <= 0x18]
    return [(t, d) for t, k, d in call.received if k == "binary" and isinstance(d, bytes)]


def caller_audio(call: DialplanCall) -> list[bytes]:
    if isinstance(call, DialplanAudioSocketCall):
        return [f.payload for f in call.sent if 0x10 <= f.kind <= 0x18]
    return [d for _t, k, d in call.sent if k == "binary" and isinstance(d, bytes)]


def bridge_texts(call: DialplanCall) -> list[str]:
    if isinstance(call, DialplanWebSocketCall):
        return [d for _t, _k, d in call.received if isinstance(d, str)]
    return []


def hangup_frames(call: DialplanCall) -> int:
    if isinstance(call, DialplanAudioSocketCall):
        return sum(1 for f in call.received if f.kind == Kind.HANGUP)
    return sum(1 for t in bridge_texts(call) if t.split(" ")[0] == "HANGUP")


FORMS = ["app", "dial_as", "dial_ws"]
# The AudioSocket listener's rate for dialplan calls follows --format (AudioSocket() is always
# 8 kHz; a Dial(AudioSocket/...c(slin16)) bridge is configured for 16 kHz).
FORM_SETTINGS: dict[str, dict[str, Any]] = {"app": {}, "dial_as": {"format": "slin16"},
                                            "dial_ws": {}}  # fmt: skip
MODES = [pytest.param(False, id="ari-off"), pytest.param(True, id="ari-on")]


@pytest.mark.parametrize("ari", MODES)
@pytest.mark.parametrize("form", FORMS)
async def test_audio_both_ways_dtmf_and_caller_hangup(form: str, ari: bool) -> None:
    async with dialplan_rig(ari=ari, caller_silence_fill=False, **FORM_SETTINGS[form]) as rig:
        call = await dial(rig, form, scenario="dtmf", audio=CALLER_AUDIO, hangup_after=3.2)
        assert await asyncio.wait_for(call.ended, 10) == "caller_hangup"
        await rig.wait_idle()
        (bot_call,) = rig.bot.stats.calls
        await asyncio.wait_for(bot_call.finished.wait(), 5)
        assert bot_call.ended_by == "caller"
        assert bot_call.dtmf_digits == DIGITS
        sent, back = caller_audio(call), bridge_audio(call)
        assert bot_call.audio_frames == len(sent) == len(CALLER_AUDIO) // 160
        assert back, "the bridge sent the caller nothing"
        if form == "app":
            # 8 kHz slin made from µ-law, through a µ-law bot and back: bit-exact.
            assert {len(f) for _t, f in back} == {320}
            spoken = b"".join(sent)
            assert spoken[: len(spoken) - 1280] in b"".join(f for _t, f in back)
        else:
            assert {len(f) for _t, f in back} == {640}
            score = best_correlation(samples(sent, "slin16"),
                                     samples([f for _t, f in back], "slin16"))  # fmt: skip
            assert score > 0.9, score
        if form == "dial_ws":
            assert bot_call.path == f"/ws/{BOT_NAME}"  # v(bot=NAME) -> --bot-map
            params = bot_call.custom_parameters
            assert params.get("from_number") == "+15551000", params
            assert params.get("to_number") == "200", params
            assert "bot" not in params
        else:
            assert bot_call.path == "/ws"
            assert_paced([t for t, _f in back])
        assert hangup_frames(call) == 0
        assert_nothing_left(rig)


@pytest.mark.parametrize("ari", MODES)
@pytest.mark.parametrize("form", FORMS)
async def test_the_bot_ending_hangs_the_call_up(form: str, ari: bool) -> None:
    async with dialplan_rig(ari=ari, hangup_after=0.8, **FORM_SETTINGS[form]) as rig:
        call = await dial(rig, form, audio=CALLER_AUDIO)
        assert await asyncio.wait_for(call.ended, 10) == "bridge_hangup"
        await rig.wait_idle()
        (bot_call,) = rig.bot.stats.calls
        assert bot_call.ended_by == "bot"
        assert hangup_frames(call) == 1
        assert_nothing_left(rig)


@pytest.mark.parametrize("ari", MODES)
@pytest.mark.parametrize("form", FORMS)
async def test_an_unreachable_bot_lets_the_dialplan_continue(form: str, ari: bool) -> None:
    # A short connect budget: the bridge retries a refused bot until it runs out.
    unreachable = {"bot_url": UNREACHABLE_BOT, "bot_map": ((BOT_NAME, UNREACHABLE_BOT),),
                   "bot_connect_timeout": 0.5}  # fmt: skip
    async with dialplan_rig(ari=ari, **unreachable, **FORM_SETTINGS[form]) as rig:
        call = await dial(rig, form, audio=CALLER_AUDIO, continue_on_hangup=True)
        assert await asyncio.wait_for(call.ended, 10) == "bridge_closed"
        await rig.wait_idle()
        assert hangup_frames(call) == 0  # closed without a hang-up
        assert call.continued
        assert rig.bot.stats.calls == []
        assert rig.controller.calls_rejected == 0
        assert_nothing_left(rig)


@pytest.mark.parametrize("form", ["app", "dial_ws"])
async def test_a_refused_call_is_closed_at_once_and_the_dialplan_continues(form: str) -> None:
    # AudioSocket carries no bot name: a full bridge refuses it; chan_websocket's v(bot=...)
    # names a bot the bot map does not have.
    overrides: dict[str, Any] = {"max_calls": 1} if form == "app" else {}
    async with dialplan_rig(ari=False, **overrides) as rig:
        busy = None
        if form == "app":
            busy = await dial(rig, "app", audio=CALLER_AUDIO, hangup_after=5.0)
            await rig.bot.stats.next_call()
            call = await dial(rig, "app", audio=CALLER_AUDIO)
        else:
            call = await rig.sim.dial_websocket(websocket_url(rig), variables={"bot": "nobody"},
                                                continue_on_hangup=True)  # fmt: skip
        assert await asyncio.wait_for(call.ended, 5) == "bridge_closed"
        assert hangup_frames(call) == 0
        assert call.continued
        assert rig.controller.calls_rejected == 1
        if busy is not None:
            assert not busy.ended.done()  # the call in progress goes on
            busy.hangup()
        await rig.wait_idle()
        assert len(rig.bot.stats.calls) == (1 if busy is not None else 0)
        assert_nothing_left(rig)


# ---- wideband ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["dial_as", "dial_ws"])
async def test_a_6khz_tone_survives_the_whole_loop(form: str) -> None:
    async with dialplan_rig(ari=False, format="slin16", dialect="vonage", bot_dialect="vonage",
                            caller_silence_fill=False) as rig:  # fmt: skip
        tone = tone_6khz(1.5)
        call = await dial(rig, form, audio=tone, audio_format="slin16", hangup_after=2.2)
        assert await asyncio.wait_for(call.ended, 10) == "caller_hangup"
        await rig.wait_idle()
        (bot_call,) = rig.bot.stats.calls
        assert bot_call.dialect == "vonage"
        sent = caller_audio(call)
        assert bot_call.audio_bytes == 320 * len(sent)  # 16 kHz all the way to the bot
        assert_wideband_echo(sent, [f for _t, f in bridge_audio(call)])
        assert_nothing_left(rig)


# ---- bad input on the listeners ---------------------------------------------------------------


async def tcp_refused(address: tuple[str, int], data: bytes) -> bytes:
    """Connect, send `data`, and read until the bridge closes the connection."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        if data:
            writer.write(data)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def ws_refused(url: str, first: str | bytes | None) -> aiohttp.WSMessage:
    """A chan_websocket-like client that sends `first` (or nothing) instead of MEDIA_START;
    returns the message that ended it (the bridge's close)."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url + "?bot=" + BOT_NAME, protocols=("media",)) as ws,
    ):
        if isinstance(first, str):
            await ws.send_str(first)
        elif isinstance(first, bytes):
            await ws.send_bytes(first)
        message = await asyncio.wait_for(ws.receive(), 5)
        return message


def rejections(logs: list[dict[str, Any]], event: str) -> list[str]:
    return [str(line.get("reason")) for line in logs if line.get("event") == event]


async def test_bad_input_on_the_listeners_is_refused_and_leaves_a_call_alone() -> None:
    async with dialplan_rig(ari=False, caller_silence_fill=False) as rig:
        as_listener, ws_server = rig.controller.media.audiosocket, rig.controller.media.websocket
        assert as_listener is not None and ws_server is not None
        as_listener.uuid_timeout = 0.3  # so the silent connection is refused quickly
        ws_server.media_start_timeout = 0.3
        call = await dial(rig, "app", audio=CALLER_AUDIO, hangup_after=2.5)
        address = audiosocket_address(rig)
        uuid_frame = struct.pack("!BH", 0x01, 16) + uuid.uuid4().bytes
        with capture_logs() as logs:
            replies = await asyncio.gather(
                tcp_refused(address, b"GET /media HTTP/1.1\r\nHost: x\r\n\r\n"),
                tcp_refused(address, struct.pack("!BH", 0x01, 0xFFFF) + b"\x00" * 64),
                tcp_refused(address, struct.pack("!BH", 0x10, 0xFFFF) + b"\x00" * 64),
                tcp_refused(address, b""),  # never sends its UUID
                tcp_refused(address, uuid_frame[:7]),  # half a UUID frame, then nothing
            )
            closes = await asyncio.gather(
                ws_refused(websocket_url(rig), None),  # never sends MEDIA_START
                ws_refused(websocket_url(rig), "DTMF_END digit:1"),
                ws_refused(websocket_url(rig), b"\xff" * 160),
            )
        assert replies == [b""] * 5  # closed without a word, no 0x00 or anything else
        assert all(m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) for m in closes)
        as_reasons = rejections(logs, "audiosocket_rejected")
        assert len(as_reasons) == 5, as_reasons
        assert any("not a UUID" in r for r in as_reasons), as_reasons
        assert sum("no UUID frame" in r or "before its UUID" in r for r in as_reasons) == 2
        ws_reasons = rejections(logs, "websocket_rejected")
        not_start = "first message is not MEDIA_START"
        assert sorted(ws_reasons) == sorted(["no MEDIA_START", not_start, not_start]), ws_reasons
        assert [line for line in logs if line.get("event") == "call_started"] == []
        # The call in progress went on untouched.
        assert await asyncio.wait_for(call.ended, 10) == "caller_hangup"
        await rig.wait_idle()
        assert len(rig.bot.stats.calls) == 1  # the refused ones opened no bot session
        assert rig.bot.stats.calls[0].audio_frames == len(CALLER_AUDIO) // 160
        assert_paced([t for t, _f in bridge_audio(call)])
        assert rig.controller.calls_total == 1
        assert_nothing_left(rig)
