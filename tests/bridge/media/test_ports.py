from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bridge.errors import ConfigError
from bridge.media.ports import PortPool


def assert_acquires(pool: PortPool, expected: list[int]) -> None:
    assert [pool.acquire() for _ in expected] == expected


def test_only_even_ports_are_handed_out() -> None:
    pool = PortPool(20000, 20009)
    assert pool.size == 5
    assert_acquires(pool, [20000, 20002, 20004, 20006, 20008])
    assert pool.in_use == 5


def test_odd_low_bound_starts_at_the_next_even_port() -> None:
    pool = PortPool(20001, 20006)
    assert pool.size == 3
    assert_acquires(pool, [20002, 20004, 20006])


def test_odd_high_bound_is_not_used() -> None:
    pool = PortPool(20000, 20003)
    assert_acquires(pool, [20000, 20002])
    assert pool.acquire() is None


def test_single_even_port() -> None:
    pool = PortPool(30000, 30000)
    assert pool.acquire() == 30000
    assert pool.acquire() is None


@pytest.mark.parametrize(("low", "high"), [(20001, 20001), (30001, 30000), (20000, 19999)])
def test_range_with_no_even_port_is_a_config_error(low: int, high: int) -> None:
    with pytest.raises(ConfigError, match=f"port range {low}-{high} holds no even port"):
        PortPool(low, high)


def test_exhausted_pool_returns_none_until_a_release() -> None:
    pool = PortPool(20000, 20003)
    assert_acquires(pool, [20000, 20002])
    assert pool.acquire() is None
    assert pool.acquire() is None
    pool.release(20002)
    assert pool.in_use == 1
    assert pool.acquire() == 20002
    assert pool.acquire() is None


def test_released_port_is_not_handed_out_again_at_once() -> None:
    pool = PortPool(20000, 20005)
    first = pool.acquire()
    assert first == 20000
    pool.release(first)
    # The next calls get the other ports before 20000 comes round again.
    assert_acquires(pool, [20002, 20004, 20000])


def test_round_robin_skips_ports_still_in_use() -> None:
    pool = PortPool(20000, 20007)
    assert_acquires(pool, [20000, 20002, 20004, 20006])
    pool.release(20002)
    pool.release(20006)
    assert_acquires(pool, [20002, 20006])
    assert pool.acquire() is None


def test_releasing_a_free_or_foreign_port_is_harmless() -> None:
    pool = PortPool(20000, 20003)
    pool.release(20000)
    pool.release(12345)
    assert pool.in_use == 0
    assert_acquires(pool, [20000, 20002])


@given(
    low=st.integers(1024, 65535),
    span=st.integers(0, 40),
    ops=st.lists(st.booleans(), max_size=200),
)
def test_pool_invariants(low: int, span: int, ops: list[bool]) -> None:
    """Whatever the acquire/release order: even ports inside the range, never one twice."""
    high = min(low + span, 65535)
    assume(not (low % 2 and low == high))
    pool = PortPool(low, high)
    held: list[int] = []
    for acquire in ops:
        if acquire:
            port = pool.acquire()
            if port is None:
                assert len(held) == pool.size
            else:
                assert port % 2 == 0 and low <= port <= high
                assert port not in held
                held.append(port)
        elif held:
            pool.release(held.pop(0))
        assert pool.in_use == len(held)
