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

Layout: `bridge.sim.media` is the UDP side (`EmMedia`, `SimCall`); `bridge.sim.core` is the
channel and bridge state, the ARI resources that change it and the events those changes emit
(`AsteriskCore`); this module is the aiohttp layer (ARI REST routing, authentication, fault
injection, the events WebSocket) and the public API.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.sim.core import ASTERISK_ID, CHANNELVARS, DIALLED, AsteriskCore, SimBridge, SimChannel
from bridge.sim.media import MAX_DATAGRAM, EmMedia, Packet, SimCall
from bridge.sim.recording import FIXTURES_DIR, CallerScript, load_recording
from bridge.sim.templates import Reply, build_timeline, dumps, error_reply, format_timestamp

__all__ = [
    "ASTERISK_ID",
    "CHANNELVARS",
    "DIALLED",
    "MAX_DATAGRAM",
    "SERVER",
    "EmMedia",
    "Packet",
    "SimBridge",
    "SimCall",
    "SimChannel",
    "SimRequest",
    "SimulatedAsterisk",
    "StasisAppNotActive",
]

SERVER = "Asterisk/23.4.1"


class StasisAppNotActive(RuntimeError):
    """A call arrived while no events socket was connected for the app (facts §16)."""


@dataclass(slots=True)
class SimRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int | None = None  # None while the request is still being handled
    t: float = 0.0  # loop.time() when it arrived


@dataclass(eq=False, slots=True)
class _EventSocket:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    subscribed: bool  # connected for our app (a socket may name other apps only)
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)


Handler = Callable[..., Awaitable[Reply]]


class SimulatedAsterisk(AsteriskCore):
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
        super().__init__(
            app=app,
            em_stasis_delay=em_stasis_delay,
            rtp_ports=rtp_ports,
            seed=seed,
            fixtures_dir=fixtures_dir,
        )
        self.user, self.password = user, password
        self.port = port
        self._fixtures_dir = fixtures_dir
        self._scripts: dict[str, CallerScript] = {}
        self.requests: list[SimRequest] = []
        self._sockets: list[_EventSocket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._faults: list[tuple[str, re.Pattern[str], Reply]] = []
        self._app_active = asyncio.Event()
        self._next_local = 0
        self._runner: web.AppRunner | None = None
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

    def _event_queues(self) -> list[asyncio.Queue[str]]:
        return [sock.queue for sock in self._sockets if sock.subscribed]

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
