"""Callers a dead worker left waiting in its app: continued once to --orphan-context (a live
worker takes them from there), the round counted in PIPECAT_ORPHAN_ROUNDS; a second time
they get the fallback, so nobody loops."""

from __future__ import annotations

import asyncio

from bridge.service.orphans import ROUNDS_VARIABLE
from bridge.tools.demo.echo_bot import run_echo_bot
from bridge.tools.sim.asterisk import SimulatedAsterisk
from tests.integration.conftest import bridge_running

ORPHANS = {"orphan_context": "pipecat-in", "orphan_extension": "broadcast"}


def set_requests(sim: SimulatedAsterisk, channel_id: str) -> list[dict[str, str]]:
    return [r.query for r in sim.requests
            if r.method == "POST" and r.path == f"/ari/channels/{channel_id}/variable"]  # fmt: skip


async def test_an_orphan_is_sent_to_the_orphan_target_once() -> None:
    async with SimulatedAsterisk(seed=3) as sim, run_echo_bot() as bot:
        fresh = await sim.add_waiting_caller(hangup_after=30)
        again = await sim.add_waiting_caller(hangup_after=30)
        sim.channels[again.caller_id].variables[ROUNDS_VARIABLE] = "1"  # re-homed before
        async with bridge_running(sim, bot, **ORPHANS):
            await asyncio.wait_for(asyncio.gather(fresh.ended, again.ended), 10)
        assert fresh.continued_to == ("pipecat-in", "broadcast", 1)
        assert set_requests(sim, fresh.caller_id) == [{"variable": ROUNDS_VARIABLE, "value": "1"}]
        # The second round: the fallback (here: hang-up), no continue, no new count.
        assert again.continued_to is None
        assert again.hung_up_by == "app"
        assert set_requests(sim, again.caller_id) == []
        assert not sim.leftovers()


async def test_without_an_orphan_target_orphans_get_the_fallback() -> None:
    async with SimulatedAsterisk(seed=4) as sim, run_echo_bot() as bot:
        waiting = await sim.add_waiting_caller(hangup_after=30)
        async with bridge_running(sim, bot):
            await asyncio.wait_for(waiting.ended, 10)
        assert waiting.continued_to is None and waiting.hung_up_by == "app"
        assert set_requests(sim, waiting.caller_id) == []
