"""The ARI events WebSocket: connect, parse each message once, reconnect forever.

Reconnects use capped exponential backoff with jitter (never a tight loop) and log each
attempt once. Media keeps flowing while the socket is down (asterisk-facts §16), so calls are
not touched here; after each (re)connect `on_connected` runs so the owner can reconcile its
calls with what Asterisk still has, because nothing missed is replayed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter
from websockets.asyncio.client import ClientConnection, connect

from ari.events import MAX_EVENT_BYTES, AriEvent, UnknownEvent, parse_event
from ari.rest import normalize_base_url
from bridge.errors import AriEventError
from bridge.logs import get_logger, redact_url

log = get_logger("ari.events")


def events_url(base_url: str, app: str, user: str, password: str) -> str:
    """ws(s)://host/ari/events?app=..&api_key=user:pass, as the recordings used it."""
    parts = urlsplit(normalize_base_url(base_url))
    scheme = "wss" if parts.scheme == "https" else "ws"
    # safe=":" keeps api_key=user:pass as the recordings sent it; '&', '#', ' ' are still quoted.
    query = urlencode(
        {"app": app, "api_key": f"{user}:{password}", "subscribeAll": "false"}, safe=":"
    )
    return urlunsplit((scheme, parts.netloc, parts.path + "/ari/events", query, ""))


class AriEventsSocket:
    def __init__(
        self,
        url: str,
        on_event: Callable[[AriEvent], None],
        on_connected: Callable[[], Awaitable[None]] | None = None,
        *,
        ping_interval: float = 5.0,
        ping_timeout: float = 5.0,
        max_backoff: float = 30.0,
    ) -> None:
        self._url = url
        self._on_event = on_event
        self._on_connected = on_connected
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_backoff = max_backoff
        self._ws: ClientConnection | None = None
        self.connected = asyncio.Event()
        self.bad_events = 0
        self.connects = 0
        # Why the last connection attempt failed (redacted), "" once connected: for /readyz.
        self.last_error = ""
        self.attempt_failed = asyncio.Event()  # set on every failed connect (tests await it)

    async def run(self) -> None:
        """Hold the socket until cancelled."""
        while True:
            ws = await self._connect()
            self._ws = ws
            self.connects += 1
            self.last_error = ""
            self.connected.set()
            log.info("ari_events_connected", url=redact_url(self._url), connects=self.connects)
            try:
                if self._on_connected is not None:
                    await self._on_connected()
                async for message in ws:
                    self._dispatch(message)
            except websockets.ConnectionClosed as exc:
                log.warning("ari_events_lost", code=exc.rcvd.code if exc.rcvd else None)
            finally:
                self.connected.clear()
                self._ws = None
                await ws.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def _connect(self) -> ClientConnection:
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.5, max=self._max_backoff, jitter=0.5),
            retry=retry_if_exception_type((OSError, TimeoutError, websockets.WebSocketException)),
            before_sleep=self._log_retry,
        )
        async for attempt in retrying:
            with attempt:
                return await connect(
                    self._url,
                    compression=None,
                    max_size=MAX_EVENT_BYTES,
                    open_timeout=10,
                    ping_interval=self._ping_interval,
                    ping_timeout=self._ping_timeout,
                )
        raise AssertionError("unreachable: retries forever")

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        # The exception text may quote the URL; only its type and a redacted text are logged.
        self.last_error = _why(exc)
        self.attempt_failed.set()
        log.warning(
            "ari_events_connect_failed",
            attempt=state.attempt_number,
            error=redact_url(f"{type(exc).__name__}: {exc}"),
            why=self.last_error,
            retry_in=round(state.upcoming_sleep, 2),
        )

    def _dispatch(self, message: str | bytes) -> None:
        try:
            event = parse_event(message)
        except AriEventError as exc:
            self.bad_events += 1
            log.warning("ari_event_rejected", reason=str(exc), count=self.bad_events)
            return
        if isinstance(event, UnknownEvent):
            log.debug("ari_event_ignored", type=event.type)
        try:
            self._on_event(event)
        except Exception:
            # One event that trips a bug must not take down the socket every call relies on.
            log.exception("ari_event_handler_failed", type=type(event).__name__)


def _why(exc: BaseException | None) -> str:
    """A failed connect in an operator's words (no URL, no credentials)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return "ARI refused the credentials (401): check --ari-user/--ari-password against ari.conf"
    if status is not None:
        return f"ARI answered the events WebSocket with HTTP {status}"
    if isinstance(exc, ConnectionRefusedError):
        return "ARI refused the connection: is Asterisk running, http.conf enabled?"
    if isinstance(exc, TimeoutError):
        return "ARI did not answer in time"
    return f"cannot reach ARI ({type(exc).__name__})"
