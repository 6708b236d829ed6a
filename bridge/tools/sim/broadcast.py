"""StasisBroadcast() and `POST /ari/events/claim`, as recorded on 23.4.1 (`broadcast_claim`).

`place_broadcast_call` is a caller reaching `StasisBroadcast(timeout_ms,app_filter,args,
notify_claimed)`: a `CallBroadcast` goes to every connected app whose name matches the filter
(`re.search`, each app's copy in shuffled order), and nothing else goes anywhere until a claim:
the caller is in no app yet. Claims (`_claim`):

* no `channelId`: 400 "channelId parameter is required";
* a channel that is not being broadcast (unknown, hung up, the timeout passed): 404 "Channel
  not found or not in broadcast state";
* the first claim: 204, no body; neither the filter nor the claimant's socket is checked.
  With notify_claimed every matching app gets `CallClaimed` (winner included), then the
  caller enters the winner's Stasis with a normal `StasisStart`, the args split at `:`. If the
  winner has no events socket, `stasis_app_exec` fails: `STASISSTATUS=FAILED`, the caller is
  hung up (cause 16) and the app sees nothing;
* any later claim, while the winner's session runs: 409 "Channel has already been claimed by
  another application"; once the caller has left Stasis, 404.

Nobody claims within the timeout: `STASISSTATUS=TIMEOUT`, the dialplan goes on (the
recording's `Hangup(34)`); the apps see nothing. The outcome is on the handle.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from bridge.tools.sim.callers import AsteriskCallers
from bridge.tools.sim.core import SimChannel
from bridge.tools.sim.media import SimCall
from bridge.tools.sim.templates import Reply, error_reply

CLAIMED = "Channel has already been claimed by another application"
NOT_BROADCAST = "Channel not found or not in broadcast state"
BROADCAST_CONTEXT = "pipecat-in"  # the recording's dialplan context for StasisBroadcast


@dataclass(eq=False, slots=True)
class BroadcastCall:
    """One caller offered by StasisBroadcast; what happened to it."""

    call: SimCall  # the far end, as for place_call (bridged, ended, RTP lists ...)
    channel_id: str
    offered_to: tuple[str, ...]  # apps that got the CallBroadcast
    broadcast_at: float  # loop.time() of the CallBroadcast
    args: tuple[str, ...]
    notify_claimed: bool
    claims: list[tuple[str, int]] = field(default_factory=list)  # (application, status)
    winner: str | None = None
    claimed_at: float | None = None
    stasis_start_at: float | None = None  # loop.time() the winner's StasisStart went out
    # "" while offered, "SUCCESS" once in the winner's Stasis, else "TIMEOUT" / "FAILED".
    stasis_status: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)  # the offer is over
    timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<BroadcastCall {self.channel_id} {self.stasis_status or 'offered'} {self.winner}>"


class AsteriskBroadcast(AsteriskCallers):
    """The broadcast dispatch of Asterisk >= 20.20 / 22.10 / 23.4 (res_stasis_broadcast)."""

    def __init__(self, **core: Any) -> None:
        super().__init__(**core)
        self.broadcasts: list[BroadcastCall] = []  # every one placed (history=True)
        self._offers: dict[str, BroadcastCall] = {}  # by channel id, until it leaves Stasis

    def connected_apps(self) -> list[str]:
        """Names of the apps with an events socket now, in a stable order."""
        return sorted(name for name in {self.app, *self._other_apps} if self.app_connected(name))

    async def place_broadcast_call(
        self,
        scenario: str = "basic_ulaw",
        *,
        timeout_ms: int = 500,
        app_filter: str = "^pipecat",
        args: str = "",
        notify_claimed: bool = False,
        exten: str | None = None,
        caller_number: str | None = None,
        hangup_after: float | None = None,
        echo: bool | None = None,
    ) -> BroadcastCall:
        """`StasisBroadcast(timeout_ms,app_filter,args,notify_claimed)` for a new caller shaped
        like `scenario`: the CallBroadcast goes out now; the handle's `done` is set once a
        claim won (or the winner failed) or the timeout passed."""
        call, caller = self._new_caller(scenario, [], caller_number, None, exten, None, None,
                                        hangup_after, echo)  # fmt: skip
        data = ",".join([str(timeout_ms), app_filter, *([args] if args or notify_claimed else []),
                         *(["yes"] if notify_claimed else [])])  # fmt: skip
        caller.in_stasis = False
        caller.dialplan = (BROADCAST_CONTEXT, caller.dialplan[1], 2, "StasisBroadcast", data)
        pattern = re.compile(app_filter)
        apps = [name for name in self.connected_apps() if pattern.search(name)]
        self._rng.shuffle(apps)
        loop = self._running_loop()
        offer = BroadcastCall(call, caller.id, tuple(apps), loop.time(),
                              tuple(a for a in args.split(":") if a), notify_claimed)  # fmt: skip
        caller.variables["STASISSTATUS"] = ""
        for name in apps:
            self._emit("CallBroadcast", caller, app=name, caller=caller.caller[1],
                       called=caller.dialplan[1])  # fmt: skip
        self._offers[caller.id] = offer
        if self._history:
            self.broadcasts.append(offer)
        offer.timer = loop.call_later(timeout_ms / 1000, self._offer_timed_out, caller, offer)
        return offer

    def _offer_timed_out(self, caller: SimChannel, offer: BroadcastCall) -> None:
        offer.timer = None
        if offer.winner is None:
            self._dialplan_goes_on(caller, offer, "TIMEOUT")

    def _dialplan_goes_on(self, caller: SimChannel, offer: BroadcastCall, status: str) -> None:
        """StasisBroadcast returns with `status`; the rest of the dialplan is not simulated:
        the caller is gone for every app (it never was in one)."""
        caller.variables["STASISSTATUS"] = status
        offer.stasis_status = status
        self._offers.pop(caller.id, None)
        if self.channels.get(caller.id) is caller:
            self._remove(caller, "dialplan")
        offer.done.set()

    async def _claim(self, q: dict[str, str]) -> Reply:
        cid, app = q.get("channelId", ""), q.get("application", "")
        if not cid:
            return error_reply(400, "channelId parameter is required")
        if not app:  # not recorded: the same wording as the recorded one
            return error_reply(400, "application parameter is required")
        offer = self._offers.get(cid)
        caller = self.channels.get(cid)
        if offer is None or caller is None:
            return error_reply(404, NOT_BROADCAST)
        if offer.winner is not None:
            offer.claims.append((app, 409))
            return error_reply(409, CLAIMED)
        offer.winner, offer.claimed_at = app, self._running_loop().time()
        offer.claims.append((app, 204))
        if offer.timer is not None:
            offer.timer.cancel()
            offer.timer = None
        return Reply(204, after=lambda: self._enter_winner(caller, offer))

    def _enter_winner(self, caller: SimChannel, offer: BroadcastCall) -> None:
        app = offer.winner or ""
        if self.channels.get(caller.id) is not caller:
            return
        if offer.notify_claimed:
            for name in offer.offered_to:
                self._emit("CallClaimed", caller, app=name, winner_app=app)
        if not self.app_connected(app):  # "Stasis app '...' not registered": hung up, 16
            self._dialplan_goes_on(caller, offer, "FAILED")
            return
        caller.app, caller.in_stasis = app, True
        offer.call.args = list(offer.args)
        if app != self.app:
            self._other_apps.add(app)
        offer.stasis_status = "SUCCESS"
        offer.stasis_start_at = self._running_loop().time()
        self._emit("StasisStart", caller, args=list(offer.args))
        offer.done.set()

    def _remove(self, ch: SimChannel, by: str) -> None:
        offer = self._offers.pop(ch.id, None)  # the broadcast context goes with the session
        if offer is not None and offer.timer is not None:
            offer.timer.cancel()
            offer.timer = None
        super()._remove(ch, by)

    def _forget_all(self) -> None:
        for offer in self._offers.values():
            if offer.timer is not None:
                offer.timer.cancel()
        self._offers.clear()
        super()._forget_all()
