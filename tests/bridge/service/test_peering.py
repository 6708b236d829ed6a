"""The peering adapter (bridge.service.peering) over a fake ARI holding global variables: what
it writes, what it logs once, what it never writes over, when it leaves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.errors import AriUnavailableError
from bridge.logs import configure_logging
from bridge.ops.metrics import BridgeMetrics
from bridge.service.peering import Peering
from bridge.service.peers import REGISTRY, Heartbeat, Scope, heartbeat_name
from tests.bridge.ops.test_metrics import fake_controller, scrape, value

A = Scope("pipecat-a", "pcb-a-")
B = Scope("pipecat-b", "pcb-b-")
GRACE = 15.0


class FakeAri:
    """The global variables of an Asterisk; `down` makes every request fail."""

    def __init__(self) -> None:
        self.variables: dict[str, str] = {}
        self.down = False
        self.writes: list[tuple[str, str | None]] = []

    async def global_variable(self, name: str) -> str:
        self._check()
        return self.variables.get(name, "")

    async def set_global_variable(self, name: str, value: str | None) -> None:
        self._check()
        self.writes.append((name, value))
        if value is None:
            self.variables.pop(name, None)
        else:
            self.variables[name] = value

    def _check(self) -> None:
        if self.down:
            raise AriUnavailableError("GET /asterisk/variable: connection refused")


class FakeReconciler:
    def __init__(self) -> None:
        self.swept: list[Scope] = []

    async def sweep_peer(self, scope: Scope) -> tuple[int, int]:
        self.swept.append(scope)
        return 2, 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def peering(ari: FakeAri, clock: Clock, scope: Scope = A, **kwargs: Any) -> Peering:
    reconciler = kwargs.pop("reconciler", None)
    return Peering(ari, reconciler, scope=scope, instance="a", grace=GRACE,  # type: ignore[arg-type]
                   interval=3.0, clock=clock, **kwargs)  # fmt: skip


@pytest.fixture(autouse=True)
def every_log_line() -> Iterator[None]:
    """Debug and info lines too (tests/conftest.py keeps only warnings): what is said once."""
    configure_logging("console", "debug")
    yield
    configure_logging("console", "warning")


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == name]


async def test_a_beat_writes_the_heartbeat_and_lists_it_once() -> None:
    ari, clock = FakeAri(), Clock()
    ari.variables[REGISTRY] = "PIPECAT_BRIDGE_HB_OTHER"
    p = peering(ari, clock)
    await p.beat()
    clock.now += 3
    await p.beat()
    assert ari.variables[p.name] == "1003.000 pipecat-a pcb-a- a"
    assert ari.variables[REGISTRY] == f"PIPECAT_BRIDGE_HB_OTHER {p.name}"
    assert [w for w in ari.writes if w[0] == REGISTRY] == [(REGISTRY, ari.variables[REGISTRY])]
    # Lost in somebody's read-modify-write: back at the next beat.
    ari.variables[REGISTRY] = "PIPECAT_BRIDGE_HB_OTHER"
    await p.beat()
    assert ari.variables[REGISTRY] == f"PIPECAT_BRIDGE_HB_OTHER {p.name}"


async def test_a_run_of_failed_beats_is_one_warning_then_one_recovery() -> None:
    ari, clock = FakeAri(), Clock()
    p = peering(ari, clock)
    ari.down = True
    with capture_logs() as logs:
        for _ in range(3):
            await p._beat_once()
        ari.down = False
        await p._beat_once()
        ari.down = True
        await p._beat_once()
    failed = events(logs, "heartbeat_failed")
    assert [line["log_level"] for line in failed] == ["warning", "debug", "debug", "warning"]
    assert [line["run"] for line in failed] == [1, 2, 3, 1]
    assert [line["failures"] for line in events(logs, "heartbeat_restored")] == [3]


async def test_a_fresh_heartbeat_of_another_scope_is_not_written_over() -> None:
    ari, clock = FakeAri(), Clock()
    name = heartbeat_name(A)
    theirs = Heartbeat(name, clock.now - 1, Scope("pipecat-a", "other-"), "h2").value()
    ari.variables[name] = theirs
    p = peering(ari, clock)
    with capture_logs() as logs:
        await p.beat()
        await p.beat()
    assert ari.variables[name] == theirs and not p.claimed
    assert len(events(logs, "heartbeat_taken")) == 1  # said once
    clock.now += GRACE + 1  # theirs is stale now: a dead bridge's, ours to take
    await p.beat()
    assert p.claimed and ari.variables[name].endswith("pipecat-a pcb-a- a")


async def test_our_own_scope_left_by_an_earlier_run_is_ours_to_write() -> None:
    ari, clock = FakeAri(), Clock()
    ari.variables[heartbeat_name(A)] = Heartbeat(heartbeat_name(A), clock.now, A, "a").value()
    p = peering(ari, clock)
    await p.beat()
    assert p.claimed


async def test_leave_removes_our_heartbeat_and_entry_but_not_a_successors() -> None:
    ari, clock = FakeAri(), Clock()
    ari.variables[REGISTRY] = "PIPECAT_BRIDGE_HB_OTHER"
    p = peering(ari, clock)
    await p.beat()
    await p.leave()
    assert p.name not in ari.variables and ari.variables[REGISTRY] == "PIPECAT_BRIDGE_HB_OTHER"
    # Another scope has written the variable since: it stays.
    await p.beat()
    other = Heartbeat(p.name, clock.now, Scope("pipecat-a", "x-"), "h2").value()
    ari.variables[p.name] = other
    await p.leave()
    assert ari.variables[p.name] == other


async def test_leave_before_any_heartbeat_writes_nothing() -> None:
    ari = FakeAri()
    await peering(ari, Clock()).leave()
    assert ari.writes == []


async def test_a_look_sweeps_a_dead_peer_once_and_takes_it_off_the_registry() -> None:
    ari, clock, reconciler = FakeAri(), Clock(), FakeReconciler()
    b_name = heartbeat_name(B)
    ari.variables[b_name] = Heartbeat(b_name, clock.now - GRACE - 1, B, "b").value()
    ari.variables["PIPECAT_BRIDGE_HB_BROKEN"] = "yesterday"
    ari.variables[REGISTRY] = f"{b_name} PIPECAT_BRIDGE_HB_BROKEN"
    p = peering(ari, clock, reconciler=reconciler)
    await p.beat()
    with capture_logs() as logs:
        verdict = await p.look()
        await p.look()
    assert [hb.name for hb in verdict.to_sweep] == [b_name]
    assert reconciler.swept == [B] and p.sweeps == 1
    assert b_name not in ari.variables
    assert ari.variables[REGISTRY] == f"PIPECAT_BRIDGE_HB_BROKEN {p.name}"
    (dead,) = events(logs, "peer_dead")
    assert (dead["peer"], dead["silent_s"], dead["log_level"]) == (b_name, 16.0, "warning")
    (swept,) = events(logs, "peer_sweep")
    assert (swept["deleted"], swept["orphans"]) == (2, 1)
    assert len(events(logs, "heartbeat_malformed")) == 1  # once, however often it is read


async def test_a_draining_bridge_sweeps_nothing() -> None:
    ari, clock, reconciler = FakeAri(), Clock(), FakeReconciler()
    b_name = heartbeat_name(B)
    ari.variables[b_name] = Heartbeat(b_name, 0.0, B, "b").value()
    ari.variables[REGISTRY] = b_name
    p = peering(ari, clock, reconciler=reconciler, may_sweep=lambda: False)
    verdict = await p.look()
    assert verdict.to_sweep and reconciler.swept == [] and b_name in ari.variables


async def test_start_and_stop_run_the_loops() -> None:
    ari, clock, reconciler = FakeAri(), Clock(), FakeReconciler()
    p = Peering(ari, reconciler, scope=A, instance="a", grace=GRACE,  # type: ignore[arg-type]
                interval=0.01, clock=clock)  # fmt: skip
    p.start()
    await p.wait_looks(3)
    await p.stop(within=1.0)
    beats = p.beats
    assert beats >= 3 and p.name in ari.variables
    await p.stop(within=1.0)  # twice: nothing left to stop
    assert p.beats == beats


async def test_metrics_count_peers_sweeps_and_failed_heartbeats() -> None:
    ari, clock, reconciler = FakeAri(), Clock(), FakeReconciler()
    b_name = heartbeat_name(B)
    ari.variables[b_name] = Heartbeat(b_name, 0.0, B, "b").value()
    ari.variables[REGISTRY] = b_name
    p = peering(ari, clock, reconciler=reconciler)
    metrics = BridgeMetrics(fake_controller(peering=p))
    assert ("pipecat_bridge_peers", (("state", "alive"),)) not in scrape(metrics)  # no look yet
    ari.down = True
    await p._beat_once()
    ari.down = False
    await p.beat()
    await p.look()
    samples = scrape(metrics)
    assert value(samples, "pipecat_bridge_peers", state="alive") == 1  # this one
    assert value(samples, "pipecat_bridge_peers", state="dead") == 1  # b, swept
    assert value(samples, "pipecat_bridge_peer_sweeps_total") == 1
    assert value(samples, "pipecat_bridge_heartbeat_failures_total") == 1
