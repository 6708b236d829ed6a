"""The chan_websocket media core (Asterisk's ExternalMedia `transport=websocket`): one call's
media session without the socket, messages in, messages out; and the wire formats
(`WIRE_FORMATS`, `wire_format`). The `websockets` shell around it is `bridge.media.websocket`.

On every media socket Asterisk's first message is MEDIA_START (format, optimal_frame_size,
ptime), then binary audio both ways and short text control messages
(`bridge.media.websocket_control`), plain text unless JSON was asked for (ExternalMedia
`transport_data=f(json)`, Asterisk >= 20.18 / 22.8 / 23.2; the dial string's `f(json)`). We
answer in the format MEDIA_START came in, whatever was asked.

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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.errors import WebSocketControlError
from bridge.media.leg import MediaEvents, MediaFormats
from bridge.media.pacing import CALLER_FILL_AFTER_TICKS, PTIME_MS, CallerFill, Outbound
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
            "tx_queued_ms": self.outbound.queued_ms,
            **self.counters,
            "marks_pending": len(self._pending),
        }


__all__ = ["WIRE_FORMATS", "WebSocketMediaCore", "WireFormat", "wire_format"]
