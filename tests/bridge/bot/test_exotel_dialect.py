"""The Exotel dialect: every message field by field, and against Pipecat's own serializer."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
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
from pipecat.runner.utils import _detect_transport_type_from_message, parse_telephony_websocket
from pipecat.serializers.exotel import ExotelFrameSerializer
from pipecat.utils.asyncio.task_manager import TaskManager

from bridge.bot.dialects import (
    BotAudio,
    BotClear,
    BotDialect,
    BotIgnored,
    BotMark,
    CallInfo,
    ExotelDialect,
    create_dialect,
)
from bridge.errors import BotProtocolError, ConfigError
from rtp.transcode import AudioSpec

INFO = CallInfo("call-1", "1718000000.42", "+15551230000", "6001", {"lang": "en"})
SID = re.compile(r"^(MZ|AC|CA)[0-9a-f]{32}$")
PIPECAT_DIGITS = "0123456789*#"
RATES = [8000, 16000]


def compact(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def tone_pcm(n_samples: int, rate: int = 8000) -> bytes:
    """n samples of a 1 kHz tone, PCM16 LE: audio, not silence."""
    t = np.arange(n_samples) / rate
    return np.round(8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()


def started(info: CallInfo = INFO, rate: int = 8000) -> tuple[ExotelDialect, list[dict[str, Any]]]:
    dialect = ExotelDialect(info, rate)
    return dialect, [json.loads(m) for m in dialect.opening_messages(info)]


# bridge -> bot


def test_protocol_and_factory() -> None:
    dialect: BotDialect = create_dialect("exotel", INFO)
    assert isinstance(dialect, ExotelDialect)
    assert (dialect.name, dialect.audio) == ("exotel", AudioSpec("pcm16le", 8000))
    wide = create_dialect("exotel", INFO, 16000)
    assert wide.audio == AudioSpec("pcm16le", 16000)
    with pytest.raises(ConfigError, match="Exotel streams run at 8000, 16000, 24000 Hz, not 11025"):
        create_dialect("exotel", INFO, 11025)
    with pytest.raises(ValueError, match="not 44100"):
        ExotelDialect(INFO, 44100)


def test_connected_message() -> None:
    assert ExotelDialect(INFO).opening_messages(INFO)[0] == '{"event":"connected"}'


@pytest.mark.parametrize("rate", RATES)
def test_start_message_field_by_field(rate: int) -> None:
    dialect, (_, start) = started(rate=rate)
    assert list(start) == ["event", "sequence_number", "stream_sid", "start"]
    assert (start["event"], start["sequence_number"]) == ("start", "1")
    assert start["stream_sid"] == dialect.stream_sid
    assert start["start"] == {
        "stream_sid": dialect.stream_sid,
        "call_sid": dialect.call_sid,
        "account_sid": dialect.account_sid,
        "from": "+15551230000",
        "to": "6001",
        "custom_parameters": {
            "call_id": "call-1",
            "channel_id": "1718000000.42",
            "from_number": "+15551230000",
            "to_number": "6001",
            "lang": "en",
        },
        "media_format": {"encoding": "audio/x-raw", "sample_rate": str(rate), "bit_rate": "16"},
    }
    assert list(start["start"])[:3] == ["stream_sid", "call_sid", "account_sid"]


def test_sids_are_shaped_and_stable_per_call() -> None:
    a, b, other = ExotelDialect(INFO), ExotelDialect(INFO), ExotelDialect(CallInfo("x", "", "", ""))
    for sid in (a.stream_sid, a.call_sid, a.account_sid):
        assert SID.match(sid), sid
    assert (a.stream_sid, a.call_sid) == (b.stream_sid, b.call_sid)
    assert a.stream_sid != other.stream_sid and a.account_sid == other.account_sid


def test_opening_messages_refuse_another_call() -> None:
    with pytest.raises(ValueError, match="opening_messages for call 'x'"):
        ExotelDialect(INFO).opening_messages(CallInfo("x", "", "", ""))


@pytest.mark.parametrize(("rate", "timestamps"), [(8000, "0 20 40 80"), (16000, "0 10 20 40")])
def test_media_messages_field_by_field(rate: int, timestamps: str) -> None:
    dialect, _ = started(rate=rate)
    payloads = [tone_pcm(n) for n in (160, 160, 320, 80)]  # bytes: 320, 320, 640, 160
    for i, (payload, timestamp) in enumerate(zip(payloads, timestamps.split(), strict=True)):
        message = json.loads(dialect.encode_audio(payload))
        assert message == {
            "event": "media",
            "sequence_number": str(i + 2),
            "stream_sid": dialect.stream_sid,
            "media": {
                "chunk": str(i + 1),
                "timestamp": timestamp,
                "payload": base64.b64encode(payload).decode(),
            },
        }
        assert list(message) == ["event", "sequence_number", "stream_sid", "media"]


@given(
    payloads=st.lists(st.binary(max_size=700), min_size=1, max_size=6),
    call_id=st.text(min_size=1, max_size=20),
    rate=st.sampled_from(RATES),
)
def test_media_template_equals_json_dumps_of_the_dict(
    payloads: list[bytes], call_id: str, rate: int
) -> None:
    dialect = ExotelDialect(CallInfo(call_id, "ch", "1", "2"), rate)
    sent = 0
    for chunk, payload in enumerate(payloads, start=1):
        expected = {
            "event": "media",
            "sequence_number": str(chunk),
            "stream_sid": dialect.stream_sid,
            "media": {
                "chunk": str(chunk),
                "timestamp": str(sent * 1000 // (rate * 2)),
                "payload": base64.b64encode(payload).decode(),
            },
        }
        assert dialect.encode_audio(payload) == compact(expected)
        sent += len(payload)


def test_dtmf_mark_stop_and_numbering() -> None:
    dialect, _ = started()
    dialect.encode_audio(tone_pcm(160))
    assert json.loads(cast(str, dialect.encode_dtmf("7"))) == {
        "event": "dtmf",
        "sequence_number": "3",
        "stream_sid": dialect.stream_sid,
        "dtmf": {"digit": "7"},
    }
    assert dialect.encode_dtmf("x") is None  # takes no number
    assert json.loads(dialect.encode_mark("m1")) == {
        "event": "mark",
        "sequence_number": "4",
        "stream_sid": dialect.stream_sid,
        "mark": {"name": "m1"},
    }
    (stop,) = dialect.closing_messages()
    assert json.loads(stop) == {
        "event": "stop",
        "sequence_number": "5",
        "stream_sid": dialect.stream_sid,
        "stop": {
            "call_sid": dialect.call_sid,
            "account_sid": dialect.account_sid,
            "reason": "callended",
        },
    }


# bot -> bridge


def test_decode_media_clear_mark() -> None:
    dialect = ExotelDialect(INFO)
    payload = tone_pcm(321)[:-1]  # odd sample count, any length is accepted
    b64 = base64.b64encode(payload).decode()
    media = {"event": "media", "stream_sid": "x", "media": {"payload": b64}}
    assert dialect.decode(json.dumps(media)) == BotAudio(payload)  # Pipecat's spacing
    assert dialect.decode('{"event": "clear", "stream_sid": "x"}') == BotClear()
    assert dialect.decode('{"event":"mark","mark":{"name":"n"}}') == BotMark("n")


@pytest.mark.parametrize("event", ["connected", "start", "stop", "dtmf"])
def test_decode_exotel_events_the_bridge_does_not_use(event: str) -> None:
    decoded = ExotelDialect(INFO).decode(compact({"event": event}))
    assert decoded == BotIgnored(f"exotel {event!r} event is not used by the bridge")


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (b'{"event":"clear"}', "^binary frame of 17 bytes in text dialect exotel$"),
        ("{", "^message is not JSON"),
        ("[]", "^message is a JSON list, not an object$"),
        ("{}", "^message has no 'event'$"),
        ('{"event":2}', "^'event' is a JSON int, not a string$"),
        ('{"event":"playAudio"}', "^unknown event 'playAudio'$"),
        ('{"event":"media","media":{"payload":null}}', "'payload' string"),
        ('{"event":"media","media":{"payload":"A"}}', "^media.payload is not valid base64"),
        ('{"event":"mark","mark":"m"}', "^mark event has no 'mark' object$"),
    ],
)
def test_decode_errors(message: str | bytes, text: str) -> None:
    with pytest.raises(BotProtocolError, match=text):
        ExotelDialect(INFO).decode(message)


# Against pipecat-ai 1.14's own ExotelFrameSerializer and runner


async def pipecat_serializer(dialect: ExotelDialect) -> ExotelFrameSerializer:
    rate = dialect.audio.sample_rate
    serializer = ExotelFrameSerializer(
        dialect.stream_sid,
        call_sid=dialect.call_sid,
        params=ExotelFrameSerializer.InputParams(exotel_sample_rate=rate),
    )
    # A bot for this bridge runs its pipeline at the stream's rate: no resampling either way.
    setup = FrameProcessorSetup(
        clock=SystemClock(),
        task_manager=TaskManager(),
        pipeline_worker=cast(Any, None),
        audio_in_sample_rate=rate,
        audio_out_sample_rate=rate,
    )
    await serializer.setup(setup)
    return serializer


@pytest.mark.parametrize("rate", RATES)
async def test_pipecat_reads_our_media_bit_exact(rate: int) -> None:
    dialect, _ = started(rate=rate)
    serializer = await pipecat_serializer(dialect)
    for payload in (tone_pcm(rate // 50, rate), bytes(range(256)) * 2, tone_pcm(rate // 25, rate)):
        frame = await serializer.deserialize(dialect.encode_audio(payload))
        assert isinstance(frame, InputAudioRawFrame)
        assert frame.audio == payload
        assert (frame.sample_rate, frame.num_channels) == (rate, 1)


@pytest.mark.parametrize("digit", list(PIPECAT_DIGITS))
async def test_pipecat_reads_our_dtmf(digit: str) -> None:
    dialect = ExotelDialect(INFO)
    serializer = await pipecat_serializer(dialect)
    frame = await serializer.deserialize(cast(str, dialect.encode_dtmf(digit)))
    assert isinstance(frame, InputDTMFFrame)
    assert frame.button == KeypadEntry(digit)


async def test_pipecat_drops_dtmf_a_to_d_and_ignores_our_control_messages() -> None:
    dialect = ExotelDialect(INFO)
    serializer = await pipecat_serializer(dialect)
    messages = [
        *dialect.opening_messages(INFO),
        *(cast(str, dialect.encode_dtmf(d)) for d in "ABCD"),
        dialect.encode_mark("m"),
        *dialect.closing_messages(),
    ]
    for message in messages:
        assert await serializer.deserialize(message) is None, message


@pytest.mark.parametrize("rate", RATES)
async def test_our_decode_reads_pipecat_audio_bit_exact(rate: int) -> None:
    dialect = ExotelDialect(INFO, rate)
    serializer = await pipecat_serializer(dialect)
    pcm = tone_pcm(rate // 25, rate) + bytes(range(256))
    message = await serializer.serialize(
        OutputAudioRawFrame(audio=pcm, sample_rate=rate, num_channels=1)
    )
    assert isinstance(message, str)
    assert json.loads(message)["stream_sid"] == dialect.stream_sid
    assert dialect.decode(message) == BotAudio(pcm)


async def test_our_decode_reads_pipecat_clear_and_a_custom_mark() -> None:
    dialect = ExotelDialect(INFO)
    serializer = await pipecat_serializer(dialect)
    clear = await serializer.serialize(InterruptionFrame())
    assert isinstance(clear, str)
    assert json.loads(clear) == {"event": "clear", "stream_sid": dialect.stream_sid}
    assert dialect.decode(clear) == BotClear()
    # Pipecat itself never marks; a bot can, with a transport message of Exotel's shape.
    mark = {"event": "mark", "stream_sid": dialect.stream_sid, "mark": {"name": "intro"}}
    sent = await serializer.serialize(OutputTransportMessageFrame(message=mark))
    assert dialect.decode(cast(str, sent)) == BotMark("intro")
    assert await serializer.serialize(EndFrame()) is None


class FakeTelephonyWebSocket:
    """Just what parse_telephony_websocket uses of a FastAPI WebSocket: iter_text()."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages

    async def iter_text(self) -> AsyncIterator[str]:
        for message in self.messages:
            yield message


@pytest.mark.parametrize("rate", RATES)
async def test_pipecat_runner_detects_our_opening_as_exotel(rate: int) -> None:
    dialect = ExotelDialect(INFO, rate)
    connected, start = (cast(str, m) for m in dialect.opening_messages(INFO))
    assert _detect_transport_type_from_message(json.loads(connected)) == "unknown"
    assert _detect_transport_type_from_message(json.loads(start)) == "exotel"
    ws = FakeTelephonyWebSocket([connected, start, dialect.encode_audio(tone_pcm(160))])
    transport_type, call_data = await parse_telephony_websocket(cast(Any, ws))
    assert transport_type == "exotel"
    assert call_data.stream_id == dialect.stream_sid
    assert call_data.call_id == dialect.call_sid
    assert call_data.account_sid == dialect.account_sid
    assert (call_data.from_number, call_data.to_number) == ("+15551230000", "6001")
    assert call_data.custom_parameters == json.loads(start)["start"]["custom_parameters"]
