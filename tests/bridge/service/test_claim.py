"""The claim policy: who claims a broadcast call, and after how long (pure; `now` by hand)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.service.claim import (
    DEFAULT_TIMEOUT,
    ClaimPolicy,
    broadcast_args,
    broadcast_timeout,
    load_of,
)

POLICY = ClaimPolicy()


def test_idle_claims_at_once() -> None:
    assert POLICY.claim_at(10.0, refused="", healthy=True, active=0, max_calls=10) == 10.0


def test_refused_or_deaf_never_claims() -> None:
    for refused, healthy in (("bridge draining", True), ("max calls reached", True), ("", False)):
        assert POLICY.claim_at(0.0, refused=refused, healthy=healthy, active=0,
                               max_calls=10) is None  # fmt: skip


def test_full_waits_the_whole_cap() -> None:
    at = POLICY.claim_at(1.0, refused="", healthy=True, active=10, max_calls=10)
    assert at == 1.0 + 0.150


def test_the_cap_stays_inside_a_short_broadcast() -> None:
    at = POLICY.claim_at(0.0, refused="", healthy=True, active=10, max_calls=10,
                         app_data="300,^pipecat")  # fmt: skip
    assert at == pytest.approx(0.1)  # a third of 300 ms


def test_broadcast_timeout_and_args_from_the_dialplan() -> None:
    assert broadcast_timeout("1000,^pipecat") == 1.0
    assert broadcast_timeout("") == broadcast_timeout(",^pipecat") == DEFAULT_TIMEOUT
    assert broadcast_args("500,^pipecat,bot=sales:transport=audiosocket,yes") == [
        "bot=sales", "transport=audiosocket"]  # fmt: skip
    assert broadcast_args("500,^pipecat") == broadcast_args("500,^pipecat,,yes") == []


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000))
def test_load_is_monotonic_and_bounded(a: int, b: int, max_calls: int) -> None:
    low, high = sorted((a, b))
    assert 0.0 <= load_of(low, max_calls) <= load_of(high, max_calls) <= 1.0
    assert load_of(0, max_calls) == 0.0


@given(
    st.floats(0, 1e6, allow_nan=False),
    st.integers(0, 5000),
    st.integers(0, 5000),
    st.integers(0, 2000),
    st.integers(1, 60_000),
)
def test_delay_grows_with_load_and_stays_well_inside_the_timeout(
    now: float, active: int, max_calls: int, cap_ms: int, timeout_ms: int
) -> None:
    policy = ClaimPolicy(cap_ms / 1000)
    app_data = f"{timeout_ms},^pipecat"
    at = policy.claim_at(now, refused="", healthy=True, active=active, max_calls=max_calls,
                         app_data=app_data)  # fmt: skip
    assert at is not None
    delay = at - now
    assert -1e-9 <= delay <= min(cap_ms / 1000, timeout_ms / 3000) + 1e-6
    busier = policy.claim_at(now, refused="", healthy=True, active=active + 1,
                             max_calls=max_calls, app_data=app_data)  # fmt: skip
    assert busier is not None and busier >= at
