"""The far side of the load: a fake Asterisk for N calls, the echo bot, and the RTP generator.

`python -m bridge.tools.bench.loadgen --calls N --bot echo|bursty --seconds S --out run.npz`

The fake Asterisk answers only what a relay's call path needs, in the exact JSON of the
recordings (rendered through `bridge.tools.sim.templates`, the simulator's own templates): the
events socket; the caller's StasisStart; answer; POST /bridges; externalMedia with
UNICASTRTP_LOCAL_ADDRESS/PORT in `channelvars`, then the ExternalMedia channel's own
StasisStart; addChannel, which starts that call's RTP (a simple_bridge relays only once both
channels are in it); the DELETEs with their ChannelHangupRequest/StasisEnd/ChannelDestroyed/
BridgeDestroyed; and at the end the caller hanging up (cause 16, then StasisEnd). It is not
the simulator: no per-call timers or datagram transports, which could not carry N=500.

Dispatch (`--dispatch`). `stasis`: each caller enters `Stasis(<app>)` of a connected app, as
today (with several events sockets, a random one of them, as `Stasis(pipecat-${RAND(1,N)})`
spreads calls). `broadcast`: the caller reaches `StasisBroadcast(<timeout>,<filter>)`: a
`CallBroadcast` to every connected app matching the filter (in shuffled order, as recorded),
then `POST /ari/events/claim` as recorded in `broadcast_claim` (`dispatch.Offers`: 204 to
the first, 409 to the others, 404 once the offer is over); the winner gets the caller's
StasisStart on its own socket and the call goes on as in `stasis`. `--apps N`: wait for N
events sockets (a `--workers N` bridge: `<app>-<instance>-<slot>`, one socket each) before
saying `app_active`. Every event goes to the socket of the app its channel is in.

`--transport audiosocket`: externalMedia (encapsulation=audiosocket) connects to the relay's
AudioSocket listener and sends 0x01 + the UUID while handling the request, as chan_audiosocket
does, then hands the connection to the generator. `--transport websocket`: externalMedia
(transport=websocket) answers a WebSocket/INCOMING channel with MEDIA_WEBSOCKET_CONNECTION_ID;
the relay's GET /media/<id> on this same port is answered 101 (subprotocol `media`) and handed
over with MEDIA_START as Asterisk 23.4.1 sends it; the channel's StasisStart comes after.

The run, printed as JSON lines for the orchestrator:
  {"ready": ports}  -> the relay is started; {"app_active"} once its events socket is up
  stdin "go"        -> place N calls at --rate a second; wait until each is bridged and its
                       bot has seen `start`; warm up; {"mark": "window_start", "t": epoch}
  after --seconds   -> {"mark": "window_end"}; drain; {"mark": "drained"} (the orchestrator
                       reads the sockets' counters while every call is still up)
  stdin "hangup"    -> hang every caller up; wait for the relay to delete what it created;
                       rtpgen dumps; {"done": summary}
  stdin closed      -> exit
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bridge.tools.bench.dispatch import GONE, WON, Offers, percentiles, policy_wait, summarize
from bridge.tools.bench.echo_bot import BotServer
from bridge.tools.bench.procs import child_preexec
from bridge.tools.sim.core import ASTERISK_ID, CHANNELVARS, DIALLED
from bridge.tools.sim.templates import Templates, dumps, format_timestamp

HOST = "127.0.0.1"
RTPGEN_PRIORITY = 10  # SCHED_FIFO: see procs.child_preexec
CALLER_ID = {"name": "Lab Caller", "number": "5551000"}  # the recorded caller's
DIALLED_EXTEN = "100"
CLAIMED = "Channel has already been claimed by another application"  # the recorded 409
NO_ID = {"name": "", "number": ""}


@dataclass(slots=True)
class LgChannel:
    id: str
    name: str
    kind: str  # "caller" or "media"
    creationtime: str
    call: int = -1  # index of the call it belongs to (a media channel: once added)
    socket: int = -1  # rtpgen socket (media channels)
    external_host: str = ""
    state: str = "Up"
    in_stasis: bool = True
    app: str = ""  # the Stasis app it is in ("": none yet, a caller being broadcast)


@dataclass(slots=True)
class LgCall:
    index: int
    caller_id: str
    placed: float
    media_id: str = ""
    bridged: float = 0.0
    bot_up: float = 0.0
    hung_up: bool = False
    app: str = ""  # the app it went to (won the claim)
    unclaimed: bool = False  # the broadcast timed out: the dialplan went on without us


class RtpGen:
    """The rtpgen child process and its control pipe (and, for TCP transports, the socket the
    connections are handed over on)."""

    def __init__(self, sockets: int, transport: str = "rtp") -> None:
        argv = [sys.executable, "-m", "bridge.tools.bench.rtpgen", "--sockets", str(sockets)]
        self.attach: socket.socket | None = None
        pass_fds: tuple[int, ...] = ()
        child: socket.socket | None = None
        if transport != "rtp":
            self.attach, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pass_fds = (child.fileno(),)
            argv += ["--transport", transport, "--attach-fd", str(child.fileno())]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=pass_fds,
            preexec_fn=child_preexec(None, realtime=RTPGEN_PRIORITY),
        )
        if child is not None:
            child.close()
        assert self.proc.stdout is not None and self.proc.stdin is not None
        hello = json.loads(self.proc.stdout.readline())
        self.ports: list[int] = hello["ports"]
        self.pid: int = hello["pid"]
        self.sockets = sockets

    def hand_over(self, index: int, sock: socket.socket | int, first: bytes = b"") -> None:
        """Give the generator stream `index`'s connection; it sends `first`, then frames."""
        assert self.attach is not None
        fd = sock if isinstance(sock, int) else sock.fileno()
        message = f"attach {index} {first.hex()}".encode()
        socket.send_fds(self.attach, [message], [fd])

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def dump(self, path: str, timeout: float = 60.0) -> dict[str, Any]:
        self.command(f"dump {path}")
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.proc.wait(timeout)
        return dict(json.loads(line)["stats"]) if line else {}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _ws_text(text: str) -> bytes:
    """One unmasked server text frame."""
    data = text.encode()
    size = len(data)
    head = bytes((0x81, size)) if size < 126 else bytes((0x81, 126)) + size.to_bytes(2, "big")
    return head + data


class _Sniffer(asyncio.Protocol):
    """chan_websocket serves /media/<id> on the ARI port: a GET /media/ upgrade is answered
    here and its socket handed to the generator; anything else goes to aiohttp as it is."""

    def __init__(self, asterisk: FakeAsterisk) -> None:
        self._asterisk = asterisk
        self._buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self._buf += data
        if len(self._buf) < 11:
            return
        if not self._buf.startswith(b"GET /media/"):
            runner = self._asterisk._runner
            assert runner is not None and runner.server is not None
            handler = runner.server()
            self.transport.set_protocol(handler)
            handler.connection_made(self.transport)
            handler.data_received(self._buf)
            return
        if b"\r\n\r\n" in self._buf:
            self.transport.pause_reading()
            self._asterisk.media_upgrade(self.transport, self._buf)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Dispatch:
    """How callers reach the apps (see the module docstring)."""

    mode: str = "stasis"  # or "broadcast"
    app_filter: str = "^pipecat"
    timeout_ms: int = 500
    claim_max_delay_ms: float = 150.0  # the bridge's --claim-max-delay-ms, for policy_wait
    seed: int = 1


class FakeAsterisk:
    def __init__(self, app: str, user: str, password: str, rtpgen: RtpGen,
                 transport: str = "rtp", dispatch: Dispatch | None = None) -> None:  # fmt: skip
        self.app = app  # the app named in Stasis() when no socket says otherwise
        self.transport = transport
        self.dispatch = dispatch or Dispatch()
        self._filter = re.compile(self.dispatch.app_filter)
        self._rng = random.Random(self.dispatch.seed)
        self.offers = Offers(self.dispatch.timeout_ms / 1000)
        self.bridge_app: dict[str, str] = {}  # the app a bridge's events go to
        self._ws_waiting: dict[str, LgChannel] = {}
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._templates = Templates.from_recordings()
        self.rtpgen = rtpgen
        self._free_sockets = list(range(rtpgen.sockets))[::-1]
        self.channels: dict[str, LgChannel] = {}
        self.bridges: dict[str, list[str]] = {}
        self.calls: list[LgCall] = []
        self.by_caller: dict[str, LgCall] = {}
        self.app_active = asyncio.Event()
        self.changed = asyncio.Event()  # any call progressed or was torn down
        self._sockets: dict[str, asyncio.Queue[str]] = {}  # events socket per app
        self.apps_seen: list[str] = []  # every app that connected, in order
        self.requests = 0
        self.errors = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self.transport == "websocket":
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(lambda: _Sniffer(self), HOST, 0,
                                                    backlog=1024)  # fmt: skip
            self.port = self._server.sockets[0].getsockname()[1]
            return self.port
        site = web.TCPSite(self._runner, HOST, 0, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- calls ----------------------------------------------------------------------------

    def connected_apps(self) -> list[str]:
        return sorted(self._sockets)

    def place_call(self) -> None:
        index = len(self.calls)
        now = format_timestamp(time.time())
        caller = LgChannel(f"{int(time.time())}.{index}", f"Local/200@caller-{index:08x};1",
                           "caller", now)  # fmt: skip
        self.channels[caller.id] = caller
        call = LgCall(index, caller.id, time.time())
        self.calls.append(call)
        self.by_caller[caller.id] = call
        if self.dispatch.mode == "broadcast":
            self._broadcast(caller)
            return
        apps = self.connected_apps()
        # Stasis(<app>): one app; several sockets: a random one, as Stasis(pipecat-${RAND}).
        app = self.app if self.app in apps or not apps else self._rng.choice(apps)
        self._enter_stasis(caller, call, app)

    def _enter_stasis(self, caller: LgChannel, call: LgCall, app: str) -> None:
        caller.app, caller.in_stasis, call.app = app, True, app
        self._emit("StasisStart", caller, args=[])

    # ---- StasisBroadcast ------------------------------------------------------------------

    def _broadcast(self, caller: LgChannel) -> None:
        caller.in_stasis = False
        apps = [a for a in self.connected_apps() if self._filter.search(a)]
        self._rng.shuffle(apps)  # each app's copy in shuffled order, as recorded
        d = self.dispatch
        wait = policy_wait({a: self.active_calls(a) for a in apps}, d.timeout_ms / 1000,
                           d.claim_max_delay_ms)  # fmt: skip
        self.offers.offer(caller.id, apps, time.monotonic(), wait)
        for app in apps:
            self._emit("CallBroadcast", caller, app=app, caller=CALLER_ID["number"],
                       called=DIALLED_EXTEN)  # fmt: skip
        loop = asyncio.get_running_loop()
        loop.call_later(d.timeout_ms / 1000 + 0.001, self._offers_timed_out)

    def active_calls(self, app: str) -> int:
        """Calls in progress in `app`, as the bridge counts them for its claim policy."""
        return sum(1 for c in self.calls if c.app == app and not c.hung_up)

    def _claim(self, q: dict[str, str]) -> web.Response:
        cid, app = q.get("channelId", ""), q.get("application", "")
        if not cid:
            return self._reply(400, {"message": "channelId parameter is required"})
        status = self.offers.claim(cid, app, time.monotonic())
        if status == GONE:
            return self._reply(404, {"message": "Channel not found or not in broadcast state"})
        if status != WON:
            return self._reply(409, {"message": CLAIMED})
        caller, call = self.channels.get(cid), self.by_caller.get(cid)
        if caller is not None and call is not None:
            # The StasisStart follows the 204 (~1 ms later in the recording).
            asyncio.get_running_loop().call_soon(self._enter_stasis, caller, call, app)
        return self._reply(204)

    def _offers_timed_out(self) -> None:
        for cid in self.offers.expire(time.monotonic()):
            # STASISSTATUS=TIMEOUT: the dialplan hangs the caller up; no app ever saw it.
            self.channels.pop(cid, None)
            call = self.by_caller.get(cid)
            if call is not None:
                call.unclaimed = call.hung_up = True
            self.changed.set()

    def dispatch_summary(self) -> dict[str, Any]:
        calls_by_app: dict[str, int] = dict.fromkeys(self.apps_seen, 0)
        for call in self.calls:
            if call.app:
                calls_by_app[call.app] = calls_by_app.get(call.app, 0) + 1
        out: dict[str, Any] = {"mode": self.dispatch.mode, "calls_by_app": calls_by_app}
        if self.dispatch.mode == "broadcast":
            out.update(summarize(self.offers.offers.values(), self.apps_seen))
            out["stray_claims"] = self.offers.stray_claims
        return out

    def hang_up(self, call: LgCall) -> None:
        """The caller hangs up (cause 16): its audio stops, then HangupRequest, StasisEnd."""
        call.hung_up = True
        self.offers.forget(call.caller_id)
        media = self.channels.get(call.media_id)
        if media is not None and media.socket >= 0:
            self.rtpgen.command(f"stop {media.socket}")
        caller = self.channels.pop(call.caller_id, None)
        if caller is not None:
            self._emit("ChannelHangupRequest/far", caller)
            self._emit("StasisEnd", caller)
        self.changed.set()

    def bot_started(self, call_id: str, channel_id: str) -> None:
        call = self.by_caller.get(channel_id)
        if call is not None and not call.bot_up:
            call.bot_up = time.time()
            self.changed.set()

    def leftovers(self) -> int:
        """What the relay created and did not delete: media channels and bridges."""
        return sum(ch.kind == "media" for ch in self.channels.values()) + len(self.bridges)

    # ---- events ---------------------------------------------------------------------------

    def _snapshot(self, ch: LgChannel) -> dict[str, Any]:
        caller = ch.kind == "caller"
        ident = CALLER_ID if caller else NO_ID
        if caller and self.dispatch.mode == "broadcast":
            d = self.dispatch
            plan: tuple[str, str, int, str, str] = (
                "pipecat-in", DIALLED_EXTEN, 2, "StasisBroadcast", f"{d.timeout_ms},{d.app_filter}"
            )  # fmt: skip
        elif caller:
            plan = ("pipecat-in", DIALLED_EXTEN, 2, "Stasis", ch.app or self.app)
        elif ch.in_stasis:
            plan = ("default", "s", 1, "Stasis", ch.app or self.app)
        else:
            plan = DIALLED
        keys = ("context", "exten", "priority", "app_name", "app_data")
        dialplan = dict(zip(keys, plan, strict=True))
        return self._templates.channel_snapshot({
            "id": ch.id, "name": ch.name, "state": ch.state, "caller": ident, "connected": ident,
            "dialplan": dialplan, "creationtime": ch.creationtime,
        })  # fmt: skip

    def _emit(self, kind: str, ch: LgChannel | None = None, app: str = "", **values: Any) -> None:
        """One event to the socket of `app`, else of the app `ch` is in; neither: to all (a
        bridge no channel of which was ever added). An app without a socket gets nothing."""
        if ch is not None:
            values["channel"] = self._snapshot(ch)
        stamp = format_timestamp(time.time())
        if app:
            targets = [app]
        elif ch is not None:
            targets = [ch.app] if ch.app else []  # a caller still being offered: in no app
        else:
            targets = list(self._sockets)
        for name in targets:
            queue = self._sockets.get(name)
            if queue is not None:
                queue.put_nowait(self._templates.event(
                    kind, timestamp=stamp, asterisk_id=ASTERISK_ID, application=name, **values
                ))  # fmt: skip

    # ---- HTTP -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        query = dict(request.query)
        if request.headers.get("Authorization") != self._auth and query.get("api_key") is None:
            return self._reply(401, {"message": "Authentication required"})
        path, method = request.path, request.method
        parts = path.split("/")[2:]  # after /ari/
        if path == "/ari/events":
            return await self._events(request)
        if method == "POST" and path == "/ari/events/claim":
            return self._claim(query)
        if method == "POST" and path == "/ari/channels/externalMedia":
            if self.transport == "audiosocket":
                return await self._external_audiosocket(query)
            if self.transport == "websocket":
                return self._external_websocket(query)
            return self._external_media(query)
        if method == "POST" and path == "/ari/bridges":
            return self._create_bridge(query)
        if method == "POST" and len(parts) == 3 and parts[0] == "channels" and parts[2] == "answer":
            found = parts[1] in self.channels
            return self._reply(204) if found else self._reply(404, {"message": "Channel not found"})
        if method == "POST" and len(parts) == 3 and parts[2] == "addChannel":
            return self._add_channel(parts[1], query)
        if method == "DELETE" and len(parts) == 2 and parts[0] == "channels":
            return self._delete_channel(parts[1])
        if method == "DELETE" and len(parts) == 2 and parts[0] == "bridges":
            return self._delete_bridge(parts[1])
        if method == "GET" and parts == ["channels"]:
            return self._reply(200, [self._snapshot(ch) for ch in self.channels.values()])
        if method == "GET" and parts == ["bridges"]:
            return self._reply(200, [self._bridge(bid) for bid in self.bridges])
        if method == "GET" and len(parts) == 2 and parts[0] == "channels":
            ch = self.channels.get(parts[1])
            return self._reply(200, self._snapshot(ch)) if ch else self._not_found("Channel")
        if method == "GET" and len(parts) == 2 and parts[0] == "bridges":
            found = parts[1] in self.bridges
            return self._reply(200, self._bridge(parts[1])) if found else self._not_found("Bridge")
        if method == "GET" and len(parts) == 2 and parts[0] == "applications":
            name = parts[1]
            ids = [ch.id for ch in self.channels.values() if ch.in_stasis and ch.app == name]
            bridges = [b for b in self.bridges if self.bridge_app.get(b) == name]
            return self._reply(200, {"name": name, "channel_ids": ids,
                                     "bridge_ids": bridges, "endpoint_ids": [],
                                     "device_names": [], "events_allowed": [],
                                     "events_disallowed": []})  # fmt: skip
        self.errors += 1
        return self._reply(404, {"message": "Resource not found"})

    def _not_found(self, what: str) -> web.Response:
        return self._reply(404, {"message": f"{what} not found"})

    def _reply(self, status: int, body: Any = None) -> web.Response:
        if body is None:
            return web.Response(status=status)
        return web.Response(status=status, body=dumps(body).encode(),
                            content_type="application/json")  # fmt: skip

    async def _events(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=64 * 1024)
        await ws.prepare(request)
        queue: asyncio.Queue[str] = asyncio.Queue()
        app = request.query.get("app", self.app)
        self._sockets[app] = queue  # the same name again: the new socket takes its events
        if app not in self.apps_seen:
            self.apps_seen.append(app)
        self.app_active.set()
        self.changed.set()

        async def writer() -> None:
            while True:
                await ws.send_str(await queue.get())

        task = asyncio.create_task(writer())
        try:
            async for _ in ws:
                pass
        finally:
            if self._sockets.get(app) is queue:
                del self._sockets[app]
            task.cancel()
        return ws

    def _external_media(self, q: dict[str, str]) -> web.Response:
        host = q.get("external_host", "")
        if not host or ":" not in host or q.get("format") != "ulaw" or not self._free_sockets:
            self.errors += 1
            return self._reply(400, {"message": "external_host is required"})
        socket_index = self._free_sockets.pop()
        port = self.rtpgen.ports[socket_index]
        ch = LgChannel(q.get("channelId") or uuid.uuid4().hex,
                       f"UnicastRTP/{host}-0x7f74{socket_index:08x}", "media",
                       format_timestamp(time.time()), socket=socket_index, external_host=host,
                       state="Down", in_stasis=False, app=q.get("app", self.app))  # fmt: skip
        self.channels[ch.id] = ch
        body = self._templates.em_channel_body({
            **self._snapshot(ch),
            "channelvars": {"UNICASTRTP_LOCAL_PORT": str(port), "UNICASTRTP_LOCAL_ADDRESS": HOST},
        })  # fmt: skip
        assert set(body["channelvars"]) == set(CHANNELVARS)
        asyncio.get_running_loop().call_soon(self._media_enters_stasis, ch)
        return self._reply(200, body)

    async def _external_audiosocket(self, q: dict[str, str]) -> web.Response:
        host, data = q.get("external_host", ""), q.get("data", "")
        address, _, port = host.rpartition(":")
        if (q.get("encapsulation") != "audiosocket" or q.get("format") != "slin" or not port
                or not self._free_sockets):  # fmt: skip
            self.errors += 1
            return self._reply(400, {"message": "external_host is required"})
        try:
            call_uuid = uuid.UUID(data)
        except ValueError:
            self.errors += 1
            return self._reply(500, {"message": "Internal server error"})
        socket_index = self._free_sockets.pop()
        # chan_audiosocket connects and sends 0x01 + the UUID while handling the request.
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (address.strip("[]"), int(port)))
            await loop.sock_sendall(sock, bytes((0x01, 0, 16)) + call_uuid.bytes)
            self.rtpgen.hand_over(socket_index, sock)
        except OSError:
            self.errors += 1
            self._free_sockets.append(socket_index)
            return self._reply(500, {"message": "Internal server error"})
        finally:
            sock.close()  # the generator has its own copy of the descriptor now
        ch = LgChannel(q.get("channelId") or uuid.uuid4().hex, f"AudioSocket/{host}-{data}",
                       "media", format_timestamp(time.time()), socket=socket_index,
                       external_host=host, state="Down", in_stasis=False,
                       app=q.get("app", self.app))  # fmt: skip
        self.channels[ch.id] = ch
        body = self._templates.em_channel_body(self._snapshot(ch))
        body["channelvars"] = {"AUDIOSOCKET_SERVICE": host, "AUDIOSOCKET_UUID": data}
        loop.call_soon(self._media_enters_stasis, ch, [data])
        return self._reply(200, body)

    def _external_websocket(self, q: dict[str, str]) -> web.Response:
        if (q.get("transport") != "websocket" or q.get("format") != "ulaw"
                or q.get("connection_type", "server") != "server" or not self._free_sockets):
            self.errors += 1  # fmt: skip
            return self._reply(400, {"message": "bad externalMedia request"})
        socket_index = self._free_sockets.pop()
        connection_id = str(uuid.uuid4())
        ch = LgChannel(q.get("channelId") or uuid.uuid4().hex,
                       f"WebSocket/INCOMING/0x7f74{socket_index:08x}", "media",
                       format_timestamp(time.time()), socket=socket_index,
                       external_host=connection_id, state="Down", in_stasis=False,
                       app=q.get("app", self.app))  # fmt: skip
        self.channels[ch.id] = ch
        self._ws_waiting[connection_id] = ch
        body = self._templates.em_channel_body(self._snapshot(ch))
        body["channelvars"] = {"MEDIA_WEBSOCKET_CONNECTION_ID": connection_id,
                               "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160"}  # fmt: skip
        return self._reply(200, body)

    def media_upgrade(self, transport: asyncio.Transport, request: bytes) -> None:
        """GET /media/<id>: 101, MEDIA_START; the generator takes the socket from there."""
        head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        connection_id = head[0].split(" ")[1].removeprefix("/media/").split("?")[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head[1:])}  # fmt: skip
        ch = self._ws_waiting.pop(connection_id, None)
        key = headers.get("sec-websocket-key", "")
        if ch is None or self.channels.get(ch.id) is not ch or not key:
            self.errors += 1
            transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            transport.close()
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        response = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
                    "Sec-WebSocket-Protocol: media\r\n\r\n").encode()  # fmt: skip
        media_start = (f"MEDIA_START connection_id:{connection_id} channel:{ch.name} "
                       f"channel_id:{ch.id} format:ulaw optimal_frame_size:160 ptime:20")
        sock = transport.get_extra_info("socket")
        fd = os.dup(sock.fileno())
        try:
            self.rtpgen.hand_over(ch.socket, fd, response + _ws_text(media_start))
        finally:
            os.close(fd)
        transport.abort()  # our descriptor only: the generator's copy keeps the connection
        # The channel answers once MEDIA_START is out; then its StasisStart.
        asyncio.get_running_loop().call_soon(self._media_enters_stasis, ch)

    def _media_enters_stasis(self, ch: LgChannel, args: list[str] | None = None) -> None:
        if self.channels.get(ch.id) is ch:
            ch.state, ch.in_stasis = "Up", True
            self._emit("StasisStart", ch, args=args or [])

    def _create_bridge(self, q: dict[str, str]) -> web.Response:
        bridge_id = q.get("bridgeId") or str(uuid.uuid4())
        if bridge_id in self.bridges:
            return self._reply(409, {"message": f"Bridge with id '{bridge_id}' already exists"})
        self.bridges[bridge_id] = []
        return self._reply(200, self._bridge(bridge_id))

    def _bridge(self, bridge_id: str) -> dict[str, Any]:
        return self._templates.bridge_snapshot({
            "id": bridge_id, "technology": "simple_bridge", "bridge_type": "mixing",
            "name": "", "channels": list(self.bridges.get(bridge_id, [])),
            "creationtime": format_timestamp(time.time()),
        })  # fmt: skip

    def _add_channel(self, bridge_id: str, q: dict[str, str]) -> web.Response:
        members = self.bridges.get(bridge_id)
        if members is None:
            return self._reply(404, {"message": "Bridge not found"})
        ids = [cid for cid in q.get("channel", "").split(",") if cid]
        chans = [self.channels.get(cid) for cid in ids]
        if not ids or any(ch is None for ch in chans):
            self.errors += 1
            return self._reply(400, {"message": "Channel not found"})
        if any(ch is not None and not ch.in_stasis for ch in chans):
            return self._reply(422, {"message": "Channel not in Stasis application"})
        members.extend(cid for cid in ids if cid not in members)
        owner = next((ch.app for ch in chans if ch is not None and ch.app), "")
        if owner:
            self.bridge_app.setdefault(bridge_id, owner)
        callers = [self.by_caller[c] for c in members if c in self.by_caller]
        medias = [self.channels[c] for c in members
                  if c in self.channels and self.channels[c].kind == "media"]  # fmt: skip
        if callers and medias and not callers[0].bridged:
            call, media = callers[0], medias[0]
            call.media_id, media.call, call.bridged = media.id, call.index, time.time()
            if self.transport == "rtp":
                relay_host, _, relay_port = media.external_host.rpartition(":")
                self.rtpgen.command(f"start {media.socket} {relay_host} {relay_port}")
            else:
                self.rtpgen.command(f"start {media.socket}")
            self.changed.set()
        return self._reply(204)

    def _delete_channel(self, cid: str) -> web.Response:
        ch = self.channels.pop(cid, None)
        if ch is None:
            return self._reply(404, {"message": "Channel not found"})
        if ch.kind == "media" and ch.socket >= 0:
            self.rtpgen.command(f"stop {ch.socket}")
        self._emit("ChannelHangupRequest", ch)
        for members in self.bridges.values():
            if cid in members:
                members.remove(cid)
        if ch.in_stasis:
            ch.in_stasis = False
            self._emit("StasisEnd", ch)
        if ch.kind == "media":
            self._emit("ChannelDestroyed", ch)
        call = self.by_caller.get(cid)
        if call is not None:
            call.hung_up = True
        self.changed.set()
        return self._reply(204)

    def _delete_bridge(self, bridge_id: str) -> web.Response:
        if bridge_id not in self.bridges:
            return self._reply(404, {"message": "Bridge not found"})
        snapshot = self._bridge(bridge_id)
        del self.bridges[bridge_id]
        self._emit("BridgeDestroyed", app=self.bridge_app.pop(bridge_id, ""), bridge=snapshot)
        self.changed.set()
        return self._reply(204)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def wait_until(asterisk: FakeAsterisk, done: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        asterisk.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asterisk.changed.wait(), min(remaining, 0.5))
    return True


async def read_stdin_line() -> str:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, sys.stdin.readline)


async def loop_lag(samples: list[float], period: float = 0.005) -> None:
    """How late this loop wakes from a short sleep: a claim waits as long for its handler,
    so this bounds what the harness itself adds to the claim latency it measures."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        samples.append(loop.time() - due)


async def run(args: argparse.Namespace) -> None:
    rtpgen = RtpGen(args.calls, args.transport)
    dispatch = Dispatch(args.dispatch, args.app_filter, args.broadcast_timeout_ms,
                        args.claim_max_delay_ms)  # fmt: skip
    asterisk = FakeAsterisk("pipecat", "asterisk", args.password, rtpgen, args.transport,
                            dispatch)  # fmt: skip
    bot = BotServer(args.bot, asterisk.bot_started)
    try:
        ari_port = await asterisk.start()
        bot_port = await bot.start()
        emit({"ready": {"ari_port": ari_port, "bot_port": bot_port, "rtpgen_pid": rtpgen.pid}})
        await asterisk.app_active.wait()
        await wait_until(asterisk, lambda: len(asterisk.connected_apps()) >= args.apps, 60)
        emit({"app_active": asterisk.connected_apps() if args.apps > 1 else True})
        if (await read_stdin_line()).strip() != "go":
            return
        summary = await drive(args, asterisk)
        summary["dispatch"] = asterisk.dispatch_summary()
        summary["rtpgen"] = await asyncio.get_running_loop().run_in_executor(
            None, rtpgen.dump, args.out
        )
        stats = bot.stats
        summary["bot"] = {"connections": stats.connections, "media_in": stats.media_in,
                          "media_out": stats.media_out, "other_in": stats.other_in,
                          "bad": stats.bad, "closes": stats.closes}  # fmt: skip
        summary["ari"] = {"requests": asterisk.requests, "errors": asterisk.errors}
        emit({"done": summary})
        # Stay up until the orchestrator has stopped the relay (or closed our stdin), so the
        # relay shuts down against a live Asterisk rather than reconnecting to a dead one.
        await read_stdin_line()
    finally:
        rtpgen.kill()
        await bot.stop()
        await asterisk.stop()


async def drive(args: argparse.Namespace, asterisk: FakeAsterisk) -> dict[str, Any]:
    n = args.calls
    started = time.time()
    lags: list[float] = []
    probe = asyncio.create_task(loop_lag(lags))
    for _ in range(n):
        asterisk.place_call()
        await asyncio.sleep(1.0 / args.rate)
    up = await wait_until(
        asterisk,
        lambda: all((c.bridged and c.bot_up) or c.unclaimed for c in asterisk.calls),
        args.setup_timeout,
    )
    probe.cancel()
    calls_up = sum(bool(c.bridged and c.bot_up) for c in asterisk.calls)
    setup_s = time.time() - started
    emit({"calls_up": calls_up, "all_up": up, "setup_s": round(setup_s, 2)})
    await asyncio.sleep(args.warmup)
    t0 = time.time()
    emit({"mark": "window_start", "t": t0})
    await asyncio.sleep(args.seconds)
    t1 = time.time()
    emit({"mark": "window_end", "t": t1})
    await asyncio.sleep(args.drain)
    emit({"mark": "drained", "t": time.time()})
    # Every call is still up: the orchestrator reads the sockets' counters, then says go on.
    await read_stdin_line()
    for call in asterisk.calls:
        if not call.hung_up:
            asterisk.hang_up(call)
    cleaned = await wait_until(asterisk, lambda: asterisk.leftovers() == 0, args.teardown_timeout)
    await asyncio.sleep(0.2)  # the last packets already in flight
    lag50, lag99, lagmax = (v * 1e3 for v in percentiles(lags, 50, 99, 100))
    return {"calls": n, "calls_up": calls_up, "setup_s": setup_s, "window": [t0, t1],
            "cleaned": cleaned, "leftovers": asterisk.leftovers(),
            "unclaimed": sum(c.unclaimed for c in asterisk.calls),
            "setup_loop_lag_ms": {"p50": lag50, "p99": lag99,
                                  "max": lagmax if not math.isnan(lagmax) else 0.0}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.bench.loadgen")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--bot", choices=("echo", "bursty"), default="echo")
    parser.add_argument("--transport", choices=("rtp", "audiosocket", "websocket"),
                        default="rtp", help="how the relay's media reaches this Asterisk")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=100.0, help="calls placed per second")
    parser.add_argument("--setup-timeout", type=float, default=60.0)
    parser.add_argument("--teardown-timeout", type=float, default=30.0)
    parser.add_argument("--password", default="bench")
    parser.add_argument("--out", required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--dispatch", choices=("stasis", "broadcast"), default="stasis",
                        help="Stasis(app) or StasisBroadcast(timeout,filter) + claims")
    parser.add_argument("--apps", type=int, default=1,
                        help="events sockets to wait for before app_active (--workers N)")
    parser.add_argument("--app-filter", default="^pipecat", help="StasisBroadcast's filter")
    parser.add_argument("--broadcast-timeout-ms", type=int, default=500)
    parser.add_argument("--claim-max-delay-ms", type=float, default=150.0,
                        help="the bridge's setting, to tell its policy's wait from the rest")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("loadgen: uvloop not installed, using asyncio", file=sys.stderr)
        else:
            uvloop.run(run(args))
            return 0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
