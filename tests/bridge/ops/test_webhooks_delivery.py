"""The pure retry policy and delivery queue, with `now` given by hand."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.ops.delivery import (
    RETRY_SCHEDULE,
    Delivery,
    DeliveryQueue,
    Outcome,
    Result,
    RetryPolicy,
    Verdict,
    classify,
)

T0 = 1_700_000_000.0


def make_delivery(key: int = 1, created_at: float = T0) -> Delivery:
    return Delivery(key, f"msg_{key}", "call.ended", "http://127.0.0.1/h", b"{}", created_at,
                    next_at=created_at)  # fmt: skip


def attempt_times(policy: RetryPolicy, created_at: float, took: float = 0.0) -> list[float]:
    """When a delivery that always fails is tried, each try taking `took` seconds."""
    queue = DeliveryQueue(policy)
    delivery = make_delivery(created_at=created_at)
    queue.add(delivery)
    times: list[float] = []
    while (timer := queue.next_timer()) is not None:
        assert queue.pop_due(timer - 1e-6, 1) == []
        [due] = queue.pop_due(timer, 1)
        times.append(timer)
        result = queue.record(due, 500, timer + took)
        assert result.verdict in (Verdict.RETRY, Verdict.DROPPED)
    assert result.verdict is Verdict.DROPPED and result.reason == "window"
    assert len(queue) == 0
    return times


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (299, Outcome.DELIVERED),
        (None, Outcome.RETRY), (500, Outcome.RETRY), (503, Outcome.RETRY),
        (408, Outcome.RETRY), (429, Outcome.RETRY), (301, Outcome.RETRY), (307, Outcome.RETRY),
        (400, Outcome.FINAL), (401, Outcome.FINAL), (404, Outcome.FINAL), (410, Outcome.FINAL),
        (100, Outcome.FINAL),
    ],
)  # fmt: skip
def test_classify(status: int | None, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_default_schedule_tries_eight_times_in_the_hour() -> None:
    times = attempt_times(RetryPolicy(), T0)
    assert [t - T0 for t in times] == [0, 1, 5, 20, 80, 380, 1280, 3080]
    assert times[1] - times[0] <= 5  # the first retry within 5 s


def test_the_last_delay_repeats() -> None:
    policy = RetryPolicy(schedule=(1.0, 10.0), window=35.0)
    assert [policy.delay(n) for n in (1, 2, 3, 9)] == [1.0, 10.0, 10.0, 10.0]
    assert [t - T0 for t in attempt_times(policy, T0)] == [0, 1, 11, 21, 31]


def test_zero_window_tries_once() -> None:
    assert attempt_times(RetryPolicy(window=0.0), T0) == [T0]


@pytest.mark.parametrize("schedule", [(), (0.0,), (1.0, -1.0)])
def test_bad_schedule_refused(schedule: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="positive delays"):
        RetryPolicy(schedule=schedule)


def test_delivered_and_refused_leave_the_queue() -> None:
    queue = DeliveryQueue()
    ok, refused = make_delivery(1), make_delivery(2)
    queue.add(ok)
    queue.add(refused)
    assert queue.pop_due(T0, 10) == [ok, refused]
    assert len(queue) == 2  # in flight still count
    assert queue.record(ok, 204, T0 + 0.1).verdict is Verdict.DELIVERED
    result = queue.record(refused, 403, T0 + 0.1)
    assert (result.verdict, result.reason) == (Verdict.DROPPED, "refused")
    assert len(queue) == 0 and queue.next_timer() is None
    assert ok.attempts == refused.attempts == 1


def test_timeout_retried_from_when_it_ended() -> None:
    queue = DeliveryQueue()
    delivery = make_delivery()
    queue.add(delivery)
    [due] = queue.pop_due(T0, 1)
    result = queue.record(due, None, T0 + 5.0)  # a 5 s timeout
    assert result == Result(Verdict.RETRY, next_at=T0 + 6.0)
    assert queue.next_timer() == T0 + 6.0


def test_pop_due_honours_limit_and_order() -> None:
    queue = DeliveryQueue()
    later, sooner, soonest = make_delivery(1), make_delivery(2), make_delivery(3)
    later.next_at, sooner.next_at, soonest.next_at = T0 + 3, T0 + 2, T0 + 1
    for delivery in (later, sooner, soonest):
        queue.add(delivery)
    assert queue.pop_due(T0, 5) == []
    assert queue.pop_due(T0 + 5, 2) == [soonest, sooner]
    assert queue.next_timer() == T0 + 3
    queue.abandon(soonest)
    queue.abandon(sooner)
    assert len(queue) == 1


def test_expired() -> None:
    queue = DeliveryQueue(RetryPolicy(window=60.0))
    delivery = make_delivery()
    assert not queue.expired(delivery, T0 + 60)
    assert queue.expired(delivery, T0 + 60.001)


@settings(deadline=None)
@given(
    schedule=st.lists(st.floats(1.0, 1e4), min_size=1, max_size=8).map(tuple),
    window=st.floats(0.0, 1e4),
    took=st.floats(0.0, 30.0),
    created_at=st.floats(0.0, 2e9),
)
def test_any_policy_tries_in_order_within_the_window(
    schedule: tuple[float, ...], window: float, took: float, created_at: float
) -> None:
    policy = RetryPolicy(schedule=schedule, window=window)
    times = attempt_times(policy, created_at, took)
    assert times[0] == created_at
    assert all(b > a for a, b in itertools.pairwise(times))
    assert all(t <= created_at + window for t in times)
    if len(times) > 1:
        assert times[1] - times[0] == pytest.approx(took + schedule[0], abs=1e-5)
    assert len(times) <= 1 + window / min(schedule) + 1


def test_default_schedule_is_the_documented_one() -> None:
    assert RETRY_SCHEDULE == (1.0, 4.0, 15.0, 60.0, 300.0, 900.0, 1800.0)
