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

Fault knobs (none of them recorded; each follows what Asterisk does, as documented where it is):
* `fail_next` / `delay_next`: one request answers an error, or is slow (and then performed or
  lost), for any method and path (`bridge.tools.sim.faults`);
* `system`: the Asterisk version, which modules are loaded, global variables such as ASTETCDIR
  (`bridge.tools.sim.system`: an older or misconfigured Asterisk for `pipecat-bridge check`);
* `restart()` (`crash()` + `boot()`): the process dies: every socket closes without a close
  frame, all state is forgotten without an event, connections are refused for a while, then an
  empty Asterisk answers on the same port;
* `add_waiting_caller`, `add_leftover_external_media`, `add_leftover_bridge`: what a bridge
  process that crashed leaves in Asterisk, for start-up sweep tests; `leftovers()` and `counts`
  tell what is still there and what happened.

The other two transports: `external` (ExternalMedia over AudioSocket and chan_websocket, with
`audiosocket` and `chan_websocket` the protocol modules and `links` the far end through them) and
`dialplan` (`dial_audiosocket`, `dial_websocket`: the dialplan calling the bridge, no ARI).
`originate`: `POST /channels` into the app (outbound calls, transfer targets) and
`/channels/create` + `/dial`, ringing, then answering or failing as recorded, per endpoint
(`targets`: `sim.targets["PJSIP/1001"] = TargetBehaviour.answer(after=0.2)`, `technologies`).
`bridgemedia`: softmix RTP, ring-back (`POST /bridges/{id}/play`), bridge music on hold, and
`/playbacks/{id}`; `recorder`: bridge and channel recordings, live and stored, their WAV files
(`stored_recordings`, `recording_faults`); `snoop`: snoop channels (`snoop_stasis_delay`).
What the far end got from the app is on its `SimCall`: `dtmf_received` (`wait_dtmf()`),
`far_end_cause`, `heard` / `hearing` (ring-back, music on hold).

Layout (modules of `bridge.tools.sim`): `media` is the UDP side (`EmMedia`, `SimCall`); `core` is
the channel and bridge state and the events its changes emit (`AsteriskCore`); `resources` the
ARI resources that change it; `callers` the calls arriving from the dialplan; `control` the
play/continue/DTMF rules from Asterisk's source; `causes` hang-up causes and reasons; `targets`
what dialled endpoints do; `mixing` the pure audio of softmix and recordings; this module is
the aiohttp layer (ARI REST routing, authentication, fault injection, restart, the events
WebSocket) and the public API.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from bridge.tools.sim.callers import StasisAppNotActive
from bridge.tools.sim.core import (
    ASTERISK_ID,
    CHANNELVARS,
    DIALLED,
    SimBridge,
    SimChannel,
    SimLeftovers,
)
from bridge.tools.sim.faults import Fault, FaultTable
from bridge.tools.sim.media import MAX_DATAGRAM, EmMedia, Packet, SimCall
from bridge.tools.sim.recording import FIXTURES_DIR
from bridge.tools.sim.snoop import AsteriskSnoop
from bridge.tools.sim.templates import Reply, dumps, error_reply

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
    "SimLeftovers",
    "SimRequest",
    "SimulatedAsterisk",
    "StasisAppNotActive",
]

SERVER = "Asterisk/23.4.1"


@dataclass(slots=True)
class SimRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int | None = None  # None while being handled, or never answered (a lost request)
    t: float = 0.0  # loop.time() when it arrived
    handled: bool = False  # answered, or lost for good


@dataclass(eq=False, slots=True)
class _EventSocket:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    apps: tuple[str, ...]  # the app names it was opened for (`?app=a,b`)
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)


Handler = Callable[..., Awaitable[Reply]]


class SimulatedAsterisk(AsteriskSnoop):
    """Asterisk 23.4.1 as seen by an ARI app, on 127.0.0.1. Use `async with`.

    `history=False` keeps no request/event/packet logs and drops ended calls (soak runs).
    """

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
        history: bool = True,
    ) -> None:
        super().__init__(
            app=app,
            em_stasis_delay=em_stasis_delay,
            rtp_ports=rtp_ports,
            seed=seed,
            fixtures_dir=fixtures_dir,
            history=history,
        )
        self.user, self.password = user, password
        self.port = port
        self.requests: list[SimRequest] = []
        self._sockets: list[_EventSocket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()  # aiohttp tasks inside our handler
        self._faults = FaultTable()
        self._generation = 0  # one per Asterisk process: bumped by crash()
        self._requests_changed = asyncio.Condition()
        self._app_active = asyncio.Event()
        self._sockets_event = asyncio.Event()  # set (and replaced) on every socket change
        self._runner: web.AppRunner | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (m, re.compile(p), h)
            for m, p, h in (
                ("POST", r"/ari/channels/externalMedia", self._external_media),
                ("GET", r"/ari/channels", self._list_channels),
                ("POST", r"/ari/channels", self._originate),
                ("POST", r"/ari/channels/create", self._create),
                ("GET", r"/ari/channels/(?P<cid>[^/]+)", self._get_channel),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)", self._originate),
                ("DELETE", r"/ari/channels/(?P<cid>[^/]+)", self._delete_channel),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/dial", self._dial_created),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/dtmf", self._send_dtmf),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/record", self._record_channel),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/snoop", self._snoop),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/snoop/(?P<sid>[^/]+)", self._snoop),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/answer", self._answer),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/continue", self._continue),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/play", self._play_media),
                ("GET", r"/ari/channels/(?P<cid>[^/]+)/variable", self._get_variable),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/variable", self._set_variable),
                ("POST", r"/ari/channels/(?P<cid>[^/]+)/moh", self._start_moh),
                ("DELETE", r"/ari/channels/(?P<cid>[^/]+)/moh", self._stop_moh),
                ("GET", r"/ari/bridges", self._list_bridges),
                ("POST", r"/ari/bridges", self._create_bridge),
                ("GET", r"/ari/bridges/(?P<bid>[^/]+)", self._get_bridge),
                ("DELETE", r"/ari/bridges/(?P<bid>[^/]+)", self._delete_bridge),
                ("POST", r"/ari/bridges/(?P<bid>[^/]+)/addChannel", self._add_channel),
                ("POST", r"/ari/bridges/(?P<bid>[^/]+)/removeChannel", self._remove_channel),
                ("POST", r"/ari/bridges/(?P<bid>[^/]+)/record", self._record_bridge),
                ("POST", r"/ari/bridges/(?P<bid>[^/]+)/play", self._play_bridge),
                ("POST", r"/ari/bridges/(?P<bid>[^/]+)/play/(?P<pid>[^/]+)", self._play_bridge),
                ("POST", r"/ari/bridges/(?P<bid>[^/]+)/moh", self._bridge_moh_start),
                ("DELETE", r"/ari/bridges/(?P<bid>[^/]+)/moh", self._bridge_moh_stop),
                ("GET", r"/ari/recordings/live/(?P<name>[^/]+)", self._get_live),
                ("DELETE", r"/ari/recordings/live/(?P<name>[^/]+)", self._cancel_live),
                ("POST", r"/ari/recordings/live/(?P<name>[^/]+)/stop", self._stop_live),
                ("GET", r"/ari/recordings/stored", self._list_stored),
                ("GET", r"/ari/recordings/stored/(?P<name>[^/]+)", self._get_stored),
                ("DELETE", r"/ari/recordings/stored/(?P<name>[^/]+)", self._delete_stored),
                ("GET", r"/ari/recordings/stored/(?P<name>[^/]+)/file", self._get_stored_file),
                ("GET", r"/ari/playbacks/(?P<pid>[^/]+)", self._get_playback),
                ("DELETE", r"/ari/playbacks/(?P<pid>[^/]+)", self._stop_playback),
                ("GET", r"/ari/applications", self._list_applications),
                ("GET", r"/ari/applications/(?P<app>[^/]+)", self._get_application),
                ("GET", r"/ari/asterisk/ping", self._ping),
                ("GET", r"/ari/asterisk/info", self.system.info),
                ("GET", r"/ari/asterisk/modules", self.system.list_modules),
                ("GET", r"/ari/asterisk/modules/(?P<name>[^/]+)", self.system.get_module),
                ("GET", r"/ari/asterisk/variable", self.system.get_global_var),
                ("POST", r"/ari/asterisk/variable", self.system.set_global_var),
                ("POST", r"/ari/events/claim", self._claim),
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
        await self.boot()

    async def stop(self) -> None:
        """Close every socket, timer and task the simulator made."""
        self._cancel_timers()
        await self._end_dialplan_calls()
        await self._close_links()  # AudioSocket and media WebSockets, as on a hang-up
        for sock in list(self._sockets):
            await sock.ws.close()
        for media in self._medias:
            media.close()
        self._medias.clear()
        await self._cancel_handlers()  # slow (delayed) requests: nobody will wait for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- restart -------------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        """Asterisk is running: it accepts connections on `port`."""
        return self._runner is not None

    async def restart(self, down_for: float = 0.5) -> None:
        """An Asterisk restart: `crash()`, `down_for` seconds refusing connections, `boot()`.

        Returns once the new, empty Asterisk accepts connections on the same port.
        """
        await self.crash()
        await asyncio.sleep(down_for)  # the outage itself: there is nothing to wait for
        await self.boot()

    async def crash(self) -> None:
        """The Asterisk process exits: nothing is closed politely and nothing is remembered.

        The listening socket closes (new connections are refused), every HTTP and events
        connection is aborted (a TCP reset, no WebSocket close frame), requests in progress
        are never answered nor acted on, every RTP socket closes, and channels, bridges and
        the app registration are forgotten without an event. Callers of the old calls are
        gone (`hung_up_by == "restart"`); nothing is replayed later (facts §16).
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._generation += 1
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            for connection in runner.server.connections:
                if connection.transport is not None:
                    connection.transport.abort()
        await self._cancel_handlers()
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.done.set()
        self._sockets_changed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._forget_all()
        await runner.cleanup()

    async def boot(self) -> None:
        """Start answering on 127.0.0.1:`port` (any free port the first time, if 0)."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def _cancel_handlers(self) -> None:
        handlers = [task for task in self._handlers if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    @property
    def http_connections(self) -> int:
        """HTTP/WebSocket connections open to the server now (keep-alive ones included)."""
        if self._runner is None or self._runner.server is None:
            return 0
        return len(self._runner.server.connections)

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

    def _event_queues(self, app: str | None = None) -> list[asyncio.Queue[str]]:
        name = app or self.app
        return [sock.queue for sock in self._sockets if name in sock.apps]

    async def wait_app_active(self) -> None:
        """Until an events socket is connected for the app (calls can arrive from then on)."""
        await self._app_active.wait()

    async def wait_app_connected(self, name: str) -> None:
        """Until an events socket is connected for app `name` (any app name)."""
        while not self.app_connected(name):
            await self._sockets_event.wait()

    def _sockets_changed(self) -> None:
        self._sockets_event.set()
        self._sockets_event = asyncio.Event()
        if self.app_active:
            self._app_active.set()
        else:
            self._app_active.clear()

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        body: Any = None,
        reason: str | None = None,
        *,
        times: int = 1,
        perform: bool = False,
    ) -> None:
        """Answer the next `times` requests matching `method` ("*": any) and
        `re.search(path_regex)` with `status` and `body` (JSON-able; a str is sent as is; None:
        no body), and the reason phrase `reason` if Asterisk's differs from the standard one.
        `perform`: Asterisk acts on the request all the same (e.g. the bridge is created, but
        the answer is a 500)."""
        reply = Reply(status, body, reason)
        self._faults.add(Fault(method.upper(), re.compile(path_regex), times, perform, reply))

    def delay_next(
        self,
        method: str,
        path_regex: str,
        seconds: float,
        *,
        perform: bool = True,
        times: int = 1,
    ) -> None:
        """Hold the next `times` matching requests `seconds` before handling them, like a
        loaded Asterisk: a client with a shorter timeout gives up first. `perform=True`: the
        request is then acted on and answered as usual, whether or not the client still waits
        (Asterisk does not notice a client gone); `perform=False`: it is lost, never acted on,
        its connection dropped without an answer."""
        self._faults.add(Fault(method.upper(), re.compile(path_regex), times, perform, None,
                               seconds))  # fmt: skip

    def clear_faults(self) -> None:
        self._faults.clear()

    async def wait_request(
        self, method: str, path_regex: str, *, nth: int = 1, handled: bool = True
    ) -> SimRequest:
        """The `nth` request matching `method` and `re.search(path_regex)` since start, once
        it has arrived (`handled=False`) or has been answered or lost (`handled=True`).
        Needs `history=True`."""
        pattern = re.compile(path_regex)

        def found() -> SimRequest | None:
            matching = [r for r in self.requests
                        if r.method == method.upper() and pattern.search(r.path)
                        and (r.handled or not handled)]  # fmt: skip
            return matching[nth - 1] if len(matching) >= nth else None

        async with self._requests_changed:
            await self._requests_changed.wait_for(lambda: found() is not None)
        request = found()
        assert request is not None
        return request

    async def _request_changed(self, entry: SimRequest, handled: bool) -> None:
        entry.handled = handled
        async with self._requests_changed:
            self._requests_changed.notify_all()

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

    # -- HTTP plumbing ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:  # a crash() cancels it: a dead Asterisk finishes nothing
            self._handlers.add(task)
        try:
            return await self._serve(request)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        generation = self._generation
        query = {key: request.query.get(key, "") for key in request.query}
        if request.content_type == "application/json" and request.can_read_body:
            # ARI takes parameters in a JSON body too (originate's `variables` only there).
            try:
                body = await request.json()
            except ValueError:
                body = None  # Asterisk answers a broken body 400; nothing here sends one
            for key, value in body.items() if isinstance(body, dict) else ():
                query.setdefault(key, value if isinstance(value, str) else dumps(value))
        entry = SimRequest(request.method, request.path, query, t=self._running_loop().time())
        if self._history:
            self.requests.append(entry)
            await self._request_changed(entry, handled=False)
        try:
            return await self._respond(request, query, entry, generation)
        finally:
            if self._history and self._generation == generation:
                await self._request_changed(entry, handled=True)

    async def _respond(
        self, request: web.Request, query: dict[str, str], entry: SimRequest, generation: int
    ) -> web.StreamResponse:
        fault = None
        if request.method == "GET" and request.path.startswith("/media/"):
            response = await self._media_socket(request)  # chan_websocket: no credentials
            entry.status = response.status
            return response
        if not self._authorised(request, query):
            reply = error_reply(401, "Authentication required")
        else:
            fault = self._faults.take(request.method, request.path)
            if fault is not None and fault.delay:
                await asyncio.sleep(fault.delay)  # a slow Asterisk: the slowness is the fault
                if not fault.perform:
                    if request.transport is not None:
                        request.transport.abort()  # lost: no answer, nothing done
                    return web.Response(status=500)  # never written: the connection is gone
            if fault is not None and fault.reply is not None and not fault.perform:
                reply = fault.reply
            elif request.method == "GET" and request.path == "/ari/events":
                return await self._events_socket(request, query, entry)
            else:
                # Routed on the raw path: a recording name's `/` travels as %2F in one segment.
                raw_path = request.rel_url.raw_path
                reply = await self._dispatch(request.method, raw_path, query)
                if fault is not None and fault.reply is not None:  # acted on, answers an error
                    reply = replace(fault.reply, after=reply.after)
        entry.status = reply.status
        response = self._response(reply)
        if reply.after is not None:
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:
                pass  # the client went away (timed out): Asterisk acts on the request anyway
            finally:
                if generation == self._generation:  # not when Asterisk died meanwhile
                    reply.after()
        return response

    async def _dispatch(self, method: str, path: str, query: dict[str, str]) -> Reply:
        matched = False
        for route_method, pattern, handler in self._routes:
            found = pattern.fullmatch(path)
            if found is None:
                continue
            matched = True
            if route_method == method:
                params = {key: unquote(value) for key, value in found.groupdict().items()}
                return await handler(query, **params)
        if matched:
            return error_reply(405, "Invalid method")
        return error_reply(404, "Resource not found")

    def _response(self, reply: Reply) -> web.Response:
        headers = {"Server": self.system.server, "Cache-Control": "no-cache, no-store"}
        if reply.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="Asterisk REST Interface"'
        reason = reply.reason or HTTPStatus(reply.status).phrase
        if reply.location is not None:
            headers["Location"] = reply.location
        if reply.body is None:
            return web.Response(status=reply.status, reason=reason, headers=headers)
        if isinstance(reply.body, bytes):  # a stored recording's file
            headers["Content-Type"] = reply.content_type or "application/octet-stream"
            return web.Response(status=reply.status, reason=reason, body=reply.body,
                                headers=headers)  # fmt: skip
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

    async def _events_socket(
        self, request: web.Request, query: dict[str, str], entry: SimRequest
    ) -> web.StreamResponse:
        apps = [name for name in query.get("app", "").split(",") if name]
        if not apps:
            entry.status = 400
            return self._response(error_reply(400, "Missing param 'app'"))
        # A short close timeout: stop() must not hang on a client that stopped reading.
        ws = web.WebSocketResponse(autoping=True, max_msg_size=64 * 1024, timeout=1.0)
        ws.headers["Server"] = self.system.server
        await ws.prepare(request)
        entry.status = 101
        sock = _EventSocket(ws, request.transport, apps=tuple(apps))
        self._app_registered |= self.app in apps
        self._other_apps.update(apps)
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
