"""ARI calls over the two other transports, end to end: the real service between the simulated
Asterisk (ExternalMedia over AudioSocket and chan_websocket) and a real Pipecat echo bot.

Per transport and format: the caller's audio reaches the bot and its echo comes back (bit-exact
where nothing converts it, correlated where something resamples), AudioSocket frames are paced
at 20 ms, DTMF reaches the bot once, either side hanging up cleans everything up, an
unreachable bot sends the caller to the fallback, and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from bridge.tools.sim.audiosocket import AudioSocketLink, Kind
from bridge.tools.sim.chan_websocket import WsMediaLink
from bridge.tools.sim.links import MediaLink
from bridge.tools.sim.media import SimCall
from bridge.tools.sim.recording import load_recording
from rtp.g711 import ulaw_to_pcm16
from tests.integration.conftest import Rig, running_rig

UNREACHABLE_BOT = "ws://127.0.0.1:9/nobody"
# The recorded caller prompt of basic_ulaw (µ-law), 2 s of it, as any scenario's caller audio.
PROMPT = b"".join(p[12:] for _t, p in load_recording("basic_ulaw").caller_script().inbound_rtp)
CALLER_AUDIO = PROMPT[:16000]
DIGITS = ["1", "2", "3", "#"]  # the dtmf scenario's, 1.7-2.8 s into the call


@dataclass(frozen=True)
class Case:
    transport: str
    format: str
    control: str = "plain"

    @property
    def id(self) -> str:
        return f"{self.transport}-{self.format}-{self.control}"

    def settings(self) -> dict[str, object]:
        return {"transport": self.transport, "format": self.format,
                "websocket_control": self.control}  # fmt: skip


CASES = [
    Case("audiosocket", "slin"),
    Case("audiosocket", "slin16"),
    Case("websocket", "ulaw"),
    Case("websocket", "slin16"),
    Case("websocket", "ulaw", "json"),
]
FRAME_BYTES = {"slin": 320, "slin16": 640, "ulaw": 160}
WIRE_RATE = {"slin": 8000, "slin16": 16000, "ulaw": 8000}


# ---- what the simulated Asterisk saw --------------------------------------------------------


def link_of(rig: Rig, call: SimCall) -> MediaLink:
    assert call.em_channel_id is not None, "the call was never bridged"
    return rig.sim.media_links[call.em_channel_id]


def caller_frames(link: MediaLink) -> list[bytes]:
    """The caller's audio frames Asterisk sent the bridge, in order."""
    if isinstance(link, AudioSocketLink):
        return [f.payload for f in link.sent if 0x10 <= f.kind <= 0x18]
    return [data for _t, kind, data in link.sent if kind == "binary" and isinstance(data, bytes)]


def bridge_frames(link: MediaLink) -> list[tuple[float, bytes]]:
    """(arrival time, frame) of the audio the bridge sent Asterisk."""
    if isinstance(link, AudioSocketLink):
        return [(f.t, f.payload) for f in link.received if 0x10 <= f.kind <= 0x18]
    return [(t, data) for t, kind, data in link.received
            if kind == "binary" and isinstance(data, bytes)]  # fmt: skip


def bridge_texts(link: MediaLink) -> list[str]:
    if isinstance(link, WsMediaLink):
        return [data for _t, kind, data in link.received if isinstance(data, str)]
    return []


def samples(frames: list[bytes], fmt: str) -> npt.NDArray[np.float64]:
    data = b"".join(frames)
    if fmt == "ulaw":
        data = ulaw_to_pcm16(data)
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


# ---- assertions -----------------------------------------------------------------------------


def assert_nothing_left(rig: Rig) -> None:
    sim, controller = rig.sim, rig.controller
    assert controller.calls == {}, controller.calls
    assert controller.registry.active == {}
    assert controller.pool.in_use == 0
    assert controller.ticker._members == {}, "the ticker still ticks for someone"
    assert controller.ticker._handle is None
    assert not sim.leftovers(), sim.leftovers()
    assert sim.open_media_connections() == []
    if controller.media.audiosocket is not None:
        assert controller.media.audiosocket.connections == 0
    if controller.media.websocket is not None:
        assert controller.media.websocket.calls == {}


def assert_paced(times: list[float], *, stalls_allowed: int = 3) -> None:
    """One frame every 20 ms, as the sim received them: no bursts, no holes."""
    assert len(times) > 20, f"only {len(times)} frames"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.018 < statistics.median(gaps) < 0.022, statistics.median(gaps)
    # A stall of this one process (sim, bot and bridge share a loop) may give one late frame
    # and one early one (the clock catches up, at most 2 per tick); never more.
    bursts = [g for g in gaps if g < 0.008]
    holes = [g for g in gaps if g > 0.045]
    assert len(bursts) <= stalls_allowed, bursts
    assert len(holes) <= stalls_allowed, holes
    # Over the whole call: as many frames as 20 ms slots, no drift.
    slots = (times[-1] - times[0]) / 0.020
    assert abs(slots - (len(times) - 1)) <= 3, (slots, len(times))


def best_correlation(sent: npt.NDArray[np.float64], back: npt.NDArray[np.float64]) -> float:
    """Pearson correlation of `sent` with the part of `back` it best lines up with."""
    n = 1 << int(np.ceil(np.log2(len(sent) + len(back))))
    cross = np.fft.irfft(np.fft.rfft(back, n) * np.conj(np.fft.rfft(sent, n)), n)
    lag = int(np.argmax(cross[: len(back)]))
    overlap = min(len(sent), len(back) - lag)
    a, b = sent[:overlap], back[lag : lag + overlap]
    return float(np.corrcoef(a, b)[0, 1])


def assert_echo(case: Case, link: MediaLink) -> None:
    sent = caller_frames(link)
    back = [frame for _t, frame in bridge_frames(link)]
    assert sent and back
    assert {len(f) for f in back} == {FRAME_BYTES[case.format]}
    if case.format == "slin16":
        # 16 kHz to a twilio bot is resampled to 8 kHz µ-law and back: the same speech, not
        # the same samples.
        assert best_correlation(samples(sent, "slin16"), samples(back, "slin16")) > 0.9
        return
    # µ-law (or 8 kHz slin made from µ-law) to a µ-law bot and back is lossless, but for
    # µ-law's two zeros (0x7f and 0xff).
    if case.format == "ulaw":
        spoken = b"".join(sent).replace(b"\x7f", b"\xff")
        echoed = b"".join(back).replace(b"\x7f", b"\xff")
        unit = 320  # the bot echoes in 40 ms chunks
    else:
        spoken, echoed = b"".join(sent), b"".join(back)
        unit = 640
    assert len(spoken) > 10 * unit
    assert spoken[: len(spoken) - len(spoken) % unit - unit] in echoed


def tone_6khz(seconds: float, rate: int = 16000) -> bytes:
    """A 6 kHz tone as Asterisk's slin16 RTP carries it (big-endian): above any 8 kHz band."""
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 6000 * t)).astype(">i2").tobytes()


def assert_wideband_echo(sent: list[bytes], back: list[bytes]) -> None:
    """What came back carries the caller's 6 kHz tone at about its level: nothing on the way
    (caller -> bot -> caller) went through 8 kHz."""
    tone, echo = samples(sent, "slin16"), samples(back, "slin16")
    level = float(np.sqrt(np.mean(tone**2)))
    frames = echo[: len(echo) - len(echo) % 320].reshape(-1, 320)
    loud = frames[np.sqrt(np.mean(frames**2, axis=1)) > level / 2]
    assert len(loud) >= 40, f"only {len(loud)} loud frames of echo (tone rms {level:.0f})"
    spectrum = np.abs(np.fft.rfft(loud.reshape(-1))) ** 2
    freqs = np.fft.rfftfreq(loud.size, 1 / 16000)
    assert abs(freqs[int(np.argmax(spectrum))] - 6000) < 20
    band = spectrum[(freqs > 5900) & (freqs < 6100)].sum() / spectrum.sum()
    assert band > 0.9, f"only {band:.0%} of the echo's energy is the 6 kHz tone"


# ---- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_audio_both_ways_dtmf_once_and_caller_hangup(case: Case) -> None:
    async with running_rig(caller_silence_fill=False, **case.settings()) as rig:
        call = await rig.sim.place_call("dtmf", audio=CALLER_AUDIO, hangup_after=3.2)
        assert await asyncio.wait_for(call.ended, 10) == "caller"
        await rig.wait_idle()
        link = link_of(rig, call)
        assert link.end_reason in ("asterisk_closed", "bridge_closed")
        em = next(r for r in rig.sim.requests if r.path.endswith("/externalMedia"))
        assert em.query["format"] == case.format
        if case.transport == "audiosocket":
            assert isinstance(link, AudioSocketLink)
            assert em.query["encapsulation"] == "audiosocket"
            kind = Kind.SLIN16 if case.format == "slin16" else Kind.SLIN
            assert {f.kind for f in link.received} == {kind}
            assert_paced([t for t, _f in bridge_frames(link)])
        else:
            assert isinstance(link, WsMediaLink)
            assert em.query["transport"] == "websocket"
            assert em.query.get("transport_data", "") == ("f(json)" if case.control == "json"
                                                          else "")  # fmt: skip
            # chan_websocket got DTMF_END on the socket *and* ChannelDtmfReceived on ARI.
            dtmf_end = [d for _t, k, d in link.sent if isinstance(d, str) and "DTMF_END" in d]
            assert len(dtmf_end) == len(DIGITS)
            texts = bridge_texts(link)
            if case.control == "json":
                assert all(json.loads(t)["command"] for t in texts), texts
            else:
                assert not any(t.startswith("{") for t in texts), texts
        (bot_call,) = rig.bot.stats.calls
        assert bot_call.dtmf_digits == DIGITS  # once each, not twice
        assert call.dtmf_sent == DIGITS
        assert bot_call.ended_by == "caller"
        # Every caller frame reached the bot as 20 ms at 8 kHz (the twilio bot's rate).
        assert bot_call.audio_frames == len(caller_frames(link)) == len(CALLER_AUDIO) // 160
        assert bot_call.audio_bytes == 160 * bot_call.audio_frames
        assert_echo(case, link)
        assert_nothing_left(rig)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_bot_hangup_ends_the_call_and_cleans_up(case: Case) -> None:
    async with running_rig(hangup_after=0.8, **case.settings()) as rig:
        call = await rig.sim.place_call("basic_ulaw")
        assert await asyncio.wait_for(call.ended, 10) == "app"
        await rig.wait_idle()
        (bot_call,) = rig.bot.stats.calls
        assert bot_call.ended_by == "bot"
        assert bot_call.audio_frames > 20
        deletes = sorted(r.path for r in rig.sim.requests if r.method == "DELETE")
        assert len(deletes) == 3  # caller, media channel, bridge
        link = link_of(rig, call)
        assert link.end_reason in ("asterisk_closed", "bridge_closed")
        if case.transport == "websocket":
            # The bot's goodbye played out: its drain mark went out and came back confirmed.
            texts = bridge_texts(link)
            assert any("MARK_MEDIA" in t for t in texts), texts
            assert all(t.startswith("{") == (case.control == "json") for t in texts), texts
        assert_nothing_left(rig)


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: c.id)
async def test_unreachable_bot_sends_the_caller_to_the_fallback(case: Case) -> None:
    # A short connect budget: the bridge retries a refused bot until it runs out.
    async with running_rig(bot_url=UNREACHABLE_BOT, bot_connect_timeout=0.5,
                           **case.settings()) as rig:  # fmt: skip
        call = await rig.sim.place_call("basic_ulaw")
        assert await asyncio.wait_for(call.ended, 10) == "app"
        await rig.wait_idle()
        assert rig.bot.stats.calls == []
        assert_nothing_left(rig)


@pytest.mark.parametrize("transport", ["audiosocket", "websocket"])
async def test_slin16_with_a_vonage_bot_carries_a_6khz_tone_both_ways(transport: str) -> None:
    async with running_rig(transport=transport, format="slin16", dialect="vonage",
                           bot_dialect="vonage", caller_silence_fill=False) as rig:  # fmt: skip
        call = await rig.sim.place_call("dtmf", audio=tone_6khz(1.5), audio_format="slin16",
                                        hangup_after=2.2)  # fmt: skip
        assert await asyncio.wait_for(call.ended, 10) == "caller"
        await rig.wait_idle()
        (bot_call,) = rig.bot.stats.calls
        assert bot_call.dialect == "vonage"
        link = link_of(rig, call)
        sent = caller_frames(link)
        assert bot_call.audio_bytes == 320 * len(sent)  # 16 kHz all the way to the bot
        assert_wideband_echo(sent, [frame for _t, frame in bridge_frames(link)])
        assert_nothing_left(rig)
