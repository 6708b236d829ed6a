"""The Pipecat echo bot, driven over a real loopback WebSocket with our Twilio dialect."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import cast

import pytest
import websockets
from pipecat.audio.utils import create_stream_resampler, pcm_to_ulaw

from bridge.demo.echo_bot import EchoBot, run_echo_bot
from bridge.dialects import MAX_BOT_MESSAGE, BotAudio, CallInfo, TwilioDialect

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


async def start_call(url: str, info: CallInfo) -> tuple[websockets.ClientConnection, TwilioDialect]:
    ws = await asyncio.wait_for(connect(url), TIMEOUT)
    dialect = TwilioDialect(info)
    for message in dialect.opening_messages(info):
        await ws.send(message)
    return ws, dialect


async def receive_audio(
    ws: websockets.ClientConnection, dialect: TwilioDialect, n_bytes: int
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
