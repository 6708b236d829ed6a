"""Modular arithmetic for RTP sequence numbers (16 bits) and timestamps (32 bits).

Sequence numbers are compared with RFC 1982 serial-number arithmetic: `a` is "after" `b`
when it lies less than half the number space ahead. Exactly half-way is undefined by the
RFC; here it counts as behind (`uint16_diff` returns -32768 and `uint16_gt` is False both
ways), which keeps `uint16_gt(a, b) == (uint16_diff(a, b) > 0)` true for every pair.
"""

from __future__ import annotations

_U16 = 0xFFFF
_U16_HALF = 0x8000
_U32 = 0xFFFFFFFF


def uint16_add(a: int, b: int) -> int:
    return (a + b) & _U16


def uint16_gt(a: int, b: int) -> bool:
    """True if `a` comes after `b` in RFC 1982 serial order."""
    return (a < b and b - a > _U16_HALF) or (a > b and a - b < _U16_HALF)


def uint16_diff(a: int, b: int) -> int:
    """Signed distance from `b` to `a`, in [-32768, 32767]: `uint16_add(b, d) == a`."""
    return ((a - b + _U16_HALF) & _U16) - _U16_HALF


def uint32_add(a: int, b: int) -> int:
    return (a + b) & _U32
