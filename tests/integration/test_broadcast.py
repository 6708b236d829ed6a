"""StasisBroadcast end to end: real bridges claim broadcast calls from the simulated Asterisk
and carry them to a real Pipecat echo bot; a second bridge loses; a draining or full one
claims nothing."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import AsyncIterator

from bridge.service.controller import Controller
from bridge.tools.demo.echo_bot import EchoBot, run_echo_bot
from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.broadcast import BroadcastCall
from tests.integration.conftest import Rig, running_rig, settings_for


def assert_nothing_left(controller: Controller, sim: SimulatedAsterisk) -> None:
    assert controller.calls == {}, controller.calls
    assert controller.registry.active == {}
    assert controller.pool.in_use == 0
    assert controller._claims == {}, "a claim task outlived its broadcast"
    assert not sim.leftovers(), sim.leftovers()


@contextlib.asynccontextmanager
async def controllers(
    sim: SimulatedAsterisk, bot: EchoBot, *apps: str, **overrides: object
) -> AsyncIterator[list[Controller]]:
    """One bridge process per app name (own id prefix, own RTP ports), all on `sim`."""
    started: list[tuple[Controller, asyncio.Task[None]]] = []
    try:
        for n, app in enumerate(apps):
            low = 31200 + 100 * n
            settings = settings_for(sim, bot.url, app=app, id_prefix=f"pcb{n}-",
                                    rtp_ports=(low, low + 99), **overrides)  # fmt: skip
            controller = Controller(settings)
            started.append((controller, asyncio.get_running_loop().create_task(controller.run())))
            await asyncio.wait_for(controller.events.connected.wait(), 5)
            await asyncio.wait_for(sim.wait_app_connected(app), 5)
            await asyncio.wait_for(controller.resynced.wait(), 5)
        yield [controller for controller, _task in started]
    finally:
        for _controller, task in started:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def carried(rig: Rig, offer: BroadcastCall) -> None:
    assert await asyncio.wait_for(offer.call.ended, 10) == "caller"
    await rig.wait_idle()


async def test_a_broadcast_call_is_claimed_and_carried_end_to_end() -> None:
    async with running_rig() as rig:
        offer = await rig.sim.place_broadcast_call(hangup_after=1.5, app_filter="^pipecat")
        await asyncio.wait_for(offer.done.wait(), 5)
        assert (offer.stasis_status, offer.winner) == ("SUCCESS", rig.sim.app)
        await carried(rig, offer)
        (bot_call,) = rig.bot.stats.calls
        assert bot_call.ended_by == "caller"
        assert bot_call.audio_frames > 20
        assert offer.call.rtp_received, "no bot audio came back"
        assert (rig.controller.claims_won, rig.controller.claims_lost) == (1, 0)
        assert_nothing_left(rig.controller, rig.sim)


async def test_broadcast_args_name_the_bot_in_the_bot_map() -> None:
    async with (
        run_echo_bot() as bot,
        SimulatedAsterisk(seed=3) as sim,
        controllers(sim, bot, "pipecat", bot_url="ws://127.0.0.1:9/nobody",
                    bot_map=(("echo", bot.url),)) as (controller,),
    ):  # fmt: skip
        offer = await sim.place_broadcast_call(args="bot=echo:dialect=twilio",
                                                   hangup_after=1.0)  # fmt: skip
        assert await asyncio.wait_for(offer.call.ended, 10) == "caller"
        await asyncio.wait_for(controller.all_idle.wait(), 10)
        assert len(bot.stats.calls) == 1
        unknown = await sim.place_broadcast_call(args="bot=nosuch", hangup_after=1.0)
        assert await asyncio.wait_for(unknown.call.ended, 10) == "app"  # the fallback
        await asyncio.wait_for(controller.all_idle.wait(), 10)
        assert len(bot.stats.calls) == 1
        assert_nothing_left(controller, sim)


async def test_two_bridges_one_wins_the_other_loses_and_leaves_nothing() -> None:
    async with (
        run_echo_bot() as bot,
        SimulatedAsterisk(seed=5) as sim,
        controllers(sim, bot, "pipecat-a", "pipecat-b") as (a, b),
    ):
        offer = await sim.place_broadcast_call(hangup_after=1.0)
        assert sorted(offer.offered_to) == ["pipecat-a", "pipecat-b"]
        await asyncio.wait_for(offer.done.wait(), 5)
        assert await asyncio.wait_for(offer.call.ended, 10) == "caller"
        for controller in (a, b):
            await asyncio.wait_for(controller.all_idle.wait(), 10)
        assert await_claims(offer) == 2
        winner, loser = (a, b) if offer.winner == "pipecat-a" else (b, a)
        assert (winner.claims_won, winner.claims_lost) == (1, 0)
        assert (loser.claims_won, loser.claims_lost) == (0, 1)
        assert [s for _app, s in offer.claims] == [204, 409]
        assert loser.calls_total == 0
        assert len(bot.stats.calls) == 1
        for controller in (a, b):
            assert_nothing_left(controller, sim)


def await_claims(offer: BroadcastCall) -> int:
    return len(offer.claims)


async def test_the_less_loaded_bridge_wins() -> None:
    """pipecat-a carries a call; the next broadcast goes to the idle pipecat-b."""
    async with (
        run_echo_bot() as bot,
        SimulatedAsterisk(seed=6) as sim,
        controllers(sim, bot, "pipecat-a", "pipecat-b", max_calls=4) as (a, b),
    ):
        b.draining = True  # so the first call can only go to a
        first = await sim.place_broadcast_call(hangup_after=3.0)
        await asyncio.wait_for(first.done.wait(), 5)
        assert first.winner == "pipecat-a"
        b.draining = False
        second = await sim.place_broadcast_call(hangup_after=0.5)
        await asyncio.wait_for(second.done.wait(), 5)
        assert second.winner == "pipecat-b"
        for offer in (first, second):
            await asyncio.wait_for(offer.call.ended, 10)
        for controller in (a, b):
            await asyncio.wait_for(controller.all_idle.wait(), 10)
            assert_nothing_left(controller, sim)


async def test_a_draining_or_full_bridge_claims_nothing() -> None:
    async with (
        run_echo_bot() as bot,
        SimulatedAsterisk(seed=8) as sim,
        controllers(sim, bot, "pipecat", max_calls=1) as (controller,),
    ):
        controller.draining = True
        drained = await sim.place_broadcast_call(timeout_ms=100)
        await asyncio.wait_for(drained.done.wait(), 5)
        assert (drained.stasis_status, drained.claims) == ("TIMEOUT", [])
        controller.draining = False
        taken = await sim.place_broadcast_call(hangup_after=2.0)
        await asyncio.wait_for(taken.done.wait(), 5)
        assert taken.stasis_status == "SUCCESS"
        full = await sim.place_broadcast_call(timeout_ms=100)  # max_calls=1 reached
        await asyncio.wait_for(full.done.wait(), 5)
        assert (full.stasis_status, full.claims) == ("TIMEOUT", [])
        await asyncio.wait_for(taken.call.ended, 10)
        await asyncio.wait_for(controller.all_idle.wait(), 10)
        assert (controller.claims_won, controller.claims_lost) == (1, 0)
        assert controller.calls_rejected == 0
        assert_nothing_left(controller, sim)


async def test_one_call_short_of_full_wins_only_one_of_two_offers_at_once() -> None:
    async with (
        run_echo_bot() as bot,
        SimulatedAsterisk(seed=9) as sim,
        controllers(sim, bot, "pipecat", max_calls=1) as (controller,),
    ):
        first, second = await asyncio.gather(
            sim.place_broadcast_call(hangup_after=1.0, timeout_ms=300),
            sim.place_broadcast_call(hangup_after=1.0, timeout_ms=300),
        )
        await asyncio.wait_for(first.done.wait(), 5)
        await asyncio.wait_for(second.done.wait(), 5)
        statuses = sorted((first.stasis_status, second.stasis_status))
        # The second offer is left to another process (TIMEOUT here), never won and rejected.
        assert statuses == ["SUCCESS", "TIMEOUT"]
        winner = first if first.stasis_status == "SUCCESS" else second
        await asyncio.wait_for(winner.call.ended, 10)
        await asyncio.wait_for(controller.all_idle.wait(), 10)
        assert controller.claims_won == 1
        assert controller.calls_rejected == 0
        assert_nothing_left(controller, sim)


async def test_claim_latency_broadcast_to_stasis_start() -> None:
    """50 broadcast calls one after the other to an idle bridge: CallBroadcast out to the
    winner's StasisStart out, as the simulator timed them (printed for the README)."""
    async with (
        run_echo_bot() as bot,
        SimulatedAsterisk(seed=9, history=True) as sim,
        controllers(sim, bot, "pipecat") as (controller,),
    ):
        latencies = []
        for _ in range(50):
            offer = await sim.place_broadcast_call(hangup_after=0.05)
            await asyncio.wait_for(offer.done.wait(), 5)
            assert offer.stasis_start_at is not None
            latencies.append((offer.stasis_start_at - offer.broadcast_at) * 1000)
            await asyncio.wait_for(offer.call.ended, 10)
            await asyncio.wait_for(controller.all_idle.wait(), 10)  # one call at a time
        await asyncio.wait_for(controller.all_idle.wait(), 10)
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        print(f"claim latency over {len(latencies)} calls: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        assert controller.claims_won == 50
        assert p99 < 100  # an idle bridge claims at once: well inside the 500 ms timeout
        assert_nothing_left(controller, sim)
