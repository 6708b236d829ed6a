"""What SimulatedAsterisk does: channel and bridge state, ARI resources, and the events emitted.

`AsteriskCore` holds the channels, bridges and calls. Each ARI request (a `_resource(query,
**path_params)` method answering a `Reply`) changes that state the way Asterisk 23.4.1 does, and
each change emits the recorded events in the recorded per-channel order, rendered from the
recorded templates. It knows nothing of HTTP: `bridge.sim.asterisk.SimulatedAsterisk` routes the
requests here and says, through `_event_queues()`, which events sockets are connected for the
app. With none, the app is not active and an event is dropped, never replayed later (facts §16).
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from bridge.sim.media import EmMedia, SimCall, open_media
from bridge.sim.recording import TimedDtmf
from bridge.sim.templates import (
    BRIDGE_TYPES,
    INTERNAL_ERROR,
    EchoStream,
    Reply,
    Templates,
    error_reply,
    format_timestamp,
    reshape,
    validate_external_media,
)

ASTERISK_ID = "02:fc:00:00:00:01"
# A UnicastRTP channel's dialplan while it is being dialled and after it left Stasis.
DIALLED = ("default", "s", 1, "AppDial2", "(Outgoing Line)")
CHANNELVARS = ("UNICASTRTP_LOCAL_PORT", "UNICASTRTP_LOCAL_ADDRESS")  # recorded order


@dataclass(eq=False, slots=True)
class SimChannel:
    id: str
    name: str
    kind: str  # "caller" (dialplan -> Stasis), "local" (its ;2 half), "media" (UnicastRTP)
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
    media: EmMedia | None = None
    call: SimCall | None = None
    pending_start: asyncio.TimerHandle | None = None  # UnicastRTP StasisStart not sent yet


@dataclass(eq=False, slots=True)
class SimBridge:
    id: str
    name: str
    bridge_type: str
    creationtime: str
    channels: list[str] = field(default_factory=list)

    @property
    def technology(self) -> str:
        # Smart bridging: two members are passed through, a third one needs mixing (facts §4).
        if self.bridge_type == "holding":
            return "holding_bridge"
        return "simple_bridge" if len(self.channels) <= 2 else "softmix"


class AsteriskCore(ABC):
    """Channels, bridges and calls; the ARI resources that change them; the events emitted."""

    def __init__(
        self,
        *,
        app: str,
        em_stasis_delay: float,
        rtp_ports: tuple[int, int],
        seed: int | None,
        fixtures_dir: Path,
    ) -> None:
        self.app = app
        self._em_stasis_delay = em_stasis_delay
        self._rtp_ports = rtp_ports
        self._rng = random.Random(seed)
        self._templates = Templates.from_recordings(fixtures_dir)
        self.events_sent: list[str] = []
        self.event_times: list[float] = []  # loop.time() of each entry of events_sent
        self.channels: dict[str, SimChannel] = {}
        self.bridges: dict[str, SimBridge] = {}
        self.calls: list[SimCall] = []
        self._medias: list[EmMedia] = []
        self._app_registered = False  # Asterisk keeps the app listed after its socket went away
        self._next_unique = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @abstractmethod
    def _event_queues(self) -> list[asyncio.Queue[str]]:
        """The queues of the events sockets connected for the app, in connection order."""

    @property
    def app_active(self) -> bool:
        return bool(self._event_queues())

    # -- calls -----------------------------------------------------------------------------

    def _on_bridged(self, call: SimCall, em: SimChannel, bridge: SimBridge) -> None:
        loop = self._running_loop()
        call.em_channel_id, call.bridge_id, call.media = em.id, bridge.id, em.media
        if call.echo and em.media is not None:
            ssrc, seq = self._rng.getrandbits(32), self._rng.getrandbits(16)
            em.media.echo = EchoStream(ssrc=ssrc, seq=seq)
        call.start(loop.time(), self._play)

    def _play(self, call: SimCall, kind: str, payload: Any) -> None:
        """One timed step of the far end (called by the call's deadline timer)."""
        caller = self.channels.get(call.caller_id)
        if caller is None:
            return
        if kind == "rtp":
            em = self.channels.get(call.em_channel_id or "")
            if em is not None and em.media is not None and caller.bridge_id == em.bridge_id:
                em.media.send(payload)  # simple_bridge relays only while both are members
        elif kind == "dtmf" and isinstance(payload, TimedDtmf):
            self._emit("ChannelDtmfReceived", caller, digit=payload.digit,
                       duration_ms=payload.duration_ms)  # fmt: skip
            call.dtmf_sent.append(payload.digit)
        elif kind == "hangup":
            self._hangup(caller, "far")

    # -- events ----------------------------------------------------------------------------

    def _emit(self, kind: str, ch: SimChannel | None = None, *, key: str = "channel",
              **values: Any) -> None:  # fmt: skip
        queues = self._event_queues()
        if not queues:
            return  # app inactive: Asterisk drops the event and never replays it (facts §16)
        if ch is not None:
            values[key] = self._snapshot(ch)
        raw = self._templates.event(
            kind, timestamp=format_timestamp(time.time()), asterisk_id=ASTERISK_ID,
            application=self.app, **values,
        )  # fmt: skip
        self.events_sent.append(raw)
        self.event_times.append(self._running_loop().time())
        for queue in queues:
            queue.put_nowait(raw)

    def _snapshot_values(self, ch: SimChannel) -> dict[str, Any]:
        context, exten, priority, app_name, app_data = ch.dialplan
        return {
            "id": ch.id, "name": ch.name, "state": ch.state,
            "caller": {"name": ch.caller[0], "number": ch.caller[1]},
            "connected": {"name": ch.connected[0], "number": ch.connected[1]},
            "dialplan": {"context": context, "exten": exten, "priority": priority,
                         "app_name": app_name, "app_data": app_data},
            "creationtime": ch.creationtime,
        }  # fmt: skip

    def _snapshot(self, ch: SimChannel) -> dict[str, Any]:
        return self._templates.channel_snapshot(self._snapshot_values(ch))

    def _bridge_snapshot(self, bridge: SimBridge) -> dict[str, Any]:
        return self._templates.bridge_snapshot({
            "id": bridge.id, "technology": bridge.technology, "bridge_type": bridge.bridge_type,
            "name": bridge.name, "channels": list(bridge.channels),
            "creationtime": bridge.creationtime,
        })  # fmt: skip

    # -- state transitions -----------------------------------------------------------------

    def _media_enters_stasis(self, ch: SimChannel) -> None:
        """The UnicastRTP channel is dialled, answers and enters the app (recorded order)."""
        ch.pending_start = None
        if ch.in_stasis or self.channels.get(ch.id) is not ch:
            return
        if not self.app_active:  # Stasis() fails for it: gone without an event (facts §16)
            self._remove(ch, "app")
            return
        self._emit("Dial", ch, key="peer", dialstatus="", dialstring=ch.dialstring)
        ch.state = "Up"
        self._emit("ChannelStateChange", ch)
        self._emit("Dial", ch, key="peer", dialstatus="ANSWER", dialstring=ch.dialstring)
        ch.dialplan = ("default", "s", 1, "Stasis", self.app)
        ch.variables["STASISSTATUS"] = ""
        self._emit("ChannelVarset", ch, variable="STASISSTATUS", value="")
        ch.in_stasis = True
        self._emit("StasisStart", ch, args=[])

    def _enter_bridge(self, ch: SimChannel, bridge: SimBridge) -> None:
        if ch.bridge_id == bridge.id:
            return
        self._leave_bridge(ch)  # addChannel moves a channel out of its old bridge (errors)
        bridge.channels.append(ch.id)
        ch.bridge_id = bridge.id
        self._emit("ChannelEnteredBridge", ch, bridge=self._bridge_snapshot(bridge))
        if len(bridge.channels) != 2:
            return
        first = self.channels[bridge.channels[0]]
        for who, peer in ((first, ch), (ch, first)):
            who.has_peer, who.variables["BRIDGEPEER"] = True, peer.name
            self._emit("ChannelVarset", who, variable="BRIDGEPEER", value=peer.name)
        ch.connected, first.connected = first.caller, ch.caller
        self._emit("ChannelConnectedLine", ch)  # the newcomer first: 4 of 5 recordings
        self._emit("ChannelConnectedLine", first)

    def _leave_bridge(self, ch: SimChannel) -> None:
        bridge = self.bridges.get(ch.bridge_id or "")
        ch.bridge_id = None
        if bridge is None:
            return
        bridge.channels.remove(ch.id)
        if ch.has_peer:
            ch.has_peer, ch.variables["BRIDGEPEER"] = False, ""
            self._emit("ChannelVarset", ch, variable="BRIDGEPEER", value="")
        self._emit("ChannelLeftBridge", ch, bridge=self._bridge_snapshot(bridge))
        for member in (ch, *(self.channels[m] for m in bridge.channels)):
            if member.media is not None:
                member.media.echo = None  # the far end no longer hears the bridge

    def _hangup(self, ch: SimChannel, how: str) -> None:
        """`how`: "delete" (our DELETE), "far" (the far end hung up), "continue" (left Stasis)."""
        if self.channels.get(ch.id) is not ch:
            return
        if ch.kind == "media" and not ch.in_stasis:
            # Asterisk finishes bringing the channel into Stasis first (errors: DELETE right
            # after the externalMedia answer still got Dial ... StasisStart, then the hang-up).
            if ch.pending_start is not None:
                ch.pending_start.cancel()
            self._media_enters_stasis(ch)
            if self.channels.get(ch.id) is not ch:
                return  # it never made it into the app
        if how == "delete":
            self._emit("ChannelHangupRequest", ch)
        elif how == "far":
            self._emit("ChannelHangupRequest/far", ch)
        self._leave_bridge(ch)
        if ch.in_stasis:
            ch.in_stasis = False
            self._emit("StasisEnd", ch)
            if ch.kind == "media":
                self._emit("ChannelVarset", ch, variable="STASISSTATUS", value="SUCCESS")
        if ch.kind == "media":
            # Only the channel the app originated stays subscribed after StasisEnd (§14).
            ch.dialplan = DIALLED
            self._emit("ChannelDestroyed", ch)
        self._remove(ch, "caller" if how == "far" else "app")

    def _remove(self, ch: SimChannel, by: str) -> None:
        del self.channels[ch.id]
        if ch.media is not None:
            ch.media.close()
            self._medias.remove(ch.media)
        call = ch.call
        if ch.kind != "media" and call is not None:
            halves = [c for c in self.channels.values() if c.call is call and c.kind != "media"]
            for other in halves:  # the two halves of a Local channel go together
                del self.channels[other.id]
            call.finish(by)

    # -- REST resources --------------------------------------------------------------------

    def _control(self, cid: str) -> SimChannel | Reply:
        """A channel the app controls, or Asterisk's answer (resource_channels find_control)."""
        ch = self.channels.get(cid)
        if ch is None:
            return error_reply(404, "Channel not found")
        return ch if ch.in_stasis else error_reply(409, "Channel not in Stasis application")

    async def _answer(self, q: dict[str, str], cid: str) -> Reply:
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        if ch.state != "Up":
            ch.state = "Up"
            self._emit("ChannelStateChange", ch)
        return Reply(204)  # also when already Up (facts §3)

    async def _continue(self, q: dict[str, str], cid: str) -> Reply:
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        # The caller goes on in the dialplan, reaches Hangup() and is gone for the app.
        return Reply(204, after=lambda: self._hangup(ch, "continue"))

    async def _delete_channel(self, q: dict[str, str], cid: str) -> Reply:
        ch = self.channels.get(cid)
        if ch is None:
            return error_reply(404, "Channel not found")
        if ch.kind == "local":  # hanging up the far half is the far end hanging up
            caller = next(
                c for c in self.channels.values() if c.call is ch.call and c.kind == "caller"
            )
            return Reply(204, after=lambda: self._hangup(caller, "far"))
        return Reply(204, after=lambda: self._hangup(ch, "delete"))

    async def _get_channel(self, q: dict[str, str], cid: str) -> Reply:
        ch = self.channels.get(cid)
        return Reply(200, self._snapshot(ch)) if ch else error_reply(404, "Channel not found")

    async def _list_channels(self, q: dict[str, str]) -> Reply:
        # Newest first, as the recorded GET /channels listed them (ws_reconnect).
        return Reply(200, [self._snapshot(ch) for ch in reversed(self.channels.values())])

    async def _get_variable(self, q: dict[str, str], cid: str) -> Reply:
        name = q.get("variable")
        if not name:
            return error_reply(400, "Variable name is required")
        ch = self.channels.get(cid)
        if ch is None:
            return error_reply(404, "Provided channel was not found", "Channel Not Found")
        if name not in ch.variables:
            return error_reply(404, "Provided variable was not found", "Variable Not Found")
        return Reply(200, {"value": ch.variables[name]})

    async def _external_media(self, q: dict[str, str]) -> Reply:
        invalid = validate_external_media(q)
        if invalid is not None:
            return invalid
        if q.get("channelId") in self.channels:
            return error_reply(409, "Channel with given unique ID already exists")
        host, _, port = q["external_host"].rpartition(":")
        try:
            media = await open_media(
                self._running_loop(), (host, int(port)), q["format"], self._rtp_ports, self._rng
            )
        except OSError:
            return error_reply(500, INTERNAL_ERROR)
        ch = SimChannel(
            id=q.get("channelId") or self._new_id(),
            name=f"UnicastRTP/{q['external_host']}-0x7f74{self._rng.getrandbits(28) << 4:08x}",
            kind="media", state="Down", caller=("", ""), connected=("", ""), dialplan=DIALLED,
            creationtime=format_timestamp(time.time()), media=media,
            dialstring=f"{q['external_host']}/c({q['format']})",
            variables={"UNICASTRTP_LOCAL_ADDRESS": media.local[0],
                       "UNICASTRTP_LOCAL_PORT": str(media.local[1])},
        )  # fmt: skip
        body = self._templates.em_channel_body({
            **self._snapshot_values(ch),
            "channelvars": {k: ch.variables[k] for k in CHANNELVARS},
        })  # fmt: skip
        if q["app"] != self.app or not self.app_active:
            # Stasis() fails for it at once: the 200 names a channel that is already gone and
            # no event ever comes (errors: app=nosuchapp, then DELETE -> 404).
            media.close()
            return Reply(200, body)
        self.channels[ch.id] = ch
        self._medias.append(media)
        delay = self._em_stasis_delay
        if delay < 0:  # StasisStart before the REST answer (facts §1: 3 of 5 under load)
            self._media_enters_stasis(ch)
            await asyncio.sleep(-delay)
            return Reply(200, body)
        return Reply(200, body, after=lambda: self._schedule_stasis_start(ch, delay))

    def _schedule_stasis_start(self, ch: SimChannel, delay: float) -> None:
        if delay == 0:
            self._media_enters_stasis(ch)
        elif self.channels.get(ch.id) is ch and not ch.in_stasis:
            ch.pending_start = self._running_loop().call_later(delay, self._media_enters_stasis, ch)

    async def _create_bridge(self, q: dict[str, str]) -> Reply:
        types = (q.get("type") or "mixing").split(",")
        bridge_id = q.get("bridgeId") or ""
        if any(kind not in BRIDGE_TYPES for kind in types):
            shown = bridge_id or "(null)"  # sic: the recorded answer to type=bogus
            message = f"Unable to create bridge. Possible duplicate bridge id '{shown}'"
            return error_reply(500, message, "Internal Error")
        if bridge_id in self.bridges:
            return error_reply(409, f"Bridge with id '{bridge_id}' already exists")
        bridge = SimBridge(bridge_id or str(uuid4()), q.get("name", ""), types[0],
                           format_timestamp(time.time()))  # fmt: skip
        self.bridges[bridge.id] = bridge
        return Reply(200, self._bridge_snapshot(bridge))

    async def _get_bridge(self, q: dict[str, str], bid: str) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        return Reply(200, self._bridge_snapshot(bridge))

    async def _list_bridges(self, q: dict[str, str]) -> Reply:
        return Reply(200, [self._bridge_snapshot(b) for b in self.bridges.values()])

    async def _add_channel(self, q: dict[str, str], bid: str) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        ids = [cid for cid in q.get("channel", "").split(",") if cid]
        if not ids:
            return error_reply(400, "Missing parameter channel")
        for cid in ids:
            ch = self.channels.get(cid)
            if ch is None:
                return error_reply(400, "Channel not found")
            if not ch.in_stasis:  # facts §1b; body and reason from res/ari/resource_bridges.c
                return error_reply(422, "Channel not in Stasis application")
        for cid in ids:
            self._enter_bridge(self.channels[cid], bridge)
        return Reply(204, after=lambda: self._check_bridged(bridge))

    def _check_bridged(self, bridge: SimBridge) -> None:
        members = [self.channels[cid] for cid in bridge.channels if cid in self.channels]
        medias = [m for m in members if m.kind == "media"]
        for member in members:
            call = member.call
            if member.kind == "caller" and call is not None and medias and not call.bridged.done():
                self._on_bridged(call, medias[0], bridge)

    async def _delete_bridge(self, q: dict[str, str], bid: str) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        for cid in list(bridge.channels):
            self._leave_bridge(self.channels[cid])
        del self.bridges[bid]
        self._emit("BridgeDestroyed", bridge=self._bridge_snapshot(bridge))
        return Reply(204)

    def _application(self) -> dict[str, Any]:
        return reshape(self._templates.application, {
            "name": self.app,
            "channel_ids": [ch.id for ch in self.channels.values() if ch.in_stasis],
            "bridge_ids": list(self.bridges),
        })  # fmt: skip

    async def _list_applications(self, q: dict[str, str]) -> Reply:
        return Reply(200, [self._application()] if self._app_registered else [])

    async def _get_application(self, q: dict[str, str], app: str) -> Reply:
        if app != self.app or not self._app_registered:
            return error_reply(404, "Application not found")
        return Reply(200, self._application())

    async def _ping(self, q: dict[str, str]) -> Reply:
        values = {"timestamp": format_timestamp(time.time()), "asterisk_id": ASTERISK_ID}
        return Reply(200, reshape(self._templates.ping, values))

    async def _info(self, q: dict[str, str]) -> Reply:
        return Reply(200, dict(self._templates.info))

    # -- helpers ---------------------------------------------------------------------------

    def _new_id(self) -> str:
        """Asterisk's uniqueid: `<epoch seconds at creation>.<running counter>`."""
        self._next_unique += 1
        return f"{int(time.time())}.{self._next_unique - 1}"

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("SimulatedAsterisk is not started")
        return self._loop
