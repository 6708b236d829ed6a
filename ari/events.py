"""ARI events as frozen dataclasses, parsed once by `parse_event()`.

Event types the bridge acts on get their own class; every other type becomes
`UnknownEvent(type, raw)` so the caller can log it at debug and move on. A message that is not
a JSON object, has no `type`, or lacks the resource its type requires raises `AriEventError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ari.models import Bridge, Channel, parse_bridge, parse_channel
from bridge.errors import AriEventError

# Asterisk never sends anything close to this; a bigger message is a broken peer.
MAX_EVENT_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class StasisStart:
    channel: Channel
    args: tuple[str, ...]
    application: str


@dataclass(frozen=True, slots=True)
class StasisEnd:
    channel: Channel


@dataclass(frozen=True, slots=True)
class ChannelHangupRequest:
    channel: Channel
    cause: int
    soft: bool


@dataclass(frozen=True, slots=True)
class ChannelDestroyed:
    channel: Channel
    cause: int
    cause_txt: str


@dataclass(frozen=True, slots=True)
class ChannelDtmfReceived:
    channel: Channel
    digit: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class ChannelStateChange:
    channel: Channel


@dataclass(frozen=True, slots=True)
class ChannelEnteredBridge:
    channel: Channel
    bridge: Bridge


@dataclass(frozen=True, slots=True)
class ChannelLeftBridge:
    channel: Channel
    bridge: Bridge


@dataclass(frozen=True, slots=True)
class BridgeDestroyed:
    bridge: Bridge


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    """A playback ended (done, or failed to start): `target_uri` is e.g. "channel:<id>"."""

    playback_id: str
    target_uri: str
    state: str

    @property
    def channel_id(self) -> str | None:
        kind, _, ident = self.target_uri.partition(":")
        return ident if kind == "channel" and ident else None


@dataclass(frozen=True, slots=True)
class Dial:
    """A dial's progress: `peer` is the channel being dialled (an originated channel, or an
    ExternalMedia one), `dialstatus` "" when it starts, then RINGING, ANSWER, BUSY, NOANSWER,
    CONGESTION, CHANUNAVAIL, CANCEL... (app_dial's DIALSTATUS). An originate has no `caller`."""

    peer: Channel
    dialstatus: str
    dialstring: str


@dataclass(frozen=True, slots=True)
class RecordingEvent:
    """A live recording's RecordingStarted, RecordingFinished or RecordingFailed (the type
    is `kind`): `target_uri` is "bridge:<id>" or "channel:<id>" (a snoop), `cause` says why
    a recording failed, `duration` is whole seconds (recorded: bridge_record_mixed)."""

    kind: str
    name: str
    target_uri: str
    state: str
    cause: str = ""
    duration: int | None = None

    @property
    def target(self) -> tuple[str, str]:
        kind, _, ident = self.target_uri.partition(":")
        return kind, ident


@dataclass(frozen=True, slots=True)
class CallBroadcast:
    """StasisBroadcast() offers `channel` to this app (every connected app matching the filter
    gets one): claim it with POST /events/claim, the first claim wins. `caller` is the
    caller-id number, `called` the extension (recorded: broadcast_claim)."""

    channel: Channel
    caller: str
    called: str
    application: str


@dataclass(frozen=True, slots=True)
class CallClaimed:
    """Sent only with StasisBroadcast's notify_claimed=yes, to every matching app, the winner
    included: `winner_app` took `channel`."""

    channel: Channel
    winner_app: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    type: str
    raw: Mapping[str, Any]


AriEvent = (
    StasisStart
    | StasisEnd
    | ChannelHangupRequest
    | ChannelDestroyed
    | ChannelDtmfReceived
    | ChannelStateChange
    | ChannelEnteredBridge
    | ChannelLeftBridge
    | BridgeDestroyed
    | PlaybackFinished
    | Dial
    | RecordingEvent
    | CallBroadcast
    | CallClaimed
    | UnknownEvent
)


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key, "")
    return value if isinstance(value, str) else ""


def _stasis_start(d: Mapping[str, Any]) -> StasisStart:
    args = d.get("args", [])
    if not isinstance(args, list):
        raise AriEventError("StasisStart args is not a list")
    app = d.get("application", "")
    return StasisStart(
        channel=parse_channel(d.get("channel")),
        args=tuple(str(a) for a in args),
        application=app if isinstance(app, str) else "",
    )


def _hangup_request(d: Mapping[str, Any]) -> ChannelHangupRequest:
    return ChannelHangupRequest(
        channel=parse_channel(d.get("channel")), cause=_int(d, "cause"), soft=d.get("soft") is True
    )


def _destroyed(d: Mapping[str, Any]) -> ChannelDestroyed:
    txt = d.get("cause_txt", "")
    return ChannelDestroyed(
        channel=parse_channel(d.get("channel")),
        cause=_int(d, "cause"),
        cause_txt=txt if isinstance(txt, str) else "",
    )


def _dtmf(d: Mapping[str, Any]) -> ChannelDtmfReceived:
    digit = d.get("digit")
    if not isinstance(digit, str) or len(digit) != 1:
        raise AriEventError("ChannelDtmfReceived has no single-character digit")
    return ChannelDtmfReceived(
        channel=parse_channel(d.get("channel")), digit=digit, duration_ms=_int(d, "duration_ms")
    )


def _playback_finished(d: Mapping[str, Any]) -> PlaybackFinished:
    playback = d.get("playback")
    if not isinstance(playback, dict):
        raise AriEventError("PlaybackFinished has no playback object")
    ident, target, state = (playback.get(k) for k in ("id", "target_uri", "state"))
    if not (isinstance(ident, str) and ident and isinstance(target, str)):
        raise AriEventError("PlaybackFinished playback lacks id or target_uri")
    return PlaybackFinished(ident, target, state if isinstance(state, str) else "")


def _dial(d: Mapping[str, Any]) -> Dial:
    status, dialstring = d.get("dialstatus", ""), d.get("dialstring", "")
    return Dial(
        peer=parse_channel(d.get("peer")),
        dialstatus=status if isinstance(status, str) else "",
        dialstring=dialstring if isinstance(dialstring, str) else "",
    )


def _recording(d: Mapping[str, Any]) -> RecordingEvent:
    rec = d.get("recording")
    if not isinstance(rec, dict):
        raise AriEventError(f"{d.get('type')} has no recording object")
    name, target = rec.get("name"), rec.get("target_uri")
    if not (isinstance(name, str) and name and isinstance(target, str)):
        raise AriEventError(f"{d.get('type')} recording lacks name or target_uri")
    state, cause, duration = rec.get("state"), rec.get("cause"), rec.get("duration")
    return RecordingEvent(
        kind=str(d.get("type")),
        name=name,
        target_uri=target,
        state=state if isinstance(state, str) else "",
        cause=cause if isinstance(cause, str) else "",
        duration=duration if isinstance(duration, int) and not isinstance(duration, bool) else None,
    )


def _broadcast(d: Mapping[str, Any]) -> CallBroadcast:
    channel = parse_channel(d.get("channel"))
    return CallBroadcast(channel, _str(d, "caller"), _str(d, "called"), _str(d, "application"))


def _claimed(d: Mapping[str, Any]) -> CallClaimed:
    return CallClaimed(parse_channel(d.get("channel")), _str(d, "winner_app"))


_PARSERS: dict[str, Any] = {
    "StasisStart": _stasis_start,
    "StasisEnd": lambda d: StasisEnd(parse_channel(d.get("channel"))),
    "ChannelHangupRequest": _hangup_request,
    "ChannelDestroyed": _destroyed,
    "ChannelDtmfReceived": _dtmf,
    "ChannelStateChange": lambda d: ChannelStateChange(parse_channel(d.get("channel"))),
    "ChannelEnteredBridge": lambda d: ChannelEnteredBridge(
        parse_channel(d.get("channel")), parse_bridge(d.get("bridge"))
    ),
    "ChannelLeftBridge": lambda d: ChannelLeftBridge(
        parse_channel(d.get("channel")), parse_bridge(d.get("bridge"))
    ),
    "BridgeDestroyed": lambda d: BridgeDestroyed(parse_bridge(d.get("bridge"))),
    "PlaybackFinished": _playback_finished,
    "Dial": _dial,
    "RecordingStarted": _recording,
    "RecordingFinished": _recording,
    "RecordingFailed": _recording,
    "CallBroadcast": _broadcast,
    "CallClaimed": _claimed,
}


def parse_event(message: str | bytes) -> AriEvent:
    """Parse one events-socket message; raises AriEventError, never anything else."""
    if len(message) > MAX_EVENT_BYTES:
        raise AriEventError(f"event of {len(message)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        data = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AriEventError(f"event is not JSON: {exc}") from None
    except RecursionError:
        raise AriEventError("event is nested too deeply") from None
    if not isinstance(data, dict):
        raise AriEventError("event is not a JSON object")
    event_type = data.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise AriEventError("event has no type")
    parser = _PARSERS.get(event_type)
    if parser is None:
        return UnknownEvent(event_type, data)
    result: AriEvent = parser(data)
    return result
