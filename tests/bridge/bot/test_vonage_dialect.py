"""The Vonage dialect: every message field by field, and against Pipecat's own serializer."""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np
import pytest
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.vonage import VonageFrameSerializer
from pipecat.utils.asyncio.task_manager import TaskManager

from bridge.bot.dialects import (
    MAX_BOT_MESSAGE,
    BotAudio,
    BotClear,
    BotDialect,
    BotIgnored,
    BotMark,
    CallInfo,
    VonageDialect,
    create_dialect,
)
from bridge.errors import BotProtocolError
from rtp.transcode import AudioSpec, Transcoder

INFO = CallInfo("call-1", "1718000000.42", "+15551230000", "6001", {"lang": "en"})
PIPECAT_DIGITS = "0123456789*#"
FRAME = 640  # 20 ms of PCM16 at 16 kHz: Vonage's frame


def tone_pcm(n_samples: int, rate: int = 16000) -> bytes:
    t = np.arange(n_samples) / rate
    return np.round(8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()


def assert_decode_error(message: str | bytes, text: str) -> None:
    with pytest.raises(BotProtocolError, match=text):
        VonageDialect(INFO).decode(message)


# bridge -> bot


@pytest.mark.parametrize("rate", [8000, 16000])
def test_protocol_and_factory(rate: int) -> None:
    dialect: BotDialect = create_dialect("vonage", INFO, rate)  # always 16 kHz
    assert isinstance(dialect, VonageDialect)
    assert (dialect.name, dialect.audio) == ("vonage", AudioSpec("pcm16le", 16000))
    assert dialect.audio.frame_bytes() == FRAME
    assert repr(dialect) == "VonageDialect('call-1')"


def test_connected_message_carries_the_call_as_headers() -> None:
    (connected,) = VonageDialect(INFO).opening_messages(INFO)
    assert isinstance(connected, str)
    assert json.loads(connected) == {
        "event": "websocket:connected",
        "content-type": "audio/l16;rate=16000",
        "call_id": "call-1",
        "channel_id": "1718000000.42",
        "from_number": "+15551230000",
        "to_number": "6001",
        "lang": "en",
    }
    assert connected.startswith('{"event":"websocket:connected","content-type":')


def test_headers_cannot_override_event_content_type_or_call_fields() -> None:
    custom = {"event": "x", "content-type": "audio/l16;rate=8000", "to_number": "spoof", "z": "1"}
    info = CallInfo("c", "ch", "1", "2", custom)
    (connected,) = VonageDialect(info).opening_messages(info)
    assert json.loads(connected) == {
        "event": "websocket:connected",
        "content-type": "audio/l16;rate=16000",
        "call_id": "c",
        "channel_id": "ch",
        "from_number": "1",
        "to_number": "2",
        "z": "1",
    }


def test_opening_messages_refuse_another_call() -> None:
    with pytest.raises(ValueError, match="opening_messages for call 'x'"):
        VonageDialect(INFO).opening_messages(CallInfo("x", "", "", ""))


def test_audio_is_the_payload_itself_in_a_binary_frame() -> None:
    payload = tone_pcm(320)
    assert VonageDialect(INFO).encode_audio(payload) is payload


def test_dtmf_notify_echo_and_no_stop() -> None:
    dialect = VonageDialect(INFO)
    assert dialect.encode_dtmf("5") == '{"event":"websocket:dtmf","digit":"5"}'
    assert dialect.encode_dtmf("55") is None
    assert dialect.closing_messages() == []


def test_notify_round_trips_as_a_mark() -> None:
    dialect = VonageDialect(INFO)
    mark = dialect.decode('{"action": "notify", "payload": {"id": 7, "text": "é"}}')
    assert mark == BotMark('{"id":7,"text":"\\u00e9"}')
    assert isinstance(mark, BotMark)
    assert json.loads(dialect.encode_mark(mark.name)) == {
        "event": "websocket:notify",
        "payload": {"id": 7, "text": "é"},
    }
    assert dialect.decode('{"action":"notify"}') == BotMark("null")
    assert dialect.encode_mark("null") == '{"event":"websocket:notify","payload":null}'
    # A name that did not come from a notify is echoed as a string.
    assert dialect.encode_mark("end") == '{"event":"websocket:notify","payload":"end"}'


# bot -> bridge


def test_decode_audio_and_clear() -> None:
    dialect = VonageDialect(INFO)
    for size in (FRAME, 1, 0, 16_000):
        assert dialect.decode(bytes(size)) == BotAudio(bytes(size))
    assert dialect.decode('{"action": "clear"}') == BotClear()


@pytest.mark.parametrize(
    "event", ["websocket:connected", "websocket:cleared", "websocket:notify", "websocket:dtmf"]
)
def test_decode_vonage_events_the_bridge_does_not_use(event: str) -> None:
    decoded = VonageDialect(INFO).decode(json.dumps({"event": event}))
    assert decoded == BotIgnored(f"vonage {event!r} event is not used by the bridge")


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ("", "^message is not JSON"),
        ("\x00", "^message is not JSON"),
        ('"clear"', "^message is a JSON str, not an object$"),
        ("{}", "^message has neither 'action' nor 'event'$"),
        ('{"action":"play"}', "^unknown action 'play'$"),
        ('{"action":null}', "^unknown action of JSON type NoneType$"),
        ('{"action":["clear"]}', "^unknown action of JSON type list$"),
        ('{"event":"websocket:disconnected"}', "^unknown event 'websocket:disconnected'$"),
        ('{"event":{"a":1}}', "^unknown event of JSON type dict$"),
        ('{"action":"notify","payload":' + "[" * 5000 + "]" * 5000 + "}", "^message is not JSON"),
    ],
)
def test_decode_errors(message: str | bytes, text: str) -> None:
    assert_decode_error(message, text)


def test_decode_size_caps() -> None:
    too_big = MAX_BOT_MESSAGE + 1
    assert_decode_error(bytes(too_big), f"^frame of {too_big} bytes exceeds {MAX_BOT_MESSAGE}$")
    assert_decode_error(" " * too_big, f"^message of {too_big} characters exceeds")
    assert VonageDialect(INFO).decode(bytes(MAX_BOT_MESSAGE)) == BotAudio(bytes(MAX_BOT_MESSAGE))


# Against pipecat-ai 1.14's own VonageFrameSerializer


@pytest.fixture
async def serializer() -> VonageFrameSerializer:
    ser = VonageFrameSerializer()  # a stock bot's: vonage_sample_rate 16000
    setup = FrameProcessorSetup(
        clock=SystemClock(),
        task_manager=TaskManager(),
        pipeline_worker=cast(Any, None),
        audio_in_sample_rate=16000,
        audio_out_sample_rate=16000,
    )
    await ser.setup(setup)
    return ser


async def test_pipecat_reads_our_audio_bit_exact(serializer: VonageFrameSerializer) -> None:
    dialect = VonageDialect(INFO)
    for payload in (tone_pcm(320), bytes(range(256)) * 2, tone_pcm(640)):
        frame = await serializer.deserialize(dialect.encode_audio(payload))
        assert isinstance(frame, InputAudioRawFrame)
        assert frame.audio == payload
        assert (frame.sample_rate, frame.num_channels) == (16000, 1)


async def test_a_ulaw_call_reaches_pipecat_in_vonage_frames(
    serializer: VonageFrameSerializer,
) -> None:
    """The bridge's path for a µ-law call: 160 bytes of µ-law -> one 640-byte frame."""
    dialect = VonageDialect(INFO)
    to_bot = Transcoder(AudioSpec("ulaw", 8000), dialect.audio)
    for _ in range(3):
        message = dialect.encode_audio(to_bot.convert(b"\xa9\xa0\xa9\xff\x29\x20\x29\xff" * 20))
        assert isinstance(message, bytes) and len(message) == FRAME
        frame = await serializer.deserialize(message)
        assert isinstance(frame, InputAudioRawFrame)
        assert len(frame.audio) == FRAME


@pytest.mark.parametrize("digit", list(PIPECAT_DIGITS))
async def test_pipecat_reads_our_dtmf(serializer: VonageFrameSerializer, digit: str) -> None:
    frame = await serializer.deserialize(cast(str, VonageDialect(INFO).encode_dtmf(digit)))
    assert isinstance(frame, InputDTMFFrame)
    assert frame.button == KeypadEntry(digit)


async def test_pipecat_drops_dtmf_a_to_d_and_ignores_our_control_messages(
    serializer: VonageFrameSerializer,
) -> None:
    dialect = VonageDialect(INFO)
    messages = [
        *dialect.opening_messages(INFO),
        *(cast(str, dialect.encode_dtmf(d)) for d in "ABCD"),
        dialect.encode_mark('{"id":1}'),
    ]
    for message in messages:
        assert await serializer.deserialize(message) is None, message


async def test_our_decode_reads_pipecat_audio_bit_exact(serializer: VonageFrameSerializer) -> None:
    pcm = tone_pcm(960) + bytes(range(256))
    message = await serializer.serialize(
        OutputAudioRawFrame(audio=pcm, sample_rate=16000, num_channels=1)
    )
    assert isinstance(message, bytes)
    assert VonageDialect(INFO).decode(message) == BotAudio(pcm)


async def test_our_decode_reads_pipecat_clear_and_notify(
    serializer: VonageFrameSerializer,
) -> None:
    dialect = VonageDialect(INFO)
    clear = await serializer.serialize(InterruptionFrame())
    assert clear == '{"action": "clear"}'
    assert dialect.decode(cast(str, clear)) == BotClear()
    # Pipecat sends notify only as a custom message; Vonage answers websocket:notify.
    notify = {"action": "notify", "payload": {"turn": 3}}
    sent = await serializer.serialize(OutputTransportMessageFrame(message=notify))
    mark = dialect.decode(cast(str, sent))
    assert mark == BotMark('{"turn":3}')
    assert isinstance(mark, BotMark)
    assert await serializer.deserialize(dialect.encode_mark(mark.name)) is None
    assert await serializer.serialize(EndFrame()) is None
