from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rtp.seq import uint16_add, uint16_diff, uint16_gt, uint32_add

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def test_uint16_add_wraps() -> None:
    assert uint16_add(65535, 1) == 0
    assert uint16_add(65530, 10) == 4
    assert uint16_add(1, 2) == 3


def test_uint32_add_wraps() -> None:
    assert uint32_add(0xFFFFFFFF, 1) == 0
    assert uint32_add(0xFFFFFF00, 0x200) == 0x100
    assert uint32_add(160, 160) == 320


def test_uint16_gt_across_wrap() -> None:
    assert uint16_gt(0, 65535)
    assert not uint16_gt(65535, 0)
    assert uint16_gt(5, 65530)
    assert uint16_gt(2, 1)
    assert not uint16_gt(1, 2)
    assert not uint16_gt(7, 7)


def test_uint16_diff_examples() -> None:
    assert uint16_diff(0, 65535) == 1
    assert uint16_diff(65535, 0) == -1
    assert uint16_diff(5, 65530) == 11
    assert uint16_diff(100, 300) == -200
    assert uint16_diff(0x7FFF, 0) == 32767


def test_half_way_is_behind_in_both_directions() -> None:
    assert uint16_diff(0x8000, 0) == -32768
    assert uint16_diff(0, 0x8000) == -32768
    assert not uint16_gt(0x8000, 0)
    assert not uint16_gt(0, 0x8000)


@given(u16, u16)
def test_diff_is_the_inverse_of_add(a: int, b: int) -> None:
    distance = uint16_diff(a, b)
    assert -32768 <= distance <= 32767
    assert uint16_add(b, distance) == a


@given(u16, u16)
def test_gt_agrees_with_diff(a: int, b: int) -> None:
    assert uint16_gt(a, b) == (uint16_diff(a, b) > 0)
    assert not (uint16_gt(a, b) and uint16_gt(b, a))


@given(u16, st.integers(1, 32767))
def test_anything_less_than_half_ahead_is_greater(base: int, step: int) -> None:
    ahead = uint16_add(base, step)
    assert uint16_gt(ahead, base)
    assert not uint16_gt(base, ahead)
    assert uint16_diff(ahead, base) == step
    assert uint16_diff(base, ahead) == -step


@given(u32, u32)
def test_uint32_add_stays_in_range(a: int, b: int) -> None:
    total = uint32_add(a, b)
    assert 0 <= total <= 0xFFFFFFFF
    assert total == (a + b) % 2**32
