"""The bot's control messages, and the bridge's replies: one protocol for every dialect. Pure.

A bot drives the call with JSON text messages (in Pipecat: `OutputTransportMessageFrame(
message={...})`, which Pipecat's Twilio, Exotel and Vonage serializers all send verbatim,
ordered after the audio queued before it). Each is parsed here, once, into a typed request;
anything malformed raises BotProtocolError with the reason (logged by the runner, the call
goes on). The bridge acts on a request only once the audio queued before it has played.

    {"event": "transfer", "target": "PJSIP/1001" | "Local/206@caller" | "206@caller",
     "mode": "blind" | "attended", "caller_id": "...", "timeout": 20}
    {"event": "hangup", "cause": "busy"}          ARI's hang-up reasons, or a Q.850 code
    {"event": "dtmf", "digits": "123#"}           to the caller's far end, through ARI
    {"event": "record", "action": "start" | "stop", "mode": "mixed" | "tracks"}

Replies to the bot (`reply`): transfer_ringing, transfer_answered, transfer_failed (with a
cause: busy, no_answer, congestion, unavailable, failed).

`bridge.botkit` builds the same messages for bot authors; it must stay in step with this.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.errors import BotProtocolError

CONTROL_EVENTS = frozenset({"transfer", "hangup", "dtmf", "record"})

# DELETE /channels/{id}?reason= of Asterisk 23.4.1 (anything else: 400 Invalid Reason,
# recorded: hangup_reason), with the Q.850 cause each gives the far end.
HANGUP_CAUSES: Mapping[str, int] = {
    "normal": 16,
    "busy": 17,
    "congestion": 34,
    "no_answer": 19,
    "timeout": 18,
    "rejected": 21,
    "unallocated": 1,
    "normal_unspecified": 31,
    "number_incomplete": 28,
    "codec_mismatch": 58,
    "interworking": 127,
    "failure": 38,
    "answered_elsewhere": 26,
}

DTMF_OUT = re.compile(r"[0-9A-D*#]{1,32}")
MAX_TARGET = 256
# A dialled target: Tech/resource, e.g. PJSIP/1001, Local/206@caller, PJSIP/+4420@trunk.
DIALLED = re.compile(r"[A-Za-z][A-Za-z0-9_-]*/[^\s,()&|]+")
# A dialplan location: exten@context.
LOCATION = re.compile(r"([^\s@/,()&|]+)@([A-Za-z0-9_.-]+)")
DEFAULT_TRANSFER_TIMEOUT = 20
MAX_TRANSFER_TIMEOUT = 300


class TransferMode(enum.StrEnum):
    BLIND = "blind"  # the bot leaves as soon as the target is dialled
    ATTENDED = "attended"  # the bot stays with the caller until the target answers


class TransferCause(enum.StrEnum):
    """Why a transfer failed, as the bot is told (transfer_failed)."""

    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CONGESTION = "congestion"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"


class RecordMode(enum.StrEnum):
    NONE = "none"
    MIXED = "mixed"  # one file of the bridge: both sides
    TRACKS = "tracks"  # two files: what the caller says, what the caller hears


@dataclass(frozen=True, slots=True)
class TransferRequest:
    target: str
    mode: TransferMode = TransferMode.BLIND
    caller_id: str = ""
    timeout: int = DEFAULT_TRANSFER_TIMEOUT

    @property
    def location(self) -> tuple[str, str] | None:
        """(extension, context) of an `exten@context` target; None for a dialled one."""
        if DIALLED.fullmatch(self.target):
            return None
        match = LOCATION.fullmatch(self.target)
        assert match is not None  # parse_control admits nothing else
        return match.group(1), match.group(2)


@dataclass(frozen=True, slots=True)
class HangupWithCause:
    """Hang the caller up with `cause` (an ARI reason, or a Q.850 code in digits)."""

    cause: str = "normal"


@dataclass(frozen=True, slots=True)
class DtmfOut:
    digits: str


@dataclass(frozen=True, slots=True)
class RecordControl:
    start: bool
    mode: RecordMode | None = None  # None: the call's configured mode (mixed if none)


BotRequest = TransferRequest | HangupWithCause | DtmfOut | RecordControl


def is_control(obj: Mapping[str, Any]) -> bool:
    """A control message, not a provider's own event of the same name: Twilio's and
    Exotel's `dtmf` (a `dtmf` object: the caller's digit, echoed) has no `digits`."""
    event = obj.get("event")
    if event == "dtmf":
        return "digits" in obj
    return isinstance(event, str) and event in CONTROL_EVENTS


def parse_control(obj: Mapping[str, Any]) -> BotRequest:
    """A control message (its `event` in CONTROL_EVENTS) as a request, or BotProtocolError."""
    event = obj.get("event")
    if event == "transfer":
        return _transfer(obj)
    if event == "hangup":
        return HangupWithCause(_cause(obj.get("cause", "normal")))
    if event == "dtmf":
        digits = obj.get("digits")
        if not isinstance(digits, str) or not DTMF_OUT.fullmatch(digits):
            raise BotProtocolError("dtmf needs 'digits': 1 to 32 of 0-9 A-D * #")
        return DtmfOut(digits)
    if event == "record":
        action = obj.get("action")
        if action not in ("start", "stop"):
            raise BotProtocolError("record needs 'action': start or stop")
        mode = obj.get("mode")
        if mode is not None and mode not in (RecordMode.MIXED, RecordMode.TRACKS):
            raise BotProtocolError("record 'mode' must be mixed or tracks")
        return RecordControl(action == "start", RecordMode(mode) if mode else None)
    raise BotProtocolError(f"not a control event: {str(event)[:64]!r}")


def _transfer(obj: Mapping[str, Any]) -> TransferRequest:
    target = obj.get("target")
    if not isinstance(target, str) or not 0 < len(target) <= MAX_TARGET:
        raise BotProtocolError(f"transfer needs a 'target' string of 1 to {MAX_TARGET} chars")
    if not target.isprintable():
        raise BotProtocolError("transfer 'target' holds unprintable characters")
    if not (DIALLED.fullmatch(target) or LOCATION.fullmatch(target)):
        raise BotProtocolError(
            f"transfer target {target[:64]!r} is neither Tech/resource nor exten@context"
        )
    mode = obj.get("mode", "blind")
    if mode not in (TransferMode.BLIND, TransferMode.ATTENDED):
        raise BotProtocolError("transfer 'mode' must be blind or attended")
    caller_id = obj.get("caller_id", "")
    if not isinstance(caller_id, str) or len(caller_id) > 128 or not caller_id.isprintable():
        raise BotProtocolError("transfer 'caller_id' must be a printable string of <= 128")
    timeout = obj.get("timeout", DEFAULT_TRANSFER_TIMEOUT)
    if (
        not isinstance(timeout, int)
        or isinstance(timeout, bool)
        or not 1 <= timeout <= MAX_TRANSFER_TIMEOUT
    ):
        raise BotProtocolError(
            f"transfer 'timeout' must be whole seconds, 1..{MAX_TRANSFER_TIMEOUT}"
        )
    return TransferRequest(target, TransferMode(mode), caller_id, timeout)


def _cause(cause: object) -> str:
    if isinstance(cause, str) and cause in HANGUP_CAUSES:
        return cause
    if isinstance(cause, int) and not isinstance(cause, bool) and 1 <= cause <= 127:
        return str(cause)
    raise BotProtocolError(
        f"hangup 'cause' {str(cause)[:32]!r} is not an ARI reason "
        f"({', '.join(HANGUP_CAUSES)}) nor a Q.850 code 1..127"
    )


def reply(event: str, target: str, cause: TransferCause | None = None) -> dict[str, str]:
    """A reply to the bot about its transfer: transfer_ringing, _answered or _failed."""
    message = {"event": event, "target": target}
    if cause is not None:
        message["cause"] = cause.value
    return message
