"""SimulatedAsterisk: a test double of Asterisk 23.4.1's ARI + ExternalMedia over real sockets.

Theory of operation. An aiohttp server on 127.0.0.1 answers ARI REST and the events WebSocket;
one UDP socket per UnicastRTP channel plays Asterisk's end of the RTP. Channels and bridges are
state, not a replay: each request changes the state and emits the events a real Asterisk emits
for that change, in the recorded per-channel order, rendered from recorded templates.

A call (`place_call`) is a caller channel in Stasis. When it and a UnicastRTP channel are in one
bridge (the *bridged moment*) the recorded far end plays from that moment on, on one deadline
timer per call (`loop.call_at`): its RTP, its DTMF, its hang-up; or an Echo() that reflects what
the bridge sends. Asterisk sends no RTP before that moment (facts §8).

Kept from the recordings / facts file:
* the UnicastRTP StasisStart may come before the externalMedia answer (`em_stasis_delay` < 0);
  until it has come, addChannel of that channel answers 422 (§1b);
* DELETE of a channel: HangupRequest(32, soft) -> [Varset BRIDGEPEER ''] -> [LeftBridge] ->
  StasisEnd -> (UnicastRTP only: Varset STASISSTATUS, ChannelDestroyed); the far end hanging
  up: HangupRequest(16) -> ... -> StasisEnd; nothing is torn down for the app (§13-15);
* no events while no events socket is connected, none replayed later; a call arriving then
  fails (§16); strict RTP (§7); RTP always goes to external_host (§6); PT > 34 dropped (§10).
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

from aiohttp import web

from bridge.sim.recording import FIXTURES_DIR, CallerScript, TimedDtmf, load_recording
from bridge.sim.templates import (
    BRIDGE_TYPES,
    INTERNAL_ERROR,
    STRICT_RTP_LEARN_SECONDS,
    EchoStream,
    Reply,
    StrictRtp,
    Templates,
    TimelineItem,
    build_timeline,
    dumps,
    error_reply,
    format_timestamp,
    reshape,
    validate_external_media,
)

SERVER = "Asterisk/23.4.1"
ASTERISK_ID = "02:fc:00:00:00:01"
# A UnicastRTP channel's dialplan while it is being dialled and after it left Stasis.
DIALLED = ("default", "s", 1, "AppDial2", "(Outgoing Line)")
CHANNELVARS = ("UNICASTRTP_LOCAL_PORT", "UNICASTRTP_LOCAL_ADDRESS")  # recorded order


class StasisAppNotActive(RuntimeError):
    """A call arrived while no events socket was connected for the app (facts §16)."""


@dataclass(slots=True)
class SimRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int | None = None  # None while the request is still being handled
    t: float = 0.0  # loop.time() when it arrived


Packet = tuple[float, bytes, tuple[str, int]]  # (loop.time() monotonic, datagram, address)
MAX_DATAGRAM = 2048  # more than any RTP packet Asterisk handles on a UnicastRTP channel


class EmMedia(asyncio.DatagramProtocol):
    """The UDP socket of one UnicastRTP channel: Asterisk's end of the RTP stream.

    Asterisk sends from here to `external_host` only (facts §6) and receives through strict
    RTP (§7). Per-packet work is an append and, for an echoing far end, one header rewrite.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, remote: tuple[str, int], fmt: str) -> None:
        self._loop = loop
        self.remote = remote
        self.format = fmt
        self.strict = StrictRtp(remote, learn_until=loop.time() + STRICT_RTP_LEARN_SECONDS)
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self.received: list[Packet] = []  # accepted, as Asterisk would `Got` them
        self.dropped: list[tuple[float, bytes, tuple[str, int], str]] = []  # ..., reason
        self.sent: list[Packet] = []
        self.send_errors = 0
        self.echo: EchoStream | None = None  # set while bridged to an echoing far end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = (host, port)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        now, source = self._loop.time(), (str(addr[0]), int(addr[1]))
        if len(data) < 12 or len(data) > MAX_DATAGRAM or data[0] >> 6 != 2:
            reason = "not_rtp"
        elif not self.strict.accept(source, now):
            reason = "strict_rtp"
        elif data[1] & 0x7F > 34:
            reason = "payload_type"  # dynamic PT without SDP: dropped by Asterisk (facts §10)
        else:
            self.received.append((now, data, source))
            if self.echo is not None and self.format == "ulaw":
                echoed = self.echo.echo(data)
                if echoed is not None:
                    self.send(echoed)
            return
        self.dropped.append((now, data, source, reason))

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1  # ICMP port unreachable: nobody listens at external_host (yet)

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.sendto(data, self.remote)
        self.sent.append((self._loop.time(), data, self.remote))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SimCall:
    """One inbound call as the far end sees it; futures to await, lists to assert on."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        scenario: str,
        caller_id: str,
        caller_name: str,
        args: list[str],
        echo: bool,
        timeline: list[TimelineItem],
    ) -> None:
        self._loop = loop
        self.scenario, self.caller_id, self.caller_name = scenario, caller_id, caller_name
        self.args, self.echo = args, echo
        self.em_channel_id: str | None = None
        self.bridge_id: str | None = None
        self.media: EmMedia | None = None
        self.hung_up_by: str | None = None  # "caller" | "app"
        self.bridged: asyncio.Future[float] = loop.create_future()  # loop.time() of the moment
        self.ended: asyncio.Future[str] = loop.create_future()  # hung_up_by
        self.dtmf_sent: list[str] = []
        self._timeline = timeline
        self._next = 0
        self._t0 = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._play: Callable[[SimCall, str, Any], None] | None = None

    def __repr__(self) -> str:
        return f"<SimCall {self.caller_id} {self.scenario} em={self.em_channel_id}>"

    @property
    def rtp_received(self) -> list[Packet]:
        return self.media.received if self.media else []

    @property
    def rtp_sent(self) -> list[Packet]:
        return self.media.sent if self.media else []

    @property
    def rtp_dropped(self) -> list[tuple[float, bytes, tuple[str, int], str]]:
        return self.media.dropped if self.media else []

    def start(self, now: float, play: Callable[[SimCall, str, Any], None]) -> None:
        """The bridged moment: the far end's timeline runs from `now`."""
        self._t0, self._play = now, play
        self.bridged.set_result(now)
        self._tick()

    def _tick(self) -> None:
        # Absolute deadlines from the bridged moment: a late tick catches up, never drifts.
        self._timer = None
        now = self._loop.time()
        while self._next < len(self._timeline) and not self.ended.done():
            offset, kind, payload = self._timeline[self._next]
            deadline = self._t0 + offset
            if deadline > now:
                self._timer = self._loop.call_at(deadline, self._tick)
                return
            self._next += 1
            if self._play is not None:
                self._play(self, kind, payload)

    def finish(self, by: str) -> None:
        self.cancel_timer()
        if not self.ended.done():
            self.hung_up_by = by
            self.ended.set_result(by)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


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


@dataclass(eq=False, slots=True)
class _EventSocket:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    subscribed: bool  # connected for our app (a socket may name other apps only)
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)


Handler = Callable[..., Awaitable[Reply]]


class SimulatedAsterisk:
    """Asterisk 23.4.1 as seen by an ARI app, on 127.0.0.1. Use `async with`."""

    def __init__(
        self,
        *,
        user: str = "asterisk",
        password: str = "asterisk",
        app: str = "pipecat",
        port: int = 0,
        em_stasis_delay: float = 0.0,
        rtp_ports: tuple[int, int] = (10000, 10999),
        seed: int | None = None,
        fixtures_dir: Path = FIXTURES_DIR,
    ) -> None:
        self.user, self.password, self.app = user, password, app
        self.port = port
        self._em_stasis_delay = em_stasis_delay
        self._rtp_ports = rtp_ports
        self._rng = random.Random(seed)
        self._fixtures_dir = fixtures_dir
        self._templates = Templates.from_recordings(fixtures_dir)
        self._scripts: dict[str, CallerScript] = {}
        self.requests: list[SimRequest] = []
        self.events_sent: list[str] = []
        self.event_times: list[float] = []  # loop.time() of each entry of events_sent
        self.channels: dict[str, SimChannel] = {}
        self.bridges: dict[str, SimBridge] = {}
        self.calls: list[SimCall] = []
        self._sockets: list[_EventSocket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._medias: list[EmMedia] = []
        self._faults: list[tuple[str, re.Pattern[str], Reply]] = []
        self._app_registered = False  # Asterisk keeps the app listed after its socket went away
        self._app_active = asyncio.Event()
        self._next_unique = 0
        self._next_local = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (m, re.compile(p), h)
            for m, p, h in (
                ("POST", r"/ari/channels/externalMedia", self._external_media),
                ("GET", r"/ari/channels", self._list_channels),
                ("GET", r"/ari/channels/(?P<cid>[^/]+)", self._get_channel),
                ("DELETE", r"/ari/channels/(?P<cid>[^/]+)", self._delete_channel),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/answer", self._answer),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/continue", self._continue),
                ("GET", r"/ari/channels/(?P<cid>[^/]+)/variable", self._get_variable),
                ("GET", r"/ari/bridges", self._list_bridges),
                ("POST", r"/ari/bridges", self._create_bridge),
                ("GET", r"/ari/bridges/(?P<bid>[^/]+)", self._get_bridge),
                ("DELETE", r"/ari/bridges/(?P<bid>[^/]+)", self._delete_bridge),
                ("POST", r"/ari/bridges/(?P<bid>[^/]+)/addChannel", self._add_channel),
                ("GET", r"/ari/applications", self._list_applications),
                ("GET", r"/ari/applications/(?P<app>[^/]+)", self._get_application),
                ("GET", r"/ari/asterisk/ping", self._ping),
                ("GET", r"/ari/asterisk/info", self._info),
            )
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SimulatedAsterisk:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close every socket, timer and task the simulator made."""
        for call in self.calls:
            call.cancel_timer()
        for ch in self.channels.values():
            if ch.pending_start is not None:
                ch.pending_start.cancel()
        for sock in list(self._sockets):
            await sock.ws.close()
        for media in self._medias:
            media.close()
        self._medias.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events_url(self) -> str:
        """The events WebSocket URL the way the recorded client opened it."""
        return (
            f"ws://127.0.0.1:{self.port}/ari/events?app={self.app}"
            f"&api_key={self.user}:{self.password}&subscribeAll=false"
        )

    # -- introspection and fault knobs -----------------------------------------------------

    @property
    def app_active(self) -> bool:
        return any(sock.subscribed for sock in self._sockets)

    async def wait_app_active(self) -> None:
        """Until an events socket is connected for the app (calls can arrive from then on)."""
        await self._app_active.wait()

    def _sockets_changed(self) -> None:
        if self.app_active:
            self._app_active.set()
        else:
            self._app_active.clear()

    def open_udp_sockets(self) -> list[tuple[str, int]]:
        return [media.local for media in self._medias if media.is_open]

    def fail_next(
        self, method: str, path_regex: str, status: int, body: Any = None, reason: str | None = None
    ) -> None:
        """Answer the next request matching `method` and `re.search(path_regex)` with this."""
        self._faults.append((method.upper(), re.compile(path_regex), Reply(status, body, reason)))

    def set_em_stasis_delay(self, seconds: float) -> None:
        """Delay of the UnicastRTP StasisStart after the externalMedia answer (< 0: before it)."""
        self._em_stasis_delay = seconds

    def send_raw_event(self, text: str) -> None:
        """Deliver `text` as it is on every events socket (fault injection: a broken event)."""
        for sock in self._sockets:
            sock.queue.put_nowait(text)

    async def drop_event_sockets(self) -> None:
        """Cut every events socket without a close frame; calls and media keep going (§16)."""
        sockets, self._sockets = self._sockets, []
        self._sockets_changed()
        for sock in sockets:
            if sock.transport is not None:
                sock.transport.abort()
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in sockets)), 5.0)

    # -- calls -----------------------------------------------------------------------------

    async def place_call(
        self,
        scenario: str = "basic_ulaw",
        *,
        args: list[str] | None = None,
        caller_number: str | None = None,
        caller_name: str | None = None,
        exten: str | None = None,
        audio: bytes | None = None,
        audio_start: float | None = None,
        hangup_after: float | None = None,
        echo: bool | None = None,
    ) -> SimCall:
        """A call from the dialplan into Stasis: its StasisStart goes out now.

        Raises StasisAppNotActive when no events socket is connected for the app: the real
        `Stasis()` fails at once and no event is ever sent for that call (facts §16).
        """
        if not self.app_active:
            raise StasisAppNotActive(f"Stasis app '{self.app}' not active")
        script = self._script(scenario)
        recorded = script.stasis_start.data["channel"]
        call_args = list(script.stasis_start.data["args"]) if args is None else list(args)
        ident = (
            recorded["caller"]["name"] if caller_name is None else caller_name,
            recorded["caller"]["number"] if caller_number is None else caller_number,
        )
        plan = recorded["dialplan"]
        local = f"{recorded['name'].rsplit('-', 1)[0]}-{self._next_local:08x}"  # Local/200@caller
        self._next_local += 1
        now = format_timestamp(time.time())
        caller = SimChannel(
            id=self._new_id(), name=f"{local};1", kind="caller", state="Up", caller=ident,
            connected=ident, creationtime=now, in_stasis=True,
            dialplan=(plan["context"], exten or plan["exten"], plan["priority"], "Stasis",
                      ",".join([self.app, *call_args])),
        )  # fmt: skip
        # The ;2 half runs the far end's dialplan; it is listed by GET /channels, never in Stasis.
        half = SimChannel(
            id=self._new_id(), name=f"{local};2", kind="local", state="Up", caller=("", ""),
            connected=ident, creationtime=now,
            dialplan=("caller", local.split("/")[1].split("@")[0], 2, "Playback", "demo-congrats"),
        )  # fmt: skip
        use_echo = script.echo if echo is None else echo
        timeline = build_timeline(script, self._rng, audio, audio_start, hangup_after, use_echo)
        call = SimCall(self._running_loop(), scenario, caller.id, caller.name, call_args, use_echo,
                       timeline)  # fmt: skip
        caller.call = half.call = call
        self.channels[caller.id], self.channels[half.id] = caller, half
        self.calls.append(call)
        self._emit("StasisStart", caller, args=call_args)
        return call

    def _script(self, scenario: str) -> CallerScript:
        if scenario not in self._scripts:
            recording = load_recording(scenario, self._fixtures_dir)
            self._scripts[scenario] = recording.caller_script()
        return self._scripts[scenario]

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
        targets = [sock for sock in self._sockets if sock.subscribed]
        if not targets:
            return  # app inactive: Asterisk drops the event and never replays it (facts §16)
        if ch is not None:
            values[key] = self._snapshot(ch)
        raw = self._templates.event(
            kind, timestamp=format_timestamp(time.time()), asterisk_id=ASTERISK_ID,
            application=self.app, **values,
        )  # fmt: skip
        self.events_sent.append(raw)
        self.event_times.append(self._running_loop().time())
        for sock in targets:
            sock.queue.put_nowait(raw)

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

    # -- HTTP plumbing ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = {key: request.query.get(key, "") for key in request.query}
        entry = SimRequest(request.method, request.path, query, t=self._running_loop().time())
        self.requests.append(entry)
        if not self._authorised(request, query):
            reply = error_reply(401, "Authentication required")
        elif (fault := self._take_fault(request.method, request.path)) is not None:
            reply = fault
        elif request.method == "GET" and request.path == "/ari/events":
            return await self._events_socket(request, query, entry)
        else:
            reply = await self._dispatch(request.method, request.path, query)
        entry.status = reply.status
        response = self._response(reply)
        if reply.after is not None:
            try:
                await response.prepare(request)
                await response.write_eof()
            finally:
                reply.after()  # Asterisk acts on the request even if the client went away
        return response

    async def _dispatch(self, method: str, path: str, query: dict[str, str]) -> Reply:
        matched = False
        for route_method, pattern, handler in self._routes:
            found = pattern.fullmatch(path)
            if found is None:
                continue
            matched = True
            if route_method == method:
                return await handler(query, **found.groupdict())
        if matched:
            return error_reply(405, "Invalid method")
        return error_reply(404, "Resource not found")

    def _response(self, reply: Reply) -> web.Response:
        headers = {"Server": SERVER, "Cache-Control": "no-cache, no-store"}
        if reply.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="Asterisk REST Interface"'
        reason = reply.reason or HTTPStatus(reply.status).phrase
        if reply.body is None:
            return web.Response(status=reply.status, reason=reason, headers=headers)
        headers["Content-Type"] = "application/json"
        text = reply.body if isinstance(reply.body, str) else dumps(reply.body)
        return web.Response(status=reply.status, reason=reason, body=text.encode(), headers=headers)

    def _authorised(self, request: web.Request, query: dict[str, str]) -> bool:
        expected = f"{self.user}:{self.password}"
        if query.get("api_key") == expected:
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            return base64.b64decode(credentials, validate=True).decode() == expected
        except (ValueError, UnicodeDecodeError):
            return False

    def _take_fault(self, method: str, path: str) -> Reply | None:
        for index, (fault_method, pattern, reply) in enumerate(self._faults):
            if fault_method == method and pattern.search(path):
                del self._faults[index]
                return reply
        return None

    async def _events_socket(
        self, request: web.Request, query: dict[str, str], entry: SimRequest
    ) -> web.StreamResponse:
        apps = [name for name in query.get("app", "").split(",") if name]
        if not apps:
            entry.status = 400
            return self._response(error_reply(400, "Missing param 'app'"))
        # A short close timeout: stop() must not hang on a client that stopped reading.
        ws = web.WebSocketResponse(autoping=True, max_msg_size=64 * 1024, timeout=1.0)
        ws.headers["Server"] = SERVER
        await ws.prepare(request)
        entry.status = 101
        sock = _EventSocket(ws, request.transport, subscribed=self.app in apps)
        self._app_registered |= sock.subscribed
        self._sockets.append(sock)
        self._sockets_changed()
        writer = asyncio.create_task(self._write_events(sock))
        self._tasks.add(writer)
        writer.add_done_callback(self._tasks.discard)
        try:
            async for _ in ws:
                pass  # Asterisk ignores what clients send on the events socket
        finally:
            if sock in self._sockets:
                self._sockets.remove(sock)
                self._sockets_changed()
            writer.cancel()
            sock.done.set()
        return ws

    async def _write_events(self, sock: _EventSocket) -> None:
        while True:
            raw = await sock.queue.get()
            try:
                await sock.ws.send_str(raw)
            except ConnectionError:
                return

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
            media = await self._open_media((host, int(port)), q["format"])
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

    async def _open_media(self, remote: tuple[str, int], fmt: str) -> EmMedia:
        """Bind Asterisk's RTP socket: an even port in the rtp.conf range (facts §6)."""
        loop = self._running_loop()
        low, high = self._rtp_ports
        for _ in range(100):
            port = self._rng.randrange(low + low % 2, high + 1, 2)
            try:
                _, media = await loop.create_datagram_endpoint(
                    lambda: EmMedia(loop, remote, fmt), local_addr=("127.0.0.1", port)
                )
            except OSError:
                continue  # taken: Asterisk tries another port of its range as well
            return media
        raise OSError(f"no free even UDP port in {low}-{high}")

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
