"""What every dialect guarantees, whatever the bot sends: an event or BotProtocolError."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.bot.dialects import (
    DIALECT_NAMES,
    BotAudio,
    BotClear,
    BotDialect,
    BotIgnored,
    BotMark,
    CallInfo,
    ExotelDialect,
    TwilioDialect,
    VonageDialect,
    create_dialect,
)
from bridge.errors import BotProtocolError, ConfigError
from rtp.transcode import AudioSpec

INFO = CallInfo("call-1", "1718000000.42", "+15551230000", "6001")
DIALECTS: dict[str, Callable[[], BotDialect]] = {
    "twilio": lambda: TwilioDialect(INFO),
    "exotel-8k": lambda: ExotelDialect(INFO, 8000),
    "exotel-16k": lambda: ExotelDialect(INFO, 16000),
    "vonage": lambda: VonageDialect(INFO),
}
each_dialect = pytest.mark.parametrize("make", DIALECTS.values(), ids=DIALECTS.keys())
EVENT_TYPES = (BotAudio, BotClear, BotMark, BotIgnored)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Every dialect's vocabulary, so that the generated messages reach the deep branches.
WORDS = st.sampled_from(
    [
        "media",
        "clear",
        "mark",
        "connected",
        "start",
        "stop",
        "dtmf",
        "notify",
        "websocket:connected",
        "websocket:cleared",
        "websocket:notify",
        "websocket:dtmf",
    ]
)
KEYS = st.sampled_from(["event", "action", "media", "mark", "payload", "stream_sid", "digit"])
PAYLOADS = (
    st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode())
    | st.text(max_size=12)
    | JSON_VALUES
)


def assert_event_or_protocol_error(dialect: BotDialect, message: str | bytes) -> None:
    try:
        decoded = dialect.decode(message)
    except BotProtocolError:
        return
    assert isinstance(decoded, EVENT_TYPES)


@each_dialect
@given(message=st.text())
def test_any_text_decodes_or_is_a_protocol_error(
    make: Callable[[], BotDialect], message: str
) -> None:
    assert_event_or_protocol_error(make(), message)


@each_dialect
@given(message=st.binary())
def test_any_binary_decodes_or_is_a_protocol_error(
    make: Callable[[], BotDialect], message: bytes
) -> None:
    assert_event_or_protocol_error(make(), message)


@each_dialect
@given(
    head=st.dictionaries(KEYS, WORDS | JSON_VALUES, max_size=3),
    nested=st.dictionaries(KEYS, PAYLOADS, max_size=3),
)
def test_any_json_object_decodes_or_is_a_protocol_error(
    make: Callable[[], BotDialect], head: dict[str, Any], nested: dict[str, Any]
) -> None:
    dialect = make()
    assert_event_or_protocol_error(dialect, json.dumps(head))
    for key in ("media", "mark", "payload"):
        assert_event_or_protocol_error(dialect, json.dumps(head | {key: nested}))


@each_dialect
@given(payload=st.binary(max_size=2000))
def test_our_own_audio_message_decodes_to_the_same_audio(
    make: Callable[[], BotDialect], payload: bytes
) -> None:
    """The bot's media message has the shape of ours in every dialect: a bot echoing our
    messages back verbatim is heard verbatim."""
    dialect = make()
    assert dialect.decode(dialect.encode_audio(payload)) == BotAudio(payload)


@each_dialect
def test_every_dialect_says_what_audio_it_carries(make: Callable[[], BotDialect]) -> None:
    dialect = make()
    assert isinstance(dialect.audio, AudioSpec)
    assert dialect.name in DIALECT_NAMES
    assert dialect.encode_dtmf("Z") is None
    for message in [*dialect.opening_messages(INFO), *dialect.closing_messages()]:
        assert isinstance(message, str)
        assert isinstance(dialect.decode(message), BotIgnored)


@pytest.mark.parametrize(
    ("name", "rate", "audio"),
    [
        ("twilio", 8000, AudioSpec("ulaw", 8000)),
        ("twilio", 16000, AudioSpec("ulaw", 8000)),
        ("exotel", 8000, AudioSpec("pcm16le", 8000)),
        ("exotel", 16000, AudioSpec("pcm16le", 16000)),
        ("vonage", 8000, AudioSpec("pcm16le", 16000)),
        ("vonage", 16000, AudioSpec("pcm16le", 16000)),
    ],
)
def test_create_dialect_for_each_call_rate(name: str, rate: int, audio: AudioSpec) -> None:
    dialect = create_dialect(name, INFO, rate)
    assert (dialect.name, dialect.audio) == (name, audio)


def test_create_dialect_refuses_what_it_cannot_speak() -> None:
    assert DIALECT_NAMES == ("twilio", "exotel", "vonage")
    with pytest.raises(ConfigError, match="unknown bot dialect 'sip'; known: twilio, exotel"):
        create_dialect("sip", INFO)
    with pytest.raises(ConfigError, match="not 12000"):
        create_dialect("exotel", INFO, 12000)
