"""The adapter of `bridge.service.peers`: every --heartbeat-interval, write our heartbeat into
Asterisk, then (where this process sweeps) read the peers' and sweep the dead ones' leftovers
through the reconciler. The policy is in `peers`; here are the requests and the logs.

    start()    the two loops (heartbeat; looks and sweeps), from Controller.run() once the
               REST session is open; a long sweep never holds the heartbeat back
    stop()     ends them after the requests in flight (never cut in half)
    leave()    a clean stop: our heartbeat and our registry entry removed, so no peer sweeps
               what our own shutdown already cleaned up (nor warns of a death that was not)

A failing heartbeat is one `heartbeat_failed` warning for the first failure of a run of them,
then debug lines, then `heartbeat_restored`; a failing look at the peers, the same with
`peer_look_failed`. Our first heartbeat is not written over a fresh one of another scope: two
bridges configured with the same names would otherwise take turns in one variable, each
looking alive for the other; the one already there keeps it and we say so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from ari.rest import AriRestClient
from bridge.errors import BridgeError, HeartbeatError
from bridge.logs import get_logger
from bridge.service.peers import (
    REGISTRY,
    Heartbeat,
    PeerWatch,
    Scope,
    Verdict,
    heartbeat_name,
    parse_heartbeat,
    parse_registry,
    registry_with,
    registry_without,
    sweeper_for,
)
from bridge.service.reconcile import Reconciler

log = get_logger("bridge")


class _Failures:
    """The first failure of a run at warning, the rest at debug, the recovery at info."""

    def __init__(self, event: str) -> None:
        self.event = event
        self.run = 0  # failures since the last success
        self.total = 0

    def failed(self, exc: BridgeError) -> None:
        self.run += 1
        self.total += 1
        (log.warning if self.run == 1 else log.debug)(self.event, error=str(exc), run=self.run)

    def ok(self, restored: str) -> None:
        if self.run:
            log.info(restored, failures=self.run)
        self.run = 0


class Peering:
    def __init__(
        self,
        rest: AriRestClient,
        reconciler: Reconciler | None,
        *,
        scope: Scope,
        instance: str,
        grace: float,
        interval: float,
        clock: Callable[[], float] = time.time,
        may_sweep: Callable[[], bool] = lambda: True,
    ) -> None:
        """`reconciler` None: heartbeat only (a worker other than slot 0). `clock`: the wall
        clock our heartbeat carries and peers' are compared with. `may_sweep`: False while
        draining (the process replacing us sweeps)."""
        self.scope = scope
        self.name = heartbeat_name(scope)
        self.instance = instance
        self.interval = interval
        self._rest = rest
        self._reconciler = reconciler
        self._clock = clock
        self._may_sweep = may_sweep
        self._watch = PeerWatch(self.name, scope, grace)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._beat_failures = _Failures("heartbeat_failed")
        self._look_failures = _Failures("peer_look_failed")
        self._taken_by: Heartbeat | None = None  # a fresh heartbeat of another scope
        self._malformed: set[tuple[str, str]] = set()  # logged once each
        self.claimed = False  # our heartbeat has been written once
        self.beats = 0
        self.looks = 0
        self.sweeps = 0  # dead peers swept
        self.last: Verdict | None = None
        self._looked = asyncio.Condition()

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """The heartbeat and the looks at the peers, each its own loop: a long sweep must
        never hold our heartbeat back (peers would take us for dead)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._every(self._beat_once)))
        if self._reconciler is not None:
            self._tasks.append(loop.create_task(self._every(self._look_once)))

    async def stop(self, within: float) -> None:
        """End the loops; the requests in flight may finish (at most `within` seconds)."""
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _done, late = await asyncio.wait(tasks, timeout=within)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def leave(self) -> None:
        """A clean stop: remove our heartbeat (only if it is still ours) and registry entry."""
        if not self.claimed:
            return
        try:
            if await self._still_ours():
                await self._rest.set_global_variable(self.name, None)
            listed = await self._rest.global_variable(REGISTRY)
            kept = registry_without(listed, (self.name,))
            if kept is not None:
                await self._rest.set_global_variable(REGISTRY, kept)
        except BridgeError as exc:
            log.warning("peer_leave_failed", heartbeat=self.name, error=str(exc))
            return
        log.info("peer_left", heartbeat=self.name)

    @property
    def heartbeat_failures(self) -> int:
        return self._beat_failures.total

    async def wait_looks(self, count: int) -> None:
        """Until `count` looks at the peers have been taken."""
        async with self._looked:
            await self._looked.wait_for(lambda: self.looks >= count)

    async def _every(self, step: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while not self._stopping.is_set():
            await step()
            deadline += self.interval
            if deadline < loop.time():  # held up longer than an interval: no catching up
                deadline = loop.time() + self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), deadline - loop.time())

    # ---- our heartbeat ----------------------------------------------------------------

    async def _beat_once(self) -> None:
        try:
            await self.beat()
        except BridgeError as exc:
            self._beat_failures.failed(exc)
        else:
            self._beat_failures.ok("heartbeat_restored")

    async def beat(self) -> None:
        """Write our heartbeat; list it in the registry if it is missing there."""
        now = self._clock()
        if not self.claimed and not await self._free_to_claim(now):
            return
        ours = Heartbeat(self.name, now, self.scope, self.instance)
        await self._rest.set_global_variable(self.name, ours.value())
        if not self.claimed:
            log.info("heartbeat_started", heartbeat=self.name, value=ours.value(),
                     interval_s=self.interval, grace_s=self._watch.grace)  # fmt: skip
        self.claimed = True
        self.beats += 1
        added = registry_with(await self._rest.global_variable(REGISTRY), self.name)
        if added is not None:  # new, or lost in a peer's read-modify-write
            await self._rest.set_global_variable(REGISTRY, added)
            log.info("peer_registered", heartbeat=self.name)

    async def _free_to_claim(self, now: float) -> bool:
        value = await self._rest.global_variable(self.name)
        try:
            there = parse_heartbeat(self.name, value) if value else None
        except HeartbeatError:
            return True  # nobody's: ours to write over
        fresh = there is not None and now - there.at <= self._watch.grace
        if there is None or there.scope == self.scope or not fresh:
            return True
        if self._taken_by != there:
            log.error("heartbeat_taken", heartbeat=self.name, value=value,
                      hint="another bridge writes it: give each its own --app")  # fmt: skip
        self._taken_by = there
        return False

    async def _still_ours(self) -> bool:
        found = await self._read(self.name)
        return found is not None and found.scope == self.scope

    async def _read(self, name: str) -> Heartbeat | None:
        value = await self._rest.global_variable(name)
        try:
            return parse_heartbeat(name, value) if value else None
        except HeartbeatError:
            return None

    # ---- the peers ----------------------------------------------------------------------

    async def _look_once(self) -> None:
        try:
            await self.look()
        except BridgeError as exc:
            self._look_failures.failed(exc)
        else:
            self._look_failures.ok("peer_look_restored")
        finally:
            self.looks += 1
            async with self._looked:
                self._looked.notify_all()

    async def look(self) -> Verdict:
        """Read every listed heartbeat; log deaths; sweep the dead peers that are ours to."""
        assert self._reconciler is not None
        names = parse_registry(await self._rest.global_variable(REGISTRY))
        values = await asyncio.gather(*(self._rest.global_variable(n) for n in names))
        heartbeats = [hb for name, value in zip(names, values, strict=True)
                      if (hb := self._heartbeat(name, value)) is not None]  # fmt: skip
        now = self._clock()
        verdict = self._watch.observe(now, heartbeats)
        self.last = verdict
        for hb in verdict.newly_dead:
            log.warning("peer_dead", peer=hb.name, instance=hb.instance, app=hb.scope.app,
                        id_prefix=hb.scope.id_prefix, silent_s=round(now - hb.at, 1),
                        sweeper=sweeper_for(hb.name, verdict.alive))  # fmt: skip
        for hb in verdict.revived:
            log.info("peer_alive_again", peer=hb.name, instance=hb.instance)
        for hb in verdict.refused:
            log.error("peer_scope_overlaps", peer=hb.name, app=hb.scope.app,
                      id_prefix=hb.scope.id_prefix, hint="never swept: it names our apps or "
                      "ids; give every bridge its own --app and --id-prefix")  # fmt: skip
        for hb in verdict.to_sweep:
            if not self._may_sweep():
                break  # draining: our successor (or another peer) sweeps it
            await self._sweep(hb)
        return verdict

    def _heartbeat(self, name: str, value: str) -> Heartbeat | None:
        if not value:
            return None  # removed by a clean stop, or not written yet
        try:
            return parse_heartbeat(name, value)
        except HeartbeatError as exc:
            if (name, value) not in self._malformed:
                self._malformed.add((name, value))
                log.warning("heartbeat_malformed", peer=name, error=str(exc))
            return None

    async def _sweep(self, dead: Heartbeat) -> None:
        assert self._reconciler is not None
        deleted, orphans = await self._reconciler.sweep_peer(dead.scope)
        self._watch.swept(dead)
        # Off the registry, so nobody looks at it again; its variable only if it still holds
        # that death (a peer back meanwhile has written a new one, and re-adds itself).
        try:
            if await self._read(dead.name) == dead:
                await self._rest.set_global_variable(dead.name, None)
            kept = registry_without(await self._rest.global_variable(REGISTRY), (dead.name,))
            if kept is not None:
                await self._rest.set_global_variable(REGISTRY, kept)
        except BridgeError as exc:  # swept all the same; it stays listed, dead, swept
            log.warning("peer_prune_failed", peer=dead.name, error=str(exc))
        self.sweeps += 1
        log.info("peer_sweep", peer=dead.name, instance=dead.instance, app=dead.scope.app,
                 deleted=deleted, orphans=orphans)  # fmt: skip
