"""The Pipecat echo bot, driven over a real loopback WebSocket with our own dialects."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import TypeVar, cast

import numpy as np
import pytest
import websockets
from pipecat.audio.utils import create_stream_resampler, pcm_to_ulaw

from bridge.bot.dialects import (
    MAX_BOT_MESSAGE,
    BotAudio,
    BotDialect,
    CallInfo,
    ExotelDialect,
    TwilioDialect,
    VonageDialect,
)
from bridge.tools.demo.echo_bot import EchoBot, create_app, main, run_echo_bot
from rtp.transcode import AudioSpec, Transcoder

D = TypeVar("D", bound=BotDialect)

TIMEOUT = 5.0
FRAME = 160  # 20 ms of µ-law at 8 kHz
BOT_CHUNK = 320  # Pipecat's output: audio_out_10ms_chunks=4 -> 40 ms per message


def call_info(call_id: str) -> CallInfo:
    return CallInfo(call_id, f"1718000000.{call_id}", "+15551230000", "6001", {"lang": "en"})


async def tone(frames: int) -> bytes:
    """A 1 kHz tone whose level rises every 20 ms, µ-law: periodic within a frame only,
    so finding it in the echo proves order as well as content."""
    samples = []
    for n in range(frames * FRAME):
        level = 1000 + 500 * (n // FRAME)
        samples.append(round(level * math.sin(2 * math.pi * 1000 * n / 8000)))
    pcm = b"".join(s.to_bytes(2, "little", signed=True) for s in samples)
    return await pcm_to_ulaw(pcm, 8000, 8000, create_stream_resampler())


def frames_of(audio: bytes) -> list[bytes]:
    return [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]


async def connect(url: str) -> websockets.ClientConnection:
    return await websockets.connect(url, compression=None, max_size=MAX_BOT_MESSAGE)


async def open_call(url: str, dialect: D, info: CallInfo) -> tuple[websockets.ClientConnection, D]:
    ws = await asyncio.wait_for(connect(url), TIMEOUT)
    for message in dialect.opening_messages(info):
        await ws.send(message)
    return ws, dialect


async def start_call(url: str, info: CallInfo) -> tuple[websockets.ClientConnection, TwilioDialect]:
    return await open_call(url, TwilioDialect(info), info)


async def receive_audio(
    ws: websockets.ClientConnection, dialect: BotDialect, n_bytes: int
) -> list[bytes]:
    """The bot's media payloads, in order, until at least n_bytes have come back."""
    payloads: list[bytes] = []

    async def collect() -> None:
        while sum(map(len, payloads)) < n_bytes:
            event = dialect.decode(await ws.recv())
            assert isinstance(event, BotAudio), event
            payloads.append(event.payload)

    await asyncio.wait_for(collect(), TIMEOUT)
    return payloads


def assert_echoed(sent: bytes, payloads: list[bytes]) -> None:
    echoed = b"".join(payloads)
    assert sent in echoed, f"sent audio not found bit-exact in {len(echoed)} echoed bytes"


@pytest.fixture
async def bot() -> AsyncIterator[EchoBot]:
    async with run_echo_bot() as running:
        yield running


async def test_bot_listens_on_loopback_with_a_real_port(bot: EchoBot) -> None:
    assert bot.host == "127.0.0.1"
    assert bot.port > 0
    assert bot.url == f"ws://127.0.0.1:{bot.port}/ws"


async def test_echo_is_bit_exact_and_the_bot_saw_the_call(bot: EchoBot) -> None:
    info = call_info("7")
    sent = await tone(50)
    ws, dialect = await start_call(bot.url + "/calls/7", info)
    for frame in frames_of(sent):
        await ws.send(dialect.encode_audio(frame))
    for digit in "5A#":
        await ws.send(cast(str, dialect.encode_dtmf(digit)))

    payloads = await receive_audio(ws, dialect, len(sent))
    assert_echoed(sent, payloads)
    # Pipecat re-chunks to 40 ms; 50 frames of 20 ms come back as exactly 25 messages.
    assert [len(p) for p in payloads] == [BOT_CHUNK] * 25

    for message in dialect.closing_messages():
        await ws.send(message)
    await ws.close()
    call = await asyncio.wait_for(bot.stats.next_call(), TIMEOUT)
    await asyncio.wait_for(call.finished.wait(), TIMEOUT)
    assert call.path == "/ws/calls/7"
    assert (call.stream_sid, call.call_sid) == (dialect.stream_sid, dialect.call_sid)
    assert call.custom_parameters == {
        "call_id": "7",
        "channel_id": "1718000000.7",
        "from_number": "+15551230000",
        "to_number": "6001",
        "lang": "en",
    }
    assert (call.audio_frames, call.audio_bytes) == (50, len(sent))
    assert call.dtmf_digits == ["5", "#"]  # Pipecat drops A-D
    assert call.ended_by == "caller"
    assert bot.stats.calls == [call]
    assert bot.stats.rejected == []


async def test_concurrent_calls_are_echoed_separately(bot: EchoBot) -> None:
    calls = [await start_call(bot.url, call_info(str(n))) for n in range(3)]
    sent = [await tone(10 + 4 * n) for n in range(3)]
    for (ws, dialect), audio in zip(calls, sent, strict=True):
        for frame in frames_of(audio):
            await ws.send(dialect.encode_audio(frame))
    received = await asyncio.gather(
        *(receive_audio(ws, d, len(audio)) for (ws, d), audio in zip(calls, sent, strict=True))
    )
    for audio, payloads in zip(sent, received, strict=True):
        assert_echoed(audio, payloads)
    for ws, _ in calls:
        await ws.close()
    stats = [await asyncio.wait_for(bot.stats.next_call(), TIMEOUT) for _ in calls]
    assert sorted(s.custom_parameters["call_id"] for s in stats) == ["0", "1", "2"]
    for s in stats:
        await asyncio.wait_for(s.finished.wait(), TIMEOUT)
        assert s.audio_bytes == len(sent[int(s.custom_parameters["call_id"])])


async def test_media_before_start_is_refused_like_a_stock_bot(bot: EchoBot) -> None:
    ws = await asyncio.wait_for(connect(bot.url), TIMEOUT)
    dialect = TwilioDialect(call_info("9"))
    for frame in frames_of(await tone(2)):
        await ws.send(dialect.encode_audio(frame))
    with pytest.raises(websockets.ConnectionClosedError):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1011
    assert bot.stats.rejected == ["unsupported telephony provider: unknown"]
    assert bot.stats.calls == []


async def test_hangup_after_ends_the_call_with_silence_then_1000() -> None:
    async with run_echo_bot(hangup_after=0.3) as bot:
        ws, dialect = await start_call(bot.url, call_info("8"))
        sent = await tone(4)
        for frame in frames_of(sent):
            await ws.send(dialect.encode_audio(frame))

        payloads: list[bytes] = []

        async def until_closed() -> None:
            async for message in ws:
                event = dialect.decode(message)
                assert isinstance(event, BotAudio), event
                payloads.append(event.payload)

        await asyncio.wait_for(until_closed(), TIMEOUT)
        assert ws.close_code == 1000
        assert_echoed(sent, payloads)
        # A Pipecat bot that ends sends 2 s of µ-law silence in one message, then closes.
        assert payloads[-1] == b"\xff" * 16000
        call = await asyncio.wait_for(bot.stats.next_call(), TIMEOUT)
        await asyncio.wait_for(call.finished.wait(), TIMEOUT)
        assert call.ended_by == "bot"


# Exotel and Vonage: the same echo through Pipecat's own serializers


def pcm_tone(frames: int, rate: int) -> bytes:
    """PCM16 LE version of tone(): 1 kHz, level rising every 20 ms, at `rate`."""
    per_frame = rate // 50
    n = np.arange(frames * per_frame)
    level = 1000 + 500 * (n // per_frame)
    return np.round(level * np.sin(2 * np.pi * 1000 * n / rate)).astype("<i2").tobytes()


def pcm_frames(audio: bytes, rate: int) -> list[bytes]:
    size = rate // 50 * 2
    return [audio[i : i + size] for i in range(0, len(audio), size)]


async def hang_up(ws: websockets.ClientConnection, dialect: BotDialect) -> None:
    for message in dialect.closing_messages():
        await ws.send(message)
    await ws.close()


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_exotel_echo_is_bit_exact_at_the_streams_rate(rate: int) -> None:
    async with run_echo_bot(dialect="exotel", sample_rate=rate) as bot:
        info = call_info("e1")
        ws, dialect = await open_call(bot.url, ExotelDialect(info, rate), info)
        sent = pcm_tone(10, rate)
        for frame in pcm_frames(sent, rate):
            await ws.send(dialect.encode_audio(frame))
        for digit in "7*":
            await ws.send(cast(str, dialect.encode_dtmf(digit)))
        payloads = await receive_audio(ws, dialect, len(sent))
        assert_echoed(sent, payloads)
        assert {len(p) for p in payloads} == {rate // 25 * 2}  # 40 ms per message
        await hang_up(ws, dialect)
        call = await asyncio.wait_for(bot.stats.next_call(), TIMEOUT)
        await asyncio.wait_for(call.finished.wait(), TIMEOUT)
        assert call.dialect == "exotel"
        assert (call.stream_sid, call.call_sid) == (dialect.stream_sid, dialect.call_sid)
        assert call.custom_parameters["call_id"] == "e1"
        assert (call.audio_frames, call.audio_bytes) == (10, len(sent) // 2)
        assert call.dtmf_digits == ["7", "*"]
        assert call.ended_by == "caller"


async def test_vonage_echo_is_bit_exact_in_640_byte_frames() -> None:
    async with run_echo_bot(dialect="vonage") as bot:
        info = call_info("v1")
        ws, dialect = await open_call(bot.url + "/vonage", VonageDialect(info), info)
        sent = pcm_tone(10, 16000)
        for frame in pcm_frames(sent, 16000):
            assert len(frame) == 640
            await ws.send(dialect.encode_audio(frame))
        await ws.send(cast(str, dialect.encode_dtmf("3")))
        payloads = await receive_audio(ws, dialect, len(sent))
        assert_echoed(sent, payloads)
        await hang_up(ws, dialect)
        call = await asyncio.wait_for(bot.stats.next_call(), TIMEOUT)
        await asyncio.wait_for(call.finished.wait(), TIMEOUT)
        assert (call.dialect, call.path, call.call_sid) == ("vonage", "/ws/vonage", "v1")
        assert call.custom_parameters == {
            "call_id": "v1",
            "channel_id": "1718000000.v1",
            "from_number": "+15551230000",
            "to_number": "6001",
            "lang": "en",
        }
        assert (call.audio_frames, call.audio_bytes) == (10, len(sent) // 2)
        assert call.dtmf_digits == ["3"]


async def test_a_ulaw_call_through_vonage_and_back_keeps_the_tone() -> None:
    """The bridge's wideband path: µ-law -> 16 kHz PCM -> bot -> 16 kHz PCM -> µ-law."""
    ulaw8 = AudioSpec("ulaw", 8000)
    async with run_echo_bot(dialect="vonage") as bot:
        info = call_info("v2")
        ws, dialect = await open_call(bot.url, VonageDialect(info), info)
        to_bot, from_bot = Transcoder(ulaw8, dialect.audio), Transcoder(dialect.audio, ulaw8)
        sent = await tone(10)
        for frame in frames_of(sent):
            await ws.send(dialect.encode_audio(to_bot.convert(frame)))
        payloads = await receive_audio(ws, dialect, 2 * 2 * len(sent))
        back = from_bot.convert(b"".join(payloads))
        await ws.close()
    lag = round((to_bot.delay + from_bot.delay) * 8000)  # 6 ms: 48 samples
    to_pcm = Transcoder(ulaw8, AudioSpec("pcm16le", 8000))
    sent_pcm = np.frombuffer(to_pcm.convert(sent), "<i2").astype(float)
    back_pcm = np.frombuffer(to_pcm.convert(back), "<i2").astype(float)[lag:]
    steady = slice(80, min(len(sent_pcm), len(back_pcm)))  # past the filters' onset
    noise = back_pcm[steady] - sent_pcm[steady]
    snr = 10 * math.log10(np.mean(sent_pcm[steady] ** 2) / np.mean(noise**2))
    # Measured 67 dB: the round trip mostly lands back on the very µ-law codes sent.
    assert snr > 50


async def test_vonage_bot_refuses_audio_before_websocket_connected() -> None:
    async with run_echo_bot(dialect="vonage") as bot:
        ws = await asyncio.wait_for(connect(bot.url), TIMEOUT)
        await ws.send(bytes(640))
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1011
        assert bot.stats.rejected == ["vonage handshake failed: no websocket:connected message"]


async def test_exotel_bot_refuses_a_twilio_opening() -> None:
    async with run_echo_bot(dialect="exotel") as bot:
        ws, _ = await start_call(bot.url, call_info("x"))
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert bot.stats.rejected == ["unsupported telephony provider: twilio"]


def test_app_and_cli_refuse_unknown_dialects_and_rates() -> None:
    with pytest.raises(ValueError, match="unknown dialect 'sip'"):
        create_app(dialect="sip")
    with pytest.raises(ValueError, match="sample rate must be 8000 or 16000, not 24000"):
        create_app(dialect="exotel", sample_rate=24000)
    with pytest.raises(SystemExit):
        main(["--dialect", "sip"])
