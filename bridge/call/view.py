"""One call's read model: a frozen snapshot the call publishes on every change.

The HTTP API, the metrics, the webhooks and the logs read this and never reach into the call.
The call machine reports what changed as typed values (`StateChanged`); the runner turns each
into a new `CallView` and hands both to the call's observers, so nothing polls. `Call.view()`
gives a fresh one at any time (the media counters as they are now), for a scrape or a GET.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from bridge.call.commands import EndedBy
from bridge.call.machine import CallState, StateChanged
from bridge.logs import redact_url


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


@dataclass(frozen=True, slots=True)
class Milestone:
    """What the runner saw besides a state change: `answered`, `bot_connected`."""

    name: str


# What observers are told with each new view: the machine's StateChanged, or a Milestone.
CallChange = StateChanged | Milestone


@dataclass(frozen=True, slots=True)
class CallView:
    id: str
    state: CallState
    direction: Direction
    transport: str
    dialect: str
    bot_url: str  # redacted: no credentials, no api keys
    caller: str
    called: str
    channel_id: str  # the caller's (or callee's) Asterisk channel; "" for a dialplan call
    started_at: float  # wall clock, Unix seconds
    answered_at: float | None = None
    bot_connected_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    ended_by: EndedBy | None = None
    fallback: bool = False
    media: Mapping[str, int] = field(default_factory=dict)
    webhook_url: str = ""  # this call's own lifecycle receiver, if any
    # The latest transfer: target, mode, target_channel, outcome ("", answered, failed: ...)
    transfer: Mapping[str, str] | None = None
    # Each file Asterisk wrote for the call: name, format, track, state, error.
    recordings: tuple[Mapping[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "media", MappingProxyType(dict(self.media)))

    @property
    def active(self) -> bool:
        return self.state not in (CallState.ENDING, CallState.ENDED)

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else round(self.ended_at - self.started_at, 3)

    @property
    def talk_time(self) -> float | None:
        """From the bot's connection to the end: how long the caller had the bot."""
        if self.ended_at is None or self.bot_connected_at is None:
            return None
        return round(self.ended_at - self.bot_connected_at, 3)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["state"] = self.state.value
        data["direction"] = self.direction.value
        data["ended_by"] = self.ended_by.value if self.ended_by else None
        data["media"] = dict(self.media)
        data["transfer"] = dict(self.transfer) if self.transfer else None
        data["recordings"] = [dict(r) for r in self.recordings]
        data["webhook_url"] = redact_url(self.webhook_url)
        data["duration"] = self.duration
        data["talk_time"] = self.talk_time
        return data
