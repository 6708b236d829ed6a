"""The pool of local RTP ports the bridge binds for ExternalMedia, pure bookkeeping."""

from __future__ import annotations

from bridge.errors import ConfigError


def parse_port_range(text: str) -> tuple[int, int]:
    """'20000-20999' -> (20000, 20999); a single port is a range of one."""
    lo_text, _, hi_text = text.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if hi_text else lo
    except ValueError:
        raise ConfigError(f"bad port range {text!r}: expected LOW-HIGH") from None
    if not 1024 <= lo <= hi <= 65535:
        raise ConfigError(f"bad port range {text!r}: need 1024 <= LOW <= HIGH <= 65535")
    return lo, hi


class PortPool:
    """Hands out even ports round-robin.

    Even ports because RTP convention (RFC 3550 §11) keeps the odd neighbour for RTCP, and
    Asterisk's own range does the same. Round-robin rather than lowest-free so a port is not
    reused at once: late packets of the previous call would otherwise land in the next one.
    """

    def __init__(self, low: int, high: int) -> None:
        first = low + (low % 2)
        self._ports = list(range(first, high + 1, 2))
        if not self._ports:
            raise ConfigError(f"port range {low}-{high} holds no even port")
        self._in_use: set[int] = set()
        self._next = 0

    @property
    def size(self) -> int:
        return len(self._ports)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def acquire(self) -> int | None:
        """The next free port, or None when every port is taken."""
        for _ in range(len(self._ports)):
            port = self._ports[self._next]
            self._next = (self._next + 1) % len(self._ports)
            if port not in self._in_use:
                self._in_use.add(port)
                return port
        return None

    def release(self, port: int) -> None:
        self._in_use.discard(port)
