"""The simulator's state objects: channels, bridges, and what an app left behind.

`SimBridge.order` is Asterisk's own member list (main/bridge.c), which orders the BRIDGEPEER
lists; `bridge_technology` and `bridge_peer_values` are smart bridging's rules as recorded
(transfer_originate_answer, bridge_record_mixed). Pure: no sockets, no clocks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.tools.sim import links
from bridge.tools.sim.control import SimPlayback
from bridge.tools.sim.media import EmMedia, SimCall


@dataclass(eq=False, slots=True)
class SimChannel:
    id: str
    name: str
    # "caller" (dialplan -> Stasis, or an originated ;1), "local" (its ;2 half), "media"
    # (ExternalMedia), "snoop" (POST /channels/{id}/snoop)
    kind: str
    state: str
    caller: tuple[str, str]  # (name, number)
    connected: tuple[str, str]
    dialplan: tuple[str, str, int, str, str]  # context, exten, priority, app_name, app_data
    creationtime: str
    in_stasis: bool = False
    bridge_id: str | None = None
    has_peer: bool = False  # BRIDGEPEER was set, so leaving the bridge clears it with an event
    variables: dict[str, str] = field(default_factory=dict)
    dialstring: str = ""
    media: EmMedia | None = None  # UnicastRTP only
    link: links.MediaLink | None = None  # AudioSocket / WebSocket, once connected
    transport: str = "rtp"  # "rtp" (UnicastRTP), "audiosocket", "websocket"
    fmt: str = "ulaw"
    args: list[str] = field(default_factory=list)  # its StasisStart args (externalMedia `data`)
    call: SimCall | None = None
    pending_start: asyncio.TimerHandle | None = None  # UnicastRTP StasisStart not sent yet
    playback: SimPlayback | None = None  # playing now
    playback_end: asyncio.TimerHandle | None = None
    moh: str | None = None  # the music on hold class playing to it (POST .../moh), if any
    queued: deque[Callable[[], None]] = field(default_factory=deque)  # Stasis commands waiting
    app: str = ""  # the app whose Stasis it is in ("": the simulator's `app`)
    dtmf_end: asyncio.TimerHandle | None = None  # POST .../dtmf still playing its digits
    spied: str | None = None  # a snoop: the channel it spies on
    spy: str = "none"  # a snoop: "in", "out" or "both"
    recording: str | None = None  # POST .../record running on it (the live recording's name)

    @property
    def busy(self) -> bool:
        """A Stasis command (playback, DTMF, record) runs: the next ones wait (control.c)."""
        return self.playback is not None or self.dtmf_end is not None or self.recording is not None

    def cancel_timers(self) -> None:
        for handle in (self.pending_start, self.playback_end, self.dtmf_end):
            if handle is not None:
                handle.cancel()
        self.pending_start = self.playback_end = self.dtmf_end = None


@dataclass(eq=False, slots=True)
class SimBridge:
    """A bridge. `channels` are its members as ARI lists them (in join order); `order` is
    Asterisk's own list of members (main/bridge.c), hidden ones included (a Recorder or an
    Announcer, by channel name in `hidden`): it orders the BRIDGEPEER lists."""

    id: str
    name: str
    bridge_type: str
    creationtime: str
    channels: list[str] = field(default_factory=list)
    app: str = ""  # the app subscribed to it: its first member's ("": the simulator's `app`)
    order: list[str] = field(default_factory=list)  # channel ids and hidden member names
    hidden: set[str] = field(default_factory=set)
    technology: str = ""  # as of the last reconfiguration (see bridge_technology)
    resend_peers: bool = False  # a snoop attached: BRIDGEPEER again when audio starts

    def __post_init__(self) -> None:
        self.technology = self.technology or bridge_technology(self.bridge_type, 0)


def bridge_technology(bridge_type: str, members: int) -> str:
    """Smart bridging: two members are passed through, a third one needs mixing (facts §4);
    a hidden Recorder or Announcer counts as a member (bridge_record_mixed)."""
    if bridge_type == "holding":
        return "holding_bridge"
    return "simple_bridge" if members <= 2 else "softmix"


MAX_BRIDGEPEER = 10  # names in one BRIDGEPEER list (set_bridge_peer_vars_multiparty)


def bridge_peer_values(names: list[str]) -> list[str]:
    """Each member's BRIDGEPEER, in `names` order: the other member, or the others' names."""
    if len(names) == 2:
        return [names[1], names[0]]
    listed = names[: MAX_BRIDGEPEER + 1]
    return [",".join(n for j, n in enumerate(listed) if j != i) for i in range(len(names))]


@dataclass(frozen=True, slots=True)
class SimLeftovers:
    """What is still in Asterisk that an app should have cleaned up (see `leftovers()`)."""

    channels: tuple[str, ...]  # ExternalMedia channels, and callers still in the app
    bridges: tuple[str, ...]
    udp_sockets: tuple[tuple[str, int], ...]  # open RTP sockets (one per ExternalMedia channel)
    # Open AudioSocket TCP connections and media WebSockets (ARI channels and dialplan calls),
    # and dialplan calls not yet ended, by label (channel name).
    media_connections: tuple[str, ...] = ()
    dialplan_calls: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.channels or self.bridges or self.udp_sockets or self.media_connections
                    or self.dialplan_calls)  # fmt: skip
