"""The Twilio Media Streams dialect, as Pipecat's TwilioFrameSerializer and dev runner expect it.

Bridge -> bot, in order (one TwilioDialect per call numbers the messages):

    {"event":"connected","protocol":"Call","version":"1.0.0"}
    {"event":"start","sequenceNumber":"1","streamSid":"MZ…","start":{"accountSid":"AC…",
     "streamSid":"MZ…","callSid":"CA…","tracks":["inbound"],"customParameters":{…},
     "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}
    {"event":"media","sequenceNumber":"2","streamSid":"MZ…","media":{"track":"inbound",
     "chunk":"1","timestamp":"0","payload":"<base64 µ-law>"}}          one per RTP payload
    {"event":"dtmf",…,"dtmf":{"track":"inbound_track","digit":"5"}}
    {"event":"mark",…,"mark":{"name":"…"}}              echo of a bot mark once played
    {"event":"stop",…,"stop":{"accountSid":"AC…","callSid":"CA…"}}

Bot -> bridge: `media` (base64 µ-law, any length), `clear`, `mark`. Pipecat's dev runner
detects Twilio from `start.streamSid` + `start.callSid`, so `start` must precede any media.
The SIDs are derived from the call id, so the same call shows the same SIDs in every log.
"""

from __future__ import annotations

import base64
from typing import Any

from bridge.bot.dialects.base import (
    DTMF_DIGITS,
    BotEvent,
    BotMessage,
    CallInfo,
    call_parameters,
    decode_stream_event,
    dumps,
    stable_sid,
)
from rtp.transcode import AudioSpec

SAMPLE_RATE = 8000
BYTES_PER_MS = SAMPLE_RATE // 1000  # µ-law: one byte per sample

# Events Twilio defines that a bot may echo or send but that mean nothing to the bridge.
IGNORED_EVENTS = frozenset({"connected", "start", "stop", "dtmf"})

# Salt for the account SID: one fixed fake account for every call of this bridge.
ACCOUNT_NAME = "asterisk-pipecat-bridge"

# The hot path: one media message per 20 ms per call. Filled with %-formatting after the
# stream SID is baked in; tests prove it equals json.dumps of the dict form.
_MEDIA_TEMPLATE = (
    '{"event":"media","sequenceNumber":"%d","streamSid":"<sid>","media":'
    '{"track":"inbound","chunk":"%d","timestamp":"%d","payload":"%s"}}'
)


class TwilioDialect:
    """Twilio Media Streams for one call: numbers sequenceNumber, chunk and timestamp."""

    name = "twilio"
    audio = AudioSpec("ulaw", SAMPLE_RATE)

    __slots__ = (
        "_bytes_sent",
        "_chunks",
        "_media_template",
        "_sequence",
        "account_sid",
        "call_sid",
        "info",
        "stream_sid",
    )

    def __init__(self, info: CallInfo) -> None:
        self.info = info
        self.stream_sid = stable_sid("MZ", "stream", info.call_id)
        self.call_sid = stable_sid("CA", "call", info.call_id)
        self.account_sid = stable_sid("AC", "account", ACCOUNT_NAME)
        self._sequence = 0  # last sequenceNumber sent; `start` is 1
        self._chunks = 0  # media messages sent
        self._bytes_sent = 0  # µ-law bytes sent, for the timestamp
        self._media_template = _MEDIA_TEMPLATE.replace("<sid>", self.stream_sid)

    def __repr__(self) -> str:
        return f"TwilioDialect({self.info.call_id!r}, {self.stream_sid}, seq={self._sequence})"

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def _event(self, event: str, body: dict[str, Any]) -> str:
        """A numbered message of this stream: event, sequenceNumber, streamSid, then body."""
        head = {
            "event": event,
            "sequenceNumber": str(self._next_sequence()),
            "streamSid": self.stream_sid,
        }
        return dumps(head | body)

    # bridge -> bot

    def opening_messages(self, info: CallInfo) -> list[BotMessage]:
        if info.call_id != self.info.call_id:
            raise ValueError(f"opening_messages for call {info.call_id!r} on {self!r}")
        connected = dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": call_parameters(info),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1},
        }
        return [connected, self._event("start", {"start": start})]

    def encode_audio(self, payload: bytes) -> str:
        self._sequence += 1
        self._chunks += 1
        timestamp = self._bytes_sent // BYTES_PER_MS
        self._bytes_sent += len(payload)
        b64 = base64.b64encode(payload).decode("ascii")
        return self._media_template % (self._sequence, self._chunks, timestamp, b64)

    def encode_dtmf(self, digit: str) -> str | None:
        if digit not in DTMF_DIGITS:
            return None
        return self._event("dtmf", {"dtmf": {"track": "inbound_track", "digit": digit}})

    def encode_mark(self, name: str) -> str:
        return self._event("mark", {"mark": {"name": name}})

    def closing_messages(self) -> list[BotMessage]:
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        return [self._event("stop", {"stop": stop})]

    # bot -> bridge

    def decode(self, message: BotMessage) -> BotEvent:
        return decode_stream_event(message, self.name, IGNORED_EVENTS)
