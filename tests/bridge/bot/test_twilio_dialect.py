"""The Twilio dialect: every message field by field, and against Pipecat's own serializer."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.audio.utils import create_stream_resampler, pcm_to_ulaw, ulaw_to_pcm
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.runner.utils import _detect_transport_type_from_message, parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.utils.asyncio.task_manager import TaskManager

from bridge.bot.dialects import (
    MAX_BOT_MESSAGE,
    BotAudio,
    BotClear,
    BotDialect,
    BotIgnored,
    BotMark,
    CallInfo,
    TwilioDialect,
    create_dialect,
)
from bridge.errors import BotProtocolError, ConfigError

INFO = CallInfo("call-1", "1718000000.42", "+15551230000", "6001", {"lang": "en"})
SID = re.compile(r"^(MZ|AC|CA)[0-9a-f]{32}$")
PIPECAT_DIGITS = "0123456789*#"


def compact(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


# One cycle of a 1 kHz tone at 8 kHz, amplitude 8000, µ-law (checked below with Pipecat's encoder).
TONE_CYCLE_PCM = [0, 5657, 8000, 5657, 0, -5657, -8000, -5657]
TONE_CYCLE_ULAW = bytes.fromhex("ffa9a0a9ff292029")


def tone_ulaw(n_samples: int) -> bytes:
    """n samples of the 1 kHz tone, µ-law: audio, not silence."""
    return (TONE_CYCLE_ULAW * (n_samples // 8 + 1))[:n_samples]


def started(info: CallInfo = INFO) -> tuple[TwilioDialect, list[dict[str, Any]]]:
    dialect = TwilioDialect(info)
    return dialect, [json.loads(m) for m in dialect.opening_messages(info)]


def assert_decode_error(message: str | bytes, text: str) -> None:
    with pytest.raises(BotProtocolError, match=text):
        TwilioDialect(INFO).decode(message)


# bridge -> bot


def test_protocol_and_factory() -> None:
    dialect: BotDialect = create_dialect("twilio", INFO)
    assert isinstance(dialect, TwilioDialect)
    assert dialect.name == "twilio"
    with pytest.raises(ConfigError, match="unknown bot dialect 'sip'"):
        create_dialect("sip", INFO)


def test_call_info_is_immutable_and_typed() -> None:
    custom = {"a": "b"}
    info = CallInfo("c", "ch", "1", "2", custom)
    custom["a"] = "changed"
    assert info.custom == {"a": "b"}
    with pytest.raises(TypeError):
        info.custom["x"] = "y"  # type: ignore[index]
    assert CallInfo("c", "ch", "1", "2").custom == {}
    with pytest.raises(TypeError, match="custom must map str to str"):
        CallInfo("c", "ch", "1", "2", {"n": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="call_id must not be empty"):
        CallInfo("", "ch", "1", "2")


def test_connected_message() -> None:
    dialect = TwilioDialect(INFO)
    connected = dialect.opening_messages(INFO)[0]
    assert connected == '{"event":"connected","protocol":"Call","version":"1.0.0"}'


def test_start_message_field_by_field() -> None:
    dialect, (_, start) = started()
    assert list(start) == ["event", "sequenceNumber", "streamSid", "start"]
    assert start["event"] == "start"
    assert start["sequenceNumber"] == "1"
    assert start["streamSid"] == dialect.stream_sid
    body = start["start"]
    assert list(body) == [
        "accountSid",
        "streamSid",
        "callSid",
        "tracks",
        "customParameters",
        "mediaFormat",
    ]
    assert body["accountSid"] == dialect.account_sid
    assert body["streamSid"] == dialect.stream_sid
    assert body["callSid"] == dialect.call_sid
    assert body["tracks"] == ["inbound"]
    assert body["customParameters"] == {
        "call_id": "call-1",
        "channel_id": "1718000000.42",
        "from_number": "+15551230000",
        "to_number": "6001",
        "lang": "en",
    }
    assert body["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


def test_sids_are_twilio_shaped_and_stable_per_call() -> None:
    a, b, other = TwilioDialect(INFO), TwilioDialect(INFO), TwilioDialect(CallInfo("x", "", "", ""))
    for sid in (a.stream_sid, a.call_sid, a.account_sid):
        assert SID.match(sid), sid
    assert (a.stream_sid[:2], a.call_sid[:2], a.account_sid[:2]) == ("MZ", "CA", "AC")
    assert (a.stream_sid, a.call_sid) == (b.stream_sid, b.call_sid)
    assert a.stream_sid != other.stream_sid and a.call_sid != other.call_sid
    assert a.account_sid == other.account_sid


def test_call_fields_win_over_custom_parameters() -> None:
    info = CallInfo("call-2", "ch", "100", "200", {"to_number": "spoof", "z": "1"})
    _, (_, start) = started(info)
    assert start["start"]["customParameters"] == {
        "call_id": "call-2",
        "channel_id": "ch",
        "from_number": "100",
        "to_number": "200",
        "z": "1",
    }


def test_opening_messages_refuse_another_call() -> None:
    with pytest.raises(ValueError, match="opening_messages for call 'x'"):
        TwilioDialect(INFO).opening_messages(CallInfo("x", "", "", ""))


def test_media_messages_field_by_field() -> None:
    dialect, _ = started()
    sizes = [160, 160, 320, 80, 1]
    payloads = [tone_ulaw(n) for n in sizes]
    messages = [json.loads(dialect.encode_audio(p)) for p in payloads]
    timestamps = ["0", "20", "40", "80", "90"]  # ms from bytes sent, 8 bytes per ms
    for i, (msg, payload) in enumerate(zip(messages, payloads, strict=True)):
        assert msg == {
            "event": "media",
            "sequenceNumber": str(i + 2),
            "streamSid": dialect.stream_sid,
            "media": {
                "track": "inbound",
                "chunk": str(i + 1),
                "timestamp": timestamps[i],
                "payload": base64.b64encode(payload).decode(),
            },
        }
        assert list(msg) == ["event", "sequenceNumber", "streamSid", "media"]
        assert list(msg["media"]) == ["track", "chunk", "timestamp", "payload"]


@given(
    payloads=st.lists(st.binary(max_size=400), min_size=1, max_size=8),
    call_id=st.text(min_size=1, max_size=20),
)
def test_media_template_equals_json_dumps_of_the_dict(payloads: list[bytes], call_id: str) -> None:
    dialect = TwilioDialect(CallInfo(call_id, "ch", "1", "2"))
    sent = 0
    for chunk, payload in enumerate(payloads, start=1):
        expected = {
            "event": "media",
            "sequenceNumber": str(chunk),
            "streamSid": dialect.stream_sid,
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(sent // 8),
                "payload": base64.b64encode(payload).decode(),
            },
        }
        message = dialect.encode_audio(payload)
        assert message == compact(expected)
        assert json.loads(message) == expected
        sent += len(payload)


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_dtmf_message(digit: str) -> None:
    dialect, _ = started()
    assert json.loads(cast(str, dialect.encode_dtmf(digit))) == {
        "event": "dtmf",
        "sequenceNumber": "2",
        "streamSid": dialect.stream_sid,
        "dtmf": {"track": "inbound_track", "digit": digit},
    }


@pytest.mark.parametrize("digit", ["", "x", "a", "55", "E"])
def test_dtmf_that_twilio_cannot_carry_is_none_and_takes_no_number(digit: str) -> None:
    dialect, _ = started()
    assert dialect.encode_dtmf(digit) is None
    assert json.loads(dialect.encode_audio(b"\xff"))["sequenceNumber"] == "2"


def test_mark_and_stop_messages() -> None:
    dialect, _ = started()
    dialect.encode_audio(tone_ulaw(160))
    assert json.loads(dialect.encode_mark("greeting-end")) == {
        "event": "mark",
        "sequenceNumber": "3",
        "streamSid": dialect.stream_sid,
        "mark": {"name": "greeting-end"},
    }
    (stop,) = dialect.closing_messages()
    assert json.loads(stop) == {
        "event": "stop",
        "sequenceNumber": "4",
        "streamSid": dialect.stream_sid,
        "stop": {"accountSid": dialect.account_sid, "callSid": dialect.call_sid},
    }


def test_sequence_numbers_count_every_numbered_message() -> None:
    dialect, opening = started()
    messages = [
        dialect.encode_audio(b"\xff" * 160),
        dialect.encode_dtmf("1"),
        dialect.encode_audio(b"\xff" * 160),
        dialect.encode_mark("m"),
        *dialect.closing_messages(),
    ]
    numbers = [opening[1]["sequenceNumber"]] + [
        json.loads(cast(str, m))["sequenceNumber"] for m in messages
    ]
    assert numbers == ["1", "2", "3", "4", "5", "6"]
    assert "sequenceNumber" not in opening[0]


# bot -> bridge


def test_decode_media_clear_mark() -> None:
    dialect, _ = started()
    payload = tone_ulaw(320)
    media = compact(
        {
            "event": "media",
            "streamSid": dialect.stream_sid,
            "media": {"payload": base64.b64encode(payload).decode()},
        }
    )
    assert dialect.decode(media) == BotAudio(payload)
    assert dialect.decode('{"event":"clear","streamSid":"MZ00"}') == BotClear()
    assert dialect.decode('{"event":"mark","streamSid":"MZ00","mark":{"name":"m1"}}') == BotMark(
        "m1"
    )
    assert repr(BotAudio(payload)) == "BotAudio(320 bytes)"


@pytest.mark.parametrize("event", ["connected", "start", "stop", "dtmf"])
def test_decode_twilio_events_the_bridge_does_not_use(event: str) -> None:
    decoded = TwilioDialect(INFO).decode(compact({"event": event}))
    assert decoded == BotIgnored(f"twilio {event!r} event is not used by the bridge")


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (b'{"event":"clear"}', "^binary frame of 17 bytes in text dialect twilio$"),
        ("", "^message is not JSON"),
        ("{", "^message is not JSON"),
        ("[" * 200_000, "^message is not JSON"),
        ("[1]", "^message is a JSON list, not an object$"),
        ('"media"', "^message is a JSON str, not an object$"),
        ("{}", "^message has no 'event'$"),
        ('{"event":1}', "^'event' is a JSON int, not a string$"),
        ('{"event":null}', "^'event' is a JSON NoneType, not a string$"),
        ('{"event":"play"}', "^unknown event 'play'$"),
        ('{"event":"media"}', "^media event has no 'media' object$"),
        ('{"event":"media","media":[]}', "^media event has no 'media' object$"),
        ('{"event":"media","media":{}}', "^media event's 'media' has no 'payload' string$"),
        ('{"event":"media","media":{"payload":7}}', "'payload' string"),
        ('{"event":"media","media":{"payload":"AA$A"}}', "^media.payload is not valid base64"),
        ('{"event":"media","media":{"payload":"AAA"}}', "^media.payload is not valid base64"),
        ('{"event":"media","media":{"payload":"AA AA"}}', "^media.payload is not valid base64"),
        ('{"event":"media","media":{"payload":"\u00e9\u00e9\u00e9\u00e9"}}', "not valid base64"),
        ('{"event":"mark"}', "^mark event has no 'mark' object$"),
        ('{"event":"mark","mark":{"name":1}}', "^mark event's 'mark' has no 'name' string$"),
    ],
)
def test_decode_errors(message: str | bytes, text: str) -> None:
    assert_decode_error(message, text)


def test_decode_size_cap() -> None:
    payload = base64.b64encode(bytes(MAX_BOT_MESSAGE)).decode()
    message = compact({"event": "media", "media": {"payload": payload}})
    assert_decode_error(
        message, f"^message of {len(message)} characters exceeds {MAX_BOT_MESSAGE}$"
    )
    fits = base64.b64encode(bytes(700_000)).decode()
    decoded = TwilioDialect(INFO).decode(compact({"event": "media", "media": {"payload": fits}}))
    assert decoded == BotAudio(bytes(700_000))


EVENT_TYPES = (BotAudio, BotClear, BotMark, BotIgnored)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
EVENT_NAMES = (
    st.sampled_from(["media", "clear", "mark", "connected", "start", "stop", "dtmf"]) | st.text()
)


def assert_event_or_protocol_error(message: str | bytes) -> None:
    try:
        decoded = TwilioDialect(INFO).decode(message)
    except BotProtocolError:
        return
    assert isinstance(decoded, EVENT_TYPES)


@given(st.text())
def test_decode_arbitrary_text(message: str) -> None:
    assert_event_or_protocol_error(message)


@given(st.binary())
def test_decode_arbitrary_binary(message: bytes) -> None:
    assert_event_or_protocol_error(message)


@given(
    event=EVENT_NAMES | JSON_VALUES,
    body=st.dictionaries(
        st.sampled_from(["media", "mark", "streamSid", "x"]), JSON_VALUES, max_size=3
    ),
    payload=st.text(max_size=12)
    | st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode())
    | JSON_VALUES,
)
def test_decode_arbitrary_json_objects(event: Any, body: dict[str, Any], payload: Any) -> None:
    message = {"event": event, **body}
    assert_event_or_protocol_error(compact(message))
    message["media"] = {"payload": payload}
    message["mark"] = {"name": payload}
    assert_event_or_protocol_error(compact(message))


# Against pipecat-ai 1.14's own TwilioFrameSerializer and runner


@pytest.fixture
async def serializer() -> TwilioFrameSerializer:
    dialect = TwilioDialect(INFO)
    ser = TwilioFrameSerializer(
        dialect.stream_sid,
        call_sid=dialect.call_sid,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    # A bot for this bridge runs its pipeline at 8 kHz; the serializer reads the rate here.
    setup = FrameProcessorSetup(
        clock=SystemClock(),
        task_manager=TaskManager(),
        pipeline_worker=cast(Any, None),
        audio_in_sample_rate=8000,
        audio_out_sample_rate=8000,
    )
    await ser.setup(setup)
    return ser


async def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    return await ulaw_to_pcm(ulaw, 8000, 8000, create_stream_resampler())


async def test_tone_cycle_is_the_mulaw_of_a_1khz_sine() -> None:
    pcm = b"".join(v.to_bytes(2, "little", signed=True) for v in TONE_CYCLE_PCM)
    assert await pcm_to_ulaw(pcm, 8000, 8000, create_stream_resampler()) == TONE_CYCLE_ULAW


async def test_pipecat_reads_our_media(serializer: TwilioFrameSerializer) -> None:
    dialect, _ = started()
    for payload in (tone_ulaw(160), bytes(range(256)), tone_ulaw(320)):
        frame = await serializer.deserialize(dialect.encode_audio(payload))
        assert isinstance(frame, InputAudioRawFrame)
        assert frame.audio == await ulaw_to_pcm16(payload)
        assert (frame.sample_rate, frame.num_channels) == (8000, 1)


@pytest.mark.parametrize("digit", list(PIPECAT_DIGITS))
async def test_pipecat_reads_our_dtmf(serializer: TwilioFrameSerializer, digit: str) -> None:
    frame = await serializer.deserialize(cast(str, TwilioDialect(INFO).encode_dtmf(digit)))
    assert isinstance(frame, InputDTMFFrame)
    assert frame.button == KeypadEntry(digit)


@pytest.mark.parametrize("digit", list("ABCD"))
async def test_pipecat_drops_dtmf_a_to_d(serializer: TwilioFrameSerializer, digit: str) -> None:
    assert await serializer.deserialize(cast(str, TwilioDialect(INFO).encode_dtmf(digit))) is None


@pytest.mark.parametrize(
    "message",
    [
        TwilioDialect(INFO).opening_messages(INFO)[0],
        TwilioDialect(INFO).opening_messages(INFO)[1],
        TwilioDialect(INFO).encode_mark("m"),
        TwilioDialect(INFO).closing_messages()[0],
    ],
)
async def test_pipecat_ignores_our_control_messages(
    serializer: TwilioFrameSerializer, message: str
) -> None:
    assert await serializer.deserialize(message) is None


async def test_our_decode_reads_pipecat_audio_bit_exact(serializer: TwilioFrameSerializer) -> None:
    # Every µ-law code but 0x7F ("-0", which re-encodes as 0xFF "+0") survives PCM16 and back.
    ulaw = bytes(b for b in range(256) if b != 0x7F) + tone_ulaw(400)
    pcm = await ulaw_to_pcm16(ulaw)
    message = await serializer.serialize(
        OutputAudioRawFrame(audio=pcm, sample_rate=8000, num_channels=1)
    )
    assert isinstance(message, str)
    assert json.loads(message)["streamSid"] == TwilioDialect(INFO).stream_sid
    assert TwilioDialect(INFO).decode(message) == BotAudio(ulaw)
    assert ulaw == await pcm_to_ulaw(pcm, 8000, 8000, create_stream_resampler())


async def test_our_decode_reads_pipecat_clear(serializer: TwilioFrameSerializer) -> None:
    # pipecat-ai 1.14 has InterruptionFrame only (StartInterruptionFrame is gone).
    message = await serializer.serialize(InterruptionFrame())
    assert isinstance(message, str)
    assert json.loads(message) == {"event": "clear", "streamSid": TwilioDialect(INFO).stream_sid}
    assert TwilioDialect(INFO).decode(message) == BotClear()


async def test_pipecat_sends_nothing_on_end_without_auto_hang_up(
    serializer: TwilioFrameSerializer,
) -> None:
    assert await serializer.serialize(EndFrame()) is None


class FakeTelephonyWebSocket:
    """Just what parse_telephony_websocket uses of a FastAPI WebSocket: iter_text()."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages

    async def iter_text(self) -> AsyncIterator[str]:
        for message in self.messages:
            yield message


async def test_pipecat_runner_detects_our_opening_as_twilio() -> None:
    dialect = TwilioDialect(INFO)
    connected, start = (cast(str, m) for m in dialect.opening_messages(INFO))
    assert _detect_transport_type_from_message(json.loads(connected)) == "unknown"
    assert _detect_transport_type_from_message(json.loads(start)) == "twilio"
    ws = FakeTelephonyWebSocket([connected, start, dialect.encode_audio(tone_ulaw(160))])
    transport_type, call_data = await parse_telephony_websocket(cast(Any, ws))
    assert transport_type == "twilio"
    assert call_data.stream_id == dialect.stream_sid
    assert call_data.call_id == dialect.call_sid
    assert call_data.from_number == "+15551230000"
    assert call_data.to_number == "6001"
    assert call_data.body == json.loads(start)["start"]["customParameters"]


async def test_pipecat_runner_rejects_media_before_start() -> None:
    dialect = TwilioDialect(INFO)
    media = [dialect.encode_audio(tone_ulaw(160)) for _ in range(2)]
    transport_type, _ = await parse_telephony_websocket(cast(Any, FakeTelephonyWebSocket(media)))
    assert transport_type == "unknown"
