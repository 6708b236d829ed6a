"""The reconnect policy with a hand clock: which closes re-dial, the backoff, the window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.call.reconnect import (
    BACKOFF,
    REDEPLOY_CODES,
    STABLE_AFTER,
    ReconnectPolicy,
    Reconnects,
    backoff,
    is_redeploy,
)


@pytest.mark.parametrize("code", [1001, 1006, 1011, 1012, 1013])
def test_redeploy_codes_re_dial(code: int) -> None:
    r = Reconnects(ReconnectPolicy())
    assert r.on_drop(code, now=10.0) == ""
    assert r.next_dial_at == 10.0 + BACKOFF[0]
    assert r.deadline == 13.0


@pytest.mark.parametrize("code", [1000, None, 1002, 1003, 1007, 1008, 1009, 4000])
def test_other_closes_are_final(code: int | None) -> None:
    r = Reconnects(ReconnectPolicy())
    assert "final" in r.on_drop(code, now=0.0)
    assert r.next_dial_at is None and r.deadline is None


@given(st.one_of(st.none(), st.integers(min_value=0, max_value=65535)))
def test_only_the_listed_codes_are_a_redeploy(code: int | None) -> None:
    assert is_redeploy(code) == (code in REDEPLOY_CODES)


def test_window_zero_or_no_resumes_turns_it_off() -> None:
    assert Reconnects(ReconnectPolicy(window=0)).on_drop(1012, 0.0) == "reconnects are off"
    assert Reconnects(ReconnectPolicy(max_resumes=0)).on_drop(1012, 0.0) == "reconnects are off"


@pytest.mark.parametrize(
    "kwargs", [{"window": -1.0}, {"window": float("nan")}, {"max_resumes": -1}, {"hold": "jazz"}]
)
def test_bad_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**kwargs)  # type: ignore[arg-type]


def test_backoff_doubles_then_stays_at_one_second() -> None:
    assert [backoff(n) for n in range(8)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_failed_dials_follow_the_backoff_until_the_window_closes() -> None:
    r = Reconnects(ReconnectPolicy(window=3.0))
    now = 100.0
    assert r.on_drop(1006, now) == ""
    dial_times, budgets = [], []
    while r.next_dial_at is not None:
        now = r.next_dial_at
        dial_times.append(round(now - 100.0, 3))
        budgets.append(round(r.dial_started(now), 3))
        now += 0.01  # refused at once
        r.dial_failed(now)
    assert dial_times == [0.0, 0.11, 0.32, 0.73, 1.54, 2.55]
    assert budgets == [round(3.0 - t, 3) for t in dial_times]
    assert all(t < 3.0 for t in dial_times)  # none starts at or past the deadline


@given(
    window=st.floats(min_value=0.05, max_value=30),
    fail_after=st.lists(st.floats(min_value=0, max_value=5), max_size=40),
)
def test_no_dial_starts_past_the_deadline_and_budgets_end_there(
    window: float, fail_after: list[float]
) -> None:
    r = Reconnects(ReconnectPolicy(window=window))
    assert r.on_drop(1012, 0.0) == ""
    for took in fail_after:
        if r.next_dial_at is None:
            break
        start = r.next_dial_at
        assert start < window
        budget = r.dial_started(start)
        assert start + budget == pytest.approx(window)
        r.dial_failed(start + min(took, budget))


def test_a_resumed_session_that_drops_soon_is_the_same_outage() -> None:
    r = Reconnects(ReconnectPolicy(window=3.0))
    assert r.on_drop(1012, 0.0) == ""
    r.dial_started(0.0)
    assert r.resumed(0.5) == 1
    assert r.on_drop(1012, 2.0) == ""  # within STABLE_AFTER: the same deadline
    assert r.deadline == 3.0
    r.dial_started(2.0)
    assert r.resumed(2.9) == 2
    assert "window" in r.on_drop(1011, 3.5)  # still the same outage, now past its deadline


def test_a_session_up_long_enough_ends_the_outage() -> None:
    r = Reconnects(ReconnectPolicy(window=3.0))
    assert r.on_drop(1012, 0.0) == ""
    r.dial_started(0.0)
    r.resumed(1.0)
    assert r.on_drop(1001, 1.0 + STABLE_AFTER) == ""  # a new outage, a new window
    assert r.deadline == 1.0 + STABLE_AFTER + 3.0
    assert r.gap(7.0) == pytest.approx(1.0)


def test_at_most_max_resumes_per_call() -> None:
    r = Reconnects(ReconnectPolicy(window=3.0, max_resumes=2))
    now = 0.0
    for count in (1, 2):
        assert r.on_drop(1012, now) == ""
        r.dial_started(now)
        assert r.resumed(now + 0.1) == count
        now += STABLE_AFTER + 1  # every outage over: only the count stops it
    assert "no resumes left" in r.on_drop(1012, now)
