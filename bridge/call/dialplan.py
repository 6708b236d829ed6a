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
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from ari.events import AriEvent
from bridge.call.commands import (
    BotClosed,
    BotConnected,
    ClearPlayout,
    CloseBot,
    CloseMedia,
    Command,
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
from bridge.call.machine import TRANSITIONS, CallState, Fallback, MachineInput, StateChanged
from bridge.call.reconnect import OFF, ReconnectPolicy, Reconnects
from bridge.errors import CallStateError


class _Res(enum.Enum):
    UP = "up"
    CREATING = "creating"
    DELETING = "deleting"
    GONE = "gone"


class DialplanCallMachine(Outbox):
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
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` (monotonic seconds) is read only to time a bot's outage."""
        self.call_id = call_id
        self.bot_url = bot_url
        self.state = CallState.SETUP
        self.end_reason = ""
        self.ended_by: EndedBy | None = None
        # The caller's way out is the dialplan's next priority, whatever --fallback says.
        self.fallback = Fallback("hangup")
        self.used_fallback = False
        self._setup_deadline = now + setup_timeout
        super().__init__()
        self._bot = _Res.GONE
        self._leg = _Res.UP
        self._goodbye: tuple[str, EndedBy] | None = None  # a hang-up after the play-out
        self.reconnects = Reconnects(reconnect or OFF)
        self.dtmf_dropped = 0  # the caller's digits while the bot was away
        self._clock = clock or (lambda: now)
        if reject:
            self._end(reject, fallback=True, by=EndedBy.BRIDGE)
        else:
            self._bot = _Res.CREATING
            self._emit(ConnectBot(bot_url))

    # ---- the runner's API (as CallMachine's) --------------------------------------------

    def next_timer(self) -> float | None:
        if self.state is CallState.BOT_AWAY:
            away = (self.reconnects.deadline, self.reconnects.next_dial_at)
            return min((d for d in away if d is not None), default=None)
        return self._setup_deadline if self.state is CallState.SETUP else None

    def handle_timer(self, now: float) -> None:
        if self.state is CallState.SETUP and now >= self._setup_deadline:
            self._end("setup timed out", fallback=True, by=EndedBy.BRIDGE)
        elif self.state is CallState.BOT_AWAY:
            self._redial_or_give_up(now)

    def handle(self, event: MachineInput | AriEvent) -> None:
        if self.state is CallState.ENDED:
            return
        if isinstance(event, CommandDone | CommandFailed):
            self._answered(event.command, failed=isinstance(event, CommandFailed))
        elif isinstance(event, BotConnected):
            self._on_bot_connected()
        elif isinstance(event, BotClosed):
            self._on_bot_closed(event)
        elif isinstance(event, MediaDtmf):
            if self._bot is _Res.UP:
                self._emit(SendDtmf(event.digit))
            elif self.state is CallState.BOT_AWAY:
                self.dtmf_dropped += 1
        elif isinstance(event, MediaEnded):
            self._leg = _Res.GONE
            self._end("caller hung up", by=EndedBy.CALLER)
        elif isinstance(event, MediaFailed):
            self._end(f"media failed: {event.reason}", fallback=True, by=EndedBy.BRIDGE)
        elif isinstance(event, PlayoutDrained):
            if self.state is CallState.DRAINING:
                reason, by = self._goodbye or ("bot ended the call", EndedBy.BOT)
                self._end(reason, by=by)
        elif isinstance(event, HangupRequested) and event.drain and self._bot is not _Res.CREATING:
            self._drain_then_end(event)
        elif isinstance(event, HangupRequested):
            self._end(event.reason, fallback=event.fallback, by=event.by or EndedBy.BRIDGE)
        # ARI events never concern a dialplan call.

    # ---- transitions --------------------------------------------------------------------

    def _answered(self, cmd: Command, *, failed: bool) -> None:
        self._pending.discard(cmd)
        if isinstance(cmd, ConnectBot) and failed:
            self._bot = _Res.GONE
            if self.state is not CallState.BOT_AWAY or not self.reconnects.dial_failed(
                self._clock()
            ):
                self._end("ConnectBot failed", fallback=True, by=EndedBy.BOT)
        elif isinstance(cmd, CloseBot):
            self._bot = _Res.GONE
        elif isinstance(cmd, CloseMedia):
            self._leg = _Res.GONE
        self._maybe_finish()

    def _drain_then_end(self, event: HangupRequested) -> None:
        """Hang up once what the bot queued has played out (as when it closes normally)."""
        if self.state is CallState.UP:
            self._goodbye = (event.reason, event.by or EndedBy.BRIDGE)
            self._goto(CallState.DRAINING)
            self._emit(DrainPlayout())
        elif self.state is CallState.BOT_AWAY:  # nothing queued to play out
            self._end(event.reason, by=event.by or EndedBy.BRIDGE)

    def _on_bot_connected(self) -> None:
        if self._bot is not _Res.CREATING:
            return
        self._bot = _Res.UP
        if self.state is CallState.BOT_AWAY:
            self.reconnects.resumed(self._clock())
            self._emit(StopHold(""))
        self._goto(CallState.UP)

    def _on_bot_closed(self, event: BotClosed) -> None:
        was_up = self._bot is _Res.UP
        self._bot = _Res.GONE
        up = was_up and self.state is CallState.UP
        if up and not self.reconnects.on_drop(event.code, self._clock()):
            self._goto(CallState.BOT_AWAY)
            # Not a resource here: no ARI channel, the runner answers it at once.
            self._emit(ClearPlayout())
            self._emit(StartHold(""))
            self._redial_or_give_up(self._clock())
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

    def _redial_or_give_up(self, now: float) -> None:
        r = self.reconnects
        if r.deadline is not None and now >= r.deadline:
            self._end(f"bot did not come back within {r.policy.window:g} s (it closed with "
                      f"code {r.drop_code})", fallback=True, by=EndedBy.BOT)  # fmt: skip
        elif r.next_dial_at is not None and now >= r.next_dial_at and self._bot is _Res.GONE:
            budget = r.dial_started(now)
            self._bot = _Res.CREATING
            self._emit(ConnectBot(self.bot_url, resume=r.resumes + 1, budget=budget))

    def _end(self, reason: str, *, by: EndedBy, fallback: bool = False) -> None:
        if self.state in (CallState.ENDING, CallState.ENDED):
            return
        self.end_reason = reason
        self.ended_by = by
        self.used_fallback = fallback
        self._goto(CallState.ENDING)
        if self._bot in (_Res.UP, _Res.CREATING):
            self._bot = _Res.DELETING
            self._emit_teardown(CloseBot(send_stop=True))
        if self._leg is _Res.UP:
            self._leg = _Res.DELETING
            # Hang up only when the call is really over; a fallback lets the dialplan go on.
            self._emit_teardown(CloseMedia(hangup=not fallback))
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.state is not CallState.ENDING or self._pending:
            return
        if self._bot is _Res.DELETING or self._leg is _Res.DELETING:
            return
        self._goto(CallState.ENDED)
        self._emit(Finished(self.end_reason))

    def _goto(self, state: CallState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise CallStateError(f"call {self.call_id}: {self.state.name} -> {state.name}")
        old, self.state = self.state, state
        self._changes.append(StateChanged(old, state, self.end_reason, self.ended_by))
