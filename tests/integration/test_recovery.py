"""Crash recovery and Asterisk restarts, through the real service and the simulated Asterisk:
what an earlier run left behind is swept at start-up, callers it left waiting go to the
fallback, and an Asterisk restart ends every call without leaking anything on our side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bridge.service.controller import Controller
from bridge.tools.demo.echo_bot import run_echo_bot
from bridge.tools.sim.asterisk import SimulatedAsterisk
from tests.integration.conftest import Rig, bridge_running, settings_for
from tests.integration.test_replay import assert_nothing_left

CONTINUE = {"fallback": "continue", "fallback_context": "humans", "fallback_extension": "100"}


@contextlib.asynccontextmanager
async def bridge_for(sim: SimulatedAsterisk, **overrides: object) -> AsyncIterator[Rig]:
    """Start the service against an Asterisk that already has state; stop it at the end."""
    async with run_echo_bot() as bot, bridge_running(sim, bot, **overrides) as rig:
        yield rig


async def test_start_up_sweeps_leftovers_and_hands_waiting_callers_to_the_fallback() -> None:
    async with SimulatedAsterisk(seed=3) as sim:
        # What a bridge killed with -9 leaves: its bridge with a caller and its ExternalMedia
        # channel in it, an ExternalMedia channel whose bridge was already gone, and a caller
        # that entered the app just before the crash.
        bridged = await sim.add_waiting_caller("basic_ulaw")
        em = await sim.add_leftover_external_media("pcb-em-deadbeef")
        sim.add_leftover_bridge(
            "pcb-br-deadbeef",
            members=[bridged.caller_id, em.id],
            name=f"pipecat:{bridged.caller_id}",
        )
        await sim.add_leftover_external_media("pcb-em-cafef00d")
        waiting = await sim.add_waiting_caller("basic_ulaw")
        # Not ours: another application's bridges are left alone, even with our id prefix
        # (a second bridge process on the same Asterisk, misconfigured with the same prefix).
        sim.add_leftover_bridge("other-app-bridge")
        sim.add_leftover_bridge("pcb-br-0ther", name="pipecat-2:1795313560.0")

        async with bridge_for(sim, **CONTINUE) as rig:
            for call in (bridged, waiting):
                await asyncio.wait_for(call.ended, 10)
            await rig.wait_idle()
            continued = {
                r.path.split("/")[3]
                for r in sim.requests
                if r.path.endswith("/continue") and r.status == 204
            }
            assert continued == {bridged.caller_id, waiting.caller_id}
            assert rig.controller.swept == 3
            assert rig.controller.calls_rejected == 2
            assert sorted(sim.bridges) == ["other-app-bridge", "pcb-br-0ther"]
            assert [c for c in sim.channels if c.startswith("pcb-")] == []


async def test_a_caller_whose_stasis_start_is_in_flight_is_not_taken_for_an_orphan() -> None:
    async with SimulatedAsterisk(seed=4) as sim, run_echo_bot() as bot:
        controller = Controller(settings_for(sim, bot.url))
        task = asyncio.get_running_loop().create_task(controller.run())
        try:
            await asyncio.wait_for(sim.wait_app_active(), 10)
            # Placed while the start-up reconcile is reading what exists.
            call = await sim.place_call("basic_ulaw", hangup_after=1.0)
            await asyncio.wait_for(controller.resynced.wait(), 10)
            await asyncio.wait_for(call.ended, 10)
            assert call.hung_up_by == "caller"
            assert controller.calls_rejected == 0
            assert len(bot.stats.calls) == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_asterisk_restart_ends_calls_and_leaves_nothing_on_our_side() -> None:
    async with SimulatedAsterisk(seed=5) as sim, bridge_for(sim) as rig:
        calls = [await sim.place_call("basic_ulaw", hangup_after=30) for _ in range(3)]
        for call in calls:
            await asyncio.wait_for(call.bridged, 10)
        resyncs = rig.controller.resyncs
        await sim.restart(down_for=0.5)
        for call in calls:
            assert call.hung_up_by == "restart"
        # The events socket comes back; the reconcile finds nothing of ours left.
        await asyncio.wait_for(sim.wait_app_active(), 15)
        while rig.controller.resyncs == resyncs:
            rig.controller.resynced.clear()
            await asyncio.wait_for(rig.controller.resynced.wait(), 15)
        await rig.wait_idle()
        assert rig.controller.pool.in_use == 0
        assert rig.controller.ticker._members == {}
        # And the restarted Asterisk's next caller is served as usual.
        fresh = await sim.place_call("basic_ulaw", hangup_after=0.5)
        await asyncio.wait_for(fresh.ended, 10)
        await rig.wait_idle()
        assert fresh.hung_up_by == "caller"
        assert_nothing_left(rig)
