"""--workers N, the pure part: names, port slices, shares of --max-calls, backoff, the
workers' sd_notify datagrams; and the orphan round counter."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from bridge.errors import ConfigError
from bridge.service.config import Settings, parse_settings, parse_workers
from bridge.service.orphans import MAX_ROUNDS, rounds_from
from bridge.service.supervisor import check_plans
from bridge.service.workers import (
    backoff_delay,
    calls_in_status,
    default_instance_id,
    parse_http_address,
    parse_notify,
    piece_index,
    plan_worker,
    rtp_slices,
    shifted_listen,
    split_calls,
    worker_http_listen,
    worker_tag,
)

ENV = {"BRIDGE_ARI_PASSWORD": "pw"}


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"ari_password": "pw", "workers": 2, "rtp_ports": (20000, 20999)}
    base.update(overrides)
    return dataclasses.replace(Settings(), **base)  # type: ignore[arg-type]


def test_instance_id_from_the_host_name() -> None:
    assert default_instance_id("Bridge01.example.com") == "bridge01"
    assert default_instance_id("my_host") == "my-host"
    assert default_instance_id("___") == "host"
    long_a, long_b = default_instance_id("bridge-host-01"), default_instance_id("bridge-host-02")
    assert long_a != long_b
    assert len(long_a) <= 12 and long_a.startswith("bridge-")
    assert all(c.isalnum() or c == "-" for c in long_a)


def test_names_carry_instance_slot_and_generation() -> None:
    s = settings(app="pipecat", id_prefix="pcb-")
    first = plan_worker(s, "h1", 0, 0)
    assert (first.app, first.id_prefix, first.tag) == ("pipecat-h1-0", "pcb-h1-0-", "0")
    later = plan_worker(s, "h1", 1, 3)
    assert (later.app, later.id_prefix, later.tag) == ("pipecat-h1-1g3", "pcb-h1-1g3-", "1g3")
    # No prefix is a prefix of another worker's: slot 1 never sweeps slot 10's ids.
    assert not "pcb-h1-10-br-x".startswith(plan_worker(settings(workers=11), "h1", 1, 0).id_prefix)
    assert worker_tag(2, 0) == "2" and worker_tag(2, 1) == "2g1"


def test_rtp_range_is_cut_in_two_halves_of_n_even_slices() -> None:
    assert rtp_slices(20000, 20999, 2) == [
        (20000, 20249), (20250, 20499), (20500, 20749), (20750, 20999),
    ]  # fmt: skip
    assert rtp_slices(20001, 20011, 1) == [(20002, 20005), (20006, 20009)]
    with pytest.raises(ConfigError, match="too small for 4 workers"):
        rtp_slices(20000, 20010, 4)


def test_old_and_new_generation_of_a_slot_never_share_ports() -> None:
    s = settings(workers=3)
    for slot in range(3):
        for gen in range(4):
            old, new = plan_worker(s, "h", slot, gen), plan_worker(s, "h", slot, gen + 1)
            assert old.rtp_ports[1] < new.rtp_ports[0] or new.rtp_ports[1] < old.rtp_ports[0]
    assert [piece_index(1, g, 3) for g in range(4)] == [1, 4, 1, 4]
    ranges = sorted(plan_worker(s, "h", slot, g).rtp_ports for slot in range(3) for g in (0, 1))
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))


def test_max_calls_is_for_the_host() -> None:
    assert split_calls(0, 3) == [0, 0, 0]
    assert split_calls(10, 3) == [4, 3, 3]
    assert sum(split_calls(201, 4)) == 201
    with pytest.raises(ConfigError, match="fewer than --workers"):
        split_calls(1, 2)  # a worker with 0 would mean "no limit"
    assert [plan_worker(settings(max_calls=9), "h", s, 0).max_calls for s in (0, 1)] == [5, 4]


def test_listener_ports_move_with_the_slice() -> None:
    assert shifted_listen("127.0.0.1:9092", 3, "--x") == "127.0.0.1:9095"
    assert shifted_listen("[::1]:8089", 1, "--x") == "[::1]:8090"
    assert shifted_listen("", 3, "--x") == ""
    assert shifted_listen("127.0.0.1:0", 3, "--x") == "127.0.0.1:0"
    with pytest.raises(ConfigError, match="past 65535"):
        shifted_listen("127.0.0.1:65535", 1, "--x")
    plan = plan_worker(settings(audiosocket_listen="127.0.0.1:9092"), "h", 1, 1)
    assert plan.audiosocket_listen == "127.0.0.1:9098"  # piece 1 + 2, two ports a piece


def test_the_default_listeners_interleave_and_colliding_ones_are_refused() -> None:
    s = settings(audiosocket_listen="127.0.0.1:9092", websocket_listen="127.0.0.1:9093")
    plans = [plan_worker(s, "h", slot, gen) for gen in (0, 1) for slot in (0, 1)]
    audiosocket = [p.audiosocket_listen for p in plans]
    websocket = [p.websocket_listen for p in plans]
    assert audiosocket == ["127.0.0.1:9092", "127.0.0.1:9094", "127.0.0.1:9096", "127.0.0.1:9098"]
    assert websocket == ["127.0.0.1:9093", "127.0.0.1:9095", "127.0.0.1:9097", "127.0.0.1:9099"]
    with pytest.raises(ConfigError, match="--websocket-listen and --audiosocket-listen both"):
        plan_worker(settings(audiosocket_listen="127.0.0.1:9092",
                             websocket_listen="127.0.0.1:9094"), "h", 0, 0)  # fmt: skip
    with pytest.raises(ConfigError, match="--http-listen and"):
        plan_worker(settings(audiosocket_listen="127.0.0.1:8090", websocket_listen="",
                             http_listen="127.0.0.1:8089"), "h", 0, 0)  # fmt: skip


def test_the_workers_http_apis_are_loopback_past_the_hosts_port() -> None:
    # The supervisor binds --http-listen; piece i's worker 127.0.0.1:port + 1 + i.
    ports = [
        plan_worker(settings(http_listen="0.0.0.0:8089"), "h", slot, gen).http_listen
        for gen in (0, 1)
        for slot in (0, 1)
    ]
    assert ports == ["127.0.0.1:8090", "127.0.0.1:8091", "127.0.0.1:8092", "127.0.0.1:8093"]
    assert worker_http_listen("[::1]:8089", 0) == "127.0.0.1:8090"
    assert worker_http_listen("127.0.0.1:0", 3) == "127.0.0.1:0"  # any free port, said later
    assert worker_http_listen("", 3) == ""  # no host API, no worker APIs
    with pytest.raises(ConfigError, match="past 65535"):
        check_plans(settings(http_listen="127.0.0.1:65532"), "h")  # 4 pieces past 65532
    assert parse_http_address("127.0.0.1:8090") == ("127.0.0.1", 8090)
    assert parse_http_address("[::1]:8090") == ("::1", 8090)
    for bad in ("", "8090", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:0", "h:70000"):
        assert parse_http_address(bad) is None


def test_worker_flags_override_the_supervisors() -> None:
    plan = plan_worker(settings(), "h", 1, 0, spool_base="/var/lib/pb/webhooks.sqlite3")
    flags = plan.flags()
    parsed = parse_settings(["run", "--workers", "2", "--app", "other", *flags], ENV)
    assert parsed.workers == 1
    assert (parsed.app, parsed.id_prefix) == ("pipecat-h-1", "pcb-h-1-")
    assert parsed.rtp_ports == plan.rtp_ports
    assert parsed.webhook_spool == "/var/lib/pb/webhooks-1.sqlite3"


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(1, base=0.5, cap=1.0) == 0.5


def test_workers_setting() -> None:
    assert parse_settings(["run"], ENV).workers == 1
    assert parse_settings(["run", "--workers", "3"], ENV).workers == 3
    assert parse_settings(["run"], {**ENV, "BRIDGE_WORKERS": "auto"}).workers >= 1
    assert parse_workers("AUTO") >= 1
    for bad in ("0", "two", "-1"):
        with pytest.raises(ConfigError, match="--workers"):
            parse_workers(bad)
    with pytest.raises(ConfigError, match="--instance-id"):
        parse_settings(["run", "--instance-id", "Bad_Name"], ENV)
    check_plans(settings(workers=4), "h")
    with pytest.raises(ConfigError):
        check_plans(settings(workers=4, rtp_ports=(20000, 20010)), "h")


def test_worker_notify_datagrams() -> None:
    assert parse_notify(b"READY=1\nSTATUS=3 calls active") == {
        "READY": "1", "STATUS": "3 calls active",
    }  # fmt: skip
    assert parse_notify(b"garbage\n=x\n\xff=1") == {"\ufffd": "1"}
    assert calls_in_status("draining: 12 calls active") == 12
    assert calls_in_status("draining: 2 calls") is None


def test_orphan_rounds() -> None:
    assert rounds_from(None) == 0
    assert rounds_from("") == 0
    assert rounds_from("1") == 1
    assert rounds_from("x") == MAX_ROUNDS  # unreadable: the fallback, never a loop
    assert rounds_from("-4") == 0
