"""The per-call state machine: pure, no I/O, no clock: `now` comes with every input.

Theory of operation
-------------------
A call starts when a caller's StasisStart arrives. The machine answers at once (a caller left
ringing while we set up can time out), then in parallel binds the media leg, creates the
bridge and connects the bot. When the leg is bound it creates the ExternalMedia channel with a
pre-assigned id. Both channels are added to the bridge only once the bridge exists, the
ExternalMedia response is in (it carries Asterisk's RTP address) *and* the ExternalMedia
channel's own StasisStart was seen: adding it before that fails with 422 on a real Asterisk
(asterisk-facts §1b), and its StasisStart may come before or after the REST response (§1).

What the call owns is one table (`bridge.call.resources`): the caller, the bridge, the media
channel and leg, the bot session, the caller's hold, each a row with its own lifecycle.
Teardown is driven by what exists, not by where setup got to: it walks the table, and every
row that was created, or whose creation is still in flight, is deleted exactly once (a delete
for a creation still in flight waits for its answer, else it could 404 and leak). The call is
ENDED when every teardown command has been answered and no row is in flight.

    SETUP --bridged and bot connected--> UP --bot closed normally--> DRAINING
      |                                 |  ^                             |
      |               bot dropped (1012) v  | a re-dial connected        |
      |                                BOT_AWAY                          |
      +-------- any end ------------------+-------- any end -------------+--> ENDING --> ENDED

A bot that drops while the call is up (a redeploy's close code, `bridge.call.reconnect`)
does not end the call: BOT_AWAY clears the playout, holds the caller (StartHold: silence, a
tone or music on hold, a row like the others) and re-dials at the policy's backoff times
(ConnectBot with `resume`). A session that connects takes the call back to UP (StopHold); the
outage's deadline with no session ends the call with the fallback. A re-dial in flight when
the call ends is abandoned (CloseBot), as at set-up.

An outbound call (`ring_timeout` set) starts in SETUP while its originated channel rings:
nothing is answered or created until that channel's StasisStart (the far end answered); how
a ring that fails ends the call is the service's (`bridge.service.outbound`). Ending it while
it rings only hangs the channel up (no fallback: nobody is on it yet).

The triggers are the table below (`_trigger_table`): (state, input type) -> (next state, what
to do). An input with no row in the call's state changes nothing. A next state of None means
the handler decides (for instance BotClosed in UP: DRAINING, BOT_AWAY or ENDING by its close
code); every move goes through `_goto`, which checks it against TRANSITIONS.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ari.events import (
    AriEvent,
    BridgeDestroyed,
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelHangupRequest,
    Dial,
    PlaybackFinished,
    RecordingEvent,
    StasisEnd,
    StasisStart,
)
from ari.models import Channel
from bridge.bot.control import (
    BotRequest,
    DtmfOut,
    HangupWithCause,
    RecordControl,
    RecordMode,
    TransferCause,
    TransferMode,
    TransferRequest,
)
from bridge.call.commands import (
    AddChannels,
    Answer,
    BotClosed,
    BotConnected,
    ChannelVanished,
    ClearPlayout,
    CloseBot,
    CloseMedia,
    Command,
    CommandDone,
    CommandFailed,
    ConnectBot,
    ContinueInDialplan,
    CreateBridge,
    CreateExternalMedia,
    CreateSnoop,
    DeleteBridge,
    DrainPlayout,
    EndedBy,
    Finished,
    HangupChannel,
    HangupRequested,
    MediaDtmf,
    MediaEnded,
    MediaFailed,
    OpenMedia,
    OriginateTarget,
    Outbox,
    PlayoutDrained,
    PlaySound,
    SendDtmf,
    SendDtmfToCaller,
    StartHold,
    StartMedia,
    StartRecording,
    StartRingback,
    StopHold,
    StopRecording,
    StopRingback,
)
from bridge.call.reconnect import OFF, ReconnectPolicy, Reconnects, is_redeploy
from bridge.call.recorder import CallRecorder, RecordingResult, RecordPlan
from bridge.call.redial import BotRedial
from bridge.call.resources import Life, ResourceKind, Resources
from bridge.call.transfer import CallTransfer, TransferAttempt, TransferPolicy
from bridge.errors import CallStateError

# The longest a fallback sound may hold the caller before the fallback goes ahead anyway: a
# PlaybackFinished that never comes (lost with the events socket) must not strand the caller.
PLAYBACK_CAP = 30.0

# An ARI call hears of a hang-up from its events; the media stream closing first (Asterisk
# closes an AudioSocket or chan_websocket as it hangs the channel up) only ends the call if
# no event explains it within this long: a stream that broke on its own.
MEDIA_ENDED_GRACE = 1.0


class CallState(enum.Enum):
    SETUP = "setup"
    UP = "up"
    BOT_AWAY = "bot_away"  # the bot dropped mid-call: holding the caller, re-dialling
    TRANSFERRING = "transferring"  # a transfer target is being dialled; the bot stays
    TRANSFERRED = "transferred"  # the bot side is gone: the caller and the target
    DRAINING = "draining"
    ENDING = "ending"
    ENDED = "ended"


TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.SETUP: frozenset({CallState.UP, CallState.ENDING}),
    CallState.UP: frozenset(
        {CallState.DRAINING, CallState.BOT_AWAY, CallState.TRANSFERRING, CallState.ENDING}
    ),
    CallState.BOT_AWAY: frozenset({CallState.UP, CallState.TRANSFERRING, CallState.ENDING}),
    CallState.TRANSFERRING: frozenset(
        {
            CallState.UP,
            CallState.BOT_AWAY,
            CallState.TRANSFERRED,
            CallState.DRAINING,
            CallState.ENDING,
        }
    ),
    CallState.TRANSFERRED: frozenset({CallState.ENDING}),
    CallState.DRAINING: frozenset({CallState.ENDING}),
    CallState.ENDING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}

SETUP, UP, BOT_AWAY = CallState.SETUP, CallState.UP, CallState.BOT_AWAY
TRANSFERRING, TRANSFERRED = CallState.TRANSFERRING, CallState.TRANSFERRED
DRAINING, ENDING = CallState.DRAINING, CallState.ENDING
WITH_MEDIA = (SETUP, UP, BOT_AWAY, TRANSFERRING, DRAINING)  # the media leg is the call's
LIVE = (*WITH_MEDIA, TRANSFERRED)  # not ending yet
ALIVE = (*LIVE, ENDING)  # not ended
TALKING = (UP, TRANSFERRING)  # the bot has the caller's ear

Handler = Callable[["CallMachine", Any], None]
Triggers = dict[tuple[CallState, type], tuple[CallState | None, Handler]]


def _trigger_table() -> Triggers:
    """(state, input type) -> (next state or None: the handler decides, what to do)."""
    M = CallMachine
    rows: list[tuple[tuple[CallState, ...], type, CallState | None, Handler]] = [
        # in states          on input              next       do
        (ALIVE,               CommandDone,          None,      M._on_done),
        (ALIVE,               CommandFailed,        None,      M._on_failed),
        # the phone side
        (LIVE,                StasisStart,          None,      M._on_stasis_start),
        (LIVE,                ChannelDtmfReceived,  None,      M._on_caller_dtmf),
        (ALIVE,               ChannelHangupRequest, None,      M._on_channel_leaving),
        (ALIVE,               StasisEnd,            None,      M._on_channel_leaving),
        (ALIVE,               ChannelDestroyed,     None,      M._on_channel_leaving),
        (ALIVE,               ChannelVanished,      None,      M._on_channel_leaving),
        (LIVE,                BridgeDestroyed,      None,      M._on_bridge_destroyed),
        (ALIVE,               PlaybackFinished,     None,      M._on_playback_finished),
        (ALIVE,               RecordingEvent,       None,      M._on_recording_event),
        # the bot side: SETUP -> UP once bridged; BOT_AWAY -> UP; UP -> DRAINING | BOT_AWAY
        ((SETUP, BOT_AWAY, TRANSFERRING), BotConnected, None,  M._on_bot_connected),
        (ALIVE,               BotClosed,            None,      M._on_bot_closed),
        ((DRAINING,),         PlayoutDrained,       ENDING,    M._on_drained),
        # the bot's control messages (bridge.bot.control), once what it queued has played
        ((UP, BOT_AWAY),      TransferRequest,      None,      M._on_transfer_request),
        ((*TALKING, BOT_AWAY, DRAINING), HangupWithCause, None, M._on_hangup_with_cause),
        (TALKING,             DtmfOut,              None,      M._on_dtmf_out),
        ((*TALKING, BOT_AWAY, TRANSFERRED), RecordControl, None, M._on_record_control),
        # a transfer's target (bridge.call.transfer)
        ((TRANSFERRING, TRANSFERRED), Dial,         None,      M._on_target_dial),
        # the media leg
        (WITH_MEDIA,          MediaFailed,          ENDING,    M._on_media_failed),
        (WITH_MEDIA,          MediaEnded,           None,      M._on_media_ended),
        # the service, the API: UP -> DRAINING with drain, else ENDING
        (ALIVE,               HangupRequested,      None,      M._on_hangup_requested),
    ]  # fmt: skip
    return {(state, kind): (nxt, do) for states, kind, nxt, do in rows for state in states}


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The machine moved from `old` to `new`; `reason` and `ended_by` are set on the way out."""

    old: CallState
    new: CallState
    reason: str = ""
    ended_by: EndedBy | None = None


@dataclass(frozen=True, slots=True)
class Fallback:
    """Where a caller goes when the bot cannot have it (bot failed, setup failed, bridge full
    or draining): `hangup`, or `continue` to a dialplan location; optionally after a sound."""

    policy: str = "hangup"
    context: str = ""
    extension: str = "s"
    priority: int = 1
    sound: str = ""

    def __post_init__(self) -> None:
        if self.policy not in ("hangup", "continue"):
            raise ValueError(f"unknown fallback policy {self.policy!r}")
        if self.policy == "continue" and not self.context:
            raise ValueError("fallback continue needs a context")


@dataclass(frozen=True, slots=True)
class CallIds:
    call_id: str
    caller_id: str
    bridge_id: str
    media_channel_id: str
    # Names the app, so a start-up sweep never takes another bridge process's bridge.
    bridge_name: str = ""
    # What the call's own further channels are named after (a transfer target, snoops).
    id_prefix: str = ""


@dataclass(frozen=True, slots=True)
class Noted:
    """Something the runner logs as one line: `event` with `fields`."""

    event: str
    fields: Mapping[str, object]
    warning: bool = False


MachineInput = (
    AriEvent
    | CommandDone
    | CommandFailed
    | BotConnected
    | BotClosed
    | PlayoutDrained
    | MediaFailed
    | MediaEnded
    | MediaDtmf
    | HangupRequested
    | ChannelVanished
    | BotRequest
)

# Failures that never end the call: a failed delete is final either way (404: gone already;
# anything else is logged by the runner and cannot be retried forever), and a hold that fails
# leaves the caller with silence.
# A transfer, a recording, DTMF out or a ring-back that fails is reported (to the bot, in the
# log) and never ends the call either.
_NEVER_FATAL = (
    HangupChannel, DeleteBridge, CloseMedia, CloseBot, StartHold, StopHold, OriginateTarget,
    SendDtmfToCaller, StartRecording, StopRecording, CreateSnoop, StartRingback, StopRingback,
)  # fmt: skip

K = ResourceKind
BOT_REQUESTS = (TransferRequest, HangupWithCause, DtmfOut, RecordControl)
ChannelLeaving = ChannelHangupRequest | StasisEnd | ChannelDestroyed | ChannelVanished


class CallMachine(Outbox, BotRedial, CallTransfer, CallRecorder):
    def __init__(
        self,
        ids: CallIds,
        caller: Channel,
        bot_url: str,
        now: float,
        setup_timeout: float,
        *,
        fallback: Fallback | None = None,
        reject: str = "",
        ring_timeout: float | None = None,
        reconnect: ReconnectPolicy | None = None,
        transfer: TransferPolicy | None = None,
        record: RecordPlan | None = None,
    ) -> None:
        """`reject`: do not set the call up at all, hand the caller straight to the
        fallback for this reason (bridge full, draining). `ring_timeout`: an outbound call
        whose `caller` is still ringing. `record`: where and how the call may be recorded
        (its mode none: only when the bot asks); None: never."""
        super().__init__()
        self.ids = ids
        self.caller = caller
        self.bot_url = bot_url
        self.state = CallState.SETUP
        self.end_reason = ""
        self.ended_by: EndedBy | None = None
        self.res = Resources()
        self.res.up(K.CALLER)  # its way out is the fallback plan, not one delete
        self._now = now  # of the input being handled
        self._setup_timeout = setup_timeout
        self.ringing = ring_timeout is not None
        # A ringing call's guard: Asterisk ends the ring itself; this only catches lost events.
        self._setup_deadline = now + setup_timeout + (ring_timeout or 0.0)
        self.reconnects = Reconnects(reconnect or OFF)
        self.dtmf_dropped = 0  # the caller's digits while the bot was away
        self.media_channel: Channel | None = None
        self._joining: AddChannels | None = None  # in flight
        # A hang-up asked for after the play-out (HangupRequested(drain=True)): its reason and
        # who asked, used once PlayoutDrained comes.
        self._goodbye: tuple[str, EndedBy] | None = None
        self.fallback = fallback or Fallback()
        self.answered = False
        self.used_fallback = False
        # The caller's remaining fallback steps ("answer", "play", "continue", "hangup"), run
        # one at a time once the bridge is gone (a channel still in our bridge would take the
        # sound into the bridge, and `continue` must not race the bridge's teardown).
        self._caller_plan: list[str] = []
        self._caller_step: Command | None = None
        self._playback_deadline: float | None = None
        self._media_ended_deadline: float | None = None
        # Handing the caller over (bridge.call.transfer), recording (bridge.call.recorder).
        self.transfer_policy = transfer or TransferPolicy()
        self.transfer: TransferAttempt | None = None
        self.last_transfer: TransferAttempt | None = None
        self.transfers = 0
        self._handoff: ContinueInDialplan | None = None  # an exten@context transfer
        self._hangup_cause = ""  # what the caller's far end is told when we hang up
        self.record_plan = record
        self.recordings: list[RecordingResult] = []
        self._segments = 0
        self._snoop_ids: dict[ResourceKind, str] = {}
        if reject:
            self._end(reject, fallback=True, by=EndedBy.BRIDGE)
        elif not self.ringing:
            self._emit(Answer(ids.caller_id))

    @property
    def bridge_unsure(self) -> bool:
        """The bridge creation got no answer: Asterisk may create it after our delete. A
        late ExternalMedia channel announces itself (StasisStart); a late bridge does not."""
        return self.res[K.BRIDGE].unsure

    # ---- public API -------------------------------------------------------------------

    def next_timer(self) -> float | None:
        pending = (self._playback_deadline, self._media_ended_deadline,
                   self._transfer_deadline())  # fmt: skip
        deadlines = [d for d in pending if d is not None]
        if self.state is CallState.SETUP:
            deadlines.append(self._setup_deadline)
        if self.state is CallState.BOT_AWAY:
            away = (self.reconnects.deadline, self.reconnects.next_dial_at)
            deadlines.extend(d for d in away if d is not None)
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.state is CallState.SETUP and now >= self._setup_deadline and self.ringing:
            self._end("no_answer", by=EndedBy.CALLER)
        elif self.state is CallState.SETUP and now >= self._setup_deadline:
            self._end("setup timed out", fallback=True, by=EndedBy.BRIDGE)
        elif self._playback_deadline is not None and now >= self._playback_deadline:
            self._playback_done()
        if self._media_ended_deadline is not None and now >= self._media_ended_deadline:
            self._media_ended_deadline = None
            self._end("media stream closed by Asterisk", fallback=True, by=EndedBy.ASTERISK)
        if self.state is CallState.BOT_AWAY:
            self._redial_or_give_up(now)
        if self.state in (TRANSFERRING, TRANSFERRED):
            self._transfer_timer(now)

    def handle(self, event: MachineInput, now: float) -> None:
        trigger = TRIGGERS.get((self.state, type(event)))
        if trigger is None:
            if isinstance(event, BOT_REQUESTS):
                self._request_ignored(event)
            return  # nothing to do in this state (ENDED takes nothing)
        self._now = now
        next_state, do = trigger
        do(self, event)
        if next_state is not None and self.state not in (next_state, CallState.ENDED):
            raise CallStateError(f"call {self.ids.call_id}: {type(event).__name__} left it in "
                                 f"{self.state.name}, not {next_state.name}")  # fmt: skip

    # ---- the phone side -----------------------------------------------------------------

    def _on_stasis_start(self, event: StasisStart) -> None:
        channel_id = event.channel.id
        if channel_id == self.ids.media_channel_id and self.state is CallState.SETUP:
            self.res[K.MEDIA_CHANNEL].in_app = True
            self._maybe_bridge()
        elif self.transfer is not None and channel_id == self.transfer.channel_id:
            self._target_answered(channel_id)
        elif self._snoop_in_app(channel_id):
            pass
        elif channel_id == self.ids.caller_id and self.ringing and self.state is CallState.SETUP:
            # An outbound call's channel answered and entered the app: set up as for a caller.
            self.ringing = False
            self.caller = event.channel
            self._setup_deadline = self._now + self._setup_timeout
            self._emit(Answer(self.ids.caller_id))

    def _on_caller_dtmf(self, event: ChannelDtmfReceived) -> None:
        if event.channel.id != self.ids.caller_id:
            return
        if self.res.life(K.BOT) is Life.UP:
            self._emit(SendDtmf(event.digit))
        elif self.state is CallState.BOT_AWAY:
            self.dtmf_dropped += 1

    def _on_channel_leaving(self, event: ChannelLeaving) -> None:
        media = self.res[K.MEDIA_CHANNEL]
        channel_id = event.channel_id if isinstance(event, ChannelVanished) else event.channel.id
        if channel_id == self.ids.caller_id:
            self._caller_gone()
            self._end("caller hung up", by=EndedBy.CALLER)
        elif (
            isinstance(event, ChannelVanished)
            and self.transfer is not None
            and (channel_id == self.transfer.channel_id)
        ):
            self._target_gone(None, "target gone while the events socket was down")
        elif (
            self._target_leaving(event, channel_id)
            or self._snoop_leaving(channel_id)
            or isinstance(event, ChannelVanished)
        ):
            pass
        elif channel_id == self.ids.media_channel_id and media.life not in (Life.DELETING,
                                                                            Life.GONE):
            # Somebody else removed our media channel: the call has no audio path left. (Its
            # end events may come after our own delete's answer: GONE is ours, not theirs.)
            if media.life is Life.UP:
                media.life = Life.GONE
            self._end("media channel went away", fallback=True, by=EndedBy.ASTERISK)

    def _on_bridge_destroyed(self, event: BridgeDestroyed) -> None:
        if event.bridge.id != self.ids.bridge_id:
            return
        self.res.gone(K.BRIDGE)  # not ENDING yet: no delete of ours is in flight
        self._end("bridge destroyed", fallback=True, by=EndedBy.ASTERISK)

    def _on_playback_finished(self, event: PlaybackFinished) -> None:
        step = self._caller_step
        ringback = self.res[K.RINGBACK]
        if isinstance(step, PlaySound) and event.playback_id == step.playback_id:
            self._playback_done()
        elif (
            isinstance(ringback.delete, StopRingback)
            and ringback.life is Life.UP
            and (event.playback_id == ringback.delete.playback_id)
        ):
            self.res.gone(K.RINGBACK)  # the tone ended on its own

    def _caller_gone(self) -> None:
        self.res.gone(K.CALLER)
        if self.res.life(K.HOLD) is Life.UP:
            self.res.gone(K.HOLD)  # it went with the caller's channel
        if self._caller_plan or self._caller_step is not None:
            self._caller_plan.clear()
            self._caller_step = None
            self._playback_deadline = None
            self._maybe_finish()

    # ---- the media leg, the service -----------------------------------------------------

    def _on_media_failed(self, event: MediaFailed) -> None:
        self._end(f"media failed: {event.reason}", fallback=True, by=EndedBy.BRIDGE)

    def _on_media_ended(self, event: MediaEnded) -> None:
        self._media_ended_deadline = self._now + MEDIA_ENDED_GRACE

    def _on_hangup_requested(self, event: HangupRequested) -> None:
        if event.by is EndedBy.BOT and self.state in (TRANSFERRING, TRANSFERRED):
            # A bot that hands the caller over and then ends its pipeline (Pipecat's Twilio
            # hang-up on EndFrame) must not end the caller's conversation with the person.
            if self.state is TRANSFERRING:
                self._note("transfer_now_blind", why="the bot hung up")
                self._hand_over()
            else:
                self._note("bot_hangup_ignored", why="the caller is the transfer target's")
            return
        if event.drain and not event.caller_gone:
            self._drain_then_end(event)
            return
        if event.caller_gone:
            self._caller_gone()
        by = event.by or (EndedBy.CALLER if event.caller_gone else EndedBy.BRIDGE)
        self._end(event.reason, fallback=event.fallback, by=by)

    def _drain_then_end(self, event: HangupRequested) -> None:
        """Hang up once what the bot queued has played out; before the call is up, once it
        is (what the bot queued by then is heard out too)."""
        if event.cause:
            self._hangup_cause = event.cause
        if self.state in (SETUP, *TALKING) and self._goodbye is None:
            self._goodbye = (event.reason, event.by or EndedBy.BRIDGE)
        if self.state in TALKING:
            self._goto(CallState.DRAINING)
            self._emit(DrainPlayout())
        elif self.state in (BOT_AWAY, TRANSFERRED):  # nothing queued to play out
            self._end(event.reason, by=event.by or EndedBy.BRIDGE)

    def _on_drained(self, event: PlayoutDrained) -> None:
        reason, by = self._goodbye or ("bot ended the call", EndedBy.BOT)
        self._end(reason, by=by)

    # ---- command results ----------------------------------------------------------------

    def _on_done(self, event: CommandDone) -> None:
        cmd, value = event.command, event.value
        self._pending.discard(cmd)
        if isinstance(cmd, Answer):
            self.answered = True
        if cmd is self._caller_step:
            self._caller_step_done(cmd)
        elif isinstance(cmd, Answer):
            if self.state is CallState.SETUP:
                self._start_setup()
        elif isinstance(cmd, OpenMedia):
            self._created(K.MEDIA_LEG)
            if self.state is CallState.SETUP and isinstance(value, Mapping):
                self.res.creating(K.MEDIA_CHANNEL, HangupChannel(self.ids.media_channel_id))
                params = tuple((str(k), str(v)) for k, v in value.items())
                self._emit(CreateExternalMedia(self.ids.media_channel_id, params))
        elif isinstance(cmd, CreateBridge):
            self._created(K.BRIDGE)
            self._maybe_bridge()
        elif isinstance(cmd, CreateExternalMedia):
            if isinstance(value, Channel):
                self.media_channel = value
            self._created(K.MEDIA_CHANNEL)
            if self.state is CallState.SETUP and self.media_channel is not None:
                self._emit(StartMedia(self.media_channel))
            self._maybe_bridge()
        elif isinstance(cmd, AddChannels):
            if not self._target_joined(cmd):
                self._joining = None
                self.res[K.CALLER].joined = self.res[K.MEDIA_CHANNEL].joined = True
                self._maybe_up()
        elif isinstance(cmd, StartHold):
            self._created(K.HOLD)
        elif isinstance(cmd, OriginateTarget):
            self._originated(cmd)
        elif isinstance(cmd, CreateSnoop):
            self._snoop_created(cmd)
        elif isinstance(cmd, StartRecording):
            self._recording_started(cmd)
        elif isinstance(cmd, StartRingback):
            self._created(K.RINGBACK)
        elif isinstance(cmd, StopRecording):
            self.res.deleted_by(cmd)
            self._recording_stopped(cmd, None)
        elif self.res.deleted_by(cmd) is not None:
            self._advance_caller()  # a bridge or hold gone may free the caller's next step
        self._maybe_finish()

    def _on_failed(self, failed: CommandFailed) -> None:
        cmd = failed.command
        self._pending.discard(cmd)
        if cmd is self._caller_step:
            self._caller_step_failed(failed)
            self._maybe_finish()
            return
        if isinstance(cmd, CreateBridge | CreateExternalMedia):
            kind = K.BRIDGE if isinstance(cmd, CreateBridge) else K.MEDIA_CHANNEL
            delete = self.res.creation_failed(kind, answered=failed.status is not None)
            if delete is not None:
                self._emit_teardown(delete)
        elif isinstance(cmd, OpenMedia):
            self.res.gone(K.MEDIA_LEG)
        elif isinstance(cmd, AddChannels) and self._target_join_failed(cmd, failed.error):
            pass
        elif isinstance(cmd, AddChannels):
            self._joining = None
        elif isinstance(cmd, OriginateTarget):
            self._originate_failed(failed)
        elif isinstance(cmd, StartRecording | CreateSnoop):
            self._recording_failed(failed)
        elif isinstance(cmd, StartRingback):
            self.res.gone(K.RINGBACK)  # the caller waits in silence instead
        elif isinstance(cmd, StopRecording):
            self.res.deleted_by(cmd)
            self._recording_stopped(cmd, failed)
        elif isinstance(cmd, Answer) and failed.status == 404:
            self._caller_gone()
        elif isinstance(cmd, StartHold | StopHold):
            self.res.gone(K.HOLD)  # never the call's end: the caller hears silence instead
        elif isinstance(cmd, ConnectBot):
            self.res.gone(K.BOT)
            if self.state is CallState.BOT_AWAY and self.reconnects.dial_failed(self._now):
                return  # the next re-dial comes with the timer
        else:
            self.res.deleted_by(cmd)
        if not isinstance(cmd, _NEVER_FATAL):
            by = EndedBy.BOT if isinstance(cmd, ConnectBot) else EndedBy.BRIDGE
            self._end(f"{type(cmd).__name__} failed: {failed.error}", fallback=True, by=by)
        self._advance_caller()
        self._maybe_finish()

    def _created(self, kind: ResourceKind) -> None:
        """A creation answered: keep the row, or delete it now if teardown came first."""
        delete = self.res.created(kind)
        if delete is not None:
            self._emit_teardown(delete)

    # ---- setup --------------------------------------------------------------------------

    def _start_setup(self) -> None:
        self.res.creating(K.MEDIA_LEG, CloseMedia())
        self._emit(OpenMedia())
        self.res.creating(K.BRIDGE, DeleteBridge(self.ids.bridge_id))
        name = self.ids.bridge_name or f"pipecat-{self.ids.caller_id}"
        self._emit(CreateBridge(self.ids.bridge_id, name))
        self._dial_bot(ConnectBot(self.bot_url))

    def _maybe_bridge(self) -> None:
        media = self.res[K.MEDIA_CHANNEL]
        if (
            self.state is CallState.SETUP
            and self._joining is None
            and not media.joined
            and self.res.life(K.BRIDGE) is Life.UP
            and media.life is Life.UP
            and media.in_app
        ):
            channels = (self.ids.caller_id, self.ids.media_channel_id)
            self._joining = AddChannels(self.ids.bridge_id, channels)
            self._emit(self._joining)

    def _on_bot_connected(self, event: BotConnected) -> None:
        bot = self.res[K.BOT]
        if bot.life is Life.CREATING:
            bot.life = Life.UP
        if self.state is CallState.BOT_AWAY and bot.life is Life.UP:
            self._resumed()
        self._maybe_up()  # (in TRANSFERRING: a re-dial landed; if the transfer fails, UP)

    def _maybe_up(self) -> None:
        if self.state is not CallState.SETUP or not self.res[K.MEDIA_CHANNEL].joined:
            return
        bot = self.res.life(K.BOT)
        if bot is Life.UP and self._goodbye is None:
            self._goto(CallState.UP)
            if self.record_plan is not None and self.record_plan.mode is not RecordMode.NONE:
                self._start_recording()  # the bot is connected and the caller bridged
        elif bot in (Life.UP, Life.GONE):
            # A bot that spoke and hung up before the bridge was ready (in SETUP a bot that
            # is GONE closed normally: any other close ends the call), or a hang-up asked for
            # with a bot connected: what it queued is still heard out.
            self._goto(CallState.UP)
            self._goto(CallState.DRAINING)
            self._emit(DrainPlayout())

    def _on_bot_closed(self, event: BotClosed) -> None:
        was_up = self.res.life(K.BOT) is Life.UP
        self.res.gone(K.BOT)
        if self.state is CallState.TRANSFERRING:
            # The bot left while its attended transfer rings: the transfer goes on blind
            # (the caller is the target's if it answers, else the fallback's).
            self._note("transfer_now_blind", why=f"bot closed (code {event.code})")
            self._hand_over()
            return
        why_not = ""
        if was_up and self.state is CallState.UP:
            why_not = self.reconnects.on_drop(event.code, self._now)
            if not why_not:
                self._bot_away()
                return
        if was_up and event.code == 1000 and self.state is CallState.UP:
            self._goto(CallState.DRAINING)
            self._emit(DrainPlayout())
        elif was_up and event.code == 1000 and self.state is CallState.SETUP:
            pass  # its goodbye is played out once the call is up (_maybe_up)
        elif self.state in (CallState.SETUP, CallState.UP):
            resumed = self.reconnects.policy.enabled and is_redeploy(event.code)
            self._end(
                f"bot closed abnormally (code {event.code} {event.reason})".rstrip()
                + (f"; not resumed: {why_not}" if resumed and why_not else ""),
                fallback=True,
                by=EndedBy.BOT,
            )

    # ---- the bot away (bridge.call.reconnect) --------------------------------------------

    def _bot_away(self) -> None:
        self._goto(CallState.BOT_AWAY)
        self._emit(ClearPlayout())  # the dropped session's audio, and its marks, are stale
        if not self.res.is_held(K.HOLD):
            self.res.creating(K.HOLD, StopHold(self.ids.caller_id))
            self._emit(StartHold(self.ids.caller_id))
        self._redial_or_give_up(self._now)

    def _resumed(self) -> None:
        self.reconnects.resumed(self._now)
        self._goto(CallState.UP)
        self._teardown(K.HOLD)

    # ---- teardown -----------------------------------------------------------------------

    def _end(self, reason: str, *, by: EndedBy, fallback: bool = False) -> None:
        if self.state in (CallState.ENDING, CallState.ENDED):
            return
        self._media_ended_deadline = None
        self.end_reason = reason
        self.ended_by = by
        self._goto(CallState.ENDING)
        for kind in self.res.held():  # in teardown order
            if kind is not K.CALLER:
                self._teardown(kind)
            elif self.res.life(K.CALLER) is Life.UP:
                self.res[K.CALLER].life = Life.DELETING
                self._caller_plan = self._plan_for_caller(fallback)
                self.used_fallback = fallback
                self._advance_caller()
        self._advance_caller()
        self._maybe_finish()

    def _teardown(self, kind: ResourceKind) -> None:
        delete = self.res.teardown(kind)
        if delete is not None:
            self._emit_teardown(delete)

    def _maybe_finish(self) -> None:
        if self.state is not CallState.ENDING or self._pending:
            return
        if self._caller_plan or self._caller_step is not None:
            return
        # With no delete pending, a row still CREATING/DELETING is a creation in flight:
        # its answer will tell whether there is something left to delete.
        if self.res.in_flight():
            return
        self._goto(CallState.ENDED)
        self._emit(Finished(self.end_reason))

    # ---- the caller's way out -----------------------------------------------------------

    def _plan_for_caller(self, fallback: bool) -> list[str]:
        if self._handoff is not None:
            return ["handoff"]
        if not fallback or self.ringing:
            return ["hangup"]
        plan = []
        if self.fallback.sound:
            plan = ["play"] if self.answered else ["answer", "play"]
        plan.append("continue" if self.fallback.policy == "continue" else "hangup")
        return plan

    def _advance_caller(self) -> None:
        """Issue the caller's next step, once nothing of ours still holds the caller."""
        if self._caller_step is not None or not self._caller_plan:
            return
        held = self.res.is_held(K.BRIDGE) or self.res.is_held(K.HOLD)
        if self._caller_plan[0] != "hangup" and held:
            return  # the bridge's (or music on hold's) delete or creation is still in flight
        step = self._caller_plan.pop(0)
        caller = self.ids.caller_id
        cmd: Command
        if step == "answer":
            cmd = Answer(caller)
        elif step == "play":
            cmd = PlaySound(caller, self.fallback.sound, f"{self.ids.call_id}-fallback")
        elif step == "continue":
            fb = self.fallback
            cmd = ContinueInDialplan(caller, fb.context, fb.extension, fb.priority)
        elif step == "handoff" and self._handoff is not None:
            cmd = self._handoff
        else:
            cmd = HangupChannel(caller, self._hangup_cause)
        self._caller_step = cmd
        self._emit_teardown(cmd)

    def _caller_step_done(self, cmd: Command) -> None:
        if isinstance(cmd, PlaySound):
            # Started: the step ends with its PlaybackFinished, or at the cap.
            self._playback_deadline = self._now + PLAYBACK_CAP
            return
        self._caller_step = None
        if isinstance(cmd, ContinueInDialplan | HangupChannel):
            self._caller_plan.clear()
            self.res.gone(K.CALLER)  # handed over, or hung up
        else:
            self._advance_caller()

    def _playback_done(self) -> None:
        self._playback_deadline = None
        if isinstance(self._caller_step, PlaySound):
            self._pending.discard(self._caller_step)
            self._caller_step = None
            self._advance_caller()
        self._maybe_finish()

    def _caller_step_failed(self, failed: CommandFailed) -> None:
        step, self._caller_step = self._caller_step, None
        if failed.status == 404:
            # The caller is gone already: nothing left to hand over.
            self._caller_plan.clear()
            self.res.gone(K.CALLER)
            return
        if isinstance(step, HangupChannel):
            self.res.gone(K.CALLER)  # final either way, as for our own channels
            return
        if isinstance(step, ContinueInDialplan):
            # A bad fallback location must not strand the caller in silence: hang up.
            self._caller_plan = ["hangup"]
        self._advance_caller()

    # ---- the bot's control messages ------------------------------------------------------

    def _request_ignored(self, request: BotRequest) -> None:
        """A control request this state has no use for (a transfer while one rings, before
        the call is up, once it ends): said in the log, and to the bot for a transfer."""
        if self.state is CallState.ENDED:
            return
        self._note("bot_control_ignored", request=type(request).__name__,
                   state=self.state.value)  # fmt: skip
        if isinstance(request, TransferRequest):
            self._notify("transfer_failed", request.target, TransferCause.FAILED)

    def _on_transfer_request(self, request: TransferRequest) -> None:
        back_to = self.state
        if back_to is CallState.BOT_AWAY and request.mode is TransferMode.ATTENDED:
            request = dataclasses.replace(request, mode=TransferMode.BLIND)  # no bot to stay
        self._start_transfer(request, back_to)

    def _on_hangup_with_cause(self, request: HangupWithCause) -> None:
        self._hangup_cause = request.cause
        self._note("bot_hangup", cause=request.cause)
        self._drain_then_end(HangupRequested(f"bot hung up (cause {request.cause})",
                                             by=EndedBy.BOT, drain=True))  # fmt: skip

    def _on_dtmf_out(self, request: DtmfOut) -> None:
        if self.res.life(K.CALLER) is Life.UP:
            self._emit(SendDtmfToCaller(self.ids.caller_id, request.digits))

    def _on_record_control(self, request: RecordControl) -> None:
        if self.record_plan is None:
            self._note("record_refused", why="recording is not configured (--record-name)")
        elif request.start:
            self._start_recording(request.mode)
        else:
            self._stop_recording()

    # ---- what the transfer and the recorder ask of the machine --------------------------

    def _hand_off(self, request: TransferRequest) -> None:
        location = request.location
        assert location is not None
        extension, context = location
        self._handoff = ContinueInDialplan(self.ids.caller_id, context, extension, 1)
        self._note("transfer_to_dialplan", context=context, extension=extension)
        self._end(f"transferred to {request.target}", by=EndedBy.BOT)

    def _transfer_state(self, *, handed_over: bool | None) -> None:
        if handed_over is None:
            self._goto(TRANSFERRING)
        elif handed_over:
            self._goto(TRANSFERRED)
        elif self.state is TRANSFERRING:
            back = self.last_transfer.back_to if self.last_transfer else UP
            if back is BOT_AWAY and self.res.life(K.BOT) is Life.UP:
                back = UP  # a re-dial landed meanwhile
                self.reconnects.resumed(self._now)
                self._teardown(K.HOLD)
            self._goto(back if isinstance(back, CallState) else UP)

    def _handed_over(self) -> bool:
        return self.state is TRANSFERRED

    def _transferring(self) -> bool:
        return self.state is TRANSFERRING

    def _leave_bot_side(self) -> None:
        for kind in (K.BOT, K.HOLD, K.MEDIA_CHANNEL, K.MEDIA_LEG):
            self._teardown(kind)
        if self.record_plan is not None and not self.record_plan.keep_on_transfer:
            self._stop_recording()

    def _note(self, event: str, **fields: object) -> None:
        warning = event.endswith(("_failed", "_refused"))
        self._changes.append(Noted(event, fields, warning))

    @property
    def _caller_id(self) -> str:
        return self.ids.caller_id

    @property
    def _bridge_id(self) -> str:
        return self.ids.bridge_id

    def _target_id(self, n: int) -> str:
        return f"{self.ids.id_prefix}xf-{self.ids.call_id}-{n}"

    def _snoop_id(self, spy: str, segment: int) -> str:
        return f"{self.ids.id_prefix}sn-{spy}-{self.ids.call_id}-{segment}"

    def _caller_number(self) -> str:
        return self.caller.caller_number

    def owned_channels(self) -> list[str]:
        """Our further channels that exist now (a transfer target, snoops): for a resync."""
        rows = ((K.TARGET, self.transfer.channel_id if self.transfer else ""),
                *((kind, ident) for kind, ident in self._snoop_ids.items()))  # fmt: skip
        return [ident for kind, ident in rows if ident and self.res.life(kind) is Life.UP]

    # ---- plumbing -----------------------------------------------------------------------

    def _goto(self, state: CallState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise CallStateError(f"call {self.ids.call_id}: {self.state.name} -> {state.name}")
        old, self.state = self.state, state
        self._changes.append(StateChanged(old, state, self.end_reason, self.ended_by))


TRIGGERS = _trigger_table()
