"""Keeping the caller when the bot drops: the reconnect policy. Pure: no I/O, `now` passed in.

Theory of operation
-------------------
A bot fleet is redeployed regularly; each deploy closes the WebSockets of the calls in
progress. When the bot's socket ends abnormally while the call is up, the call keeps its
caller and re-dials the bot URL; the new session is told it resumes (`resumed`, `resume_count`)
so a fleet can restore the conversation by call id.

- Which closes are a redeploy (worth a re-dial): 1001 going away, 1006 no close frame (a
  crash, a TCP reset), 1011 internal error, 1012 service restart, 1013 try again later. Every
  other close is final: 1000 (the bot hung up), None (a hung bot that stopped reading or
  answering pings, or the bridge's own error), 1002/1003/1007/1008/1009 (a protocol or policy
  failure a new session would repeat), application codes 4000-4999.
- An outage starts at the drop and ends when a resumed session has stayed up STABLE_AFTER
  seconds. A resumed session that drops within that is the same outage, with the same
  deadline: drop + window. At the deadline with no session the caller gets the fallback (the
  fallback's own steps fit in FALLBACK_SLACK: at the latest window + 2 s after the drop).
- Re-dials: the first at the drop + BACKOFF[0], after each failed one the next BACKOFF step
  (then the last step again); none starts at or past the deadline, and each has the time left
  to the deadline as its connect budget.
- At most `max_resumes` resumed sessions per call; a drop after the last one is final.

    drop --redeploy code, resumes left, window open--> AWAY: re-dial at the backoff times
      |                                                 |-- a session connects --> resumed
      +-- final code / none left / past deadline --> final (today's behaviour)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REDEPLOY_CODES = frozenset({1001, 1006, 1011, 1012, 1013})
# Seconds after the drop of each re-dial (the first) and between failed ones (the rest).
BACKOFF = (0.0, 0.1, 0.2, 0.4, 0.8, 1.0)
STABLE_AFTER = 5.0  # a resumed session up this long ends the outage
FALLBACK_SLACK = 2.0  # the fallback is under way at most this long after the deadline
HOLD_MODES = ("silence", "tone", "moh")


def is_redeploy(code: int | None) -> bool:
    """A close that a restarted or redeployed bot produces (worth a re-dial)."""
    return code in REDEPLOY_CODES


def backoff(failed_dials: int) -> float:
    """Delay before the re-dial that follows `failed_dials` failed ones (0: the first)."""
    return BACKOFF[min(failed_dials, len(BACKOFF) - 1)]


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """`window`: seconds an outage may last (0: never reconnect); `max_resumes` per call;
    `hold`: what the caller hears meanwhile (silence, tone, moh)."""

    window: float = 3.0
    max_resumes: int = 3
    hold: str = "silence"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window) and self.window >= 0):
            raise ValueError(f"reconnect window must be >= 0 seconds, not {self.window!r}")
        if self.max_resumes < 0:
            raise ValueError(f"reconnect max must be >= 0, not {self.max_resumes!r}")
        if self.hold not in HOLD_MODES:
            raise ValueError(f"reconnect hold must be one of {', '.join(HOLD_MODES)}")

    @property
    def enabled(self) -> bool:
        return self.window > 0 and self.max_resumes > 0


OFF = ReconnectPolicy(window=0.0)


class Reconnects:
    """One call's outages: when to re-dial, when to give up, how many resumes are left."""

    def __init__(self, policy: ReconnectPolicy) -> None:
        self.policy = policy
        self.resumes = 0  # resumed sessions so far
        self.dropped_at: float | None = None  # the latest drop
        self.drop_code: int | None = None
        self.deadline: float | None = None  # of the outage in progress
        self.next_dial_at: float | None = None  # None: a dial is in flight, or no outage
        self._failed_dials = 0
        self._resumed_at: float | None = None

    def __repr__(self) -> str:
        return (f"Reconnects(resumes={self.resumes}, deadline={self.deadline}, "
                f"next_dial_at={self.next_dial_at})")  # fmt: skip

    def on_drop(self, code: int | None, now: float) -> str:
        """A session up while the call is up ended with `code`: "" to re-dial (the first at
        `next_dial_at`), else why not (the drop is final)."""
        if not self.policy.enabled:
            return "reconnects are off"
        if not is_redeploy(code):
            return f"close code {code} is final"
        if self.resumes >= self.policy.max_resumes:
            return f"no resumes left ({self.resumes} of {self.policy.max_resumes} used)"
        if self.deadline is not None and not self._outage_over(now):
            if now >= self.deadline:
                return f"bot away longer than the {self.policy.window:g} s window"
        else:
            self.deadline = now + self.policy.window  # a new outage
        self.dropped_at, self.drop_code = now, code
        self._resumed_at = None
        self._failed_dials = 0
        self.next_dial_at = now + backoff(0)
        return ""

    def dial_started(self, now: float) -> float:
        """A re-dial goes out now; returns its connect budget (the time left in the window)."""
        self.next_dial_at = None
        assert self.deadline is not None, "no outage"
        return max(self.deadline - now, 0.0)

    def dial_failed(self, now: float) -> bool:
        """The re-dial failed: True if another fits in the window (at `next_dial_at`)."""
        self._failed_dials += 1
        at = now + backoff(self._failed_dials)
        if self.deadline is None or at >= self.deadline:
            self.next_dial_at = None
            return False
        self.next_dial_at = at
        return True

    def resumed(self, now: float) -> int:
        """A re-dial connected: returns this session's resume count (1 for the first)."""
        self.resumes += 1
        self._resumed_at = now
        self.next_dial_at = None
        return self.resumes

    def gap(self, now: float) -> float:
        """Seconds since the latest drop (the caller's time without a bot)."""
        return 0.0 if self.dropped_at is None else now - self.dropped_at

    def _outage_over(self, now: float) -> bool:
        return self._resumed_at is not None and now - self._resumed_at >= STABLE_AFTER
