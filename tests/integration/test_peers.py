"""Several bridge hosts on one simulated Asterisk, each known to the others only by the
heartbeat it keeps in Asterisk; the heartbeats' wall clock is moved by hand.

"a" and "b" run for real, each with a call up. "b" dies mid-call: from then on nothing it
sends reaches Asterisk, as after kill -9. Once b's heartbeat is older than --peer-grace, "a"
deletes b's bridge and media channel and sends b's caller once to --orphan-context; a's own
call goes on, and a peer whose heartbeat is fresh keeps everything. A dead peer whose sweeper
(rendezvous) is another live peer is left to that one, until it dies too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from bridge.errors import AriUnavailableError
from bridge.service.controller import Controller
from bridge.service.orphans import ROUNDS_VARIABLE
from bridge.service.peers import (
    REGISTRY,
    TAG,
    Heartbeat,
    Scope,
    heartbeat_name,
    parse_registry,
    sweeper_for,
)
from bridge.tools.demo.echo_bot import EchoBot, run_echo_bot
from bridge.tools.sim.asterisk import SimulatedAsterisk
from tests.integration.conftest import settings_for
from tests.integration.test_orphans import set_requests

GRACE = 15.0
ORPHANS = {"orphan_context": "pipecat-in", "orphan_extension": "broadcast"}


class WallClock:
    """The heartbeats' wall clock (what the hosts' NTP keeps together), moved by hand."""

    def __init__(self) -> None:
        self.now = 1_767_225_600.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def host(
    sim: SimulatedAsterisk, bot: EchoBot, name: str, clock: WallClock, ports: int
) -> AsyncIterator[Controller]:
    """Bridge host `name`: app pipecat-<name>, ids pcb-<name>-, a beat and a look every 20 ms
    of loop time (the grace is counted on `clock`)."""
    settings = settings_for(sim, bot.url, app=f"pipecat-{name}", id_prefix=f"pcb-{name}-",
                            instance_id=name, rtp_ports=(ports, ports + 99), peer_grace=GRACE,
                            heartbeat_interval=0.02, **ORPHANS)  # fmt: skip
    controller = Controller(settings, clock=clock)
    task = asyncio.get_running_loop().create_task(controller.run())
    try:
        await asyncio.wait_for(controller.events.connected.wait(), 5)
        await asyncio.wait_for(sim.wait_app_connected(settings.app), 5)
        await asyncio.wait_for(controller.resynced.wait(), 5)
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def kill(controller: Controller) -> None:
    """Asterisk's view of kill -9: not one request of this process arrives any more."""

    async def gone(*_args: Any, **_kwargs: Any) -> Any:
        raise AriUnavailableError("the process is gone")

    controller.rest.request = gone  # type: ignore[method-assign]


async def until_looked(controller: Controller, done: Any, within: float = 5.0) -> None:
    """Until a look at the peers (one every beat) finds `done()` true."""
    peering = controller.peering
    assert peering is not None

    async def looks() -> None:
        while not done():
            await peering.wait_looks(peering.looks + 1)

    await asyncio.wait_for(looks(), within)


def ids(sim: SimulatedAsterisk, prefix: str) -> list[str]:
    return sorted(i for i in (*sim.channels, *sim.bridges) if i.startswith(prefix))


def listed(sim: SimulatedAsterisk) -> tuple[str, ...]:
    return parse_registry(sim.system.variables.get(REGISTRY, ""))


async def fake_peer(
    sim: SimulatedAsterisk, clock: WallClock, name: str, tags: tuple[str, ...] = ()
) -> Heartbeat:
    """Peer `name`, written here as its process would have: its bridge with a media channel
    in it, a caller waiting in its app, its heartbeat as fresh as `clock`, its registry entry.
    With `tags`: a --workers host, those objects for each of its workers."""
    scope = Scope(f"pipecat-{name}-{TAG}", f"pcb-{name}-{TAG}-") if tags else \
        Scope(f"pipecat-{name}", f"pcb-{name}-")  # fmt: skip
    for tag in tags or ("",):
        app, prefix = (s.replace(TAG, tag) for s in (scope.app, scope.id_prefix))
        waiting = await sim.add_waiting_caller(app=app, hangup_after=60)
        em = await sim.add_leftover_external_media(f"{prefix}em-1")
        em.app = app
        sim.add_leftover_bridge(f"{prefix}br-1", members=[em.id], name=f"{app}:{waiting.caller_id}")
    peer = Heartbeat(heartbeat_name(scope), clock.now, scope, name)
    beat(sim, peer)
    sim.system.variables[REGISTRY] = " ".join((*listed(sim), peer.name))
    return peer


def beat(sim: SimulatedAsterisk, hb: Heartbeat, at: float | None = None) -> None:
    """`hb`'s peer writes its heartbeat again, at `at`."""
    sim.system.variables[hb.name] = replace(hb, at=hb.at if at is None else at).value()


def name_of(peer: str) -> str:
    return heartbeat_name(Scope(f"pipecat-{peer}", f"pcb-{peer}-"))


def in_app(sim: SimulatedAsterisk, channel_id: str) -> bool:
    channel = sim.channels.get(channel_id)
    return channel is not None and channel.in_stasis


async def test_a_dead_peers_call_is_swept_once_and_nothing_else() -> None:
    clock = WallClock()
    async with (
        SimulatedAsterisk(seed=11) as sim,
        run_echo_bot() as bot,
        host(sim, bot, "a", clock, 31400) as a,
    ):
        assert a.peering is not None
        async with host(sim, bot, "b", clock, 31500) as b:
            assert b.peering is not None
            await until_looked(a, lambda: set(listed(sim)) == {a.peering.name, b.peering.name})
            call_a = await sim.place_call(app="pipecat-a", hangup_after=60)
            call_b = await sim.place_call(app="pipecat-b", hangup_after=60)
            await asyncio.wait_for(asyncio.gather(call_a.bridged, call_b.bridged), 10)
            assert len(ids(sim, "pcb-b-")) == 2  # b's bridge and its media channel
            # A third peer, alive all along, its process only pretended: named "d", as with
            # "c" rendezvous would make c b's sweeper (the next test).
            assert sweeper_for(name_of("b"), [name_of("a"), name_of("d")]) == name_of("a")
            d = await fake_peer(sim, clock, "d")
            d_objects = ids(sim, "pcb-d-")
            kill(b)
        # b is gone (its task ended without a word to Asterisk): all it had is still there.
        assert len(ids(sim, "pcb-b-")) == 2 and in_app(sim, call_b.caller_id)
        assert b.peering.name in listed(sim)
        looks = a.peering.looks
        await until_looked(a, lambda: a.peering.looks >= looks + 2)
        assert a.peering.sweeps == 0  # not dead yet: within the grace

        clock.now += GRACE + 1
        beat(sim, d, at=clock.now)  # d keeps beating
        await asyncio.wait_for(call_b.ended, 10)
        await until_looked(a, lambda: a.peering.sweeps == 1)

        assert call_b.continued_to == ("pipecat-in", "broadcast", 1)
        assert set_requests(sim, call_b.caller_id) == [{"variable": ROUNDS_VARIABLE, "value": "1"}]
        assert ids(sim, "pcb-b-") == []
        # b is off the registry and its heartbeat gone: nobody looks at it again.
        assert set(listed(sim)) == {a.peering.name, d.name}
        assert b.peering.name not in sim.system.variables
        # Ours and d's untouched: a's call still bridged, d's objects and caller in place.
        assert not call_a.ended.done() and len(ids(sim, "pcb-a-")) == 2
        assert a.calls and all(call.ids.caller_id == call_a.caller_id for call in a.calls.values())
        assert ids(sim, "pcb-d-") == d_objects and a.peering.last is not None
        assert d.name in a.peering.last.alive

        # Once per death: more looks, no second sweep, no second round for b's caller.
        looks = a.peering.looks
        await until_looked(a, lambda: a.peering.looks >= looks + 3)
        assert a.peering.sweeps == 1
        assert a.peering.last is not None and a.peering.last.dead == ()
        continues = [r for r in sim.requests if r.path.endswith("/continue")]
        assert [r.path.split("/")[3] for r in continues] == [call_b.caller_id]
    # a stopped cleanly: it left the registry, d (never stopped) is still listed.
    assert listed(sim) == (d.name,)
    assert a.peering.name not in sim.system.variables


async def test_a_dead_peer_is_left_to_its_sweeper_while_that_one_lives() -> None:
    """b dies; its sweeper (rendezvous over a and c) is c, alive: a leaves b alone however
    long it looks. Then c dies too: a is the only one left and sweeps both, each once."""
    clock = WallClock()
    assert sweeper_for(name_of("b"), [name_of("a"), name_of("c")]) == name_of("c")
    async with SimulatedAsterisk(seed=12) as sim, run_echo_bot() as bot:
        b = await fake_peer(sim, clock, "b")
        c = await fake_peer(sim, clock, "c")
        b_objects = ids(sim, "pcb-b-")
        async with host(sim, bot, "a", clock, 31600) as a:
            assert a.peering is not None
            clock.now += GRACE + 1
            beat(sim, c, at=clock.now)  # b silent, c alive
            await until_looked(a, lambda: a.peering.last is not None and a.peering.last.dead)
            looks = a.peering.looks
            await until_looked(a, lambda: a.peering.looks >= looks + 3)
            assert [hb.name for hb in a.peering.last.dead] == [b.name]
            assert a.peering.sweeps == 0 and ids(sim, "pcb-b-") == b_objects

            clock.now += GRACE + 1  # c silent now as well
            await until_looked(a, lambda: a.peering.sweeps == 2)
            assert ids(sim, "pcb-b-") == ids(sim, "pcb-c-") == []
            assert listed(sim) == (a.peering.name,)
            continued = sorted(r.path.split("/")[3] for r in sim.requests
                               if r.path.endswith("/continue"))  # fmt: skip
            assert len(continued) == 2 and len(set(continued)) == 2


async def test_a_dead_workers_host_is_swept_for_all_its_workers_and_no_other_host() -> None:
    """h2 ran `--workers` (slots 0 and 1, the latter reloaded once: pipecat-h2-1g1); h2-x, alive,
    has an instance id that starts the same. a sweeps every worker of h2 and nothing of h2-x."""
    clock = WallClock()
    async with SimulatedAsterisk(seed=13) as sim, run_echo_bot() as bot:
        h2 = await fake_peer(sim, clock, "h2", tags=("0", "1g1"))
        h2x = await fake_peer(sim, clock, "h2-x", tags=("0",))
        assert sweeper_for(h2.name, [name_of("a"), h2x.name]) == name_of("a")
        h2x_objects = ids(sim, "pcb-h2-x-")
        assert len(ids(sim, "pcb-h2-")) == 4 + len(h2x_objects)
        async with host(sim, bot, "a", clock, 31700) as a:
            assert a.peering is not None
            clock.now += GRACE + 1
            beat(sim, h2x, at=clock.now)
            await until_looked(a, lambda: a.peering.sweeps == 1)
            assert ids(sim, "pcb-h2-") == h2x_objects
            continued = {r.path.split("/")[3] for r in sim.requests
                         if r.path.endswith("/continue")}  # fmt: skip
            in_h2x = {c.id for c in sim.channels.values() if c.app == "pipecat-h2-x-0"}
            assert len(continued) == 2 and not continued & in_h2x
