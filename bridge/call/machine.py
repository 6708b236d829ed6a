"""The per-call state machine: pure, no I/O, no clock of its own.

Theory of operation
-------------------
A call starts when a caller's StasisStart arrives. The machine answers at once (a caller left
ringing while we set up can time out), then in parallel binds the media leg, creates the
bridge and connects the bot. When the leg is bound it creates the ExternalMedia channel with a
pre-assigned id. Both channels are added to the bridge only once the bridge exists, the
ExternalMedia response is in (it carries Asterisk's RTP address) *and* the ExternalMedia
channel's own StasisStart was seen: adding it before that fails with 422 on a real Asterisk
(asterisk-facts §1b), and its StasisStart may come before or after the REST response (§1).

Teardown is driven by what exists, not by where setup got to: every resource that was created,
or whose creation is still in flight, is deleted exactly once (a delete for a creation still in
flight waits for its answer, else it could 404 and leak). The call is ENDED when every
teardown command has been answered.

    SETUP --bridged and bot connected--> UP --bot closed normally--> DRAINING
      |                                 |  ^                             |
      |               bot dropped (1012) v  | a re-dial connected        |
      |                                BOT_AWAY                          |
      +-------- any end ------------------+-------- any end -------------+--> ENDING --> ENDED

A bot that drops while the call is up (a redeploy's close code, `bridge.call.reconnect`)
does not end the call: BOT_AWAY clears the playout, holds the caller (StartHold: silence, a
tone or music on hold, a resource like the others) and re-dials at the policy's backoff times
(ConnectBot with `resume`). A session that connects takes the call back to UP (StopHold); the
outage's deadline with no session ends the call with the fallback. A re-dial in flight when
the call ends is abandoned (CloseBot), as at set-up.

An outbound call (`ring_timeout` set) starts in SETUP while its originated channel rings:
nothing is answered or created until that channel's StasisStart (the far end answered); how
a ring that fails ends the call is the service's (`bridge.service.outbound`). Ending it while
it rings only hangs the channel up (no fallback: nobody is on it yet).

All transitions go through `_goto`, which checks them against TRANSITIONS.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
from bridge.errors import CallStateError

# The longest a fallback sound may hold the caller before the fallback goes ahead anyway: a
# PlaybackFinished that never comes (lost with the events socket) must not strand the caller.
PLAYBACK_CAP = 30.0


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


class Res(enum.Enum):
    """Lifecycle of one resource the call creates."""

    NONE = "none"
    CREATING = "creating"
    UP = "up"
    DELETING = "deleting"
    GONE = "gone"


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

# An ARI call hears of a hang-up from its events; the media stream closing first (Asterisk
# closes an AudioSocket or chan_websocket as it hangs the channel up) only ends the call if
# no event explains it within this long: a stream that broke on its own.
MEDIA_ENDED_GRACE = 1.0


class CallMachine(Outbox):
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
        clock: Callable[[], float] | None = None,
        ring_timeout: float | None = None,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        """`reject`: do not set the call up at all, hand the caller straight to the
        fallback for this reason (bridge full, draining). `clock` (monotonic seconds) is only
        read to time a fallback sound and an outbound call's set-up after its answer.
        `ring_timeout`: an outbound call whose `caller` is still ringing."""
        self.ids = ids
        self.caller = caller
        self.bot_url = bot_url
        self.state = CallState.SETUP
        self.end_reason = ""
        self.ended_by: EndedBy | None = None
        self._setup_timeout = setup_timeout
        self.ringing = ring_timeout is not None
        # A ringing call's guard: Asterisk ends the ring itself; this only catches lost events.
        self._setup_deadline = now + setup_timeout + (ring_timeout or 0.0)
        super().__init__()
        self.caller_res = Res.UP
        self.bridge_res = Res.NONE
        self.media_res = Res.NONE  # the ExternalMedia channel
        self.leg_res = Res.NONE  # our local media endpoint
        self.bot_res = Res.NONE
        self.hold_res = Res.NONE  # what the caller hears while the bot is away
        self.reconnects = Reconnects(reconnect or OFF)
        self.dtmf_dropped = 0  # the caller's digits while the bot was away
        self.media_in_stasis = False
        self.media_channel: Channel | None = None
        self.bridged = False
        self._bridging = False
        self._hangup_caller = True
        self._bot_said_goodbye = False  # closed normally before the call was up
        # A hang-up asked for after the play-out (HangupRequested(drain=True)): its reason and
        # who asked, used once PlayoutDrained comes.
        self._goodbye: tuple[str, EndedBy] | None = None
        self.fallback = fallback or Fallback()
        self._clock = clock or (lambda: now)
        self.answered = False
        self.used_fallback = False
        # The bridge creation got no answer: Asterisk may create it after our delete. A
        # late ExternalMedia channel announces itself (StasisStart); a late bridge does not.
        self.bridge_unsure = False
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

    def handle(self, event: MachineInput) -> None:
        if self.state is CallState.ENDED:
            return
        if isinstance(event, CommandDone):
            self._on_done(event.command, event.value)
        elif isinstance(event, CommandFailed):
            self._on_failed(event)
        elif isinstance(event, BotConnected):
            self._on_bot_connected()
        elif isinstance(event, BotClosed):
            self._on_bot_closed(event)
        elif isinstance(event, PlayoutDrained):
            if self.state is CallState.DRAINING:
                reason, by = self._goodbye or ("bot ended the call", EndedBy.BOT)
                self._end(reason, by=by)
        elif isinstance(event, MediaFailed):
            self._end(f"media failed: {event.reason}", fallback=True, by=EndedBy.BRIDGE)
        elif isinstance(event, MediaEnded):
            if self.state in (CallState.SETUP, CallState.UP, CallState.BOT_AWAY,
                              CallState.DRAINING):  # fmt: skip
                self._media_ended_deadline = self._clock() + MEDIA_ENDED_GRACE
        elif isinstance(event, MediaDtmf):
            pass  # the caller's ChannelDtmfReceived carries the same digit: forward that one
        elif isinstance(event, HangupRequested) and event.drain and not event.caller_gone:
            self._drain_then_end(event)
        elif isinstance(event, HangupRequested):
            if event.caller_gone:
                self._caller_gone()
            by = event.by or (EndedBy.CALLER if event.caller_gone else EndedBy.BRIDGE)
            self._end(event.reason, fallback=event.fallback, by=by)
        else:
            self._on_ari(event)

    # ---- ARI events ---------------------------------------------------------------------

    def _on_ari(self, event: AriEvent) -> None:
        if isinstance(event, StasisStart):
            if event.channel.id == self.ids.media_channel_id:
                self.media_in_stasis = True
                self._maybe_bridge()
            elif event.channel.id == self.ids.caller_id and self.ringing:
                self._answered_far_end(event.channel)
        elif isinstance(event, ChannelDtmfReceived):
            if event.channel.id == self.ids.caller_id and self.bot_res is Res.UP:
                self._emit(SendDtmf(event.digit))
            elif event.channel.id == self.ids.caller_id and self.state is CallState.BOT_AWAY:
                self.dtmf_dropped += 1
        elif isinstance(event, ChannelHangupRequest | StasisEnd | ChannelDestroyed):
            self._on_channel_leaving(event.channel.id)
        elif isinstance(event, BridgeDestroyed) and event.bridge.id == self.ids.bridge_id:
            if self.bridge_res is not Res.DELETING:
                self.bridge_res = Res.GONE
            self._end("bridge destroyed", fallback=True, by=EndedBy.ASTERISK)
        elif isinstance(event, PlaybackFinished):
            step = self._caller_step
            if isinstance(step, PlaySound) and event.playback_id == step.playback_id:
                self._playback_done()

    def _answered_far_end(self, channel: Channel) -> None:
        """An outbound call's channel answered and entered the app: set up as for a caller."""
        self.ringing = False
        if self.state is not CallState.SETUP:
            return
        self.caller = channel
        self._setup_deadline = self._clock() + self._setup_timeout
        self._emit(Answer(self.ids.caller_id))

    def _on_channel_leaving(self, channel_id: str) -> None:
        if channel_id == self.ids.caller_id:
            self._caller_gone()
            self._end("caller hung up", by=EndedBy.CALLER)
        elif channel_id == self.ids.media_channel_id and self.media_res is not Res.DELETING:
            # Somebody else removed our media channel: the call has no audio path left.
            if self.media_res is Res.UP:
                self.media_res = Res.GONE
            self._end("media channel went away", fallback=True, by=EndedBy.ASTERISK)

    def _caller_gone(self) -> None:
        self._hangup_caller = False
        if self.caller_res in (Res.UP, Res.DELETING):
            self.caller_res = Res.GONE
        if self.hold_res is Res.UP:
            self.hold_res = Res.GONE  # it went with the caller's channel
        if self._caller_plan or self._caller_step is not None:
            self._caller_plan.clear()
            self._caller_step = None
            self._playback_deadline = None
            self._maybe_finish()

    # ---- command results ----------------------------------------------------------------

    def _on_done(self, cmd: Command, value: object) -> None:
        self._pending.discard(cmd)
        if isinstance(cmd, Answer):
            self.answered = True
            if cmd is self._caller_step:
                self._caller_step_done()
            elif self.state is CallState.SETUP:
                self._start_setup()
        elif isinstance(cmd, PlaySound):
            # Started: the step ends with its PlaybackFinished, or at the cap.
            if cmd is self._caller_step:
                self._playback_deadline = self._clock() + PLAYBACK_CAP
        elif isinstance(cmd, ContinueInDialplan):
            if cmd is self._caller_step:
                self._caller_step = None
                self._caller_plan.clear()
                self.caller_res = Res.GONE
        elif isinstance(cmd, OpenMedia):
            self._created("leg_res", CloseMedia())
            if self.state is CallState.SETUP and isinstance(value, Mapping):
                self.media_res = Res.CREATING
                params = tuple((str(k), str(v)) for k, v in value.items())
                self._emit(CreateExternalMedia(self.ids.media_channel_id, params))
        elif isinstance(cmd, CreateBridge):
            self._created("bridge_res", DeleteBridge(self.ids.bridge_id))
            self._maybe_bridge()
        elif isinstance(cmd, CreateExternalMedia):
            if isinstance(value, Channel):
                self.media_channel = value
            self._created("media_res", HangupChannel(self.ids.media_channel_id))
            if self.state is CallState.SETUP and self.media_channel is not None:
                self._emit(StartMedia(self.media_channel))
            self._maybe_bridge()
        elif isinstance(cmd, AddChannels):
            self._bridging = False
            self.bridged = True
            self._maybe_up()
        elif isinstance(cmd, StartHold):
            self._created("hold_res", StopHold(self.ids.caller_id))
        elif isinstance(cmd, HangupChannel | DeleteBridge | CloseMedia | CloseBot | StopHold):
            self._teardown_done(cmd)
        self._maybe_finish()

    def _on_failed(self, failed: CommandFailed) -> None:
        cmd = failed.command
        self._pending.discard(cmd)
        if cmd is self._caller_step:
            self._caller_step_failed(failed)
            self._maybe_finish()
            return
        if isinstance(cmd, CreateBridge):
            if failed.status is None:
                self.bridge_unsure = True
            self.bridge_res = self._after_failed_creation(failed, self.bridge_res)
            if self.bridge_res is Res.DELETING:
                self._emit_teardown(DeleteBridge(self.ids.bridge_id))
        elif isinstance(cmd, CreateExternalMedia):
            self.media_res = self._after_failed_creation(failed, self.media_res)
            if self.media_res is Res.DELETING:
                self._emit_teardown(HangupChannel(self.ids.media_channel_id))
        elif isinstance(cmd, OpenMedia):
            self.leg_res = Res.GONE
        elif isinstance(cmd, AddChannels):
            self._bridging = False
        elif isinstance(cmd, Answer) and failed.status == 404:
            self._caller_gone()
        elif isinstance(cmd, HangupChannel | DeleteBridge | CloseMedia | CloseBot):
            # A failed delete is final either way: 404 means gone already, anything else is
            # logged by the runner and cannot be retried forever.
            self._teardown_done(cmd)
        elif isinstance(cmd, StartHold | StopHold):
            self.hold_res = Res.GONE  # never the call's end: the caller hears silence instead
        elif isinstance(cmd, ConnectBot):
            self.bot_res = Res.GONE
            if self.state is CallState.BOT_AWAY and self.reconnects.dial_failed(self._clock()):
                return  # the next re-dial comes with the timer
        if not isinstance(cmd, HangupChannel | DeleteBridge | CloseMedia | CloseBot | StartHold
                          | StopHold):  # fmt: skip
            by = EndedBy.BOT if isinstance(cmd, ConnectBot) else EndedBy.BRIDGE
            self._end(f"{type(cmd).__name__} failed: {failed.error}", fallback=True, by=by)
        self._advance_caller()
        self._maybe_finish()

    @staticmethod
    def _after_failed_creation(failed: CommandFailed, res: Res) -> Res:
        """A creation with no HTTP answer (timeout, connection lost) may still have been
        performed by a slow Asterisk: its id is ours, so delete it (a 404 is fine) rather
        than leave it behind. An HTTP error answer means it was not created."""
        if failed.status is None:
            return Res.DELETING if res is Res.DELETING else Res.UP
        return Res.GONE

    def _created(self, attr: str, delete: Command) -> None:
        """A creation answered: either keep the resource, or delete it if we are ending."""
        if getattr(self, attr) is Res.DELETING:
            # Teardown started while this was in flight: delete it now that it exists.
            self._emit_teardown(delete)
        else:
            setattr(self, attr, Res.UP)

    # ---- setup --------------------------------------------------------------------------

    def _start_setup(self) -> None:
        self.leg_res = Res.CREATING
        self._emit(OpenMedia())
        self.bridge_res = Res.CREATING
        name = self.ids.bridge_name or f"pipecat-{self.ids.caller_id}"
        self._emit(CreateBridge(self.ids.bridge_id, name))
        self.bot_res = Res.CREATING
        self._emit(ConnectBot(self.bot_url))

    def _maybe_bridge(self) -> None:
        if (
            self.state is CallState.SETUP
            and not self._bridging
            and not self.bridged
            and self.bridge_res is Res.UP
            and self.media_res is Res.UP
            and self.media_in_stasis
        ):
            self._bridging = True
            self._emit(
                AddChannels(self.ids.bridge_id, (self.ids.caller_id, self.ids.media_channel_id))
            )

    def _on_bot_connected(self) -> None:
        if self.bot_res is Res.CREATING:
            self.bot_res = Res.UP
        if self.state is CallState.BOT_AWAY and self.bot_res is Res.UP:
            self._resumed()
        self._maybe_up()

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

    def _maybe_up(self) -> None:
        if self.state is not CallState.SETUP or not self.bridged:
            return
        if self.bot_res is Res.UP and self._goodbye is None:
            self._goto(CallState.UP)
        elif self._bot_said_goodbye or (self._goodbye is not None and self.bot_res is Res.UP):
            # A bot that spoke and hung up before the bridge was ready is still heard out.
            self._goto(CallState.UP)
            self._goto(CallState.DRAINING)
            self._emit(DrainPlayout())

    def _on_bot_closed(self, event: BotClosed) -> None:
        was_up = self.bot_res is Res.UP
        self.bot_res = Res.GONE
        why_not = ""
        if was_up and self.state is CallState.UP:
            why_not = self.reconnects.on_drop(event.code, self._clock())
            if not why_not:
                self._bot_away()
                return
        if was_up and event.code == 1000 and self.state is CallState.UP:
            self._goto(CallState.DRAINING)
            self._emit(DrainPlayout())
        elif was_up and event.code == 1000 and self.state is CallState.SETUP:
            self._bot_said_goodbye = True
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
        if self.hold_res in (Res.NONE, Res.GONE):
            self.hold_res = Res.CREATING
            self._emit(StartHold(self.ids.caller_id))
        self._redial_or_give_up(self._clock())

    def _redial_or_give_up(self, now: float) -> None:
        r = self.reconnects
        if r.deadline is not None and now >= r.deadline:
            self._end(f"bot did not come back within {r.policy.window:g} s (it closed with "
                      f"code {r.drop_code})", fallback=True, by=EndedBy.BOT)  # fmt: skip
        elif r.next_dial_at is not None and now >= r.next_dial_at and self.bot_res is Res.GONE:
            budget = r.dial_started(now)
            self.bot_res = Res.CREATING
            self._emit(ConnectBot(self.bot_url, resume=r.resumes + 1, budget=budget))

    def _resumed(self) -> None:
        self.reconnects.resumed(self._clock())
        self._goto(CallState.UP)
        self._teardown("hold_res", StopHold(self.ids.caller_id))

    # ---- teardown -----------------------------------------------------------------------

    def _end(self, reason: str, *, by: EndedBy, fallback: bool = False) -> None:
        if self.state in (CallState.ENDING, CallState.ENDED):
            return
        self._media_ended_deadline = None
        self.end_reason = reason
        self.ended_by = by
        self._goto(CallState.ENDING)
        if self.bot_res in (Res.UP, Res.CREATING):
            self._emit_teardown(CloseBot(send_stop=True))
            self.bot_res = Res.DELETING
        self._teardown("media_res", HangupChannel(self.ids.media_channel_id))
        self._teardown("hold_res", StopHold(self.ids.caller_id))
        if self._hangup_caller and self.caller_res is Res.UP:
            self.caller_res = Res.DELETING
            self._caller_plan = self._plan_for_caller(fallback)
            self.used_fallback = fallback
            self._advance_caller()
        self._teardown("bridge_res", DeleteBridge(self.ids.bridge_id))
        self._teardown("leg_res", CloseMedia())
        self._advance_caller()
        self._maybe_finish()

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
        held = (self.bridge_res, self.hold_res)
        if self._caller_plan[0] != "hangup" and any(r not in (Res.NONE, Res.GONE) for r in held):
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

    def _caller_step_done(self) -> None:
        self._caller_step = None
        self._advance_caller()

    def _playback_done(self) -> None:
        self._playback_deadline = None
        if isinstance(self._caller_step, PlaySound):
            self._pending.discard(self._caller_step)
            self._caller_step_done()
        self._maybe_finish()

    def _caller_step_failed(self, failed: CommandFailed) -> None:
        step, self._caller_step = self._caller_step, None
        if failed.status == 404:
            # The caller is gone already: nothing left to hand over.
            self._caller_plan.clear()
            self.caller_res = Res.GONE
            return
        if isinstance(step, HangupChannel):
            self.caller_res = Res.GONE  # final either way, as for our own channels
            return
        if isinstance(step, ContinueInDialplan):
            # A bad fallback location must not strand the caller in silence: hang up.
            self._caller_plan = ["hangup"]
        self._advance_caller()

    def _teardown(self, attr: str, delete: Command) -> None:
        res = getattr(self, attr)
        if res is Res.UP:
            self._emit_teardown(delete)
        if res in (Res.UP, Res.CREATING):
            setattr(self, attr, Res.DELETING)

    def _teardown_done(self, cmd: Command) -> None:
        if cmd is self._caller_step:
            self._caller_step = None
            if isinstance(cmd, HangupChannel):
                self.caller_res = Res.GONE
            return
        if isinstance(cmd, HangupChannel):
            if cmd.channel_id == self.ids.caller_id:
                self.caller_res = Res.GONE
            else:
                self.media_res = Res.GONE
        elif isinstance(cmd, DeleteBridge):
            self.bridge_res = Res.GONE
            self._advance_caller()
        elif isinstance(cmd, CloseMedia):
            self.leg_res = Res.GONE
        elif isinstance(cmd, CloseBot):
            self.bot_res = Res.GONE
        elif isinstance(cmd, StopHold):
            self.hold_res = Res.GONE
            self._advance_caller()

    def _maybe_finish(self) -> None:
        if self.state is not CallState.ENDING or self._pending:
            return
        if self._caller_plan or self._caller_step is not None:
            return
        # With no delete pending, a resource still CREATING/DELETING is a creation in flight:
        # its answer will tell whether there is something left to delete.
        busy = (Res.CREATING, Res.DELETING)
        resources = (self.bridge_res, self.media_res, self.leg_res, self.bot_res, self.caller_res,
                     self.hold_res)  # fmt: skip
        if any(res in busy for res in resources):
            return
        self._goto(CallState.ENDED)
        self._emit(Finished(self.end_reason))

    # ---- plumbing -----------------------------------------------------------------------

    def _goto(self, state: CallState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise CallStateError(f"call {self.ids.call_id}: {self.state.name} -> {state.name}")
        old, self.state = self.state, state
        self._changes.append(StateChanged(old, state, self.end_reason, self.ended_by))
