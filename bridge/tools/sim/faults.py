"""Injected REST faults of SimulatedAsterisk: which request fails or is slow, and how.

A rule matches a method (or "*") and a `re.search` over the request path, and applies to the
next `times` requests it matches; the first matching rule in the order they were added wins,
so one request meets one fault. Two kinds:

* an error answer (`reply`): with `perform=False` Asterisk did nothing (it refused the
  request); with `perform=True` it acted on the request but answered the error anyway;
* a delay: the request is held `delay` seconds, like a loaded Asterisk; then, with
  `perform=True`, it is acted on and answered as usual, even if the client has given up
  meanwhile (Asterisk does not notice a client that went away); with `perform=False` it is
  lost: never acted on, and the connection is dropped without an answer.

Pure: no sockets, no clocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.tools.sim.templates import Reply


@dataclass(eq=False, slots=True)
class Fault:
    method: str  # upper case, or "*" for any
    path: re.Pattern[str]
    times: int  # requests it still applies to
    perform: bool  # act on the request despite the fault
    reply: Reply | None = None  # the error answer; None for a delay
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.path.search(path) is not None


class FaultTable:
    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        if fault.times < 1:
            raise ValueError("a fault must apply to at least one request")
        self._faults.append(fault)

    def take(self, method: str, path: str) -> Fault | None:
        """The fault for this request, used up once it has applied `times` times."""
        for fault in self._faults:
            if fault.matches(method, path):
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def clear(self) -> None:
        self._faults.clear()

    def __len__(self) -> int:
        return len(self._faults)
