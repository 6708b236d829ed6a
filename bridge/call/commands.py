"""What the call state machine asks its runner to do, and what the runner reports back.

Commands are frozen dataclasses compared by identity (eq=False): the runner hands the very
command object back in `CommandDone`/`CommandFailed`, so two identical REST calls issued at
different times never get confused.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from ari.models import Channel

# ---- commands (machine -> runner) -------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Answer:
    channel_id: str


@dataclass(frozen=True, slots=True, eq=False)
class OpenMedia:
    """Get the media leg ready for Asterisk; answered by CommandDone(value=the ExternalMedia
    parameters that reach it, a mapping)."""


@dataclass(frozen=True, slots=True, eq=False)
class CreateBridge:
    bridge_id: str
    name: str


@dataclass(frozen=True, slots=True, eq=False)
class CreateExternalMedia:
    channel_id: str
    # The transport's own parameters (format, encapsulation, transport, external_host, data,
    # ...), as the leg gave them: the machine does not look inside.
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, eq=False)
class StartMedia:
    """Asterisk's side of the media is known: start relaying (value of the EM response)."""

    channel: Channel


@dataclass(frozen=True, slots=True, eq=False)
class AddChannels:
    bridge_id: str
    channel_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class ConnectBot:
    """Open a bot session. `resume` > 0: a re-dial after a drop, the call's `resume`-th
    resumed session, to be opened within `budget` seconds (None: the configured timeout)."""

    url: str
    resume: int = 0
    budget: float | None = None


@dataclass(frozen=True, slots=True, eq=False)
class ClearPlayout:
    """Drop the bot audio queued to the caller (a dropped bot's audio is stale)."""


@dataclass(frozen=True, slots=True, eq=False)
class StartHold:
    """The bot is away: give the caller the configured hold audio (silence, a comfort
    tone, Asterisk's music on hold on `channel_id`; "" for a call from the dialplan)."""

    channel_id: str


@dataclass(frozen=True, slots=True, eq=False)
class StopHold:
    channel_id: str


@dataclass(frozen=True, slots=True, eq=False)
class SendDtmf:
    digit: str


@dataclass(frozen=True, slots=True, eq=False)
class DrainPlayout:
    """Play out what the bot queued, then report PlayoutDrained."""


@dataclass(frozen=True, slots=True, eq=False)
class CloseBot:
    send_stop: bool
    code: int = 1000


@dataclass(frozen=True, slots=True, eq=False)
class HangupChannel:
    channel_id: str
    reason: str = ""  # ARI's hang-up reason or a Q.850 code: what the far end is told


@dataclass(frozen=True, slots=True, eq=False)
class OriginateTarget:
    """Dial a transfer target into the app under a pre-assigned id: 200 at once, its
    StasisStart only on answer; ringing, busy and no answer come as events (Dial,
    ChannelDestroyed)."""

    channel_id: str
    endpoint: str
    caller_id: str
    timeout: int
    originator: str  # the caller: the target gets its formats and linkedid


@dataclass(frozen=True, slots=True, eq=False)
class NotifyBot:
    """Send the bot a control reply (bridge.bot.control.reply), if it is connected."""

    message: Mapping[str, str]


@dataclass(frozen=True, slots=True, eq=False)
class SendDtmfToCaller:
    """Play digits to the caller's far end through ARI (the bot's `dtmf` message)."""

    channel_id: str
    digits: str


@dataclass(frozen=True, slots=True, eq=False)
class StartRecording:
    """Record a bridge (`target` "bridges": both sides mixed) or a snoop channel
    ("channels": one direction) as `name` in Asterisk's recording directory."""

    target: str
    target_id: str
    name: str
    fmt: str


@dataclass(frozen=True, slots=True, eq=False)
class StopRecording:
    name: str


@dataclass(frozen=True, slots=True, eq=False)
class CreateSnoop:
    """A snoop on the caller's channel entering the app: `spy` "in" hears the caller,
    "out" what the caller hears."""

    snoop_id: str
    channel_id: str
    spy: str


@dataclass(frozen=True, slots=True, eq=False)
class StartRingback:
    """What a caller waiting for a transfer target hears: `mode` "ring" (a ring tone played
    into the bridge as `playback_id`) or "moh" (the bridge's music on hold)."""

    bridge_id: str
    mode: str
    playback_id: str


@dataclass(frozen=True, slots=True, eq=False)
class StopRingback:
    bridge_id: str
    mode: str
    playback_id: str


@dataclass(frozen=True, slots=True, eq=False)
class DeleteBridge:
    bridge_id: str


@dataclass(frozen=True, slots=True, eq=False)
class CloseMedia:
    """Close the media leg; `hangup`: end the call on Asterisk's side through it too (a call
    from the dialplan), else just close (ARI deletes the channel; a dialplan fallback lets the
    dialplan go on)."""

    hangup: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class PlaySound:
    """Fallback: play `media` to the caller; done when its PlaybackFinished arrives."""

    channel_id: str
    media: str
    playback_id: str


@dataclass(frozen=True, slots=True, eq=False)
class ContinueInDialplan:
    """Fallback: hand the caller back to the dialplan (it leaves the Stasis app)."""

    channel_id: str
    context: str
    extension: str
    priority: int


@dataclass(frozen=True, slots=True, eq=False)
class Finished:
    """Everything the call created is gone; the runner drops the call."""

    reason: str


Command = (
    Answer
    | OpenMedia
    | CreateBridge
    | CreateExternalMedia
    | StartMedia
    | AddChannels
    | ConnectBot
    | ClearPlayout
    | StartHold
    | StopHold
    | SendDtmf
    | DrainPlayout
    | CloseBot
    | HangupChannel
    | OriginateTarget
    | NotifyBot
    | SendDtmfToCaller
    | StartRecording
    | StopRecording
    | CreateSnoop
    | StartRingback
    | StopRingback
    | DeleteBridge
    | CloseMedia
    | PlaySound
    | ContinueInDialplan
    | Finished
)

# ---- reports (runner -> machine) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandDone:
    command: Command
    value: object = None


@dataclass(frozen=True, slots=True)
class CommandFailed:
    command: Command
    error: str
    status: int | None = None  # the ARI HTTP status, when there was one


@dataclass(frozen=True, slots=True)
class BotConnected:
    pass


@dataclass(frozen=True, slots=True)
class BotClosed:
    code: int | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PlayoutDrained:
    pass


@dataclass(frozen=True, slots=True)
class MediaFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class MediaEnded:
    """Asterisk closed the media stream (AudioSocket socket closed, chan_websocket 1000)."""

    reason: str


@dataclass(frozen=True, slots=True)
class MediaDtmf:
    """A digit carried by the media stream itself (AudioSocket 0x03, DTMF_END)."""

    digit: str


@dataclass(frozen=True, slots=True)
class HangupRequested:
    """Somebody outside the call (shutdown, resync, the API) wants it ended."""

    reason: str
    caller_gone: bool = False
    fallback: bool = False  # hand the caller to the fallback instead of hanging up
    by: EndedBy | None = None  # None: the bridge (or the caller, with caller_gone)
    # Play out what the bot queued first, then hang up (as when the bot closes normally):
    # a bot's REST hang-up never clips its goodbye.
    drain: bool = False
    cause: str = ""  # the hang-up cause the caller's far end is told (HangupChannel.reason)


@dataclass(frozen=True, slots=True)
class ChannelVanished:
    """A resync found one of the call's own channels (a transfer target, a snoop) gone
    while the events socket was down: its end events were lost."""

    channel_id: str


class EndedBy(enum.StrEnum):
    """Who ended a call. `caller` is the phone side (the callee, for an outbound call)."""

    CALLER = "caller"
    BOT = "bot"  # it hung up, or failed (refused, dropped, stalled)
    API = "api"
    BRIDGE = "bridge"  # a set-up step failed, the media failed, shutdown, full, draining
    ASTERISK = "asterisk"  # the bridge or media channel went away under us
    TARGET = "target"  # a transfer's target: it hung up, or could not be reached (blind)


class Outbox:
    """What a call machine has asked for and not handed over yet, and the teardown commands
    still unanswered: the plumbing both call machines share."""

    def __init__(self) -> None:
        self._out: list[Command] = []
        self._pending: set[Command] = set()
        self._changes: list[object] = []

    def commands_to_send(self) -> list[Command]:
        out, self._out = self._out, []
        return out

    def changes_to_report(self) -> list[object]:
        """What changed since the last call (StateChanged values), for the read model."""
        out, self._changes = self._changes, []
        return out

    def _emit(self, cmd: Command) -> None:
        self._out.append(cmd)

    def _emit_teardown(self, cmd: Command) -> None:
        self._pending.add(cmd)
        self._out.append(cmd)
