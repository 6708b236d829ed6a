"""Lifecycle webhooks: `call.started` ... `call.ended` POSTed, signed, to the operator's URLs.

    sender = WebhookSender(urls, load_webhook_secret(path), default_spool_path())
    await sender.start()
    sender.send("call.ended", view.to_json(), extra_urls=per_call_urls)  # sync, ~µs, never raises
    await sender.close()

The body is the Standard Webhooks payload, `{"type", "timestamp" (ISO 8601 UTC, when `send`
was called), "data"}`, signed as that spec says (with the `standardwebhooks` package):
`webhook-id` is the event's and the same on every retry and for every URL (the receiver's
idempotency key); `webhook-timestamp` is the Unix time of *this* try, and `webhook-signature`
is `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the `whsec_...` secret, so a retry
an hour later still passes the receiver's 5-minute timestamp tolerance. No secret: unsigned
(logged once at start).

`send` only encodes the body and appends to an in-memory inbox (bounded by `max_pending`
deliveries; beyond it events are dropped and counted, so a dead receiver costs the calls
nothing). One worker task spools what arrived (SQLite, in a worker thread, before the first
try), then tries what is due, at most `max_concurrency` at once over one aiohttp session, each
try bounded by `timeout`. When to retry and when to give up is `bridge.ops.delivery`'s.

Counters are per delivery (one event to one URL): `delivered`, `failed_attempts` (tries that
will be or were retried, or failed for good), `dropped` (never delivered: window over, a final
4xx, too large, not JSON, over `max_pending`, sent after close), `pending` (in the inbox or
waiting for a try, now).

Delivery is at least once: a try cut short by `close()` or a crash may have reached the
receiver and is tried again after the restart, with the same `webhook-id`.

The clock (`clock`, wall-clock Unix seconds, `time.time` by default) is injected; tests move
a hand clock and call `check_timers()`. A wall-clock step (NTP) moves the retries with it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from standardwebhooks import Webhook

from bridge.errors import ConfigError
from bridge.logs import get_logger, redact_url
from bridge.ops.delivery import Delivery, DeliveryQueue, RetryPolicy, Verdict
from bridge.ops.spool import NewRow, Spool
from bridge.secrets import read_secret_file

EVENT_TYPES = frozenset(
    {
        "call.started",
        "call.answered",
        "call.bot_connected",
        "call.bot_reconnected",
        "call.ended",
        "call.failed",
    }
)
MAX_BODY = 256 * 1024  # a call's read model is ~1 KB; anything near this is a bug upstream
MAX_PENDING = 10_000
_T = TypeVar("_T")


def load_webhook_secret(path: str) -> str:
    """The `whsec_...` secret in `path` (`--webhook-secret-file`); ConfigError if the file is
    world-readable or the key is not base64. The messages never hold the secret."""
    secret = read_secret_file(path, "--webhook-secret-file").strip()
    check_secret(secret)
    return secret


def check_secret(secret: str) -> None:
    key = secret.removeprefix("whsec_")
    try:
        raw = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("the webhook secret is not whsec_<base64>") from None
    if len(raw) < 16:
        raise ConfigError("the webhook secret is shorter than 16 bytes (24 to 64 advised)")


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"a webhook URL is http(s)://HOST/..., got {redact_url(url)!r}")
    return url


@dataclass(slots=True)
class WebhookCounters:
    """Plain ints for the metrics module to read; see the module docstring for the units."""

    delivered: int = 0
    failed_attempts: int = 0
    dropped: int = 0
    pending: int = 0


@dataclass(frozen=True, slots=True)
class _NewEvent:
    msg_id: str
    event_type: str
    urls: tuple[str, ...]
    body: bytes
    created_at: float


class WebhookSender:
    def __init__(
        self,
        urls: Sequence[str],
        secret: str | None,
        spool_path: str | Path | None,
        *,
        timeout: float = 5.0,
        retry_window: float = 3600.0,
        policy: RetryPolicy | None = None,
        max_concurrency: int = 8,
        max_pending: int = MAX_PENDING,
        max_body: int = MAX_BODY,
        clock: Callable[[], float] = time.time,
        log: Any = None,
    ) -> None:
        self._urls = tuple(dict.fromkeys(check_url(url) for url in urls))
        if secret:
            check_secret(secret)
        self._signer = Webhook(secret) if secret else None
        self._spool = Spool(spool_path)
        self._timeout = timeout
        self._queue = DeliveryQueue(policy or RetryPolicy(window=retry_window))
        self._max_concurrency = max_concurrency
        self._max_pending = max_pending
        self._max_body = max_body
        self._clock = clock
        self._log = log if log is not None else get_logger("bridge.ops.webhooks")
        self.counters = WebhookCounters()
        self._inbox: deque[_NewEvent] = deque()
        self._attempts: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._quiet = asyncio.Event()
        self._closed = False
        self._memory_keys = 0

    def __repr__(self) -> str:
        signed = "signed" if self._signer else "unsigned"
        return f"WebhookSender({len(self._urls)} URLs, {signed}, {self._spool!r}, {self.counters})"

    # ---- the API ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the spool (ConfigError if it cannot) and resumes what it holds."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="webhook-spool")
        await self._in_thread(self._spool.open)
        if self._signer is None:
            self._log.warning("webhooks_unsigned", reason="no --webhook-secret-file")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(limit=self._max_concurrency),
            headers={"User-Agent": "pipecat-bridge-webhooks"},
        )
        await self._resume()
        self._worker = asyncio.create_task(self._run(), name="webhook-sender")
        self._worker.add_done_callback(self._worker_done)

    def send(
        self, event_type: str, data: Mapping[str, Any], extra_urls: Sequence[str] = ()
    ) -> str | None:
        """Queues `event_type` for the global URLs and `extra_urls`; its webhook-id, or None if
        there is nowhere to send it or it was dropped (logged). Never blocks, never raises for a
        delivery problem; a ValueError for an event type this module does not know."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r}")
        urls = self._destinations(extra_urls)
        if not urls:
            return None
        now = self._clock()
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = self._encode(event_type, data, now, msg_id, len(urls))
        if body is None:
            return None
        if self._closed or self.counters.pending + len(urls) > self._max_pending:
            reason = "closed" if self._closed else "backlog_full"
            self._drop_new(msg_id, event_type, len(urls), reason)
            return None
        self._inbox.append(_NewEvent(msg_id, event_type, urls, body, now))
        self.counters.pending += len(urls)
        self._quiet.clear()
        self._wakeup.set()
        return msg_id

    def check_timers(self) -> None:
        """Look again at what is due now (for a hand clock in tests; harmless otherwise)."""
        self._quiet.clear()
        self._wakeup.set()

    async def settled(self) -> None:
        """Returns once nothing is queued or being tried and nothing is due now (retries may be
        waiting for their time). Only meaningful after `start()`."""
        await self._quiet.wait()

    async def close(self, grace: float = 0.0) -> None:
        """Stops the worker, after up to `grace` seconds for what is queued or being tried to
        settle. Whatever is not delivered stays in the spool for the next start."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None and grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.settled(), grace)
        tasks = [*self._attempts, *([self._worker] if self._worker else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._executor is not None:
            await self._admit()  # never tried: into the spool for the next start
            await self._in_thread(self._spool.close)
            self._executor.shutdown(wait=False)

    # ---- send()'s helpers ------------------------------------------------------------------

    def _destinations(self, extra_urls: Sequence[str]) -> tuple[str, ...]:
        if not extra_urls:
            return self._urls
        urls = list(self._urls)
        for url in extra_urls:
            try:
                urls.append(check_url(url))
            except ConfigError as exc:
                self._log.warning("webhook_url_skipped", error=str(exc))
        return tuple(dict.fromkeys(urls))

    def _encode(
        self, event_type: str, data: Mapping[str, Any], now: float, msg_id: str, n: int
    ) -> bytes | None:
        stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        payload = {"type": event_type, "timestamp": stamp.replace("+00:00", "Z"), "data": data}
        try:
            body = orjson.dumps(payload)
        except TypeError as exc:  # orjson.JSONEncodeError: the read model holds a non-JSON value
            self._drop_new(msg_id, event_type, n, "not_json", error=str(exc))
            return None
        if len(body) > self._max_body:
            self._drop_new(msg_id, event_type, n, "too_large", size=len(body), limit=self._max_body)
            return None
        return body

    def _drop_new(self, msg_id: str, event_type: str, n: int, reason: str, **kw: Any) -> None:
        self.counters.dropped += n
        self._log.error(
            "webhook_dropped", msg_id=msg_id, event_type=event_type, reason=reason, **kw
        )

    # ---- the worker ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            await self._admit()
            now = self._clock()
            free = self._max_concurrency - len(self._attempts)
            for delivery in self._queue.pop_due(now, free):
                task = asyncio.create_task(self._attempt(delivery))
                self._attempts.add(task)
            timer = self._queue.next_timer()
            if not self._inbox and not self._attempts and (timer is None or timer > now):
                self._quiet.set()
            delay = None if timer is None else max(0.0, timer - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _admit(self) -> None:
        """Spools what `send` queued, then hands it to the queue (due at once)."""
        if not self._inbox:
            return
        events = list(self._inbox)
        self._inbox.clear()
        rows: list[NewRow] = [
            (e.msg_id, e.event_type, url, e.body, e.created_at, e.created_at)
            for e in events
            for url in e.urls
        ]
        keys = await self._spool_op(self._spool.add, rows)
        if keys is None:  # the disk failed us: deliver from memory, the restart will not see them
            keys = [self._memory_key() for _ in rows]
        for key, (msg_id, event_type, url, body, created_at, _) in zip(keys, rows, strict=True):
            self._queue.add(Delivery(key, msg_id, event_type, url, body, created_at, 0, created_at))

    async def _resume(self) -> None:
        now = self._clock()
        for row in await self._in_thread(self._spool.load):
            delivery = Delivery(
                row.key, row.msg_id, row.event_type, row.url, row.body,
                row.created_at, row.attempts, row.next_at,
            )  # fmt: skip
            if self._queue.expired(delivery, now):
                self.counters.dropped += 1
                self._log_dropped(delivery, "window")
                await self._spool_op(self._spool.delete, delivery.key)
                continue
            self._queue.add(delivery)
            self.counters.pending += 1
        if self.counters.pending:
            self._log.info("webhooks_resumed", pending=self.counters.pending)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            status = await self._post(delivery)
            await self._settle(delivery, status)
        except asyncio.CancelledError:
            self._queue.abandon(delivery)  # it stays in the spool, for the next start
            raise
        except Exception:  # our bug: keep the worker going; the spool keeps the delivery
            self._queue.abandon(delivery)
            self._log.exception("webhook_attempt_error", msg_id=delivery.msg_id)
        finally:
            self._attempts.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._wakeup.set()

    async def _settle(self, delivery: Delivery, status: int | None) -> None:
        result = self._queue.record(delivery, status, self._clock())
        if result.verdict is Verdict.DELIVERED:
            self.counters.delivered += 1
            self.counters.pending -= 1
            await self._spool_op(self._spool.delete, delivery.key)
            return
        self.counters.failed_attempts += 1
        if result.verdict is Verdict.RETRY:
            assert result.next_at is not None
            self._log.info(
                "webhook_attempt_failed", msg_id=delivery.msg_id, url=redact_url(delivery.url),
                status=status, attempt=delivery.attempts,
                retry_in=round(result.next_at - self._clock(), 3),
            )  # fmt: skip
            await self._spool_op(
                self._spool.update, delivery.key, delivery.attempts, result.next_at
            )
            return
        self.counters.dropped += 1
        self.counters.pending -= 1
        self._log_dropped(delivery, result.reason, status=status)
        await self._spool_op(self._spool.delete, delivery.key)

    async def _post(self, delivery: Delivery) -> int | None:
        """The answer's status, or None for a timeout or a connection error."""
        assert self._session is not None
        now = self._clock()
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.msg_id,
            "webhook-timestamp": str(int(now)),
        }
        if self._signer is not None:
            stamp = datetime.fromtimestamp(now, UTC)
            headers["webhook-signature"] = self._signer.sign(
                delivery.msg_id, stamp, delivery.body.decode()
            )
        try:
            async with self._session.post(
                delivery.url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    def _log_dropped(self, delivery: Delivery, reason: str, **kw: Any) -> None:
        self._log.error(
            "webhook_dropped", msg_id=delivery.msg_id, event_type=delivery.event_type,
            url=redact_url(delivery.url), reason=reason, attempts=delivery.attempts, **kw,
        )  # fmt: skip

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("webhook_worker_died", exc_info=task.exception())

    async def _spool_op(self, fn: Callable[..., _T], *args: Any) -> _T | None:
        """A spool write; a disk error is logged and the delivery goes on from memory."""
        try:
            return await self._in_thread(fn, *args)
        except sqlite3.Error as exc:
            self._log.error("webhook_spool_error", path=str(self._spool.path), error=str(exc))
            return None

    def _memory_key(self) -> int:
        self._memory_keys -= 1  # negative: never a spool row
        return self._memory_keys

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
