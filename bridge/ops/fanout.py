"""The host API's decisions under `--workers N` (bridge.ops.host_api does the I/O); pure.

The supervisor serves one HTTP API for the host and asks its workers' loopback APIs. It knows
each worker it keeps as a `WorkerSeat` (slot, generation, where its API listens, what its
sd_notify said); every worker request ends as an `Answer` (any status) or a `NoAnswer` (why).
What goes where:

    /readyz                 every worker; ready when at least one is
    /metrics, GET /calls    every worker that listens; the unanswered are skipped
    GET/DELETE /calls/{id}, POST /calls/{id}/transfer, the Twilio hang-up
                            every worker that listens; the first answer that is not a 404
                            wins (only the worker holding the call knows it), else a 404
    POST /calls             the ready, non-draining worker with the fewest calls; the next
                            one when it refuses (503: full, draining) or is not there
    POST /calls/expected    every ready, non-draining worker (the dialplan's media reaches
                            one of them); the first 201 wins

Only when no worker answered at all is the host's answer a 503 (with each worker's why).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# A worker's answer that means "not mine" when asked about a call.
NOT_MINE = 404
# A worker's answer to POST /calls after which the next worker may be asked: nothing was
# placed (--max-calls reached, draining, outbound calls not in its build).
TRY_NEXT = (501, 503)


@dataclass(frozen=True, slots=True)
class WorkerSeat:
    """One worker the supervisor keeps, as the host API sees it."""

    tag: str  # "<slot>", "<slot>g<gen>" after a reload: the metrics' `worker` label
    slot: int
    generation: int
    address: tuple[str, int] | None  # its loopback HTTP API, once it said where
    running: bool  # its process is up (not exited and waiting for a restart)
    ready: bool  # this process said READY=1
    draining: bool  # replaced by a reload or stopping: takes no new calls
    calls: int  # calls active, from its STATUS=
    restarts: int = 0

    @property
    def reachable(self) -> bool:
        return self.running and self.address is not None

    @property
    def state(self) -> str:
        """One of WORKER_STATES."""
        if not self.running:
            return "restarting"
        if self.draining:
            return "draining"
        return "ready" if self.ready else "starting"


WORKER_STATES = ("ready", "starting", "draining", "restarting")


@dataclass(frozen=True, slots=True)
class Answer:
    tag: str
    status: int
    body: bytes
    content_type: str = "application/json"

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


@dataclass(frozen=True, slots=True)
class NoAnswer:
    tag: str
    why: str  # "cannot connect: ...", "no answer in 2 s", "starting", ...
    maybe_done: bool = False  # the request may have reached the worker (a timeout)


Result = Answer | NoAnswer


# ---- who is asked ---------------------------------------------------------------------------


def reachable(seats: Iterable[WorkerSeat]) -> list[WorkerSeat]:
    """Every worker with an API to ask, draining ones included (they still hold calls)."""
    return [seat for seat in seats if seat.reachable]


def takers(seats: Iterable[WorkerSeat]) -> list[WorkerSeat]:
    """The workers that may take a new call: reachable, ready and not draining."""
    return [seat for seat in seats if seat.reachable and seat.ready and not seat.draining]


def originate_order(seats: Iterable[WorkerSeat]) -> list[WorkerSeat]:
    """The takers, fewest calls first (then by slot: a stable choice among equals)."""
    return sorted(takers(seats), key=lambda seat: (seat.calls, seat.slot, seat.generation))


# ---- what the answers make ---------------------------------------------------------------


def wins(result: Result) -> bool:
    """A call lookup is settled by this result: an answer other than 'not mine'."""
    return isinstance(result, Answer) and result.status != NOT_MINE


def settle(results: Sequence[Result]) -> Answer | None:
    """The answer to a call lookup: the first that wins, else the first 404, else None (no
    worker answered)."""
    answers = [r for r in results if isinstance(r, Answer)]
    return next((a for a in answers if wins(a)), answers[0] if answers else None)


def first_created(results: Sequence[Result]) -> Answer | None:
    """POST /calls/expected: the first 201, else the first answer (a 400, 409 ...)."""
    answers = [r for r in results if isinstance(r, Answer)]
    return next((a for a in answers if a.status == 201), answers[0] if answers else None)


def unanswered(results: Iterable[Result], *, none: str = "no worker is running") -> str:
    """Why no worker answered, one `tag: why` each."""
    whys = [f"{r.tag}: {r.why}" for r in results if isinstance(r, NoAnswer)]
    return "no worker answered (" + "; ".join(whys) + ")" if whys else none


def not_asked(seat: WorkerSeat) -> NoAnswer:
    """A worker kept but without an API to ask now."""
    return NoAnswer(seat.tag, "restarting" if not seat.running else "starting")


def tagged(data: Any, tag: str) -> Any:
    """A call's view (a JSON object) with the worker that holds it; anything else as is."""
    return {**data, "worker": tag} if isinstance(data, dict) else data


def concatenated(results: Iterable[Result]) -> list[Any]:
    """GET /calls: each answering worker's list, in worker order, every view tagged."""
    views: list[Any] = []
    for result in results:
        if isinstance(result, Answer) and result.status == 200:
            data = result.json()
            if isinstance(data, list):
                views.extend(tagged(view, result.tag) for view in data)
    return views


def readiness(seats: Sequence[WorkerSeat], results: Sequence[Result]) -> tuple[int, Any]:
    """/readyz: (200 | 503, body) from each worker's own /readyz (`results` by tag)."""
    by_tag = {result.tag: result for result in results}
    workers = []
    for seat in seats:
        result = by_tag.get(seat.tag) or not_asked(seat)
        if isinstance(result, NoAnswer):
            workers.append({"worker": seat.tag, "ready": False, "reason": result.why})
            continue
        data = result.json()
        ready = result.status == 200
        entry: dict[str, Any] = {"worker": seat.tag, "ready": ready}
        if not ready:
            reason = data.get("reason") if isinstance(data, dict) else None
            entry["reason"] = str(reason or f"answered {result.status}")
        workers.append(entry)
    if any(entry["ready"] for entry in workers):
        return 200, {"ready": True, "workers": workers}
    whys = "; ".join(f"{e['worker']}: {e['reason']}" for e in workers) or "no workers"
    return 503, {"ready": False, "reason": f"no worker is ready ({whys})", "workers": workers}
