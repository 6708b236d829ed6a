"""Where chan_websocket calls from the dialplan alone arrive: `WebSocketMediaServer`, the
listener Asterisk's client-mode chan_websocket connects to
(`Dial(WebSocket/<websocket_client.conf entry>/c(slin16)v(a=b,...))` -> ws://<us>/media?a=b...,
subprotocol `media`), and `DialplanWebSocketLeg`, the `WebSocketLeg` (`bridge.media.websocket`)
it makes per connection, already connected. A dialplan leg sends HANGUP before it closes, so the
channel hangs up at once (with Dial's `g` option the dialplan then continues).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ari.models import Channel
from bridge.errors import WebSocketControlError
from bridge.logs import get_logger
from bridge.media.leg import MediaEvents
from bridge.media.ticker import Ticker
from bridge.media.websocket import MAX_MESSAGE, SUBPROTOCOL, WebSocketLeg
from bridge.media.websocket_control import MediaStart, parse_control


class DialplanWebSocketLeg(WebSocketLeg):
    """The dialplan mode: made by `WebSocketMediaServer` for a connection Asterisk opened,
    already connected. `open()` returns {} and `start()` does nothing; `close()` sends HANGUP
    before closing. It reports to the events the `on_dialplan_call` callback returned."""

    hangup_on_close = True
    on_closed: Callable[[], None] | None = None  # once, at close(): the call is over

    def __init__(
        self,
        *,
        ticker: Ticker,
        media_start: MediaStart,
        params: Mapping[str, str],
        peer: str = "",
        **options: Any,
    ) -> None:
        super().__init__(events=None, ticker=ticker, audio_format=media_start.format, **options)
        self.media_start = media_start
        self.params = dict(params)
        self.channel_id = media_start.channel_id or media_start.channel
        self.connection_id = media_start.connection_id
        self.peer = peer

    def bind(self, events: MediaEvents) -> None:
        self._bind_core(events)

    def close(self, *, hangup: bool | None = None) -> None:
        super().close(hangup=hangup)
        on_closed, self.on_closed = self.on_closed, None
        if on_closed is not None:
            on_closed()

    async def open(self) -> Mapping[str, str]:
        return {}

    def start(self, channel: Channel) -> None:
        pass

    def log_fields(self) -> dict[str, Any]:
        return {"websocket_connection_id": self.connection_id, "channel_id": self.channel_id}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "asterisk_media": self.peer}


DialplanCallback = Callable[
    [DialplanWebSocketLeg, dict[str, str], MediaStart],
    "MediaEvents | Awaitable[MediaEvents | None] | None",
]


class WebSocketMediaServer:
    """Where Asterisk's client-mode chan_websocket connects (websocket_client.conf
    `uri = ws://<us>/media`, `protocols = media`), for calls from the dialplan alone.

    Per connection: the upgrade's query parameters (the dial string's `v()`, URI-decoded) are
    the call's params; MEDIA_START must come within `media_start_timeout`, else the connection
    is refused (`websocket_rejected`) and closed, which touches no other connection. Every
    call's MEDIA_START has the same connection_id (the config entry's name), so calls are keyed
    by `channel_id` (the channel name on Asterisk before 20.17 / 22.7 / 23.1). Then
    `on_dialplan_call(leg, params, media_start)` returns the call's MediaEvents (or an
    awaitable of them), or None to refuse the call (the socket closes; with Dial's `g` option
    the dialplan continues)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ticker: Ticker,
        on_dialplan_call: DialplanCallback,
        path: str = "/media",
        media_start_timeout: float = 5.0,
        max_message: int = MAX_MESSAGE,
        ping_interval: float | None = 10.0,
        dialplan_leg_options: Mapping[str, Any] | None = None,
        log: Any = None,
    ) -> None:
        self._host = host
        self._port = port
        self._ticker = ticker
        self._on_dialplan_call = on_dialplan_call
        self._path = path.rstrip("/") or "/"
        self.media_start_timeout = media_start_timeout
        self._max_message = max_message
        self._ping_interval = ping_interval
        self._leg_options = dict(dialplan_leg_options or {})
        self._log = log or get_logger("bridge.websocket")
        self._server: Server | None = None
        self.calls: dict[str, DialplanWebSocketLeg] = {}
        self.address: tuple[str, int] | None = None
        self.counters = {"accepted": 0, "rejected": 0}

    async def start(self) -> None:
        self._server = await serve(
            self._handle, self._host, self._port, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._check_path, compression=None, max_size=self._max_message,
            ping_interval=self._ping_interval, ping_timeout=self._ping_interval,
        )  # fmt: skip
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        self.address = (host, port)
        self._log.info("websocket_media_listening", address=f"{host}:{port}", path=self._path)

    async def close(self) -> None:
        server, self._server = self._server, None
        for leg in list(self.calls.values()):
            if leg.core is not None:
                leg.core.fail("the WebSocket media server closed")
            leg.close()
        if server is not None:
            server.close()
            await server.wait_closed()

    def _check_path(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path.rstrip("/") or "/"
        if path != self._path:
            self._log.warning("websocket_rejected", reason="unknown path", path=path,
                              peer=_peer(conn))  # fmt: skip
            self.counters["rejected"] += 1
            return conn.respond(404, "Not Found\n")
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        query = urlsplit(conn.request.path).query if conn.request else ""
        params = dict(parse_qsl(query, keep_blank_values=True))
        start, text = await self._media_start(conn)
        if start is None or text is None:
            return
        channel_id = start.channel_id or start.channel
        if channel_id in self.calls:
            return await self._reject(conn, "channel already connected", channel_id=channel_id)
        try:
            leg = DialplanWebSocketLeg(ticker=self._ticker, media_start=start, params=params,
                                       peer=_peer(conn), log=self._log,
                                       **self._leg_options)  # fmt: skip
        except ValueError as exc:
            return await self._reject(conn, str(exc), channel_id=channel_id)
        self.calls[channel_id] = leg
        # Listed while its call is on: the call's end closes the leg, and its socket's closing
        # handshake may take a moment more.
        leg.on_closed = lambda: self._forget(channel_id, leg)
        try:
            events = self._on_dialplan_call(leg, params, start)
            if inspect.isawaitable(events):
                events = await events
        except Exception as exc:
            self.calls.pop(channel_id, None)
            self._log.exception("websocket_dialplan_call_failed", channel_id=channel_id)
            return await self._reject(conn, f"dialplan call not set up: {exc!r}",
                                      channel_id=channel_id)  # fmt: skip
        if events is None:
            self.calls.pop(channel_id, None)
            return await self._reject(conn, "dialplan call refused", channel_id=channel_id)
        self.counters["accepted"] += 1
        leg.bind(events)
        try:
            await leg._serve(conn, first=text)
        finally:
            self._forget(channel_id, leg)

    def _forget(self, channel_id: str, leg: DialplanWebSocketLeg) -> None:
        if self.calls.get(channel_id) is leg:
            del self.calls[channel_id]

    async def _media_start(self, conn: ServerConnection) -> tuple[MediaStart | None, str | None]:
        try:
            async with asyncio.timeout(self.media_start_timeout):
                message = await conn.recv()
        except TimeoutError:
            await self._reject(conn, "no MEDIA_START")
            return None, None
        except ConnectionClosed:
            self._log.info("websocket_closed_before_media_start", peer=_peer(conn))
            return None, None
        if isinstance(message, str):
            with contextlib.suppress(WebSocketControlError):
                event = parse_control(message)
                if isinstance(event, MediaStart):
                    return event, message
        await self._reject(conn, "first message is not MEDIA_START")
        return None, None

    async def _reject(self, conn: ServerConnection, reason: str, **fields: Any) -> None:
        self.counters["rejected"] += 1
        self._log.warning("websocket_rejected", reason=reason, peer=_peer(conn), **fields)
        await conn.close(1000, reason[:100])


def _peer(conn: Connection) -> str:
    address = conn.remote_address
    return f"{address[0]}:{address[1]}" if address else ""


__all__ = ["DialplanCallback", "DialplanWebSocketLeg", "WebSocketMediaServer"]
