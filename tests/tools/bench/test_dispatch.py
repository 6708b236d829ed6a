"""StasisBroadcast as the load generator plays it (as recorded in broadcast_claim), and the
dispatch numbers the bench prints. Times are passed in by hand."""

from __future__ import annotations

import math

import pytest

from bridge.tools.bench.dispatch import (
    CLAIMED,
    GONE,
    WON,
    Offers,
    percentiles,
    policy_wait,
    shares,
    split_deviation,
    summarize,
)

APPS = ("pipecat-bench-0", "pipecat-bench-1")


def test_first_claim_wins_the_others_409() -> None:
    offers = Offers(timeout=0.5)
    offers.offer("c1", APPS, now=10.0)
    assert offers.claim("c1", APPS[1], now=10.002) == WON
    assert offers.claim("c1", APPS[0], now=10.003) == CLAIMED
    # Still 409 later, while the winner's session runs (the recording's second claim).
    assert offers.claim("c1", APPS[0], now=11.0) == CLAIMED
    offer = offers.offers["c1"]
    assert offer.winner == APPS[1]
    assert offer.latency == pytest.approx(0.002)


def test_after_the_hang_up_or_for_an_unknown_channel_404() -> None:
    offers = Offers(timeout=0.5)
    offers.offer("c1", APPS, now=0.0)
    offers.claim("c1", APPS[0], now=0.001)
    offers.forget("c1")
    assert offers.claim("c1", APPS[1], now=0.002) == GONE
    assert offers.claim("nosuch.1", APPS[1], now=0.002) == GONE
    assert offers.stray_claims == 1


def test_nobody_claims_within_the_timeout() -> None:
    offers = Offers(timeout=0.5)
    offers.offer("c1", APPS, now=0.0)
    offers.offer("c2", APPS, now=0.3)
    assert offers.expire(now=0.5) == []  # exactly at the timeout: still open
    assert offers.expire(now=0.6) == ["c1"]
    assert offers.claim("c1", APPS[0], now=0.61) == GONE
    # A claim past the timeout that `expire` has not seen yet is as late.
    assert offers.claim("c2", APPS[0], now=0.81) == GONE
    assert offers.timed_out == ["c1", "c2"]
    assert offers.expire(now=5.0) == []


def test_an_offer_is_made_once() -> None:
    offers = Offers(timeout=0.5)
    offers.offer("c1", APPS, now=0.0)
    with pytest.raises(ValueError):
        offers.offer("c1", APPS, now=0.1)
    with pytest.raises(ValueError):
        Offers(timeout=0)


def test_policy_wait_is_the_least_loaded_apps() -> None:
    # The bridge's policy: load = n / (n + 100) without --max-calls, times min(150 ms, T/3).
    assert policy_wait({"a": 0, "b": 50}, timeout=0.5) == 0.0
    assert policy_wait({"a": 100, "b": 300}, timeout=0.5) == pytest.approx(0.075)
    assert policy_wait({"a": 100}, timeout=0.5, max_delay_ms=0) == 0.0
    assert policy_wait({"a": 10}, timeout=0.5, max_calls=20) == pytest.approx(0.075)
    assert policy_wait({"a": 100}, timeout=0.15) == pytest.approx(0.025)  # a third of T
    assert math.isnan(policy_wait({}, timeout=0.5))


def test_shares_and_split_deviation() -> None:
    assert shares({"a": 110, "b": 90}) == {"a": 0.55, "b": 0.45}
    assert split_deviation({"a": 110, "b": 90}) == pytest.approx(0.1)
    assert split_deviation({"a": 100, "b": 100}) == 0.0
    assert split_deviation({"a": 200, "b": 0}) == pytest.approx(1.0)
    assert split_deviation({"a": 30, "b": 30, "c": 60}) == pytest.approx(0.5)
    assert math.isnan(split_deviation({})) and math.isnan(split_deviation({"a": 0}))
    assert math.isnan(shares({"a": 0})["a"])


def test_percentiles_interpolate_like_numpy() -> None:
    assert percentiles([1.0, 2.0, 3.0, 4.0], 50, 100) == (2.5, 4.0)
    assert percentiles([5.0], 50, 99) == (5.0, 5.0)
    values = [float(v) for v in range(101)]
    assert percentiles(values, 99) == (99.0,)
    assert all(math.isnan(v) for v in percentiles([], 50, 99))


def test_summary_of_a_run() -> None:
    offers = Offers(timeout=0.5)
    for i, (winner, after) in enumerate([(0, 0.001), (1, 0.003), (0, 0.002), (1, 0.004)]):
        cid = f"c{i}"
        offers.offer(cid, APPS, now=float(i), policy_wait=0.001)
        offers.claim(cid, APPS[winner], now=i + after)
        offers.claim(cid, APPS[1 - winner], now=i + after + 0.001)
    offers.offer("late", APPS, now=10.0)
    offers.expire(now=11.0)
    offers.claim("late", APPS[0], now=11.0)
    out = summarize(offers.offers.values(), [*APPS, "pipecat-bench-2"])
    assert out["offered"] == 5 and out["unclaimed"] == 1
    assert out["apps"] == {
        APPS[0]: {"won": 2, "lost_409": 2, "lost_404": 1},
        APPS[1]: {"won": 2, "lost_409": 2, "lost_404": 0},
        "pipecat-bench-2": {"won": 0, "lost_409": 0, "lost_404": 0},
    }
    assert out["lost_claims"] == 5
    assert out["shares"][APPS[0]] == 0.5 and out["shares"]["pipecat-bench-2"] == 0.0
    assert out["split_deviation"] == pytest.approx(1.0)  # a third app took nothing
    assert out["latency_ms"]["p50"] == pytest.approx(2.5)
    assert out["latency_ms"]["max"] == pytest.approx(4.0)
    assert out["policy_wait_ms"]["p99"] == pytest.approx(1.0)
    assert out["added_ms"]["p50"] == pytest.approx(1.5)
    assert out["latencies_ms"] == [1.0, 3.0, 2.0, 4.0]
