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
    PlaybackFinished,
    StasisEnd,
    StasisStart,
)
from ari.models import Channel
from bridge.call.commands import (
    AddChannels,
    Answer,
    BotClosed,
    BotConnected,
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
    Outbox,
    PlayoutDrained,
    PlaySound,
    SendDtmf,
    StartHold,
    StartMedia,
    StopHold,
)
from bridge.call.reconnect import OFF, ReconnectPolicy, Reconnects, is_redeploy
from bridge.call.redial import BotRedial
from bridge.call.resources import Life, ResourceKind, Resources
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
    DRAINING = "draining"
    ENDING = "ending"
    ENDED = "ended"


TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.SETUP: frozenset({CallState.UP, CallState.ENDING}),
    CallState.UP: frozenset({CallState.DRAINING, CallState.BOT_AWAY, CallState.ENDING}),
    CallState.BOT_AWAY: frozenset({CallState.UP, CallState.ENDING}),
    CallState.DRAINING: frozenset({CallState.ENDING}),
    CallState.ENDING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}

SETUP, UP, BOT_AWAY = CallState.SETUP, CallState.UP, CallState.BOT_AWAY
DRAINING, ENDING = CallState.DRAINING, CallState.ENDING
LIVE = (SETUP, UP, BOT_AWAY, DRAINING)  # not ending yet
ALIVE = (*LIVE, ENDING)  # not ended

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
        ((SETUP,),            StasisStart,          None,      M._on_stasis_start),
        (LIVE,                ChannelDtmfReceived,  None,      M._on_caller_dtmf),
        (ALIVE,               ChannelHangupRequest, None,      M._on_channel_leaving),
        (ALIVE,               StasisEnd,            None,      M._on_channel_leaving),
        (ALIVE,               ChannelDestroyed,     None,      M._on_channel_leaving),
        (LIVE,                BridgeDestroyed,      None,      M._on_bridge_destroyed),
        ((ENDING,),           PlaybackFinished,     None,      M._on_playback_finished),
        # the bot side: SETUP -> UP once bridged; BOT_AWAY -> UP; UP -> DRAINING | BOT_AWAY
        ((SETUP, BOT_AWAY),   BotConnected,         None,      M._on_bot_connected),
        (ALIVE,               BotClosed,            None,      M._on_bot_closed),
        ((DRAINING,),         PlayoutDrained,       ENDING,    M._on_drained),
        # the media leg
        (LIVE,                MediaFailed,          ENDING,    M._on_media_failed),
        (LIVE,                MediaEnded,           None,      M._on_media_ended),
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
)

# Failures that never end the call: a failed delete is final either way (404: gone already;
# anything else is logged by the runner and cannot be retried forever), and a hold that fails
# leaves the caller with silence.
_NEVER_FATAL = (HangupChannel, DeleteBridge, CloseMedia, CloseBot, StartHold, StopHold)

K = ResourceKind
ChannelLeaving = ChannelHangupRequest | StasisEnd | ChannelDestroyed


class CallMachine(Outbox, BotRedial):
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
    ) -> None:
        """`reject`: do not set the call up at all, hand the caller straight to the
        fallback for this reason (bridge full, draining). `ring_timeout`: an outbound call
        whose `caller` is still ringing."""
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
        pending = (self._playback_deadline, self._media_ended_deadline)
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

    def handle(self, event: MachineInput, now: float) -> None:
        trigger = TRIGGERS.get((self.state, type(event)))
        if trigger is None:
            return  # nothing to do in this state (ENDED takes nothing)
        self._now = now
        next_state, do = trigger
        do(self, event)
        if next_state is not None and self.state not in (next_state, CallState.ENDED):
            raise CallStateError(f"call {self.ids.call_id}: {type(event).__name__} left it in "
                                 f"{self.state.name}, not {next_state.name}")  # fmt: skip

    # ---- the phone side -----------------------------------------------------------------

    def _on_stasis_start(self, event: StasisStart) -> None:
        if event.channel.id == self.ids.media_channel_id:
            self.res[K.MEDIA_CHANNEL].in_app = True
            self._maybe_bridge()
        elif event.channel.id == self.ids.caller_id and self.ringing:
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
        if event.channel.id == self.ids.caller_id:
            self._caller_gone()
            self._end("caller hung up", by=EndedBy.CALLER)
        elif event.channel.id == self.ids.media_channel_id and media.life is not Life.DELETING:
            # Somebody else removed our media channel: the call has no audio path left.
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
        if isinstance(step, PlaySound) and event.playback_id == step.playback_id:
            self._playback_done()

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
        if self.state in (CallState.SETUP, CallState.UP) and self._goodbye is None:
            self._goodbye = (event.reason, event.by or EndedBy.BRIDGE)
        if self.state is CallState.UP:
            self._goto(CallState.DRAINING)
            self._emit(DrainPlayout())
        elif self.state is CallState.BOT_AWAY:  # nothing queued to play out
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
            self._joining = None
            self.res[K.CALLER].joined = self.res[K.MEDIA_CHANNEL].joined = True
            self._maybe_up()
        elif isinstance(cmd, StartHold):
            self._created(K.HOLD)
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
        elif isinstance(cmd, AddChannels):
            self._joining = None
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
        self._maybe_up()

    def _maybe_up(self) -> None:
        if self.state is not CallState.SETUP or not self.res[K.MEDIA_CHANNEL].joined:
            return
        bot = self.res.life(K.BOT)
        if bot is Life.UP and self._goodbye is None:
            self._goto(CallState.UP)
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
        else:
            cmd = HangupChannel(caller)
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

    # ---- plumbing -----------------------------------------------------------------------

    def _goto(self, state: CallState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise CallStateError(f"call {self.ids.call_id}: {self.state.name} -> {state.name}")
        old, self.state = self.state, state
        self._changes.append(StateChanged(old, state, self.end_reason, self.ended_by))


TRIGGERS = _trigger_table()
