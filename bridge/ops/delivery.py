"""Webhook delivery, the pure part: when to try again, when to give up, what is due now.

Theory of operation. One *delivery* is one event to one URL (an event for two URLs is two
deliveries; they share the event's `webhook-id`). A delivery is tried at once; a failed try
(non-2xx answer, timeout, connection error) is tried again after the next delay of the
schedule, `RETRY_SCHEDULE` = 1 s, 4 s, 15 s, 1 min, 5 min, 15 min, then every 30 min; the
first retry therefore comes 1 s after the first failure. Once the next try would fall after
`created_at + window` (default 1 h) the delivery is dropped. With the defaults an event for
a dead receiver is tried 8 times, at +0, 1, 5, 20, 80, 380, 1280 and 3080 s.

A 2xx is delivered. 408 (timeout) and 429 (slow down) are retried like a 5xx, and so is a
3xx (we never follow redirects: a receiver that moved is a misconfiguration an operator must
see, and the window leaves time to fix it). Any other 4xx is final: the receiver understood
the request and refused it (bad signature, unknown path), and asking again will not change
its mind, so the delivery is dropped at once.

`now` is always given, never read: the times are wall-clock Unix seconds, because a delivery's
window must survive a restart (the spool keeps `created_at` and `next_at`).
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass, field

RETRY_SCHEDULE: tuple[float, ...] = (1.0, 4.0, 15.0, 60.0, 300.0, 900.0, 1800.0)
RETRY_WINDOW = 3600.0


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FINAL = "final"  # a refusal asking again will not change


def classify(status: int | None) -> Outcome:
    """`status` is the HTTP answer's, or None for a timeout or a connection error."""
    if status is None or status in (408, 429) or status >= 500 or 300 <= status < 400:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.DELIVERED
    return Outcome.FINAL


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    schedule: tuple[float, ...] = RETRY_SCHEDULE
    window: float = RETRY_WINDOW

    def __post_init__(self) -> None:
        if not self.schedule or any(delay <= 0 for delay in self.schedule):
            raise ValueError("a retry schedule is one or more positive delays")
        if self.window < 0:
            raise ValueError("the retry window cannot be negative")

    def delay(self, failures: int) -> float:
        """How long to wait after the `failures`-th failed try (1-based); the last delay repeats."""
        return self.schedule[min(failures, len(self.schedule)) - 1]

    def next_attempt_at(self, created_at: float, failures: int, now: float) -> float | None:
        """When to try again after `failures` failed tries, the last ending at `now`; None: give
        up, the window is over."""
        at = now + self.delay(failures)
        return at if at <= self.deadline(created_at) else None

    def deadline(self, created_at: float) -> float:
        return created_at + self.window


@dataclass(slots=True)
class Delivery:
    """One event for one URL. `key` is its spool row; `body` is the exact bytes signed."""

    key: int
    msg_id: str
    event_type: str
    url: str
    body: bytes
    created_at: float
    attempts: int = 0
    next_at: float = 0.0

    def __repr__(self) -> str:
        return (
            f"Delivery(key={self.key}, {self.msg_id} {self.event_type}, "
            f"attempts={self.attempts}, next_at={self.next_at:.3f}, {len(self.body)} B)"
        )


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class Result:
    verdict: Verdict
    reason: str = ""  # for DROPPED: "refused" (a final 4xx) or "window"
    next_at: float | None = None  # for RETRY


@dataclass(slots=True)
class DeliveryQueue:
    """The deliveries waiting for their next try, soonest first, plus those being tried.

    The adapter adds each new (or resumed) delivery, takes what `pop_due(now, limit)` gives,
    tries it, reports with `record(delivery, status, now)`, and sleeps until `next_timer()`.
    """

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    _heap: list[tuple[float, int, Delivery]] = field(default_factory=list)
    _in_flight: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self._heap) + len(self._in_flight)

    def add(self, delivery: Delivery) -> None:
        heapq.heappush(self._heap, (delivery.next_at, delivery.key, delivery))

    def expired(self, delivery: Delivery, now: float) -> bool:
        """A resumed delivery whose window ended while the service was down."""
        return now > self.policy.deadline(delivery.created_at)

    def pop_due(self, now: float, limit: int) -> list[Delivery]:
        due: list[Delivery] = []
        while self._heap and self._heap[0][0] <= now and len(due) < limit:
            delivery = heapq.heappop(self._heap)[2]
            self._in_flight.add(delivery.key)
            due.append(delivery)
        return due

    def next_timer(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def record(self, delivery: Delivery, status: int | None, now: float) -> Result:
        """The try of `delivery` popped by `pop_due` ended at `now` with `status`."""
        self._in_flight.discard(delivery.key)
        delivery.attempts += 1
        outcome = classify(status)
        if outcome is Outcome.DELIVERED:
            return Result(Verdict.DELIVERED)
        if outcome is Outcome.FINAL:
            return Result(Verdict.DROPPED, "refused")
        at = self.policy.next_attempt_at(delivery.created_at, delivery.attempts, now)
        if at is None:
            return Result(Verdict.DROPPED, "window")
        delivery.next_at = at
        self.add(delivery)
        return Result(Verdict.RETRY, next_at=at)

    def abandon(self, delivery: Delivery) -> None:
        """A popped delivery whose try was cancelled (shutdown): it stays in the spool only."""
        self._in_flight.discard(delivery.key)
