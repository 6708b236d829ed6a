"""Formats and dialects end to end: the real service between the simulated Asterisk and a real
Pipecat echo bot using Pipecat's own Exotel and Vonage serializers."""

from __future__ import annotations

import asyncio

import numpy as np

from bridge.tools.sim.media import SimCall
from rtp.g711 import ulaw_to_pcm16
from rtp.packet import RtpPacket
from tests.integration.conftest import Rig, running_rig
from tests.integration.test_replay import assert_nothing_left

# Only the caller's own frames reach the bot: no silence filled in before or after them.
EXACT = {"caller_silence_fill": False}


async def run_call(rig: Rig, scenario: str, args: list[str] | None = None) -> SimCall:
    call = await rig.sim.place_call(scenario, args=args, hangup_after=2.0)
    await asyncio.wait_for(call.ended, 10)
    await rig.wait_idle()
    return call


def sent_payloads(call: SimCall) -> list[RtpPacket]:
    return [RtpPacket.parse(data) for _t, data, _a in call.rtp_sent]


def received_packets(call: SimCall) -> list[RtpPacket]:
    return [RtpPacket.parse(data) for _t, data, _a in call.rtp_received]


async def test_exotel_dialect_chosen_by_stasis_argument_carries_pcm16_both_ways() -> None:
    async with running_rig(bot_dialect="exotel", bot_rate=8000, **EXACT) as rig:
        call = await run_call(rig, "basic_ulaw", args=["dialect=exotel"])
        (bot_call,) = rig.bot.stats.calls
        assert bot_call.dialect == "exotel"
        caller = sent_payloads(call)
        # Every caller frame reached the bot as 160 samples at 8 kHz (PCM16 on the wire).
        assert bot_call.audio_frames == len(caller)
        assert bot_call.audio_bytes == 160 * len(caller)
        back = received_packets(call)
        assert call.rtp_dropped == []
        assert {p.payload_type for p in back} == {0}
        # The echo came back as the caller's µ-law: decode -> PCM16 -> encode is lossless but
        # for µ-law's two zeros (0x7F and 0xFF both decode to 0).
        echoed = b"".join(p.payload for p in back).replace(b"\x7f", b"\xff")
        spoken = b"".join(p.payload for p in caller).replace(b"\x7f", b"\xff")
        assert spoken[:3200] in echoed
        assert_nothing_left(rig)


async def test_slin16_call_reaches_a_vonage_bot_at_16k_and_comes_back_as_ulaw() -> None:
    async with running_rig(format="slin16", dialect="vonage", bot_dialect="vonage", **EXACT) as rig:
        call = await run_call(rig, "slin16")
        (bot_call,) = rig.bot.stats.calls
        assert bot_call.dialect == "vonage"
        caller = sent_payloads(call)
        assert {p.payload_type for p in caller} == {118}
        assert bot_call.audio_frames == len(caller)
        # 16 kHz in: 320 samples per frame, no µ-law step on the way to the bot.
        assert bot_call.audio_bytes == 320 * len(caller)
        back = received_packets(call)
        assert back, "the bridge sent no RTP"
        assert call.rtp_dropped == []  # Asterisk takes PT 0 on a slin16 channel (facts §10)
        assert {p.payload_type for p in back} == {0}
        assert {len(p.payload) for p in back} == {160}
        assert_nothing_left(rig)


async def test_slin16_call_with_a_twilio_bot_is_resampled_to_ulaw_8k() -> None:
    async with running_rig(format="slin16", **EXACT) as rig:
        call = await run_call(rig, "slin16")
        (bot_call,) = rig.bot.stats.calls
        caller = sent_payloads(call)
        assert bot_call.audio_frames == len(caller)
        assert bot_call.audio_bytes == 160 * len(caller)
        back = received_packets(call)
        assert {p.payload_type for p in back} == {0}
        # The caller's recorded prompt is audible in what the bot echoed: not silence.
        level = np.abs(ulaw_to_pcm16_array(b"".join(p.payload for p in back))).max()
        assert level > 1000
        assert_nothing_left(rig)


async def test_an_unknown_dialect_argument_sends_the_caller_to_the_fallback() -> None:
    async with running_rig() as rig:
        call = await rig.sim.place_call("basic_ulaw", args=["dialect=klingon"])
        await asyncio.wait_for(call.ended, 10)
        await rig.wait_idle()
        assert call.hung_up_by == "app"
        assert rig.bot.stats.calls == []
        assert rig.controller.calls_rejected == 1
        assert_nothing_left(rig)


def ulaw_to_pcm16_array(data: bytes) -> np.ndarray:
    return np.frombuffer(ulaw_to_pcm16(data), dtype="<i2").astype(np.int32)


async def test_a_silent_caller_still_feeds_the_bot_20ms_of_silence() -> None:
    # Asterisk sends nothing while a caller is silent (facts §8): the bridge fills in, so a
    # bot's VAD and turn-taking keep running.
    async with running_rig() as rig:
        call = await rig.sim.place_call("basic_ulaw", audio=b"", hangup_after=1.0)
        await asyncio.wait_for(call.ended, 10)
        await rig.wait_idle()
        assert call.rtp_sent == []
        (bot_call,) = rig.bot.stats.calls
        # ~1 s of bridged call: about 50 frames of 20 ms, all of them filled in.
        assert 35 <= bot_call.audio_frames <= 55
        assert bot_call.audio_bytes == 160 * bot_call.audio_frames
        assert_nothing_left(rig)
