"""The chan_websocket media leg (Asterisk's ExternalMedia `transport=websocket`): a pure core per
call, a thin `websockets` shell around it, and a listener for calls from the dialplan alone.

Two ways a call reaches us (asterisk-features "chan_websocket"):

    ARI (`WebSocketLeg`)   POST /channels/externalMedia transport=websocket
                           connection_type=server -> the channel's MEDIA_WEBSOCKET_CONNECTION_ID
                           -> we connect ws://<ARI host>/media/<id>, subprotocol `media`
    dialplan               Dial(WebSocket/<websocket_client.conf entry>/c(slin16)v(a=b,...))
    (`WebSocketMediaServer`) -> Asterisk connects to us at /media?a=b..., subprotocol `media`

Either way Asterisk's first message is MEDIA_START (format, optimal_frame_size, ptime), then
binary audio both ways and short text control messages (`bridge.media.websocket_control`),
plain text unless JSON was asked for (ExternalMedia `transport_data=f(json)`, Asterisk
>= 20.18 / 22.8 / 23.2; the dial string's `f(json)`). We answer in the format MEDIA_START came
in, whatever was asked.

Decisions, each with its reason:
- Outbound pacing. Asterisk re-times what it is sent and queues up to 1000 frames (XOFF at
  900): everything queued there is barge-in delay. So the shared 20 ms clock sends one frame
  per tick (`bridge.media.pacing.Outbound`), binary messages of `optimal_frame_size` (its reader
  splits a message into frames of that size and, on 20.19+/23.3+, drops a short remainder).
  Only a stream's start, each talkspurt's start and the first frame after a FLUSH_MEDIA are
  preceded by `lead_frames` (2) of silence: a 40 ms cushion in Asterisk's queue against our
  timer's jitter, so its 20 ms timer does not find the queue empty now and then.
- Silence while the bot is quiet: sent (`silence_fill=True`). Asterisk 20.19+/23.3+ no longer
  makes any; without it the caller's side gets no frames at all between the bot's talkspurts,
  and the cushion would be rebuilt (40 ms of delay) at every talkspurt.
- Marks mean "heard". Outbound releases a bot mark when the audio before it has been *sent*;
  then MARK_MEDIA <short id> goes to Asterisk, which answers MEDIA_MARK_PROCESSED once its
  queue has played up to it, and only then is the bot's name reported (`on_marks_played`).
  Ids are short (`MarkIds`): Asterisk silently ignores text over 128 bytes. A mark Asterisk
  never confirms (a version without MARK_MEDIA: before 20.18 / 22.8 / 23.2) is reported
  after `mark_timeout_ms`, with one warning per call.
- `clear()` sends FLUSH_MEDIA, which also drops the marks queued in Asterisk: every mark sent
  and not yet confirmed is reported (as cleared), then every one still queued here.
- `drain()`: once everything is sent, a drain marker goes out as MARK_MEDIA; its
  MEDIA_MARK_PROCESSED (or `drain_timeout_ms`) reports `on_playout_drained`.
- MEDIA_XOFF pauses sending until MEDIA_XON; ticks keep being counted (`tx_paused_ticks`) and
  the bot's audio stays queued here, up to Outbound's cap (`max_queue_ms`).
- Caller audio goes to the call in 20 ms frames of the rx format. Asterisk's frames are
  normally exactly that and pass untouched; other sizes are re-chunked. A message shorter than
  `optimal_frame_size` is the end of a stream (the end of a played file gives one 22-byte
  frame, fixture `chan_websocket`): it is padded with silence and handed on at once, so no
  later frame is split; a partial frame left by a longer message is padded after two quiet
  ticks. Caller silence is filled in while Asterisk sends nothing (`CallerFill`).
- Garbage text (unparseable, unknown events) is counted, logged at debug and dropped; it never
  ends a call. Binary audio before MEDIA_START is dropped and counted.

Ending: Asterisk closes the socket with 1000 when the channel hangs up (it never sends a
HANGUP message): `on_media_ended`; any other close is `on_media_failed`. `close()` of an ARI
leg just closes the socket (the controller deletes the channel through ARI); a dialplan leg
sends HANGUP first, so the channel hangs up at once (with Dial's `g` option the dialplan then
continues); the close alone would end it too, a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.http11 import Request, Response
from websockets.protocol import State

from ari.models import Channel
from bridge.errors import WebSocketControlError
from bridge.logs import get_logger, redact_url
from bridge.media.leg import MediaEvents, MediaFormats
from bridge.media.pacing import CALLER_FILL_AFTER_TICKS, PTIME_MS, CallerFill, Outbound
from bridge.media.ticker import Ticker
from bridge.media.websocket_control import (
    ControlError,
    DtmfEnd,
    MarkIds,
    MarkProcessed,
    MediaStart,
    MediaXoff,
    MediaXon,
    UnknownControl,
    encode_command,
    parse_control,
)
from rtp.transcode import AudioSpec

SUBPROTOCOL = "media"
# Asterisk's frames are 160-640 bytes (20 ms up to 16 kHz) and its text at most 128 bytes.
MAX_MESSAGE = 64 * 1024
# Bytes waiting in the transport after which Asterisk counts as not reading (~16 s of slin16).
WRITE_LIMIT = 256 * 1024


@dataclass(frozen=True, slots=True)
class WireFormat:
    """A chan_websocket format: its AudioSpec and the encoding of one silent sample."""

    name: str
    spec: AudioSpec
    silence_sample: bytes

    def frame_bytes(self, ms: int = PTIME_MS) -> int:
        return self.spec.frame_bytes(ms)

    def silence(self, size: int) -> bytes:
        return self.silence_sample * (size // len(self.silence_sample))


# slin is the host's byte order in Asterisk: little-endian on every platform it runs on here.
WIRE_FORMATS: Mapping[str, WireFormat] = {
    fmt.name: fmt
    for fmt in (
        WireFormat("ulaw", AudioSpec("ulaw", 8000), b"\xff"),
        WireFormat("alaw", AudioSpec("alaw", 8000), b"\xd5"),
        WireFormat("slin", AudioSpec("pcm16le", 8000), b"\x00\x00"),
        WireFormat("slin16", AudioSpec("pcm16le", 16000), b"\x00\x00"),
        WireFormat("slin24", AudioSpec("pcm16le", 24000), b"\x00\x00"),
        WireFormat("slin32", AudioSpec("pcm16le", 32000), b"\x00\x00"),
        WireFormat("slin48", AudioSpec("pcm16le", 48000), b"\x00\x00"),
    )
}


def wire_format(name: str) -> WireFormat:
    try:
        return WIRE_FORMATS[name]
    except KeyError:
        known = ", ".join(WIRE_FORMATS)
        raise ValueError(f"unsupported chan_websocket format {name!r} (known: {known})") from None


class _SentEvents:
    """What `Outbound` reports, seen by the core: its marks are *sent*, not yet heard."""

    def __init__(self, core: WebSocketMediaCore) -> None:
        self._core = core
        self.on_marks_played = core._marks_sent
        self.on_playout_drained = core._all_sent

    def on_caller_audio(self, payload: bytes) -> None:  # pragma: no cover - never called
        raise AssertionError("Outbound reports no caller audio")

    def on_caller_dtmf(self, digit: str) -> None:  # pragma: no cover - never called
        raise AssertionError("Outbound reports no DTMF")

    def on_media_failed(self, reason: str) -> None:  # pragma: no cover - never called
        self._core.events.on_media_failed(reason)

    def on_media_ended(self, reason: str) -> None:  # pragma: no cover - never called
        self._core.events.on_media_ended(reason)


class WebSocketMediaCore:
    """One chan_websocket media session, without the socket: messages in, messages out.

    Feed it `text_received` / `binary_received`, call `tick` from the shared clock, and write
    what `data_to_send()` returns (text as text messages, bytes as binary) after each call."""

    def __init__(
        self,
        *,
        events: MediaEvents,
        audio_format: str,
        json_control: bool = False,
        max_queue_ms: int = 2000,
        playout_reserve_ms: int = 40,
        silence_fill: bool = True,
        caller_silence_fill: bool = True,
        lead_frames: int = 2,
        mark_timeout_ms: int = 2000,
        drain_timeout_ms: int = 2000,
        log: Any,
    ) -> None:
        if lead_frames < 0 or mark_timeout_ms <= 0 or drain_timeout_ms <= 0:
            raise ValueError("lead_frames must not be negative, the timeouts must be positive")
        self.events = events
        self.wire = wire_format(audio_format)
        self.formats = MediaFormats(self.wire.spec, self.wire.spec)
        self.json = json_control
        self._log = log
        self._frame = self.wire.frame_bytes()
        self._silence = self.wire.silence(self._frame)
        self.outbound = Outbound(
            events=_SentEvents(self), frame_bytes=self._frame, silence=self._silence,
            max_queue_ms=max_queue_ms, playout_reserve_ms=playout_reserve_ms,
            silence_fill=silence_fill, log=log,
        )  # fmt: skip
        self._fill = CallerFill(events, self._silence) if caller_silence_fill else None
        self._lead_frames = lead_frames
        self._lead_due = True
        self._mark_timeout = max(1, mark_timeout_ms // PTIME_MS)
        self._drain_timeout = max(1, drain_timeout_ms // PTIME_MS)
        self._ids = MarkIds()
        # MARK_MEDIA sent, not yet confirmed, oldest first: (id, the tick it went out).
        self._pending: deque[tuple[str, int]] = deque()
        self._drain_id: str | None = None
        self._clearing: list[str] | None = None
        self._draining = False
        self._ticks = 0
        self._marks_unconfirmed_logged = False
        self.media_start: MediaStart | None = None
        self.optimal_frame_size = self._frame
        self.paused = False
        self.ended = False
        self._out: list[str | bytes] = []
        self._tx_buf = bytearray()
        self._rx_buf = bytearray()
        self._rx_quiet = 0
        self.rx_frames = 0
        self.counters = {
            "rx_bytes": 0,
            "rx_padded": 0,
            "rx_before_start": 0,
            "rx_control": 0,
            "rx_bad_control": 0,
            "rx_unknown_control": 0,
            "rx_dtmf": 0,
            "tx_lead_frames": 0,
            "tx_paused_ticks": 0,
            "xoff": 0,
            "marks_confirmed": 0,
            "marks_timed_out": 0,
            "flushes": 0,
        }

    # ---- inbound ------------------------------------------------------------------------

    def text_received(self, text: str) -> None:
        self.counters["rx_control"] += 1
        try:
            event = parse_control(text)
        except WebSocketControlError as exc:
            self.counters["rx_bad_control"] += 1
            self._log.debug("websocket_control_rejected", reason=str(exc), text=text[:200])
            return
        if isinstance(event, MediaStart):
            self._media_start(event, text)
        elif self.media_start is None:
            self.counters["rx_before_start"] += 1
            self._log.debug("websocket_control_before_start", text=text[:200])
        elif isinstance(event, DtmfEnd):
            self.counters["rx_dtmf"] += 1
            self.events.on_caller_dtmf(event.digit)
        elif isinstance(event, MarkProcessed):
            self._mark_processed(event.name)
        elif isinstance(event, MediaXoff):
            self.counters["xoff"] += 1
            self.paused = True
            self._log.info("websocket_media_xoff", queued_ms=self._queued_ms())
        elif isinstance(event, MediaXon):
            self.paused = False
            self._log.info("websocket_media_xon", queued_ms=self._queued_ms())
        elif isinstance(event, ControlError):
            self._log.warning("websocket_asterisk_error", error_text=event.error_text[:200])
        elif isinstance(event, UnknownControl):
            self.counters["rx_unknown_control"] += 1
            self._log.debug("websocket_control_unknown", text=text[:200])
        else:
            self._log.debug("websocket_control", event=repr(event))

    def _media_start(self, start: MediaStart, text: str) -> None:
        if self.media_start is not None:
            self._log.warning("websocket_media_start_again", text=text[:200])
            return
        if start.format != self.wire.name:
            self.fail(f"MEDIA_START format {start.format!r}, asked for {self.wire.name!r}")
            return
        size = start.optimal_frame_size
        if size <= 0 or size % len(self.wire.silence_sample):
            self.fail(f"MEDIA_START optimal_frame_size {size} unusable for {self.wire.name}")
            return
        json = text.lstrip().startswith("{")
        if json != self.json:
            self._log.info("websocket_control_format", asked="json" if self.json else "plain",
                           got="json" if json else "plain")  # fmt: skip
        self.json = json
        self.optimal_frame_size = size
        self.media_start = start

    def binary_received(self, data: bytes) -> None:
        if self.media_start is None or self.ended:
            self.counters["rx_before_start"] += 1
            return
        self.counters["rx_bytes"] += len(data)
        self._rx_quiet = 0
        frame = self._frame
        if len(data) == frame and not self._rx_buf:
            self.rx_frames += 1
            self.events.on_caller_audio(data)
            return
        buf = self._rx_buf
        buf += data
        while len(buf) >= frame:
            self.rx_frames += 1
            self.events.on_caller_audio(bytes(buf[:frame]))
            del buf[:frame]
        if buf and len(data) < self.optimal_frame_size:
            self._rx_pad()  # a short frame ends a stream: nothing follows soon to complete it

    def _rx_pad(self) -> None:
        buf = self._rx_buf
        pad = self._frame - len(buf)
        buf += self._silence[:pad]
        self.counters["rx_padded"] += 1
        self.rx_frames += 1
        self.events.on_caller_audio(bytes(buf))
        buf.clear()

    # ---- the bot's side -----------------------------------------------------------------

    def play(self, audio: bytes) -> None:
        self.outbound.play(audio)

    def mark(self, name: str) -> None:
        self.outbound.mark(name)

    def clear(self) -> None:
        """Barge-in: FLUSH_MEDIA, and every mark sent or queued is reported now."""
        drain_id, self._drain_id = self._drain_id, None
        if drain_id is not None:
            self._ids.processed(drain_id)
        cleared = self._ids.flushed()  # sent, unconfirmed: FLUSH_MEDIA drops them in Asterisk
        self._pending.clear()
        self._clearing = cleared
        try:
            self.outbound.clear()  # hands back the marks still queued here, through _marks_sent
        finally:
            self._clearing = None
        if self.media_start is not None and not self.ended:
            self._command("FLUSH_MEDIA")
            self.counters["flushes"] += 1
        self._tx_buf.clear()
        self._lead_due = True
        if cleared:
            self.events.on_marks_played(cleared)
        if drain_id is not None:
            self._draining = False
            self.events.on_playout_drained()

    def drain(self) -> None:
        if self.media_start is None or self.ended:
            self.events.on_playout_drained()
            return
        self._draining = True
        self.outbound.drain()

    def hangup(self) -> None:
        """Ask Asterisk to hang the channel up (the dialplan mode's end of a call)."""
        if self.media_start is not None:
            self._command("HANGUP")

    def fail(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.events.on_media_failed(reason)

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.events.on_media_ended(reason)

    def stop(self) -> None:
        """Our side ended the call: nothing more is sent or reported."""
        self.ended = True

    # ---- the clock ----------------------------------------------------------------------

    def tick(self, frames: int, skipped: int) -> None:
        if self.media_start is None or self.ended:
            return
        self._ticks += frames + skipped
        if self._rx_buf:
            self._rx_quiet += frames + skipped
            if self._rx_quiet >= CALLER_FILL_AFTER_TICKS:
                self._rx_pad()
        if self._fill is not None:
            self._fill.tick(frames, skipped, self.rx_frames)
        if self._pending:
            self._expire_marks()
        if self.paused:
            self.counters["tx_paused_ticks"] += frames + skipped
            return
        self.outbound.tick(frames, skipped, self._send_frame)

    def _send_frame(self, frame: bytes, marker: bool) -> None:
        if (marker or self._lead_due) and self._lead_frames:
            self._lead_due = False
            for _ in range(self._lead_frames):
                self._send_audio(self._silence)
            self.counters["tx_lead_frames"] += self._lead_frames
        self._lead_due = False
        self._send_audio(frame)

    def _send_audio(self, frame: bytes) -> None:
        size = self.optimal_frame_size
        buf = self._tx_buf
        if not buf and len(frame) == size:
            self._out.append(frame)
            return
        buf += frame
        while len(buf) >= size:
            self._out.append(bytes(buf[:size]))
            del buf[:size]

    def data_to_send(self) -> list[str | bytes]:
        out, self._out = self._out, []
        return out

    # ---- marks --------------------------------------------------------------------------

    def _marks_sent(self, names: list[str]) -> None:
        if self._clearing is not None:
            self._clearing.extend(names)
            return
        for name in names:
            self._send_mark(name)

    def _all_sent(self) -> None:
        self._drain_id = self._send_mark("")

    def _send_mark(self, name: str) -> str:
        mark_id = self._ids.issue(name)
        self._pending.append((mark_id, self._ticks))
        self._command("MARK_MEDIA", {"correlation_id": mark_id})
        return mark_id

    def _mark_processed(self, mark_id: str) -> None:
        if not any(pending == mark_id for pending, _ in self._pending):
            self._log.debug("websocket_mark_unknown", correlation_id=mark_id)
            return
        # Asterisk plays its queue in order: whatever was sent before this one is played too.
        while self._pending:
            pending, _ = self._pending.popleft()
            self.counters["marks_confirmed"] += 1
            self._released(pending)
            if pending == mark_id:
                return

    def _released(self, mark_id: str) -> None:
        name = self._ids.processed(mark_id)
        if mark_id == self._drain_id:
            self._drain_id = None
            if self._draining:
                self._draining = False
                self.events.on_playout_drained()
        elif name is not None:
            self.events.on_marks_played([name])

    def _expire_marks(self) -> None:
        pending = self._pending
        while pending:
            mark_id, sent = pending[0]
            timeout = self._drain_timeout if mark_id == self._drain_id else self._mark_timeout
            if self._ticks - sent < timeout:
                return
            pending.popleft()
            self.counters["marks_timed_out"] += 1
            if not self._marks_unconfirmed_logged:
                self._marks_unconfirmed_logged = True
                self._log.warning("websocket_mark_unconfirmed", correlation_id=mark_id,
                                  waited_ms=timeout * PTIME_MS)  # fmt: skip
            self._released(mark_id)

    # ---- helpers ------------------------------------------------------------------------

    def _command(self, name: str, fields: Mapping[str, str] | None = None) -> None:
        self._out.append(encode_command(name, fields, json=self.json))

    def _queued_ms(self) -> int:
        return self.outbound.playout.queue.queued_frames * PTIME_MS

    def stats(self) -> dict[str, int]:
        return {
            "rx_packets": self.rx_frames,
            "rx_silence_filled": self._fill.filled if self._fill is not None else 0,
            **self.outbound.counters,
            **self.counters,
            "marks_pending": len(self._pending),
        }


# ---- the adapters ---------------------------------------------------------------------------


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


class DialplanWebSocketLeg(WebSocketLeg):
    """The dialplan mode: made by `WebSocketMediaServer` for a connection Asterisk opened,
    already connected. `open()` returns {} and `start()` does nothing; `close()` sends HANGUP
    before closing. It reports to the events the `on_dialplan_call` callback returned."""

    hangup_on_close = True

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


def _peer(conn: Connection) -> str:
    address = conn.remote_address
    return f"{address[0]}:{address[1]}" if address else ""


__all__ = [
    "WIRE_FORMATS",
    "DialplanWebSocketLeg",
    "WebSocketLeg",
    "WebSocketMediaCore",
    "WebSocketMediaServer",
    "WireFormat",
    "media_url",
    "wire_format",
]
