"""The per-call bot WebSocket: a thin shell around a `websockets` client connection.

Sends never block the caller: messages go into a bounded queue drained by one writer task, so
a bot that stops reading costs that call its newest media (dropped and counted), never the
event loop or the other calls. Connected without permessage-deflate: audio does not compress
and deflate costs ~30% CPU (bot-side.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from bridge.errors import BotConnectError
from bridge.logs import redact_url

MAX_BOT_MESSAGE = 1 << 20
SEND_QUEUE_LIMIT = 500  # 10 s of 20 ms media: far beyond any healthy bot's lag


class BotConnection:
    def __init__(
        self,
        url: str,
        *,
        on_message: Callable[[str | bytes], None],
        on_closed: Callable[[int | None, str], None],
        open_timeout: float = 3.0,
        max_size: int = MAX_BOT_MESSAGE,
        queue_limit: int = SEND_QUEUE_LIMIT,
    ) -> None:
        self.url = url
        self._on_message = on_message
        self._on_closed = on_closed
        self._open_timeout = open_timeout
        self._max_size = max_size
        self._queue: collections.deque[str | bytes] = collections.deque()
        self._queue_limit = queue_limit
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False  # no more sends
        self._closed = False  # close() ran
        self.sent = 0
        self.dropped = 0
        self.received = 0

    async def connect(self) -> None:
        try:
            self._ws = await connect(
                self.url,
                compression=None,
                max_size=self._max_size,
                open_timeout=self._open_timeout,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
            )
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            raise BotConnectError(
                f"cannot open bot WebSocket {redact_url(self.url)}: {type(exc).__name__} {exc}"
            ) from None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._reader()), loop.create_task(self._writer())]

    def send(self, message: str | bytes) -> bool:
        """Queue a message; False (and counted) when the bot is too far behind."""
        if self._ws is None or self._closing:
            return False
        if len(self._queue) >= self._queue_limit:
            self.dropped += 1
            return False
        self._queue.append(message)
        self._wake.set()
        return True

    async def close(self, final: list[str | bytes] | None = None, code: int = 1000) -> None:
        """Send `final` after what is queued, close with `code`, stop the tasks; idempotent."""
        if self._closed:
            return
        self._closed = True
        for message in final or ():
            self.send(message)
        already_closing = self._closing
        self._closing = True
        ws = self._ws
        if ws is not None and not already_closing:
            with contextlib.suppress(asyncio.TimeoutError, websockets.WebSocketException):
                await asyncio.wait_for(self._flush(ws), timeout=2.0)
            with contextlib.suppress(websockets.WebSocketException, OSError):
                await ws.close(code)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _flush(self, ws: ClientConnection) -> None:
        while self._queue:
            await ws.send(self._queue.popleft())
            self.sent += 1

    async def _writer(self) -> None:
        assert self._ws is not None
        ws = self._ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return  # close() flushes the rest itself
            try:
                while self._queue and not self._closing:
                    await ws.send(self._queue.popleft())
                    self.sent += 1
            except websockets.ConnectionClosed:
                return  # the reader reports the close

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
            pass
        if ws.close_code is not None:
            code, reason = ws.close_code, ws.close_reason or ""
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()  # the writer: nothing more can be sent
        if not self._closing:
            self._closing = True
            self._on_closed(code, reason)
