"""Re-dialling a bot that dropped mid-call: the half of reconnecting both call machines share.

The policy (when to dial, when to give up) is `bridge.call.reconnect`'s; this is what a
machine does with it: dial through the resource table (so teardown cancels a dial in flight)
or end the call once the window is over.
"""

from __future__ import annotations

from bridge.call.commands import CloseBot, ConnectBot, EndedBy
from bridge.call.hooks import MachineHooks
from bridge.call.reconnect import Reconnects
from bridge.call.resources import Life, ResourceKind


class BotRedial(MachineHooks):
    """Mixed into a call machine, which provides these."""

    reconnects: Reconnects
    bot_url: str

    def _dial_bot(self, connect: ConnectBot) -> None:
        self.res.creating(ResourceKind.BOT, CloseBot(send_stop=True), cancels=True)
        self._emit(connect)

    def _redial_or_give_up(self, now: float) -> None:
        r = self.reconnects
        if r.deadline is not None and now >= r.deadline:
            self._end(f"bot did not come back within {r.policy.window:g} s (it closed with "
                      f"code {r.drop_code})", fallback=True, by=EndedBy.BOT)  # fmt: skip
        elif (r.next_dial_at is not None and now >= r.next_dial_at
              and self.res.life(ResourceKind.BOT) is Life.GONE):  # fmt: skip
            budget = r.dial_started(now)
            self._dial_bot(ConnectBot(self.bot_url, resume=r.resumes + 1, budget=budget))
