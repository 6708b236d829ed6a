"""The per-call bot WebSocket: a thin shell around a `websockets` client connection.

Opening. `connect()` has one deadline (`open_timeout`) and retries inside it, with a short
doubling backoff, whatever may get better by itself: a refused or reset connection, a timeout,
a handshake dropped half-way, a 5xx, 408 or 429 answer (a bot restarting, overloaded or behind
a busy proxy). It does not retry what will not: any other 4xx answer (401/403/404 mean wrong
credentials or URL, and asking again only adds load on the bot), a TLS failure
(an untrusted certificate stays untrusted) or a server that is not a WebSocket server. Every
failed attempt is logged once; the final failure raises `BotConnectError`. Neither carries a
secret: URLs lose their userinfo and query string, header values are never printed, and
`websockets`' own debug lines (which dump request headers) are switched off.

Sending. Sends never block the caller: messages go into a bounded queue drained by one writer
task, so a bot that stops reading costs that call its newest media (dropped and counted), never
the event loop or the other calls. A bot that stops reading is failed within about
`stall_timeout`, by whichever of two checks sees it first:
- the writer makes no progress for `stall_timeout` (the bot's TCP window and our buffer are
  full). One watchdog timer per connection, armed only while the writer has work, checks
  this; no per-message timer.
- a keepalive ping goes unanswered: a ping every `stall_timeout / 2`, each given as long for
  its pong. This is the check that usually fires: at telephony rates (~15 kB/s) the kernel
  buffers of a loopback or LAN connection (MBs) take minutes to fill before any write blocks.
Either way `on_closed(None, "bot stopped reading ...")` is reported once and the transport is
aborted, because a close frame would queue behind the data the bot is not reading.

Closing. `close()` is bounded by `close_timeout` as a whole (flush, close frame, the bot's
answer): `websockets`' own close timeout starts only once the close frame is written, and
writing it waits for a window a non-reading bot never opens; past the deadline the transport
is aborted.

Limits. A bot message over `max_size` (1 MiB) ends that connection with 1009, reported through
`on_closed`. Connected without permessage-deflate: audio does not compress and deflate costs
~30% CPU (bot-side.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a websockets build without its C extension
    from websockets.utils import apply_mask

from bridge.errors import BotConnectError
from bridge.logs import get_logger, redact_url

MAX_BOT_MESSAGE = 1 << 20
SEND_QUEUE_LIMIT = 500  # 10 s of 20 ms media: far beyond any healthy bot's lag
# Above this many bytes waiting in the transport, sends go through the queue and the writer
# task (which waits for the bot to read); below it they are written at once.
DIRECT_WRITE_LIMIT = 64 * 1024


class _DirectConnection(ClientConnection):
    """websockets' connection with a direct path for the media hot path.

    Every whole, final text or binary frame from the bot goes to `on_text` as soon as it is
    read: no Frame object, no assembler, no future and no task switch per message. Every other
    frame (pong, close, fragments, anything malformed) goes, whole, through websockets' own
    protocol, so its parser only ever sees frame boundaries. `write_frame` frames and writes
    a text or binary message at once. Together with BotConnection.send's direct write this takes the
    bridge from ~3.0 to ~2.1 ms CPU per call-second at N=200 (make bench)."""

    on_text: Callable[[str | bytes], None] | None = None
    _rx = b""  # bytes of an incomplete frame
    _masks = b""
    _mask_at = 0

    def write_frame(self, data: bytes, first_byte: int) -> None:
        """One masked final frame (0x81 text, 0x82 binary), written now. Masks come from a
        pooled urandom buffer: unpredictable as RFC 6455 asks, without websockets' getrandom
        syscall per frame."""
        at = self._mask_at
        if at + 4 > len(self._masks):
            self._masks, at = os.urandom(4096), 0
        mask = self._masks[at : at + 4]
        self._mask_at = at + 4
        size = len(data)
        if size < 126:
            head = bytes((first_byte, 0x80 | size))
        elif size < 65536:
            head = bytes((first_byte, 0xFE)) + size.to_bytes(2, "big")
        else:
            head = bytes((first_byte, 0xFF)) + size.to_bytes(8, "big")
        self.transport.write(head + mask + apply_mask(data, mask))

    def data_received(self, data: bytes) -> None:
        """Final unmasked text frames go straight to on_text; every other frame, whole, goes
        through websockets' protocol (pongs, close, fragments, errors), so its parser only
        ever sees frame boundaries."""
        on_text = self.on_text
        if on_text is None or self.protocol.state is not State.OPEN:
            super().data_received(self._rx + data if self._rx else data)
            self._rx = b""
            return
        buf = self._rx + data if self._rx else data
        pos, size = 0, len(buf)
        slow_from = -1
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if second & 0x80:
                head += 4
            if length > MAX_BOT_MESSAGE:
                slow_from = pos  # let websockets fail it with 1009
                break
            end = pos + head + length
            if end > size:
                break
            if first == 0x81 and not second & 0x80:
                try:
                    text = buf[pos + head : end].decode()
                except UnicodeDecodeError:
                    super().data_received(buf[pos:end])  # websockets closes with 1007
                else:
                    on_text(text)
            elif first == 0x82 and not second & 0x80:
                # Binary (Vonage audio) takes the same path as text, so a `clear` can never
                # overtake audio the bot sent before it.
                on_text(buf[pos + head : end])
            else:
                super().data_received(buf[pos:end])
            pos = end
            if self.protocol.state is not State.OPEN:
                slow_from = pos
                break
        if slow_from >= 0:
            self._rx = b""
            if slow_from < size:
                super().data_received(buf[slow_from:])
            return
        self._rx = buf[pos:]

    def process_event(self, event: Any) -> None:
        on_text = self.on_text
        if on_text is not None and isinstance(event, Frame) and event.fin:
            if event.opcode is Opcode.TEXT:
                on_text(bytes(event.data).decode())
                return
            if event.opcode is Opcode.BINARY:
                on_text(bytes(event.data))
                return
        super().process_event(event)


# 408 and 429 say "not now", not "never": a bot that is overloaded or slow to start.
_RETRIED_4XX = frozenset({408, 429})
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 1.0


class BotConnection:
    def __init__(
        self,
        url: str,
        *,
        on_message: Callable[[str | bytes], None],
        on_closed: Callable[[int | None, str], None],
        open_timeout: float = 3.0,
        stall_timeout: float = 5.0,
        close_timeout: float = 2.0,
        ca_file: str = "",
        headers: Sequence[tuple[str, str]] = (),
        max_size: int = MAX_BOT_MESSAGE,
        queue_limit: int = SEND_QUEUE_LIMIT,
        log: Any = None,
    ) -> None:
        self.url = url
        self._on_message = on_message
        self._on_closed = on_closed
        self._open_timeout = open_timeout
        self._stall_timeout = stall_timeout
        self._close_timeout = close_timeout
        self._ca_file = ca_file
        self._headers = tuple(headers)
        self._max_size = max_size
        self._queue: collections.deque[str | bytes] = collections.deque()
        self._queue_limit = queue_limit
        self._log = (log if log is not None else get_logger(__name__)).bind(bot=safe_url(url))
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False  # no more sends, no more reports
        self._closed = False  # close() ran
        self._writing = False  # the writer has taken work and not finished it
        self._progress_at = 0.0  # loop time the writer last completed a send or woke up
        self._watchdog: asyncio.TimerHandle | None = None
        self._crash = ""  # why _on_text ended the connection, if it did
        self.connect_attempts = 0
        self.sent = 0
        self.dropped = 0
        self.received = 0

    def __repr__(self) -> str:
        return f"BotConnection({safe_url(self.url)}, sent={self.sent}, dropped={self.dropped})"

    # ---- opening ------------------------------------------------------------------------

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._open_timeout
        ssl_context = self._ssl_context()
        delays = _backoff()
        while True:
            self.connect_attempts += 1
            try:
                self._ws = await self._open(ssl_context, max(deadline - loop.time(), 0.0))
                break
            except (OSError, websockets.WebSocketException) as exc:
                error = self._scrub(f"{type(exc).__name__}: {exc}")
                worth_it = _worth_retrying(exc)
                delay = next(delays)
                # An attempt squeezed into the last moments would only replace the real error
                # with a timeout: give up when the next one could not start before the deadline.
                retry = worth_it and loop.time() + delay < deadline
                self._log.info(
                    "bot_connect_failed",
                    attempt=self.connect_attempts,
                    error=error,
                    retry_in=delay if retry else None,
                )
                if not retry:
                    why = "gave up" if worth_it else "not retried"
                    raise BotConnectError(
                        f"cannot open bot WebSocket {safe_url(self.url)}: {error} ({why} after "
                        f"{self.connect_attempts} attempt(s) in {loop.time() - started:.1f} s)"
                    ) from None
                await asyncio.sleep(delay)
        ws = self._ws
        assert isinstance(ws, _DirectConnection)
        ws.on_text = self._on_text
        self._tasks = [
            loop.create_task(self._reader()),
            loop.create_task(self._writer()),
            loop.create_task(self._keepalive(ws)),
        ]

    async def _open(self, ssl_context: ssl.SSLContext | None, budget: float) -> ClientConnection:
        extra: dict[str, Any] = {} if ssl_context is None else {"ssl": ssl_context}
        return await connect(
            self.url,
            create_connection=_DirectConnection,
            compression=None,
            additional_headers=self._headers or None,
            max_size=self._max_size,
            open_timeout=budget,
            ping_interval=None,  # see _keepalive
            close_timeout=self._close_timeout,
            logger=_WEBSOCKETS_LOGGER,
            **extra,
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        """A context trusting `ca_file` for wss://; None means websockets' default, which
        verifies against the system CAs. A ws:// URL ignores ca_file (websockets refuses it)."""
        if not self._ca_file or urlsplit(self.url).scheme != "wss":
            return None
        try:
            return ssl.create_default_context(cafile=self._ca_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise BotConnectError(
                f"cannot load bot CA file {self._ca_file}: {type(exc).__name__}: {exc}"
            ) from None

    def _scrub(self, text: str) -> str:
        """Error text without the URL's secrets or any header value."""
        parts = urlsplit(self.url)
        for secret in (parts.query, parts.username, parts.password, *(v for _, v in self._headers)):
            if secret:
                text = text.replace(secret, "***")
        return redact_url(text)

    # ---- sending ------------------------------------------------------------------------

    def send(self, message: str | bytes) -> bool:
        """Queue a message; False (and counted) when the bot is too far behind."""
        if self._ws is None or self._closing:
            return False
        ws = self._ws
        if (
            isinstance(ws, _DirectConnection)
            and not self._queue
            and not self._writing
            and ws.protocol.state is State.OPEN
            and ws.transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
        ):
            # The common case: nothing queued, the bot keeps up. Frame and write now; the
            # writer task (and its await per message) is only for a bot falling behind.
            if isinstance(message, str):
                ws.write_frame(message.encode(), 0x81)
            else:
                ws.write_frame(message, 0x82)  # Vonage audio
            self.sent += 1
            return True
        if len(self._queue) >= self._queue_limit:
            self.dropped += 1
            return False
        self._queue.append(message)
        self._wake.set()
        return True

    async def _writer(self) -> None:
        assert self._ws is not None
        ws = self._ws
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return  # close() flushes the rest itself
            self._writing = True
            self._progress_at = loop.time()
            if self._watchdog is None:
                self._watchdog = loop.call_at(
                    self._progress_at + self._stall_timeout, self._check_stall
                )
            try:
                while self._queue and not self._closing:
                    await ws.send(self._queue.popleft())
                    self.sent += 1
                    self._progress_at = loop.time()
            except websockets.ConnectionClosed:
                return  # the reader reports the close
            finally:
                self._writing = False

    def _check_stall(self) -> None:
        self._watchdog = None
        if self._closing or not self._writing:
            return  # idle: the writer re-arms when it next gets work
        loop = asyncio.get_running_loop()
        stalled_for = loop.time() - self._progress_at
        if stalled_for < self._stall_timeout:
            self._watchdog = loop.call_at(
                self._progress_at + self._stall_timeout, self._check_stall
            )
            return
        self._fail(f"bot stopped reading for {stalled_for:.1f} s")

    async def _keepalive(self, ws: ClientConnection) -> None:
        """Ping every stall_timeout / 2 and give each pong as long. Ours, not websockets',
        because websockets follows an unanswered ping with a close handshake that a bot which
        reads nothing can never answer: the call would wait close_timeout more for nothing."""
        interval = self._stall_timeout / 2
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(interval):  # the ping's own write may be stuck too
                    pong = await ws.ping()
                    await pong
            except websockets.ConnectionClosed:
                return  # the reader reports the close
            except TimeoutError:
                self._fail(f"bot stopped reading: a ping went unanswered for {interval:g} s")
                return

    def _fail(self, reason: str) -> None:
        """Report the bot failed, once, and drop the connection without a close handshake:
        a close frame would queue behind the data the bot is not reading."""
        if self._closing:
            return
        self._closing = True
        self._disarm_watchdog()
        self._log.warning(
            "bot_stalled",
            reason=reason,
            queued=len(self._queue),
            sent=self.sent,
            dropped=self.dropped,
        )
        self._queue.clear()
        if self._ws is not None:
            self._ws.transport.abort()
        self._on_closed(None, reason)

    # ---- receiving ----------------------------------------------------------------------

    def _on_text(self, message: str | bytes) -> None:
        self.received += 1
        try:
            self._on_message(message)
        except Exception as exc:
            # As in _reader: a bug in on_message ends this bot connection visibly.
            self._log.exception("bot_message_handler_crashed")
            self._crash = f"bridge error handling a bot message: {type(exc).__name__}"
            if self._ws is not None:
                self._ws.transport.abort()

    async def _reader(self) -> None:
        assert self._ws is not None
        ws = self._ws
        code: int | None = None
        reason = ""
        try:
            async for message in ws:
                self.received += 1
                self._on_message(message)
        except websockets.ConnectionClosed:
            code, reason = _close_report(ws)
        except Exception as exc:
            # A bug in on_message must end this bot connection visibly, not kill the reader
            # silently and leave the call waiting for a bot it no longer hears.
            self._log.exception("bot_message_handler_crashed")
            ws.transport.abort()
            code, reason = None, f"bridge error handling a bot message: {type(exc).__name__}"
        else:
            code, reason = _close_report(ws)
        if self._crash:
            code, reason = None, self._crash
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()  # the writer: nothing more can be sent
        self._disarm_watchdog()
        if not self._closing:
            self._closing = True
            self._on_closed(code, reason)

    # ---- closing ------------------------------------------------------------------------

    async def close(self, final: list[str | bytes] | None = None, code: int = 1000) -> None:
        """Send `final` after what is queued, close with `code`, stop the tasks; idempotent,
        and done within close_timeout whatever the bot does."""
        if self._closed:
            return
        self._closed = True
        for message in final or ():
            self.send(message)
        already_closing = self._closing
        self._closing = True
        self._disarm_watchdog()
        ws = self._ws
        if ws is not None and not already_closing:
            try:
                async with asyncio.timeout(self._close_timeout):
                    await self._flush(ws)
                    await ws.close(code)
            except TimeoutError:
                self._log.info(
                    "bot_close_timed_out", seconds=self._close_timeout, unsent=len(self._queue)
                )
                ws.transport.abort()
            except (websockets.WebSocketException, OSError):
                pass  # already gone: nothing left to close
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _flush(self, ws: ClientConnection) -> None:
        while self._queue:
            await ws.send(self._queue.popleft())
            self.sent += 1

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def safe_url(url: str) -> str:
    """scheme://host:port/path: no userinfo, and the query (where tokens ride) reduced to '?***'.
    For logs and error texts, which need to say which bot, never how to log in to it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLEOFError):
        return True  # the connection dropped mid-TLS-handshake: a bot (re)starting
    if isinstance(exc, ssl.SSLError):
        return False  # checked before OSError, its base: a bad certificate stays bad
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return status >= 500 or status in _RETRIED_4XX
    if isinstance(exc, InvalidMessage):
        return True  # the connection dropped mid-handshake: a bot (re)starting
    if isinstance(exc, websockets.WebSocketException):
        return False  # bad URI, not a WebSocket server, failed negotiation: configuration
    return isinstance(exc, OSError)  # refused, reset, unreachable, timed out (TimeoutError)


def _backoff() -> Iterator[float]:
    delay = FIRST_RETRY_DELAY
    while True:
        yield delay
        delay = min(delay * 2, MAX_RETRY_DELAY)


def _close_report(ws: ClientConnection) -> tuple[int | None, str]:
    """The close code and reason that describe what happened. When websockets failed the
    connection on our side (1007 bad UTF-8, 1009 too big, 1011 ping timeout), the code it sent
    says why; the bot's echo, or 1006 when there was none, would hide it."""
    protocol = ws.protocol
    sent = protocol.close_sent
    if sent is not None and not protocol.close_rcvd_then_sent:
        return int(sent.code), sent.reason
    return ws.close_code, ws.close_reason or ""


class _NoDebugLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs every handshake header at debug (Authorization included) when its
    logger is enabled for debug; this one never is, so a global debug level leaks nothing."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_WEBSOCKETS_LOGGER = _NoDebugLogger(logging.getLogger("websockets.client"), {})
