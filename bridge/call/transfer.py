"""Handing the caller to a person: the transfer half of the ARI call machine. Pure.

Asterisk has no "originate into a bridge": the target is originated into the app under a
pre-assigned id (OriginateTarget), and only its StasisStart says it answered; then it is
added to the call's bridge. How a failure shows (recorded: transfer_originate_*):

    busy          a Dial event with dialstatus BUSY (the target's own ChannelDestroyed says
                  cause 0 "Unknown")
    no answer     no Dial NOANSWER at all: only ChannelDestroyed cause 19 at the timeout
    congestion,   Dial CONGESTION / CHANUNAVAIL, or the ChannelDestroyed cause (34, 1, ...)
    unreachable
    refused       the originate's HTTP answer (an unknown technology: 500)
    no extension  a Local target whose extension does not exist: destroyed (cause 0) before
                  any Dial event (synthetic_transfer_originate_unavailable): unavailable

so both signals are used, and a deadline a little past the ring timeout guards against lost
events. The target is a row of the call's table (TARGET): teardown deletes it like any other.

    UP --transfer--> TRANSFERRING --answered, or blind once dialled--> TRANSFERRED
                        |   (the bot still has the caller)        (the bot side is gone:
                        +--failed: transfer_failed to the bot--> UP   caller + target)

In TRANSFERRED the call is the caller and the target in the bridge, until either hangs up;
a blind transfer whose target fails gives the caller the fallback (no bot to return to). A
bot that leaves during an attended transfer turns it blind. An `exten@context` target is no
dial at all: the caller continues in the dialplan there (the machine's hand-off).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from ari.events import ChannelDestroyed, Dial, StasisEnd
from bridge.bot.control import TransferCause, TransferMode, TransferRequest, reply
from bridge.call.commands import (
    AddChannels,
    CommandFailed,
    EndedBy,
    HangupChannel,
    NotifyBot,
    OriginateTarget,
    StartRingback,
    StopRingback,
)
from bridge.call.hooks import MachineHooks
from bridge.call.resources import Life, ResourceKind, Resources

K = ResourceKind

# Past the ring timeout, how long we wait for Asterisk's own end of the ring (cause 19)
# before calling it unanswered ourselves: its events may have been lost.
TRANSFER_GRACE = 5.0

RINGBACK_MODES = ("ring", "moh", "none")

# Dial's dialstatus (app_dial's DIALSTATUS) -> what the bot is told.
_DIALSTATUS = {
    "BUSY": TransferCause.BUSY,
    "NOANSWER": TransferCause.NO_ANSWER,
    "CONGESTION": TransferCause.CONGESTION,
    "CHANUNAVAIL": TransferCause.UNAVAILABLE,
}

# The target's ChannelDestroyed cause (Q.850) -> what the bot is told; others: failed.
_CAUSES = {
    17: TransferCause.BUSY,  # user busy
    18: TransferCause.NO_ANSWER,  # no user responding
    19: TransferCause.NO_ANSWER,  # no answer (the originate's timeout)
    34: TransferCause.CONGESTION,  # circuit/channel congestion
    38: TransferCause.CONGESTION,  # network out of order
    42: TransferCause.CONGESTION,  # switching equipment congestion
    44: TransferCause.CONGESTION,  # requested channel not available
    1: TransferCause.UNAVAILABLE,  # unallocated number
    3: TransferCause.UNAVAILABLE,  # no route to destination
    20: TransferCause.UNAVAILABLE,  # subscriber absent
    27: TransferCause.UNAVAILABLE,  # destination out of order
    28: TransferCause.UNAVAILABLE,  # invalid number format
    66: TransferCause.UNAVAILABLE,  # channel type not implemented
}


@dataclass(frozen=True, slots=True)
class TransferPolicy:
    """How this service transfers: which targets a bot may ask for (fnmatch patterns: a
    bot driven by an LLM must not be able to dial anywhere), and what the caller hears
    while a target rings (`ringback` for a blind transfer, `attended_ringback` under the
    bot's voice in an attended one): ring, moh or none."""

    allow: tuple[str, ...] = ("*",)
    ringback: str = "ring"
    attended_ringback: str = "none"

    def __post_init__(self) -> None:
        for mode in (self.ringback, self.attended_ringback):
            if mode not in RINGBACK_MODES:
                raise ValueError(f"ringback {mode!r} is not one of {', '.join(RINGBACK_MODES)}")

    def allows(self, target: str) -> bool:
        return any(fnmatch.fnmatchcase(target, pattern) for pattern in self.allow)


@dataclass(slots=True)
class TransferAttempt:
    request: TransferRequest
    channel_id: str
    deadline: float
    back_to: object  # the state to return to if it fails (UP, or BOT_AWAY)
    ringing: bool = False  # transfer_ringing sent
    dialled: bool = False  # a Dial event came for it (an unreachable Local target has none)
    answered: bool = False  # its StasisStart came
    cause: TransferCause | None = None  # from a Dial status, before its ChannelDestroyed
    outcome: str = ""  # "", answered, failed: <cause>
    joining: AddChannels | None = field(default=None, repr=False)


class CallTransfer(MachineHooks):
    """Mixed into the ARI call machine, which provides these."""

    res: Resources
    transfer: TransferAttempt | None  # the one in progress
    last_transfer: TransferAttempt | None  # the latest, in progress or over
    transfers: int
    transfer_policy: TransferPolicy
    _now: float

    # ---- provided by the machine ----------------------------------------------------------

    def _hand_off(self, request: TransferRequest) -> None:
        raise NotImplementedError

    def _transfer_state(self, *, handed_over: bool | None) -> None:
        """Move to TRANSFERRING (None), TRANSFERRED (True), or back (False)."""
        raise NotImplementedError

    def _leave_bot_side(self) -> None:
        raise NotImplementedError

    def _target_id(self, n: int) -> str:
        raise NotImplementedError

    def _caller_number(self) -> str:
        raise NotImplementedError

    def _bot_up(self) -> bool:
        return self.res.life(K.BOT) is Life.UP

    # ---- the request --------------------------------------------------------------------

    def _start_transfer(self, request: TransferRequest, back_to: object) -> None:
        """The bot's (or the API's) transfer, once the audio before it has played."""
        if not self.transfer_policy.allows(request.target):
            self._note("transfer_refused", target=request.target, why="not in --transfer-allow")
            self._notify("transfer_failed", request.target, TransferCause.FAILED)
            return
        if self.transfer is not None or self.res.is_held(K.TARGET):
            self._note("transfer_refused", target=request.target, why="one is in progress")
            self._notify("transfer_failed", request.target, TransferCause.FAILED)
            return
        if request.location is not None:
            self._hand_off(request)
            return
        self.transfers += 1
        target_id = self._target_id(self.transfers)
        self.transfer = self.last_transfer = TransferAttempt(
            request, target_id, self._now + request.timeout + TRANSFER_GRACE, back_to
        )
        self.res.creating(K.TARGET, HangupChannel(target_id))
        self._emit(OriginateTarget(target_id, request.target,
                                   request.caller_id or self._caller_number(),
                                   request.timeout, self._caller_id))  # fmt: skip
        self._note("transfer_started", target=request.target, mode=request.mode.value,
                   target_channel=target_id, timeout=request.timeout)  # fmt: skip
        self._transfer_state(handed_over=None)
        if request.mode is TransferMode.ATTENDED and self._bot_up():
            self._ringback(self.transfer_policy.attended_ringback)

    # ---- its answers and events ---------------------------------------------------------

    def _originated(self, cmd: OriginateTarget) -> None:
        delete = self.res.created(K.TARGET)
        if delete is not None:
            self._emit_teardown(delete)
        t = self.transfer
        if t is None or t.channel_id != cmd.channel_id or delete is not None:
            return
        if t.request.mode is TransferMode.BLIND or not self._bot_up():
            self._hand_over()

    def _originate_failed(self, failed: CommandFailed) -> None:
        delete = self.res.creation_failed(K.TARGET, answered=failed.status is not None)
        if delete is not None:
            self._emit_teardown(delete)
        cause = TransferCause.FAILED if failed.status in (None, 400) else TransferCause.UNAVAILABLE
        self._transfer_failed(cause, f"originate refused: {failed.error}")

    def _on_target_dial(self, event: Dial) -> None:
        t = self.transfer
        if t is None or event.peer.id != t.channel_id or t.answered:
            return
        status = event.dialstatus
        t.dialled = True
        if status == "RINGING" and not t.ringing:
            t.ringing = True
            self._notify("transfer_ringing", t.request.target)
        elif status in _DIALSTATUS:
            t.cause = _DIALSTATUS[status]
            self._transfer_failed(t.cause, f"dial status {status}")
        elif status not in ("", "RINGING", "ANSWER", "PROGRESS", "PROCEEDING"):
            self._transfer_failed(TransferCause.FAILED, f"dial status {status}")

    def _target_answered(self, target_id: str) -> None:
        t = self.transfer
        row = self.res[K.TARGET]
        if t is None or target_id != t.channel_id or t.answered:
            return
        if row.life is Life.CREATING:
            row.life = Life.UP  # it answered before the originate's answer reached us
        elif row.life is not Life.UP:
            return  # late, after we gave up on it: its delete is in flight
        if not (self._transferring() or self._handed_over()):
            return  # the call is draining or ending: its teardown deletes the target
        row.in_app = True
        t.answered, t.outcome = True, "answered"
        self._notify("transfer_answered", t.request.target)
        t.joining = AddChannels(self._bridge_id, (target_id,))
        self._emit(t.joining)
        self._note("transfer_answered", target=t.request.target, target_channel=target_id)
        self._hand_over()
        self._teardown(K.RINGBACK)

    def _target_joined(self, cmd: AddChannels) -> bool:
        t = self.transfer
        if t is None or cmd is not t.joining:
            return False
        t.joining = None
        self.res[K.TARGET].joined = True
        return True

    def _target_join_failed(self, cmd: AddChannels, error: str) -> bool:
        t = self.transfer
        if t is None or cmd is not t.joining:
            return False
        t.joining = None
        self._end(f"could not bridge the transfer target: {error}", fallback=True,
                  by=EndedBy.BRIDGE)  # fmt: skip
        return True

    def _target_leaving(self, event: object, channel_id: str) -> bool:
        """An event of the target's channel going: True if it was the target's."""
        t = self.transfer
        if t is None or channel_id != t.channel_id:
            return False
        if isinstance(event, ChannelDestroyed):
            why = f"target gone, cause {event.cause} {event.cause_txt}".rstrip()
            # Gone before any Dial event: Asterisk could not even start dialling it (a Local
            # target whose extension does not exist: cause 0 on both halves, no Dial).
            undialled = TransferCause.UNAVAILABLE if not t.dialled else None
            self._target_gone(_CAUSES.get(event.cause) or undialled, why)
        elif isinstance(event, StasisEnd):
            self._target_gone(None, "target left the app")
        return True  # a hang-up request: its StasisEnd or ChannelDestroyed follows

    def _target_gone(self, cause: TransferCause | None, why: str) -> None:
        t, row = self.transfer, self.res[K.TARGET]
        if t is None or row.life is Life.DELETING:
            return  # our own delete: its answer closes the row
        row.life = Life.GONE
        if t.answered:
            self._end("transfer target hung up", by=EndedBy.TARGET)
        else:
            self._transfer_failed(t.cause or cause or TransferCause.FAILED, why)

    def _transfer_timer(self, now: float) -> None:
        t = self.transfer
        if t is not None and not t.answered and now >= t.deadline:
            self._transfer_failed(TransferCause.NO_ANSWER, "no answer by the deadline")

    def _transfer_deadline(self) -> float | None:
        t = self.transfer
        return t.deadline if t is not None and not t.answered else None

    # ---- outcomes -----------------------------------------------------------------------

    def _transfer_failed(self, cause: TransferCause, why: str) -> None:
        t = self.transfer
        if t is None or t.answered:
            return
        self.transfer = None
        t.outcome = f"failed: {cause.value}"
        self._teardown(K.TARGET)  # a 404 is fine: Asterisk may have hung it up already
        self._teardown(K.RINGBACK)
        self._note("transfer_failed", target=t.request.target, cause=cause.value, why=why)
        if self._handed_over():
            self._end(f"transfer to {t.request.target} failed: {cause.value}", fallback=True,
                      by=EndedBy.TARGET)  # fmt: skip
            return
        self._notify("transfer_failed", t.request.target, cause)
        self._transfer_state(handed_over=False)

    def _hand_over(self) -> None:
        """The caller is the target's now: the bot and the media leave (exactly once)."""
        if not self._transferring():
            return  # handed over already, or the call is ending
        self._transfer_state(handed_over=True)
        self._leave_bot_side()
        t = self.transfer
        if t is not None and not t.answered:
            self._ringback(self.transfer_policy.ringback)

    def _handed_over(self) -> bool:
        raise NotImplementedError

    def _transferring(self) -> bool:
        raise NotImplementedError

    def _ringback(self, mode: str) -> None:
        if mode == "none" or self.res.is_held(K.RINGBACK):
            return
        playback_id = f"{self._target_id(self.transfers)}-ring"
        self.res.creating(K.RINGBACK, StopRingback(self._bridge_id, mode, playback_id))
        self._emit(StartRingback(self._bridge_id, mode, playback_id))

    def _notify(self, event: str, target: str, cause: TransferCause | None = None) -> None:
        if self._bot_up():
            self._emit(NotifyBot(reply(event, target, cause)))
