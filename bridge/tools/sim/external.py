"""ExternalMedia over AudioSocket and chan_websocket: the ARI side of the other two transports.

AudioSocket (`encapsulation=audiosocket transport=tcp external_host=H:P data=<uuid>`), recorded
in `audiosocket`: Asterisk connects to H:P *while handling the request* (chan_audiosocket's
request does the TCP connect; a refused or unparseable target makes the channel allocation, so
the request, fail: 500), sends 0x01 + the UUID, and answers 200 with a channel
`AudioSocket/H:P-<uuid>` (Down, channelvars AUDIOSOCKET_SERVICE / AUDIOSOCKET_UUID). Its
StasisStart has `args: [<uuid>]`: the `data` value is the Stasis argument. On hang-up the TCP
connection just closes; the far side ending it (0x00, a close, a kind Asterisk refuses) hangs the
channel up without a ChannelHangupRequest (the read returns NULL).

chan_websocket (`transport=websocket encapsulation=none connection_type=server`), recorded in
`chan_websocket`: the 200 names `WebSocket/INCOMING/0x...` (Down, channelvars
MEDIA_WEBSOCKET_CONNECTION_ID / MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE); Dial "" follows; the
channel answers (ChannelStateChange Up, Dial ANSWER, StasisStart) only once the app has opened
`/media/<connection_id>` (subprotocol `media`, no credentials) and MEDIA_START went out.
`connection_type=client` (recorded in `chan_websocket_client`): `external_host` names a
websocket_client.conf entry (`websocket_clients`), Asterisk connects out after the answer, and
MEDIA_START's `connection_id` is the entry's name.

`media_links` keeps every channel's link (with what it received and sent) after the channel is
gone, for tests; nothing is kept with `history=False`.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from bridge.tools.sim.audio import CODECS
from bridge.tools.sim.audiosocket import Kind, connect_audiosocket, is_uuid
from bridge.tools.sim.chan_websocket import MAX_MESSAGE, WsMediaCore, WsMediaLink
from bridge.tools.sim.core import DIALLED, AsteriskCore, SimChannel
from bridge.tools.sim.links import MediaLink
from bridge.tools.sim.templates import INTERNAL_ERROR, Reply, error_reply, format_timestamp

WS_VARS = ("MEDIA_WEBSOCKET_CONNECTION_ID", "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE")  # recorded
AS_VARS = ("AUDIOSOCKET_SERVICE", "AUDIOSOCKET_UUID")  # recorded order
_OPTION = re.compile(r"([a-z])(?:\(([^)]*)\))?")


def dial_options(text: str) -> dict[str, str]:
    """ast_app_parse_options() over a dial string's options: `f(json)d(both)n` -> dict."""
    return {found.group(1): found.group(2) or "" for found in _OPTION.finditer(text)}


class ExternalTransports(AsteriskCore):
    """The AudioSocket and WebSocket kinds of ExternalMedia channel (no HTTP routing here)."""

    def __init__(self, **core: Any) -> None:
        super().__init__(**core)
        # websocket_client.conf: entry name -> URI (connection_type=client, Dial(WebSocket/...)).
        self.websocket_clients: dict[str, str] = {}
        self.media_links: dict[str, MediaLink] = {}  # channel id -> its link (history=True)
        self._ws_waiting: dict[str, tuple[SimChannel, WsMediaCore]] = {}  # by connection id
        self._client_session: aiohttp.ClientSession | None = None
        self._media_tasks: set[asyncio.Future[None]] = set()  # outbound connections

    def _register_link(self, channel_id: str, link: MediaLink) -> None:
        self._links.append(link)
        link.closed.add_done_callback(lambda _: self._links.remove(link))
        if self._history:
            self.media_links[channel_id] = link

    def _link_ended(self, ch: SimChannel, reason: str) -> None:
        """The far side ended the connection: Asterisk hangs the channel up."""
        if self.channels.get(ch.id) is ch and reason != "asterisk_closed":
            self._hangup(ch, "link")

    def _link_channel(self, ch: SimChannel, channelvars: dict[str, str]) -> dict[str, Any]:
        """The externalMedia 200 body; the channel is not in `channels` yet."""
        body = self._templates.em_channel_body(self._snapshot_values(ch))
        body["channelvars"] = channelvars  # the recorded key, this transport's variables
        return body

    def _add_link_channel(self, ch: SimChannel) -> None:
        self.channels[ch.id] = ch
        self.counts["media_channels"] += 1
        self.counts[f"{ch.transport}_channels"] += 1

    # -- AudioSocket -------------------------------------------------------------------------

    async def _external_audiosocket(self, q: dict[str, str]) -> Reply:
        host, data, fmt = q["external_host"], q["data"], q["format"]
        if not is_uuid(data):
            return error_reply(500, INTERNAL_ERROR)  # chan_audiosocket: uuid_parse() failed
        name = f"AudioSocket/{host}-{data}"
        address, _, port = host.rpartition(":")
        loop = self._running_loop()
        try:
            link = await connect_audiosocket(loop, (address, int(port)), name, keep=self._history)
        except OSError:
            return error_reply(500, INTERNAL_ERROR)  # the channel could not be allocated
        ch = SimChannel(
            id=q.get("channelId") or self._new_id(), name=name, kind="media", state="Down",
            caller=("", ""), connected=("", ""), dialplan=DIALLED,
            creationtime=format_timestamp(time.time()), link=link, transport="audiosocket",
            fmt=fmt, args=[data], dialstring=f"{host}/{data}",
            variables={"AUDIOSOCKET_UUID": data, "AUDIOSOCKET_SERVICE": host},
        )  # fmt: skip
        self._register_link(ch.id, link)
        link.send(Kind.UUID, uuid.UUID(data).bytes)  # audiosocket_call(): ast_audiosocket_init()
        body = self._link_channel(ch, {k: ch.variables[k] for k in AS_VARS})
        if not self.app_connected(q["app"]):
            link.close()  # Stasis() fails at once: the channel hangs up, its socket closes
            return Reply(200, body)
        ch.app = q["app"]
        self._add_link_channel(ch)
        link.on_end = lambda reason: self._link_ended(ch, reason)
        delay = self._em_stasis_delay
        if delay < 0:  # StasisStart before the REST answer (facts §1)
            self._media_enters_stasis(ch)
            await asyncio.sleep(-delay)
            return Reply(200, body)
        return Reply(200, body, after=lambda: self._schedule_stasis_start(ch, delay))

    def _schedule_stasis_start(self, ch: SimChannel, delay: float) -> None:
        if delay == 0:
            self._media_enters_stasis(ch)
        elif self.channels.get(ch.id) is ch and not ch.in_stasis:
            ch.pending_start = self._running_loop().call_later(delay, self._media_enters_stasis, ch)

    # -- chan_websocket ----------------------------------------------------------------------

    async def _external_websocket(self, q: dict[str, str]) -> Reply:
        fmt, data = q["format"], q.get("data", "")
        codec = CODECS.get(fmt)
        if codec is None:
            return error_reply(500, INTERNAL_ERROR)
        server = q.get("connection_type") == "server"
        endpoint = "INCOMING" if server else q["external_host"]
        transport_data, direction = q.get("transport_data", ""), q.get("direction", "")
        # external_media_websocket(): WebSocket/<host>[/<transport_data>][/]d(<direction>)
        options = transport_data + (f"d({direction})" if direction else "")
        dialstring = endpoint + (f"/{options}" if options else "")
        parsed = dial_options(options)
        connection_id = str(uuid.uuid4()) if server else endpoint
        name = f"WebSocket/{endpoint}/0x7f74a8{self._rng.getrandbits(20) << 4:06x}"
        size = 0 if (codec.passthrough or "p" in parsed) else codec.optimal_frame_size
        variables = {"MEDIA_WEBSOCKET_CONNECTION_ID": connection_id,
                     "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": str(size)}  # fmt: skip
        ch = SimChannel(
            id=q.get("channelId") or self._new_id(), name=name, kind="media", state="Down",
            caller=("", ""), connected=("", ""), dialplan=DIALLED,
            creationtime=format_timestamp(time.time()), transport="websocket", fmt=fmt,
            args=[data] if data else [], dialstring=dialstring, variables=dict(variables),
        )  # fmt: skip
        core = WsMediaCore(
            connection_id=connection_id, channel_name=name, channel_id=ch.id, fmt=fmt,
            json_control=parsed.get("f") == "json", channel_variables=dict(variables),
            direction=parsed.get("d") or "both", passthrough="p" in parsed,
        )  # fmt: skip
        body = self._link_channel(ch, {k: variables[k] for k in WS_VARS})
        if not self.app_connected(q["app"]):
            return Reply(200, body)  # gone at once, as a UnicastRTP channel would be
        ch.app = q["app"]
        self._add_link_channel(ch)
        self._ws_waiting[connection_id] = (ch, core)

        def dialled() -> None:
            if self.channels.get(ch.id) is ch:
                self._media_dialled(ch)
                if not server:
                    self._spawn(self._connect_client(ch, core, q["external_host"]))

        return Reply(200, body, after=dialled)

    async def _media_socket(self, request: web.Request) -> web.StreamResponse:
        """GET /media/<connection_id>: the app opens a server-mode channel's media socket."""
        connection_id = request.path.removeprefix("/media/")
        waiting = self._ws_waiting.get(connection_id)
        if waiting is None or self.channels.get(waiting[0].id) is not waiting[0]:
            self._ws_waiting.pop(connection_id, None)
            return web.Response(status=404, reason="Not found", text="WebSocket instance not found")
        ch, core = waiting
        if ch.link is not None:
            text = "Another websocket connection exists for this connection id"
            return web.Response(status=409, reason="Conflict", text=text)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=426, reason="Upgrade Required")
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if offered != [""] and "media" not in offered:
            return web.Response(status=400, reason="Bad Request")  # no protocol it serves
        ws = web.WebSocketResponse(protocols=("media",), max_msg_size=MAX_MESSAGE, timeout=1.0)
        await ws.prepare(request)
        link = self._ws_link(ch, core)
        link.transport = request.transport
        await link.run(ws, on_started=lambda: self._media_answered(ch))
        return ws

    def _ws_link(self, ch: SimChannel, core: WsMediaCore) -> WsMediaLink:
        link = WsMediaLink(self._running_loop(), core, keep=self._history)
        ch.link = link
        self._register_link(ch.id, link)
        # The instance is found by its id until it is gone (a second connection: 409).
        link.closed.add_done_callback(lambda _: self._ws_waiting.pop(core.connection_id, None))
        link.on_end = lambda reason: self._link_ended(ch, reason)
        return link

    async def _connect_client(self, ch: SimChannel, core: WsMediaCore, entry: str) -> None:
        """connection_type=client: Asterisk dials the websocket_client.conf entry's URI."""
        try:
            ws = await self.client_session().ws_connect(
                self.websocket_clients[entry], protocols=("media",), max_msg_size=MAX_MESSAGE,
                autoping=True,
            )  # fmt: skip
        except (aiohttp.ClientError, OSError):
            if self.channels.get(ch.id) is ch:  # webchan_call() failed: the dial fails
                self._emit("Dial", ch, key="peer", dialstatus="CHANUNAVAIL",
                           dialstring=ch.dialstring)  # fmt: skip
                self._emit("ChannelDestroyed", ch)
                self._remove(ch, "app")
            return
        if self.channels.get(ch.id) is not ch:
            await ws.close()
            return
        link = self._ws_link(ch, core)
        link.transport = ws.get_extra_info("transport")
        await link.run(ws, on_started=lambda: self._media_answered(ch))

    # -- plumbing ------------------------------------------------------------------------------

    def client_session(self) -> aiohttp.ClientSession:
        """The session Asterisk's outbound WebSockets use (made on first use)."""
        if self._client_session is None or self._client_session.closed:
            self._client_session = aiohttp.ClientSession()
        return self._client_session

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._media_tasks.add(task)
        task.add_done_callback(self._media_tasks.discard)

    async def _close_links(self) -> None:
        """stop(): every link closes as on a hang-up; then the outbound session."""
        for task in list(self._media_tasks):
            task.cancel()
        await asyncio.gather(*self._media_tasks, return_exceptions=True)
        pending = list(self._links)
        for link in pending:
            link.close()
        await asyncio.gather(*(asyncio.wait_for(link.closed, 2.0) for link in pending),
                             return_exceptions=True)  # fmt: skip
        if self._client_session is not None:
            await self._client_session.close()
            self._client_session = None
