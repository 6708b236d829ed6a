"""Several hosts, the pure part (bridge.service.peers): scopes, heartbeat values, the registry,
and the policy of who is dead and who sweeps it; plus the settings that turn it on."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import ConfigError, HeartbeatError
from bridge.service.check_rules import Status, check_peers
from bridge.service.config import Settings, parse_settings
from bridge.service.peers import (
    REGISTRY,
    Heartbeat,
    PeerWatch,
    Scope,
    heartbeat_name,
    parse_heartbeat,
    parse_registry,
    registry_with,
    registry_without,
    sweeper_for,
)
from bridge.service.workers import plan_worker

GRACE = 15.0
HOST_H1 = Scope("pipecat-h1-{tag}", "pcb-h1-{tag}-")


def scope_of(peer: str) -> Scope:
    return Scope(f"pipecat-{peer}", f"pcb-{peer}-")


def beat(peer: str, at: float) -> Heartbeat:
    scope = scope_of(peer)
    return Heartbeat(heartbeat_name(scope), at, scope, peer)


def watch(peer: str) -> PeerWatch:
    return PeerWatch(heartbeat_name(scope_of(peer)), scope_of(peer), GRACE)


# ---- scopes and names ------------------------------------------------------------------


def test_a_literal_scope_is_one_process() -> None:
    a = Scope("pipecat-a", "pcb-a-")
    assert a.owns_app("pipecat-a") and not a.owns_app("pipecat-ab")
    assert not a.owns_app("pipecat-a-0")
    assert a.created("pcb-a-br-1", ("br",)) and not a.created("pcb-a-em-1", ("br",))
    assert a.created("pcb-a-em-1", ("em", "out")) and a.created("pcb-a-anything")
    assert not a.created("pcb-ab-em-1") and not a.created("xpcb-a-em-1")


def test_a_tagged_scope_is_every_worker_of_a_host_and_nothing_else() -> None:
    assert [HOST_H1.owns_app(app) for app in ("pipecat-h1-0", "pipecat-h1-12g3",
            "pipecat-h1-", "pipecat-h1-x-0", "pipecat-h1-0-x", "pipecat-h1")] == [
        True, True, False, False, False, False]  # fmt: skip
    assert HOST_H1.created("pcb-h1-0-br-1", ("br",)) and HOST_H1.created("pcb-h1-3g2-em-1")
    # Another host whose instance id starts the same: none of its ids, none of its apps.
    assert not HOST_H1.created("pcb-h1-x-0-br-1") and not HOST_H1.created("pcb-h1-br-1")


def test_the_planned_workers_fall_in_their_hosts_scope() -> None:
    settings = Settings(ari_password="pw", workers=3)
    for slot, generation in itertools.product(range(3), range(3)):
        plan = plan_worker(settings, "h1", slot, generation)
        app, _, prefix = plan.peer_scope.partition(" ")
        assert Scope(app, prefix) == HOST_H1
        assert HOST_H1.owns_app(plan.app) and HOST_H1.created(plan.id_prefix + "br-x", ("br",))
        assert ("--no-peer-sweep" in plan.flags()) == (slot != 0)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (Scope("pipecat-a", "pcb-a-"), Scope("pipecat-b", "pcb-b-"), False),
        (Scope("pipecat-1", "pcb1-"), Scope("pipecat-10", "pcb10-"), False),
        (Scope("pipecat", "pcb-"), Scope("pipecat-b", "pcb-b-"), True),  # pcb- is in pcb-b-
        (Scope("pipecat-a", "pcb-a-"), Scope("pipecat-a", "x-"), True),
        (HOST_H1, Scope("pipecat-h2-{tag}", "pcb-h2-{tag}-"), False),
        (HOST_H1, Scope("pipecat-h1-x-{tag}", "pcb-h1-x-{tag}-"), False),
        (HOST_H1, Scope("pipecat-h1-0", "pcb-h1-0-"), True),  # one of its workers
        (HOST_H1, Scope("pipecat-h1-0", "other-"), True),
        (HOST_H1, Scope("pipecat-h1-x", "pcb-h1-x-"), False),
    ],
)
def test_scopes_overlap(a: Scope, b: Scope, overlap: bool) -> None:
    assert a.overlaps(b) is overlap and b.overlaps(a) is overlap


def test_heartbeat_variable_names_are_what_asterisk_keeps_as_they_are() -> None:
    assert heartbeat_name(Scope("pipecat-a", "pcb-a-")) == "PIPECAT_BRIDGE_HB_PIPECAT_A"
    assert heartbeat_name(HOST_H1) == "PIPECAT_BRIDGE_HB_PIPECAT_H1"
    assert heartbeat_name(Scope("voice.bot", "v-")) == "PIPECAT_BRIDGE_HB_VOICE_BOT"
    assert heartbeat_name(Scope("--", "v-")) == "PIPECAT_BRIDGE_HB_2D2D"


# ---- heartbeat values ------------------------------------------------------------------


def test_a_heartbeat_value() -> None:
    hb = Heartbeat("PIPECAT_BRIDGE_HB_PIPECAT_H1", 1767225600.25, HOST_H1, "h1")
    assert hb.value() == "1767225600.250 pipecat-h1-{tag} pcb-h1-{tag}- h1"
    assert parse_heartbeat(hb.name, hb.value()) == hb


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1767225600", "1 words, not 4"),
        ("1767225600 pipecat-a pcb-a- a extra", "5 words"),
        ("soon pipecat-a pcb-a- a", "time 'soon' is not a number"),
        ("nan pipecat-a pcb-a- a", "is not a time"),
        ("-5 pipecat-a pcb-a- a", "is not a time"),
        ("1 pipecat-a pcb-a- A", "instance 'A' is not an instance id"),
        ("1 pipecat-{tag}-{tag} pcb-a- a", "may hold one {tag}"),
        ("1 pipecat-a pcb-{x}- a", "no other brace"),
        ("1 pipecat-a pcb-a- " + "a" * 600, "more than 512"),
    ],
)
def test_a_malformed_heartbeat_says_why(value: str, reason: str) -> None:
    with pytest.raises(HeartbeatError, match=reason.replace("{", r"\{").replace("(", r"\(")):
        parse_heartbeat("PIPECAT_BRIDGE_HB_X", value)


words = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="{}"),
                min_size=1, max_size=12)  # fmt: skip
heartbeats = st.builds(
    Heartbeat,
    name=st.just("PIPECAT_BRIDGE_HB_X"),
    at=st.floats(0, 4e9).map(lambda t: round(t, 3)),
    scope=st.builds(Scope, words, words),
    instance=st.from_regex(r"[a-z0-9][a-z0-9-]{0,15}", fullmatch=True),
)


@given(heartbeats)
def test_a_heartbeat_reads_back_as_written(hb: Heartbeat) -> None:
    assert parse_heartbeat(hb.name, hb.value()) == hb


@given(st.text(max_size=80))
def test_any_value_is_a_heartbeat_or_a_heartbeat_error(value: str) -> None:
    with contextlib.suppress(HeartbeatError):
        parse_heartbeat("PIPECAT_BRIDGE_HB_X", value)


# ---- the registry ----------------------------------------------------------------------


def test_registry_lists_heartbeat_variables_once_and_nothing_else() -> None:
    listed = "PIPECAT_BRIDGE_HB_A  PIPECAT_BRIDGE_HB_B PIPECAT_BRIDGE_HB_A junk PATH"
    assert parse_registry(listed) == ("PIPECAT_BRIDGE_HB_A", "PIPECAT_BRIDGE_HB_B")
    assert registry_with("", "PIPECAT_BRIDGE_HB_A") == "PIPECAT_BRIDGE_HB_A"
    assert registry_with(listed, "PIPECAT_BRIDGE_HB_A") is None
    assert registry_without(listed, ["PIPECAT_BRIDGE_HB_A"]) == "PIPECAT_BRIDGE_HB_B"
    assert registry_without(listed, ["PIPECAT_BRIDGE_HB_C"]) is None
    assert REGISTRY == "PIPECAT_BRIDGE_PEERS"


names = st.sets(st.from_regex(r"PIPECAT_BRIDGE_HB_[A-Z]{1,3}", fullmatch=True), max_size=6)


@given(names, names)
def test_bridges_adding_themselves_at_once_are_all_listed_within_as_many_beats(
    before: set[str], starting: set[str]
) -> None:
    """Every beat each missing one reads the same list and writes its own copy (the worst
    case: the last write wins): each beat lists at least one more, none is lost again."""
    listed = " ".join(sorted(before))
    for _beat in range(len(starting)):
        writes = [registry_with(listed, name) for name in sorted(starting)]
        listed = next((w for w in reversed(writes) if w is not None), listed)
    assert set(parse_registry(listed)) == before | starting


# ---- who is dead, who sweeps -----------------------------------------------------------


def test_a_silent_peer_is_swept_once_and_a_peer_that_comes_back_is_alive() -> None:
    a = watch("a")
    b_old = beat("b", 1000.0)
    first = a.observe(1010.0, [beat("a", 1009.0), b_old])
    assert first.dead == () and first.alive == tuple(sorted((a.me, b_old.name)))
    dead = a.observe(1016.0, [beat("a", 1015.0), b_old])
    assert dead.dead == dead.newly_dead == dead.to_sweep == (b_old,)
    a.swept(b_old)
    again = a.observe(1019.0, [beat("a", 1018.0), b_old])
    assert again.dead == (b_old,) and again.newly_dead == () and again.to_sweep == ()
    back = beat("b", 1020.0)
    revived = a.observe(1021.0, [beat("a", 1021.0), back])
    assert revived.revived == (back,) and revived.dead == ()
    dead_again = a.observe(1040.0, [beat("a", 1039.0), back])
    assert dead_again.to_sweep == (back,)  # a new life, a new death: swept again


def test_our_own_stale_heartbeat_never_makes_us_dead() -> None:
    a = watch("a")
    verdict = a.observe(5000.0, [beat("a", 1.0)])
    assert verdict.dead == () and verdict.alive == (a.me,)


def test_a_dead_peer_with_our_names_is_refused_never_swept() -> None:
    a = PeerWatch(heartbeat_name(scope_of("a")), Scope("pipecat", "pcb-"), GRACE)
    twin = beat("b", 0.0)  # pcb-b- ids start with our pcb-
    verdict = a.observe(100.0, [twin])
    assert verdict.refused == (twin,) and verdict.to_sweep == ()
    assert a.observe(101.0, [twin]).refused == ()  # said once


def test_the_sweeper_is_one_live_peer_and_moves_on_when_it_dies() -> None:
    alive = ["a", "c", "d"]
    chosen = sweeper_for("b", alive)
    assert chosen in alive and sweeper_for("b", reversed(alive)) == chosen
    assert sweeper_for("b", [p for p in alive if p != chosen]) != chosen
    assert sweeper_for("b", []) is None


peer_ids = st.sampled_from("abcdefgh")


@given(
    st.dictionaries(peer_ids, st.floats(0, 100), min_size=1),
    st.floats(0, 100),
)
def test_every_dead_peer_is_swept_by_exactly_one_live_peer(
    ages: dict[str, float], now_offset: float
) -> None:
    now = 1000.0 + now_offset
    beats = [beat(peer, now - age) for peer, age in ages.items()]
    live = [peer for peer, age in ages.items() if age <= GRACE]
    dead = {hb.name for hb, age in zip(beats, ages.values(), strict=True) if age > GRACE}
    sweeps = [hb.name for peer in live for hb in watch(peer).observe(now, beats).to_sweep]
    if live:
        assert sorted(sweeps) == sorted(dead)  # each one once, by one of them
    for peer in live:
        verdict = watch(peer).observe(now, beats)
        assert heartbeat_name(scope_of(peer)) not in {hb.name for hb in verdict.dead}
        assert all(now - hb.at > GRACE for hb in verdict.dead)


@given(st.lists(st.tuples(peer_ids, st.floats(0, 60)), max_size=30))
def test_a_death_is_swept_at_most_once_whatever_the_looks(
    looks: list[tuple[str, float]],
) -> None:
    """A run of looks, each with a heartbeat of one peer renewed or not: the same heartbeat
    (one peer's one life) is never handed out twice, ourselves never, a fresh one never."""
    a = watch("a")
    now = 1000.0
    latest: dict[str, Heartbeat] = {}
    handed: list[tuple[str, float]] = []
    for peer, step in looks:
        now += step
        if peer != "a" and step < 20:
            latest[peer] = beat(peer, now)  # that peer beats now, the others stay silent
        verdict = a.observe(now, [beat("a", now), *latest.values()])
        for hb in verdict.to_sweep:
            assert hb.name != a.me and now - hb.at > GRACE
            handed.append((hb.name, hb.at))
            a.swept(hb)
    assert len(handed) == len(set(handed))


# ---- settings --------------------------------------------------------------------------


def run_settings(*flags: str, **env: str) -> Settings:
    return parse_settings(["run", *flags], {"BRIDGE_ARI_PASSWORD": "pw", **env})


def test_peer_settings_defaults_flags_and_environment() -> None:
    s = run_settings()
    assert (s.peer_grace, s.heartbeat_interval, s.peer_scope, s.peer_sweep) == (15, 3, "", True)
    s = run_settings("--peer-grace", "20", "--heartbeat-interval", "2")
    assert (s.peer_grace, s.heartbeat_interval) == (20, 2)
    s = run_settings(BRIDGE_PEER_GRACE="0", BRIDGE_HEARTBEAT_INTERVAL="1.5")
    assert (s.peer_grace, s.heartbeat_interval) == (0, 1.5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--peer-grace", "-1"), "--peer-grace must be 0 \\(off\\) or a positive number"),
        (("--peer-grace", "soon"), "--peer-grace must be seconds"),
        (("--peer-grace", "inf"), "--peer-grace must be 0"),
        (("--heartbeat-interval", "0"), "--heartbeat-interval must be a positive number"),
        (("--peer-grace", "3"), "--peer-grace 3 must be longer than --heartbeat-interval 3"),
        (("--app", "my app"), "--app 'my app': with --peer-grace it is named in a heartbeat"),
        (("--id-prefix", ""), "--id-prefix '': with --peer-grace"),
        (
            ("--app", "pipecat-h-0", "--peer-scope", "pipecat-x-{tag} pcb-x-{tag}-"),
            "does not cover --app 'pipecat-h-0'",
        ),
        (("--peer-scope", "a-{tag}-{tag} p-"), "may hold one"),
    ],
)
def test_bad_peer_settings_are_config_errors(flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_settings(*flags)


def test_peers_off_allows_what_a_heartbeat_could_not_say() -> None:
    s = run_settings("--peer-grace", "0", "--app", "my app", "--id-prefix", "")
    assert (s.peer_grace, s.app, s.id_prefix) == (0, "my app", "")


def test_a_workers_flags_give_it_the_host_scope() -> None:
    plan = plan_worker(Settings(ari_password="pw", workers=2), "h1", 1, 1)
    s = run_settings("--workers", "2", *plan.flags())
    assert (s.app, s.peer_scope, s.peer_sweep) == (
        "pipecat-h1-1g1", "pipecat-h1-{tag} pcb-h1-{tag}-", False)  # fmt: skip
    assert s.instance_id == "h1"


def test_check_warns_of_a_grace_shorter_than_three_heartbeats() -> None:
    assert check_peers(Settings()).line() == (
        "OK    --peer-grace 15 s with a heartbeat every 3 s (every host's clock needs NTP)"
    )
    short = check_peers(Settings(peer_grace=5, heartbeat_interval=2))
    assert short.status is Status.WARN
    assert short.line() == (
        "WARN  --peer-grace 5 s with a heartbeat every 2 s: a peer missing two heartbeats is "
        "swept as dead: give --peer-grace 6 or more"
    )
    assert check_peers(Settings(peer_grace=0)).status is Status.OK
