"""What every bot dialect shares: the call description, the bot's events, the codec protocol.

A dialect is the spelling of one call on the bot WebSocket (Twilio Media Streams JSON, Exotel
JSON, Vonage binary frames...). It is a pure, per-call codec: it turns the caller's audio and
DTMF into messages for the bot, and the bot's messages into events for the bridge. It does no
I/O and never reads the clock; the WebSocket adapter sends what it returns and feeds it what
arrives.

Its `audio` (an rtp.transcode.AudioSpec) is the encoding and rate it carries both ways:
encode_audio() takes bytes in that spec and decode() gives BotAudio in it. Converting from
and to the call's RTP format is the bridge's job (rtp.transcode.Transcoder), not the dialect's.

    bridge -> bot:  opening_messages(), encode_audio() per RTP payload, encode_dtmf(),
                    encode_mark() once a bot mark has been played, closing_messages()
    bot -> bridge:  decode(message) -> BotAudio | BotClear | BotMark | BotIgnored |
                    BotControl (the control messages every dialect shares,
                    bridge.bot.control), or BotProtocolError (counted, logged, dropped:
                    never the call)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeAlias

# 0.7 µs against json's 2.8 µs for a 20 ms media message; the same objects for valid JSON.
from orjson import loads as _loads

from bridge.bot.control import BotRequest, is_control, parse_control
from bridge.errors import BotProtocolError
from rtp.transcode import AudioSpec

# Largest bot message accepted, in characters (text) or bytes (binary). Also the WebSocket
# adapter's max_size. Pipecat's biggest message is the 2 s of end silence it sends before
# closing: 16,000 bytes of µ-law, ~21 KB of base64 JSON.
MAX_BOT_MESSAGE = 1 << 20

BotMessage: TypeAlias = str | bytes

# Digits the telephony dialects may carry. Pipecat accepts 0-9 * # and drops A-D itself.
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The call as the bot is told about it, fixed when the call starts."""

    call_id: str
    channel_id: str
    caller: str
    called: str
    custom: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("call_id", "channel_id", "caller", "called"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"CallInfo.{name} must be a str")
        if not self.call_id:
            raise ValueError("CallInfo.call_id must not be empty")
        custom = dict(self.custom)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in custom.items()):
            raise TypeError("CallInfo.custom must map str to str")
        object.__setattr__(self, "custom", MappingProxyType(custom))


@dataclass(frozen=True, slots=True)
class BotAudio:
    """Audio from the bot, any length, in its dialect's `audio` spec (µ-law 8 kHz for twilio,
    PCM16 little-endian for exotel and vonage), not yet in the call's RTP format."""

    payload: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.payload, bytes):
            raise TypeError("BotAudio.payload must be bytes")

    def __repr__(self) -> str:
        return f"BotAudio({len(self.payload)} bytes)"


@dataclass(frozen=True, slots=True)
class BotClear:
    """The bot was interrupted: drop every queued frame of its audio now."""


@dataclass(frozen=True, slots=True)
class BotMark:
    """A named point in the bot's audio; echo it with encode_mark() once played up to it."""

    name: str


@dataclass(frozen=True, slots=True)
class BotIgnored:
    """A valid message the bridge has no use for (e.g. an echoed `connected`)."""

    reason: str


@dataclass(frozen=True, slots=True)
class BotControl:
    """A control message (bridge.bot.control): transfer, hangup with a cause, DTMF out,
    record. Acted on once the audio the bot queued before it has played."""

    request: BotRequest


BotEvent: TypeAlias = BotAudio | BotClear | BotMark | BotIgnored | BotControl


class BotDialect(Protocol):
    """A per-call codec between the bridge and one bot WebSocket dialect."""

    @property
    def name(self) -> str: ...

    @property
    def audio(self) -> AudioSpec:
        """The audio this dialect carries, both ways: encode_audio() input, BotAudio payload."""
        ...

    def opening_messages(self, info: CallInfo) -> list[BotMessage]:
        """The messages to send right after connecting, before any audio."""
        ...

    def encode_audio(self, payload: bytes) -> BotMessage:
        """One message carrying one chunk (normally 20 ms) of the caller's audio, in `audio`."""
        ...

    def encode_dtmf(self, digit: str) -> BotMessage | None:
        """A caller's DTMF digit, or None when the dialect cannot carry it."""
        ...

    def encode_mark(self, name: str) -> BotMessage | None:
        """The echo of a bot mark whose audio has been played, or None if not echoed."""
        ...

    def closing_messages(self) -> list[BotMessage]:
        """The messages to send when the caller hangs up, before closing with 1000."""
        ...

    def decode(self, message: BotMessage) -> BotEvent:
        """One bot message as an event; raises BotProtocolError for anything malformed."""
        ...


# Helpers for dialects that speak JSON text.


def dumps(obj: Any) -> str:
    """Compact JSON, as the telephony providers send it."""
    return json.dumps(obj, separators=(",", ":"))


def stable_sid(prefix: str, salt: str, value: str) -> str:
    """A SID shaped like Twilio's and Exotel's: two letters and 32 hex digits, stable for a
    given value, so the same call shows the same SIDs in every log."""
    digest = hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()
    return prefix + digest[:32]


def call_parameters(info: CallInfo) -> dict[str, str]:
    """What the bot is told about the call: its own fields, then the custom parameters; the
    call's own fields win over a custom parameter of the same name."""
    parameters = {
        "call_id": info.call_id,
        "channel_id": info.channel_id,
        "from_number": info.caller,
        "to_number": info.called,
    }
    return parameters | {k: v for k, v in info.custom.items() if k not in parameters}


def load_json_object(message: BotMessage, dialect: str) -> dict[str, Any]:
    """Parse a text message into a JSON object, or raise BotProtocolError saying why not."""
    if not isinstance(message, str):
        raise BotProtocolError(f"binary frame of {len(message)} bytes in text dialect {dialect}")
    if len(message) > MAX_BOT_MESSAGE:
        raise BotProtocolError(f"message of {len(message)} characters exceeds {MAX_BOT_MESSAGE}")
    try:
        obj = _loads(message)
    except (ValueError, RecursionError) as exc:
        raise BotProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BotProtocolError(f"message is a JSON {type(obj).__name__}, not an object")
    return obj


def require_object(obj: Mapping[str, Any], key: str, context: str) -> Mapping[str, Any]:
    """obj[key] as a JSON object, or BotProtocolError."""
    value = obj.get(key)
    if not isinstance(value, dict):
        raise BotProtocolError(f"{context} has no {key!r} object")
    return value


def require_str(obj: Mapping[str, Any], key: str, context: str) -> str:
    """obj[key] as a string, or BotProtocolError."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise BotProtocolError(f"{context} has no {key!r} string")
    return value


def decode_base64(text: str, what: str) -> bytes:
    """Strict base64 (RFC 4648 alphabet, correct padding, no whitespace), or BotProtocolError."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BotProtocolError(f"{what} is not valid base64: {exc}") from None


def decode_stream_event(message: BotMessage, dialect: str, ignored: frozenset[str]) -> BotEvent:
    """A bot message of a Twilio-style media-stream dialect (twilio, exotel): `media` with a
    base64 payload, `clear`, `mark`; the provider's own events in `ignored` are BotIgnored."""
    obj = load_json_object(message, dialect)
    if "event" not in obj:
        raise BotProtocolError("message has no 'event'")
    event = obj["event"]
    if not isinstance(event, str):
        raise BotProtocolError(f"'event' is a JSON {type(event).__name__}, not a string")
    if event == "media":
        media = require_object(obj, "media", "media event")
        payload = require_str(media, "payload", "media event's 'media'")
        return BotAudio(decode_base64(payload, "media.payload"))
    if event == "clear":
        return BotClear()
    if event == "mark":
        mark = require_object(obj, "mark", "mark event")
        return BotMark(require_str(mark, "name", "mark event's 'mark'"))
    if is_control(obj):
        return BotControl(parse_control(obj))
    if event in ignored:
        return BotIgnored(f"{dialect} {event!r} event is not used by the bridge")
    raise BotProtocolError(f"unknown event {event[:64]!r}")
