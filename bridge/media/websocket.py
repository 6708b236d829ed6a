"""The chan_websocket media leg (Asterisk's ExternalMedia `transport=websocket`): a thin
`websockets` shell per call around `WebSocketMediaCore` (`bridge.media.websocket_core`, which
does the media), and `media_url`. Calls from the dialplan alone come through
`bridge.media.websocket_server`.

Two ways a call reaches us (asterisk-features "chan_websocket"):

    ARI (`WebSocketLeg`)   POST /channels/externalMedia transport=websocket
                           connection_type=server -> the channel's MEDIA_WEBSOCKET_CONNECTION_ID
                           -> we connect ws://<ARI host>/media/<id>, subprotocol `media`
    dialplan               Dial(WebSocket/<websocket_client.conf entry>/c(slin16)v(a=b,...))
    (`WebSocketMediaServer`) -> Asterisk connects to us at /media?a=b..., subprotocol `media`

Either way the leg feeds every message to the core and, after each one and on every tick of
the shared clock, sends what the core has to send; a socket Asterisk stops reading fails the
call.

Ending: Asterisk closes the socket with 1000 when the channel hangs up (it never sends a
HANGUP message): `on_media_ended`; any other close is `on_media_failed`. `close()` of an ARI
leg just closes the socket (the controller deletes the channel through ARI); a dialplan leg
sends HANGUP first, so the channel hangs up at once (with Dial's `g` option the dialplan then
continues); the close alone would end it too, a moment later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.protocol import State

from ari.models import Channel
from bridge.logs import get_logger, redact_url
from bridge.media.leg import MediaEvents, MediaFormats
from bridge.media.ticker import Ticker
from bridge.media.websocket_core import WebSocketMediaCore, wire_format

SUBPROTOCOL = "media"
# Asterisk's frames are 160-640 bytes (20 ms up to 16 kHz) and its text at most 128 bytes.
MAX_MESSAGE = 64 * 1024
# Bytes waiting in the transport after which Asterisk counts as not reading (~16 s of slin16).
WRITE_LIMIT = 256 * 1024


class WebSocketLeg:
    """The ARI mode: ExternalMedia `transport=websocket connection_type=server`; we connect to
    Asterisk's /media/<MEDIA_WEBSOCKET_CONNECTION_ID> once the REST answer names it."""

    transport = "websocket"
    hangup_on_close = False

    def __init__(
        self,
        *,
        events: MediaEvents | None,
        ticker: Ticker,
        audio_format: str,
        ari_url: str = "",
        json_control: bool = False,
        connect_timeout: float = 3.0,
        media_start_timeout: float = 5.0,
        close_timeout: float = 2.0,
        ping_interval: float | None = 10.0,
        max_message: int = MAX_MESSAGE,
        write_limit: int = WRITE_LIMIT,
        log: Any = None,
        **core_options: Any,
    ) -> None:
        self.wire = wire_format(audio_format)
        self.formats = MediaFormats(self.wire.spec, self.wire.spec)
        self._ticker = ticker
        self._ari_url = ari_url
        self._json = json_control
        self._connect_timeout = connect_timeout
        self.media_start_timeout = media_start_timeout
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._max_message = max_message
        self._write_limit = write_limit
        self._log = log or get_logger("bridge.websocket")
        self._core_options = core_options
        self.core: WebSocketMediaCore | None = None
        if events is not None:
            self._bind_core(events)
        self.connection_id: str | None = None
        self.url: str | None = None
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._ticking = False
        self._closed = False
        self.counters = {"tx_after_close": 0}

    def _bind_core(self, events: MediaEvents) -> None:
        self.core = WebSocketMediaCore(events=events, audio_format=self.wire.name,
                                       json_control=self._json, log=self._log,
                                       **self._core_options)  # fmt: skip

    def _the_core(self) -> WebSocketMediaCore:
        if self.core is None:
            raise RuntimeError("the leg has no events yet (bind() it first)")
        return self.core

    # ---- MediaLeg -----------------------------------------------------------------------

    async def open(self) -> Mapping[str, str]:
        params = {"format": self.wire.name, "encapsulation": "none",
                  "transport": "websocket", "connection_type": "server"}  # fmt: skip
        if self._json:
            # Asterisk >= 20.18 / 22.8 / 23.2; older ones never answer in JSON (see module doc).
            params["transport_data"] = "f(json)"
        return params

    def start(self, channel: Channel) -> None:
        connection_id = channel.channelvars.get("MEDIA_WEBSOCKET_CONNECTION_ID", "")
        if not connection_id:
            raise ValueError("ExternalMedia channel has no MEDIA_WEBSOCKET_CONNECTION_ID")
        self.connection_id = connection_id
        self.url = media_url(self._ari_url, connection_id)
        self._task = asyncio.get_running_loop().create_task(self._connect(self.url))

    def play(self, audio: bytes) -> None:
        self._the_core().play(audio)

    def clear(self) -> None:
        self._the_core().clear()
        self._flush()

    def mark(self, name: str) -> None:
        self._the_core().mark(name)

    def drain(self) -> None:
        self._the_core().drain()
        self._flush()

    def close(self, *, hangup: bool | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if hangup is not None:
            self.hangup_on_close = hangup
        self._ticker.remove(self)
        core = self.core
        if core is not None:
            if self.hangup_on_close:
                core.hangup()
                self._flush()
            core.stop()
        conn = self._conn
        if conn is not None:
            self._closing = asyncio.get_running_loop().create_task(conn.close())
        elif self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        """After close(): until the socket is closed and the leg's task has ended."""
        tasks = [t for t in (self._task, self._closing) if t is not None]
        if tasks:
            await asyncio.wait(tasks)

    def log_fields(self) -> dict[str, Any]:
        return {"websocket_connection_id": self.connection_id}

    def describe(self) -> dict[str, Any]:
        core = self.core
        start = core.media_start if core is not None else None
        return {
            "asterisk_media": redact_url(self.url) if self.url else None,
            "format": self.wire.name,
            "optimal_frame_size": core.optimal_frame_size if core is not None else None,
            "ptime": start.ptime if start is not None else None,
            "control": ("json" if core.json else "plain") if core is not None else None,
        }

    def stats(self) -> dict[str, int]:
        core_stats = self.core.stats() if self.core is not None else {}
        return {**core_stats, **self.counters}

    # ---- the socket ---------------------------------------------------------------------

    async def _connect(self, url: str) -> None:
        core = self._the_core()
        try:
            conn = await connect(
                url, subprotocols=[SUBPROTOCOL], compression=None,  # type: ignore[list-item]
                max_size=self._max_message, open_timeout=self._connect_timeout,
                ping_interval=self._ping_interval, ping_timeout=self._ping_interval,
                close_timeout=self._close_timeout,
            )  # fmt: skip
        except (OSError, TimeoutError, WebSocketException) as exc:
            self._log.warning("websocket_connect_failed", url=redact_url(url), error=repr(exc))
            core.fail(f"media socket not connected: {exc!r}")
            return
        if self._closed:
            await conn.close()
            return
        await self._serve(conn)

    async def _serve(self, conn: Connection, first: str | None = None) -> None:
        """The per-call boundary: feeds the core until the socket closes."""
        core = self._the_core()
        self._conn = conn
        try:
            if first is not None:
                self._received(first)
            if core.media_start is None:
                async with asyncio.timeout(self.media_start_timeout):
                    while core.media_start is None and not core.ended:
                        self._received(await conn.recv())
            if not core.ended and not self._closed:
                self._ticking = True
                self._ticker.add(self)
            async for message in conn:
                self._received(message)
        except TimeoutError:
            self._log.warning("websocket_no_media_start", timeout=self.media_start_timeout)
            core.fail("no MEDIA_START")
            await conn.close()
        except ConnectionClosed:
            pass
        except Exception as exc:
            self._log.exception("websocket_leg_failed")
            core.fail(f"media leg error: {exc!r}")
            await conn.close()
        finally:
            self._ticker.remove(self)
        if not self._closed:
            code, reason = conn.close_code, conn.close_reason or ""
            if code == 1000:
                core.end("asterisk closed the media socket")
            else:
                core.fail(f"media socket closed ({code} {reason})".rstrip())

    def _received(self, message: str | bytes) -> None:
        core = self.core
        assert core is not None
        if isinstance(message, str):
            core.text_received(message)
        else:
            core.binary_received(message)
        self._flush()

    def _flush(self) -> None:
        core = self.core
        if core is None:
            return
        out = core.data_to_send()
        if not out:
            return
        conn = self._conn
        if conn is None or conn.protocol.state is not State.OPEN:
            self.counters["tx_after_close"] += len(out)
            return
        protocol = conn.protocol
        for message in out:
            if isinstance(message, str):
                protocol.send_text(message.encode())
            else:
                protocol.send_binary(message)
        conn.send_data()
        if conn.transport.get_write_buffer_size() > self._write_limit:
            buffered = conn.transport.get_write_buffer_size()
            self._log.error("websocket_not_reading", buffered=buffered)
            core.fail("asterisk stopped reading the media socket")
            conn.transport.abort()

    # ---- the shared clock ---------------------------------------------------------------

    def on_tick(self, frames: int, skipped: int) -> None:
        core = self.core
        if core is not None:
            core.tick(frames, skipped)
            self._flush()

    def on_tick_error(self, exc: Exception) -> None:
        self._log.error("websocket_tick_failed", error=repr(exc))
        self._ticker.remove(self)
        if self.core is not None:
            self.core.fail(f"send failed: {exc!r}")


def media_url(ari_url: str, connection_id: str) -> str:
    """Asterisk's /media/<id> beside its ARI: http -> ws, https -> wss, no credentials; an
    http.conf prefix before /ari is kept."""
    parts = urlsplit(ari_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"not an ARI URL: {redact_url(ari_url)!r}")
    netloc = parts.netloc.rpartition("@")[2]
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/ari"):
        prefix = prefix[: -len("/ari")]
    return urlunsplit((scheme, netloc, f"{prefix}/media/{connection_id}", "", ""))


__all__ = ["MAX_MESSAGE", "SUBPROTOCOL", "WRITE_LIMIT", "WebSocketLeg", "media_url"]
