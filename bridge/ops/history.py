"""The finished calls the API still shows: the last view of each ended call, for a while.

Pure: no clock of its own, `now` (monotonic seconds) is passed in. A finished call stays
readable for `keep_for` seconds (10 minutes by default) and at most `max_calls` are kept, the
oldest dropped first; expiry happens on every add and read, so nothing needs a timer.

    history = CallHistory()
    history.add(view, now)          # from the controller's observers, on an ENDED view
    history.get(call_id, now)       # the view, or None (unknown, or expired)
    history.views(now)              # every kept view, oldest first
"""

from __future__ import annotations

from collections import OrderedDict

from bridge.call.machine import CallState
from bridge.call.view import CallView

KEEP_FOR = 600.0  # seconds a finished call stays readable
MAX_CALLS = 10_000


class CallHistory:
    __slots__ = ("_ended", "keep_for", "max_calls")

    def __init__(self, *, keep_for: float = KEEP_FOR, max_calls: int = MAX_CALLS) -> None:
        if keep_for <= 0 or max_calls <= 0:
            raise ValueError("keep_for and max_calls must be positive")
        self.keep_for = keep_for
        self.max_calls = max_calls
        # call id -> (when it ended, on the caller's clock; its last view), oldest first
        self._ended: OrderedDict[str, tuple[float, CallView]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ended)

    def add(self, view: CallView, now: float) -> None:
        """Keep `view` if the call has ended; other views are ignored."""
        if view.state is not CallState.ENDED:
            return
        self._ended.pop(view.id, None)
        self._ended[view.id] = (now, view)
        while len(self._ended) > self.max_calls:
            self._ended.popitem(last=False)
        self.expire(now)

    def get(self, call_id: str, now: float) -> CallView | None:
        self.expire(now)
        entry = self._ended.get(call_id)
        return entry[1] if entry is not None else None

    def views(self, now: float) -> list[CallView]:
        self.expire(now)
        return [view for _ended_at, view in self._ended.values()]

    def expire(self, now: float) -> None:
        cutoff = now - self.keep_for
        while self._ended:
            ended_at, _view = next(iter(self._ended.values()))
            if ended_at >= cutoff:
                return
            self._ended.popitem(last=False)
