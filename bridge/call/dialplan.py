"""The state machine of a call from the dialplan alone: pure, no I/O, `now` passed in.

Theory of operation
-------------------
Asterisk brought the media to us (`AudioSocket()`, `Dial(AudioSocket/...)` or
`Dial(WebSocket/...)` connecting to one of our listeners): the caller is answered and the
media leg is already up when the call starts, and there is no ARI channel or bridge to create
or delete. So the call connects its bot, relays until one side ends, and closes the leg.

- The caller hangs up: Asterisk closes the media stream (`MediaEnded`).
- The bot ends normally (1000): what it queued plays out, then the leg hangs up (AudioSocket
  0x00, chan_websocket HANGUP).
- The bot fails, or set-up times out: the fallback is the dialplan's own next priority, so
  the leg is closed *without* a hang-up: `AudioSocket()` returns and the dialplan goes on by
  itself; `Dial(...,g)` continues the same way.
- DTMF comes in the media stream itself (`MediaDtmf`).
- The bot drops mid-call with a redeploy's close code: BOT_AWAY, as for an ARI call
  (`bridge.call.reconnect`): the playout is cleared, the caller held (silence or the tone:
  music on hold needs ARI, so here it is silence) and the bot re-dialled; the window's end
  without a session is the fallback (the dialplan goes on).

The states and their transitions are the ARI machine's (`bridge.call.machine.TRANSITIONS`):

    SETUP --bot connected--> UP --bot closed normally--> DRAINING
      |                     |  ^                            |
      |         bot dropped v  | re-dial connected          |
      |                   BOT_AWAY                          |
      +------ any end --------+--------- any end -----------+--> ENDING --> ENDED

It owns two rows of the call's resource table (`bridge.call.resources`): the bot session and
the media leg (up from the start). Its triggers are a table as the ARI machine's are.
"""

from __future__ import annotations

from typing import Any

from bridge.call.commands import (
    BotClosed,
    BotConnected,
    ClearPlayout,
    CloseBot,
    CloseMedia,
    CommandDone,
    CommandFailed,
    ConnectBot,
    DrainPlayout,
    EndedBy,
    Finished,
    HangupRequested,
    MediaDtmf,
    MediaEnded,
    MediaFailed,
    Outbox,
    PlayoutDrained,
    SendDtmf,
    StartHold,
    StopHold,
)
from bridge.call.machine import (
    ALIVE,
    BOT_AWAY,
    DRAINING,
    ENDING,
    LIVE,
    SETUP,
    TRANSITIONS,
    CallState,
    Fallback,
    MachineInput,
    StateChanged,
)
from bridge.call.reconnect import OFF, ReconnectPolicy, Reconnects
from bridge.call.redial import BotRedial
from bridge.call.resources import Life, ResourceKind, Resources
from bridge.errors import CallStateError

K = ResourceKind


class DialplanCallMachine(Outbox, BotRedial):
    # Read by the runner and the controller like CallMachine's.
    bridge_unsure = False

    def __init__(
        self,
        call_id: str,
        bot_url: str,
        now: float,
        setup_timeout: float,
        *,
        reject: str = "",
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        super().__init__()
        self.call_id = call_id
        self.bot_url = bot_url
        self.state = CallState.SETUP
        self.end_reason = ""
        self.ended_by: EndedBy | None = None
        # The caller's way out is the dialplan's next priority, whatever --fallback says.
        self.fallback = Fallback("hangup")
        self.used_fallback = False
        self._now = now  # of the input being handled
        self._setup_deadline = now + setup_timeout
        self.res = Resources()
        self.res.up(K.MEDIA_LEG)  # Asterisk brought it; how it closes is decided at the end
        self._goodbye: tuple[str, EndedBy] | None = None  # a hang-up after the play-out
        self.reconnects = Reconnects(reconnect or OFF)
        self.dtmf_dropped = 0  # the caller's digits while the bot was away
        if reject:
            self._end(reject, fallback=True, by=EndedBy.BRIDGE)
        else:
            self._dial_bot(ConnectBot(bot_url))

    # ---- the runner's API (as CallMachine's) --------------------------------------------

    def next_timer(self) -> float | None:
        if self.state is CallState.BOT_AWAY:
            away = (self.reconnects.deadline, self.reconnects.next_dial_at)
            return min((d for d in away if d is not None), default=None)
        return self._setup_deadline if self.state is CallState.SETUP else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.state is CallState.SETUP and now >= self._setup_deadline:
            self._end("setup timed out", fallback=True, by=EndedBy.BRIDGE)
        elif self.state is CallState.BOT_AWAY:
            self._redial_or_give_up(now)

    def handle(self, event: MachineInput, now: float) -> None:
        """As CallMachine.handle; ARI events never concern a dialplan call (no row)."""
        trigger = DIALPLAN_TRIGGERS.get((self.state, type(event)))
        if trigger is None:
            return
        self._now = now
        next_state, do = trigger
        do(self, event)
        if next_state is not None and self.state not in (next_state, CallState.ENDED):
            raise CallStateError(f"call {self.call_id}: {type(event).__name__} left it in "
                                 f"{self.state.name}, not {next_state.name}")  # fmt: skip

    # ---- transitions --------------------------------------------------------------------

    def _on_answer(self, event: CommandDone | CommandFailed) -> None:
        cmd = event.command
        self._pending.discard(cmd)
        if isinstance(cmd, ConnectBot) and isinstance(event, CommandFailed):
            self.res.gone(K.BOT)
            if self.state is not CallState.BOT_AWAY or not self.reconnects.dial_failed(self._now):
                self._end("ConnectBot failed", fallback=True, by=EndedBy.BOT)
        elif isinstance(cmd, CloseBot | CloseMedia):
            self.res.deleted_by(cmd)
        self._maybe_finish()

    def _on_media_dtmf(self, event: MediaDtmf) -> None:
        if self.res.life(K.BOT) is Life.UP:
            self._emit(SendDtmf(event.digit))
        elif self.state is CallState.BOT_AWAY:
            self.dtmf_dropped += 1

    def _on_media_ended(self, event: MediaEnded) -> None:
        self.res.gone(K.MEDIA_LEG)
        self._end("caller hung up", by=EndedBy.CALLER)

    def _on_media_failed(self, event: MediaFailed) -> None:
        self._end(f"media failed: {event.reason}", fallback=True, by=EndedBy.BRIDGE)

    def _on_drained(self, event: PlayoutDrained) -> None:
        reason, by = self._goodbye or ("bot ended the call", EndedBy.BOT)
        self._end(reason, by=by)

    def _on_hangup_requested(self, event: HangupRequested) -> None:
        by = event.by or EndedBy.BRIDGE
        if not event.drain or self.res.life(K.BOT) is Life.CREATING:
            self._end(event.reason, fallback=event.fallback, by=by)
        elif self.state is CallState.UP:
            # Hang up once what the bot queued has played out (as when it closes normally).
            self._goodbye = (event.reason, by)
            self._goto(CallState.DRAINING)
            self._emit(DrainPlayout())
        elif self.state is CallState.BOT_AWAY:  # nothing queued to play out
            self._end(event.reason, by=by)

    def _on_bot_connected(self, event: BotConnected) -> None:
        if self.res.life(K.BOT) is not Life.CREATING:
            return
        self.res[K.BOT].life = Life.UP
        if self.state is CallState.BOT_AWAY:
            self.reconnects.resumed(self._now)
            self._emit(StopHold(""))
        self._goto(CallState.UP)

    def _on_bot_closed(self, event: BotClosed) -> None:
        was_up = self.res.life(K.BOT) is Life.UP
        self.res.gone(K.BOT)
        up = was_up and self.state is CallState.UP
        if up and not self.reconnects.on_drop(event.code, self._now):
            self._goto(CallState.BOT_AWAY)
            # Not a resource here: no ARI channel, the runner answers it at once.
            self._emit(ClearPlayout())
            self._emit(StartHold(""))
            self._redial_or_give_up(self._now)
            return
        if was_up and event.code == 1000 and self.state is CallState.UP:
            self._goto(CallState.DRAINING)
            self._emit(DrainPlayout())
        elif self.state in (CallState.SETUP, CallState.UP):
            self._end(
                f"bot closed abnormally (code {event.code} {event.reason})".rstrip(),
                fallback=True,
                by=EndedBy.BOT,
            )
        self._maybe_finish()

    def _end(self, reason: str, *, by: EndedBy, fallback: bool = False) -> None:
        if self.state in (CallState.ENDING, CallState.ENDED):
            return
        self.end_reason = reason
        self.ended_by = by
        self.used_fallback = fallback
        self._goto(CallState.ENDING)
        # Hang up only when the call is really over; a fallback lets the dialplan go on.
        self.res[K.MEDIA_LEG].delete = CloseMedia(hangup=not fallback)
        for kind in self.res.held():  # the bot, then the leg
            delete = self.res.teardown(kind)
            if delete is not None:
                self._emit_teardown(delete)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.state is not CallState.ENDING or self._pending or self.res.in_flight():
            return
        self._goto(CallState.ENDED)
        self._emit(Finished(self.end_reason))

    def _goto(self, state: CallState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise CallStateError(f"call {self.call_id}: {self.state.name} -> {state.name}")
        old, self.state = self.state, state
        self._changes.append(StateChanged(old, state, self.end_reason, self.ended_by))


def _trigger_table() -> dict[tuple[CallState, type], tuple[CallState | None, Any]]:
    """(state, input type) -> (next state or None: the handler decides, what to do)."""
    M = DialplanCallMachine
    rows: list[tuple[tuple[CallState, ...], type, CallState | None, Any]] = [
        # in states          on input              next       do
        (ALIVE,               CommandDone,          None,      M._on_answer),
        (ALIVE,               CommandFailed,        None,      M._on_answer),
        # the bot: SETUP -> UP; BOT_AWAY -> UP; UP -> DRAINING | BOT_AWAY | ENDING
        ((SETUP, BOT_AWAY),   BotConnected,         None,      M._on_bot_connected),
        (ALIVE,               BotClosed,            None,      M._on_bot_closed),
        ((DRAINING,),         PlayoutDrained,       ENDING,    M._on_drained),
        # the media stream: the caller's digits, its hang-up, its failure
        (LIVE,                MediaDtmf,            None,      M._on_media_dtmf),
        (ALIVE,               MediaEnded,           None,      M._on_media_ended),
        (LIVE,                MediaFailed,          ENDING,    M._on_media_failed),
        # the service, the API: UP -> DRAINING with drain, else ENDING
        (LIVE,                HangupRequested,      None,      M._on_hangup_requested),
    ]  # fmt: skip
    return {(state, kind): (nxt, do) for states, kind, nxt, do in rows for state in states}


DIALPLAN_TRIGGERS = _trigger_table()
