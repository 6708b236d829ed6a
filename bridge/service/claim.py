"""Whether, and when, to claim a broadcast call. Pure: no clock, no I/O.

Theory of operation. `StasisBroadcast(timeout,filter)` offers a caller to every connected
bridge process whose app name matches (`CallBroadcast`); the first `POST /events/claim`
wins, later ones get 409, and a claim after the timeout 404. There is no shared state
between the processes, so the load is spread by timing alone: a process that can take the
call claims after a delay that grows with its own load, so the least loaded one usually
claims first. An idle process claims at once (delay 0); a full one, or a draining one, or one
whose events socket is down, does not claim at all, and the dialplan falls through to
`STASISSTATUS=TIMEOUT` when nobody can. The delay is bounded well inside the broadcast's
timeout (at most `max_delay`, and at most a third of the timeout the dialplan gave), so a
busy process still claims in time when it is the only one left.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TIMEOUT = 0.5  # StasisBroadcast's own default, 500 ms
# Without --max-calls there is no "full": the load is counted against this many calls
# (half of max_delay at this many calls in progress).
SOFT_CAPACITY = 100


def broadcast_timeout(app_data: str) -> float:
    """The broadcast's timeout in seconds, from the channel's dialplan app data
    (`500,^pipecat,...`: the first field, in ms), or StasisBroadcast's default."""
    head = app_data.split(",", 1)[0].strip()
    return int(head) / 1000 if head.isdigit() and int(head) > 0 else DEFAULT_TIMEOUT


def broadcast_args(app_data: str) -> list[str]:
    """The args the winner's StasisStart will carry: the third field, split at `:` as
    Asterisk splits it (`transport=audiosocket:bot=sales`)."""
    fields = app_data.split(",")
    return [a for a in fields[2].split(":") if a] if len(fields) > 2 else []


def load_of(active: int, max_calls: int) -> float:
    """How loaded a process is, 0 (idle) to 1 (full)."""
    if max_calls > 0:
        return min(1.0, max(0, active) / max_calls)
    active = max(0, active)
    return active / (active + SOFT_CAPACITY)


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    max_delay: float = 0.150  # seconds; --claim-max-delay-ms

    def delay(self, load: float, timeout: float = DEFAULT_TIMEOUT) -> float:
        """Seconds to wait before claiming at `load` (0..1), within a broadcast of `timeout`."""
        cap = min(self.max_delay, timeout / 3)
        return max(0.0, min(1.0, load)) * max(0.0, cap)

    def claim_at(
        self,
        now: float,
        *,
        refused: str,
        healthy: bool,
        active: int,
        max_calls: int,
        app_data: str = "",
    ) -> float | None:
        """When to claim a call broadcast at `now` (the same clock), or None: do not claim.
        `refused`: why admission would turn a new call away ("" if it would take it);
        `healthy`: the events socket is up (the StasisStart of a won claim can arrive);
        `active`: calls in progress plus claims won whose StasisStart has not come yet."""
        if refused or not healthy:
            return None
        return now + self.delay(load_of(active, max_calls), broadcast_timeout(app_data))
