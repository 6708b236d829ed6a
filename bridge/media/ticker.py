"""One 20 ms clock for every call in the process.

A timer per call would cost one event-loop wake-up per call per frame; one shared timer wakes
once per frame and lets every call send its frame in the same pass. Deadlines are absolute
(`rtp.pacer.DeadlineClock`), so the cadence does not drift however late a wake-up is.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Protocol

from bridge.logs import get_logger
from rtp.pacer import DeadlineClock

log = get_logger("bridge.media.ticker")

# Upper bounds (seconds) of the wake-up lateness buckets the metrics read (`lateness_counts`).
LATENESS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


class Tickable(Protocol):
    def on_tick(self, frames: int, skipped: int) -> None:
        """Send `frames` frames now; `skipped` frame times were lost to a stall."""

    def on_tick_error(self, exc: Exception) -> None: ...


class Ticker:
    def __init__(self, period: float = 0.020, max_burst: int = 2) -> None:
        self.period = period
        self._max_burst = max_burst
        self._members: dict[int, Tickable] = {}
        self._clock: DeadlineClock | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.ticks = 0
        # For the metrics, plain ints: wake-ups by lateness past their deadline (one slot per
        # LATENESS_BUCKETS bound, the last for later still), their sum, frame times skipped.
        self.lateness_counts = [0] * (len(LATENESS_BUCKETS) + 1)
        self.lateness_sum = 0.0
        self.skipped_frames = 0

    def add(self, member: Tickable) -> None:
        self._members[id(member)] = member
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._clock = DeadlineClock(self.period, loop.time() + self.period, self._max_burst)
            self._handle = loop.call_at(self._clock.next_deadline, self._fire)

    def remove(self, member: Tickable) -> None:
        self._members.pop(id(member), None)
        if not self._members and self._handle is not None:
            # No calls, no wake-ups: an idle bridge costs nothing.
            self._handle.cancel()
            self._handle = None
            self._clock = None

    def _fire(self) -> None:
        clock = self._clock
        assert clock is not None
        loop = asyncio.get_running_loop()
        skipped_before = clock.skipped_total
        now, deadline = loop.time(), clock.next_deadline
        frames = clock.due(now)
        skipped = clock.skipped_total - skipped_before
        if skipped:
            self.skipped_frames += skipped
            log.warning("ticker_stall", skipped_frames=skipped, calls=len(self._members))
        self.ticks += 1
        if frames:
            late = now - deadline
            self.lateness_counts[bisect_left(LATENESS_BUCKETS, late)] += 1
            self.lateness_sum += late
            for member in list(self._members.values()):
                try:
                    member.on_tick(frames, skipped)
                except Exception as exc:
                    member.on_tick_error(exc)
        if self._clock is clock:  # else the last call left during this tick: stay idle
            self._handle = loop.call_at(clock.next_deadline, self._fire)
