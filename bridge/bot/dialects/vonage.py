"""The Vonage Voice WebSocket (Audio Connector) dialect, as Pipecat's VonageFrameSerializer
expects it: audio in binary frames of raw PCM16 little-endian at 16 kHz, both ways; control
as JSON text.

Bridge -> bot:

    {"event":"websocket:connected","content-type":"audio/l16;rate=16000","call_id":"…",
     "channel_id":"…","from_number":"…","to_number":"…",<custom parameters>}
    <binary: PCM16 LE, 640 bytes per 20 ms>                      one per audio chunk
    {"event":"websocket:dtmf","digit":"5"}
    {"event":"websocket:notify","payload":…}         echo of a bot notify once played

Vonage sends the NCCO's `headers` as top-level fields of `websocket:connected`; the call's
fields travel the same way (they cannot override `event` or `content-type`). Vonage sends no
stop message: the socket just closes. Its `dtmf.duration` is left out (encode_dtmf() gets
only the digit).

Bot -> bridge: binary audio (any length), `{"action":"clear"}` (what Pipecat 1.14 sends on
interruption), `{"action":"notify","payload":…}` (Vonage's mark: echoed as websocket:notify
when the audio queued before it has played; Pipecat sends it only as a custom message).

Pipecat's runner does not detect Vonage; the bot builds VonageFrameSerializer itself, whose
default `vonage_sample_rate` is 16000. Its deserialize() reads binary audio and
`websocket:dtmf`'s `digit`, and ignores `websocket:connected`/`cleared`/`notify`.
"""

from __future__ import annotations

import json

from bridge.bot.control import is_control, parse_control
from bridge.bot.dialects.base import (
    DTMF_DIGITS,
    MAX_BOT_MESSAGE,
    BotAudio,
    BotClear,
    BotControl,
    BotEvent,
    BotIgnored,
    BotMark,
    BotMessage,
    CallInfo,
    call_parameters,
    dumps,
    load_json_object,
)
from bridge.errors import BotProtocolError
from rtp.transcode import AudioSpec

SAMPLE_RATE = 16000
CONTENT_TYPE = f"audio/l16;rate={SAMPLE_RATE}"

# Events Vonage sends that a bot may echo but that mean nothing to the bridge.
IGNORED_EVENTS = frozenset(
    {"websocket:connected", "websocket:cleared", "websocket:notify", "websocket:dtmf"}
)


class VonageDialect:
    """Vonage Voice WebSocket for one call. Stateless: audio frames carry no numbering."""

    name = "vonage"
    audio = AudioSpec("pcm16le", SAMPLE_RATE)

    __slots__ = ("info",)

    def __init__(self, info: CallInfo) -> None:
        self.info = info

    def __repr__(self) -> str:
        return f"VonageDialect({self.info.call_id!r})"

    # bridge -> bot

    def opening_messages(self, info: CallInfo) -> list[BotMessage]:
        if info.call_id != self.info.call_id:
            raise ValueError(f"opening_messages for call {info.call_id!r} on {self!r}")
        head = {"event": "websocket:connected", "content-type": CONTENT_TYPE}
        headers = {k: v for k, v in call_parameters(info).items() if k not in head}
        return [dumps(head | headers)]

    def encode_audio(self, payload: bytes) -> bytes:
        return payload

    def encode_dtmf(self, digit: str) -> str | None:
        if digit not in DTMF_DIGITS:
            return None
        return dumps({"event": "websocket:dtmf", "digit": digit})

    def encode_mark(self, name: str) -> str:
        """`name` is the notify payload as decode() gave it: JSON text, sent back as JSON."""
        try:
            payload = json.loads(name)
        except (ValueError, RecursionError):
            payload = name  # not one of ours; still echo it
        return dumps({"event": "websocket:notify", "payload": payload})

    def closing_messages(self) -> list[BotMessage]:
        return []

    # bot -> bridge

    def decode(self, message: BotMessage) -> BotEvent:
        if isinstance(message, bytes):
            if len(message) > MAX_BOT_MESSAGE:
                raise BotProtocolError(f"frame of {len(message)} bytes exceeds {MAX_BOT_MESSAGE}")
            return BotAudio(message)
        obj = load_json_object(message, self.name)
        if is_control(obj):  # before `action`: the record control message has one too
            return BotControl(parse_control(obj))
        if "action" in obj:
            action = obj["action"]
            if action == "clear":
                return BotClear()
            if action == "notify":
                return BotMark(_notify_name(obj.get("payload")))
            raise BotProtocolError(f"unknown action {_describe(action)}")
        if "event" not in obj:
            raise BotProtocolError("message has neither 'action' nor 'event'")
        event = obj["event"]
        if isinstance(event, str) and event in IGNORED_EVENTS:
            return BotIgnored(f"vonage {event!r} event is not used by the bridge")
        raise BotProtocolError(f"unknown event {_describe(event)}")


def _notify_name(payload: object) -> str:
    """A notify payload as a mark name: its compact JSON."""
    try:
        return dumps(payload)
    except (ValueError, RecursionError):  # nesting that parsed but will not serialise
        raise BotProtocolError("notify payload cannot be echoed") from None


def _describe(value: object) -> str:
    """A short, safe rendering of a peer's value for an error message."""
    if isinstance(value, str):
        return repr(value[:64])
    return f"of JSON type {type(value).__name__}"
