"""The calls this process owns, and who may have another one (admission).

Indexed three ways: by call id (the API's), by Asterisk channel (caller, media channel and
the call's further channels: a transfer target, snoops; most ARI events name a channel, a
Dial names its peer) and by bridge (BridgeDestroyed, a bridge's playback or recording).
Only calls that were not rejected count as active; each remembers its transport, since only
RTP calls hold a per-call resource (a UDP port).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from ari.events import AriEvent, BridgeDestroyed, Dial, PlaybackFinished, RecordingEvent
from bridge.call.machine import CallState
from bridge.call.runner import Call


class CallRegistry:
    def __init__(self) -> None:
        self.calls: dict[str, Call] = {}  # by call_id
        self.by_channel: dict[str, Call] = {}
        self.by_bridge: dict[str, Call] = {}
        self.active: dict[str, str] = {}  # call id -> transport, of calls not rejected
        self.total = 0  # calls taken since start
        self.rejected = 0
        self.all_idle = asyncio.Event()
        self.all_idle.set()

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self.calls.values()))

    def __len__(self) -> int:
        return len(self.calls)

    def get(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    def add(self, call: Call, transport: str, *, rejected: bool) -> None:
        ids = call.ids
        self.calls[ids.call_id] = call
        if ids.caller_id:
            self.by_channel[ids.caller_id] = call
        if rejected:
            self.rejected += 1
        else:
            self.active[ids.call_id] = transport
            self.total += 1
            if ids.media_channel_id:
                self.by_channel[ids.media_channel_id] = call
            if ids.bridge_id:
                self.by_bridge[ids.bridge_id] = call
        self.all_idle.clear()

    def bind(self, call: Call, channel_id: str) -> None:
        """A further channel of `call`'s, about to be made: its events go to the call."""
        self.by_channel[channel_id] = call

    def remove(self, call: Call) -> None:
        ids = call.ids
        self.calls.pop(ids.call_id, None)
        self.active.pop(ids.call_id, None)
        for channel_id in (ids.caller_id, ids.media_channel_id, *call.channels):
            if self.by_channel.get(channel_id) is call:
                del self.by_channel[channel_id]
        if self.by_bridge.get(ids.bridge_id) is call:
            del self.by_bridge[ids.bridge_id]
        if not self.calls:
            self.all_idle.set()

    def route(self, event: AriEvent) -> Call | None:
        """The call an ARI event concerns, or None."""
        if isinstance(event, BridgeDestroyed):
            return self.by_bridge.get(event.bridge.id)
        if isinstance(event, PlaybackFinished | RecordingEvent):
            kind, _, ident = event.target_uri.partition(":")
            index = self.by_bridge if kind == "bridge" else self.by_channel
            return index.get(ident) if ident else None
        if isinstance(event, Dial):
            return self.by_channel.get(event.peer.id)
        channel = getattr(event, "channel", None)
        return self.by_channel.get(channel.id) if channel is not None else None

    def calls_on(self, transport: str) -> int:
        """Calls holding a media resource of `transport` (a transferred call holds none)."""
        return sum(1 for cid, t in self.active.items() if t == transport and self._ours(cid))

    def busy(self) -> int:
        """Calls that count towards --max-calls: active ones whose caller is not a
        transfer target's now (those hold no bot and no media of ours)."""
        return sum(1 for cid in self.active if self._ours(cid))

    def _ours(self, call_id: str) -> bool:
        call = self.calls.get(call_id)
        return call is None or call.state is not CallState.TRANSFERRED


def admission(
    *,
    draining: bool,
    max_calls: int,
    registry: CallRegistry,
    transport_unavailable: Callable[[str, Callable[[str], int]], str],
    transport: str,
) -> str:
    """Why a new call on `transport` cannot be taken now, or "" if it can."""
    if draining:
        return "bridge draining"
    if max_calls and registry.busy() >= max_calls:
        return "max calls reached"
    return transport_unavailable(transport, registry.calls_on)
