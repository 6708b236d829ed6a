"""The AudioSocket media core: one identified connection's media, without the socket and
without the clock (the adapter, `bridge.media.audiosocket`, owns both).

Asterisk's frames in (audio to the call in the leg's declared format, DTMF digits; a 0x00 /
0xFF / second 0x01, which Asterisk never sends, ends or fails the call), and on every tick of
the shared clock exactly one 20 ms frame out: the bot's audio or silence
(`bridge.media.pacing.Outbound`). Asterisk plays AudioSocket audio as it arrives, so the
clock's pacing is the playout; the silence is what keeps the `AudioSocket()` application from
hanging up after 2 s without traffic.

The rate on the wire is the one Asterisk sends (0x10 slin, 0x12 slin16, any of 0x10-0x18);
before Asterisk's first audio frame (a silent caller sends none) it is the leg's declared one.
Where they differ the core converts both ways (`rtp.transcode.Transcoder`), so the call always
sees its declared `formats`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bridge.media.audiosocket_codec import (
    Frame,
    Kind,
    digit_of,
    encode_audio,
    kind_for_rate,
    sample_rate_of,
)
from bridge.media.leg import MediaEvents, MediaFormats
from bridge.media.pacing import PTIME_MS, CallerFill, Outbound
from rtp.transcode import AudioSpec, Transcoder

Write = Callable[[bytes], None]

# 0xFF codes Asterisk defines (CyCore's AudioSocket protocol, res_audiosocket).
_ERROR_CODES = {0x00: "none", 0x01: "hangup", 0x02: "frame forwarding", 0x04: "memory"}


class AudioSocketCore:
    """One identified connection's media, without the socket and without the clock."""

    def __init__(
        self,
        *,
        events: MediaEvents,
        sample_rate: int = 8000,
        max_queue_ms: int = 2000,
        silence_fill: bool = True,
        caller_silence_fill: bool = True,
        playout_reserve_ms: int = 40,
        log: Any,
    ) -> None:
        spec = slin_spec(sample_rate)
        self.formats = MediaFormats(spec, spec)
        self._events = events
        self._log = log
        silence = bytes(spec.frame_bytes())
        self.outbound = Outbound(
            events=events,
            frame_bytes=len(silence),
            silence=silence,
            max_queue_ms=max_queue_ms,
            playout_reserve_ms=playout_reserve_ms,
            silence_fill=silence_fill,
            log=log,
        )
        self._fill = CallerFill(events, silence) if caller_silence_fill else None
        self.wire_kind = kind_for_rate(sample_rate)
        self._to_call: Transcoder | None = None
        self._to_asterisk: Transcoder | None = None
        self._delivered = 0
        self.finished: str | None = None  # why the stream ended, once it has
        self.counters = {"rx_dtmf": 0, "rx_rate_changes": 0}

    @property
    def wire_rate(self) -> int:
        return sample_rate_of(self.wire_kind)

    # ---- inbound ------------------------------------------------------------------------

    def receive(self, frames: Iterable[Frame]) -> None:
        on_caller_audio = self._events.on_caller_audio
        for frame in frames:
            if self.finished is not None:
                return
            kind = frame.kind
            if 0x10 <= kind <= 0x18:  # is_audio, inline: the per-frame path
                if kind != self.wire_kind:
                    self._rate_changed(kind)
                    if self.finished is not None:
                        return
                payload = frame.payload
                if self._to_call is not None:
                    payload = self._to_call.convert(payload)
                    if not payload:
                        continue
                self._delivered += 1
                on_caller_audio(payload)
            elif kind is Kind.DTMF:
                self.counters["rx_dtmf"] += 1
                self._events.on_caller_dtmf(digit_of(frame))
            elif kind is Kind.HANGUP:
                self.end("Asterisk sent an AudioSocket hang-up frame")
            elif kind is Kind.ERROR:
                self.fail(_error_reason(frame.payload))
            else:
                self.fail("Asterisk sent a second AudioSocket UUID frame")

    def _rate_changed(self, kind: Kind) -> None:
        declared = self.formats.rx
        rate = sample_rate_of(kind)
        self.counters["rx_rate_changes"] += 1
        if rate == declared.sample_rate:
            self._to_call = self._to_asterisk = None
        else:
            try:
                wire = AudioSpec("pcm16le", rate)
            except ValueError:
                self.fail(f"Asterisk sends AudioSocket audio at {rate} Hz: cannot convert it")
                return
            self._to_call = Transcoder(wire, declared)
            self._to_asterisk = Transcoder(declared, wire)
        if self.counters["rx_rate_changes"] == 1:  # once per call: normally the only change
            self._log.info("audiosocket_rate", asterisk_rate=rate,
                           declared_rate=declared.sample_rate,
                           converted=self._to_call is not None)  # fmt: skip
        self.wire_kind = kind

    # ---- outbound (one call per tick of the shared clock) -------------------------------

    def tick(self, frames: int, skipped: int, write: Write) -> None:
        if self.finished is not None:
            return
        if self._fill is not None:
            self._fill.tick(frames, skipped, self._delivered)
        kind, convert = self.wire_kind, self._to_asterisk

        def send(frame: bytes, _marker: bool) -> None:
            if convert is not None:
                frame = convert.convert(frame)
                if not frame:
                    return
            write(encode_audio(kind, frame))

        self.outbound.tick(frames, skipped, send)

    def clear(self) -> None:
        self.outbound.clear()
        if self._to_asterisk is not None:
            self._to_asterisk.reset()

    def wire_bytes(self, ms: int) -> int:
        """What `ms` of audio takes on the wire at the current rate, headers included."""
        return ms // PTIME_MS * (3 + self.wire_rate * PTIME_MS // 1000 * 2)

    # ---- the end, reported once -----------------------------------------------------------

    def end(self, reason: str) -> None:
        if self.finished is None:
            self.finished = reason
            self._events.on_media_ended(reason)

    def fail(self, reason: str) -> None:
        if self.finished is None:
            self.finished = reason
            self._events.on_media_failed(reason)

    def stop(self) -> None:
        """Our own close: nothing more is reported."""
        if self.finished is None:
            self.finished = "closed"

    def stats(self) -> dict[str, int]:
        return {
            "rx_frames": self._delivered,
            "rx_silence_filled": self._fill.filled if self._fill is not None else 0,
            **self.counters,
            **self.outbound.counters,
            "tx_queued_ms": self.outbound.queued_ms,
        }


def slin_spec(rate: int) -> AudioSpec:
    """The leg's declared format; ValueError for a rate AudioSocket or the call cannot carry."""
    kind_for_rate(rate)
    return AudioSpec("pcm16le", rate)


def _error_reason(payload: bytes) -> str:
    if not payload:
        return "Asterisk sent an AudioSocket error frame (no code)"
    code = payload[0]
    name = _ERROR_CODES.get(code, "unknown")
    return f"Asterisk sent an AudioSocket error frame (code 0x{code:02x}: {name})"


__all__ = ["AudioSocketCore", "Write", "slin_spec"]
