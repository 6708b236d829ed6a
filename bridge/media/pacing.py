"""The pure per-call media core that every paced leg shares: no sockets, no clock.

`Outbound` is the bot's side of a call's media, one 20 ms frame per tick of the shared clock
(`bridge.media.ticker`): the bot's audio when some is queued, after a small reserve at the
start of each talkspurt (`rtp.pacer.Playout`); silence otherwise (a stream Asterisk plays as
it arrives must never stop: AudioSocket's application hangs up after 2 s without traffic);
marks released when the audio queued before them is out; `drain()` reports once all of it is.
The leg says how a frame goes out: `tick(frames, skipped, send)` calls `send(frame, marker)`,
`marker` being True on a talkspurt's first frame (RTP's marker bit).

`CallerFill` is the caller's side: after two ticks without caller audio (Asterisk sends
nothing at all while a caller is silent, asterisk-facts §8) the bot gets silence every tick so
its VAD keeps running.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bridge.media.leg import MediaEvents
from rtp.pacer import FrameQueue, Playout

PTIME_MS = 20
# Caller silence starts after this many ticks in a row without caller audio. Asterisk's packets
# come 13.7-26.4 ms apart (asterisk-facts §9), so a live stream can leave one tick empty, never
# two: the fill begins 40-60 ms after the last packet.
CALLER_FILL_AFTER_TICKS = 2

Send = Callable[[bytes, bool], None]


class Outbound:
    __slots__ = (
        "_draining",
        "_events",
        "_log",
        "_max_queue_ms",
        "_overflowing",
        "_silence",
        "_silence_fill",
        "_talking",
        "counters",
        "playout",
    )

    def __init__(
        self,
        *,
        events: MediaEvents,
        frame_bytes: int,
        silence: bytes,
        max_queue_ms: int = 2000,
        playout_reserve_ms: int = 40,
        silence_fill: bool = True,
        log: Any,
    ) -> None:
        if playout_reserve_ms < 0:
            raise ValueError("playout_reserve_ms must not be negative")
        queue = FrameQueue(
            frame_bytes, silence, max_bytes=max(frame_bytes, frame_bytes * max_queue_ms // 20)
        )
        self.playout = Playout(queue, math.ceil(playout_reserve_ms / PTIME_MS))
        self._events = events
        self._silence = silence
        self._silence_fill = silence_fill
        self._max_queue_ms = max_queue_ms
        self._log = log
        self._draining = False
        self._talking = False
        self._overflowing = False
        self.counters = {
            "tx_packets": 0,
            "tx_silence": 0,
            "tx_overflow_bytes": 0,
            "tx_overflow_bursts": 0,
        }

    @property
    def queued_ms(self) -> int:
        """Bot audio queued and not played out yet, in ms (read at a metrics scrape)."""
        queue = self.playout.queue
        return queue.queued_bytes * PTIME_MS // queue.frame_bytes

    def play(self, audio: bytes) -> None:
        playout = self.playout
        if not playout.playing:
            self._overflowing = False  # a new talkspurt: a new burst may be logged
        dropped = playout.push(audio)
        if dropped:
            self._overflow(dropped)

    def clear(self) -> None:
        self._overflowing = False
        marks = self.playout.clear()
        if marks:
            self._events.on_marks_played(marks)

    def mark(self, name: str) -> None:
        self.playout.queue.add_mark(name)

    def drain(self) -> None:
        self._draining = True
        self.playout.flush()

    def tick(self, frames: int, skipped: int, send: Send) -> None:
        """This tick's `frames` frames out through `send`; `skipped` frame times were lost."""
        playout = self.playout
        if skipped:
            playout.skip(skipped)
        for _ in range(frames):
            frame, marks = playout.next_frame()
            if frame is None and self._draining and not playout.holding:
                if marks:
                    self._events.on_marks_played(list(marks))
                self._draining = False
                self._events.on_playout_drained()
                return
            if frame is None and self._silence_fill:
                frame = self._silence
                self.counters["tx_silence"] += 1
            if frame is not None:
                marker = not self._talking
                self._talking = True
                send(frame, marker)
                self.counters["tx_packets"] += 1
            else:
                self._talking = False
            if marks:
                self._events.on_marks_played(list(marks))

    def _overflow(self, dropped: int) -> None:
        self.counters["tx_overflow_bytes"] += dropped
        if not self._overflowing:
            # Once per burst: a bot far ahead of real time would otherwise log every message.
            self._overflowing = True
            self.counters["tx_overflow_bursts"] += 1
            self._log.warning(
                "bot_audio_overflow", dropped_bytes=dropped, max_queue_ms=self._max_queue_ms
            )


class CallerFill:
    """Silence for the bot while the caller sends nothing.

    The leg passes how many caller frames it has delivered so far, a count it keeps anyway:
    nothing is added to the per-packet path."""

    __slots__ = ("_delivered_seen", "_events", "_quiet_ticks", "_silence", "filled")

    def __init__(self, events: MediaEvents, silence: bytes) -> None:
        self._events = events
        self._silence = silence
        # Ticks in a row without caller audio; starting at the threshold fills from the first
        # tick, since Asterisk sends nothing until the caller makes a sound.
        self._quiet_ticks = CALLER_FILL_AFTER_TICKS - 1
        self._delivered_seen = 0
        self.filled = 0

    def tick(self, frames: int, skipped: int, delivered: int, *, holding: bool = False) -> None:
        """`holding`: a gap is being waited on (the reorder window); it is never filled, the
        held audio comes out when the window closes."""
        if delivered != self._delivered_seen:
            self._delivered_seen = delivered
            self._quiet_ticks = 0
            return
        quiet = self._quiet_ticks = self._quiet_ticks + frames + skipped
        fill = quiet - CALLER_FILL_AFTER_TICKS + 1
        if fill <= 0 or holding:
            return
        fill = frames if fill > frames else fill
        self.filled += fill
        silence, on_caller_audio = self._silence, self._events.on_caller_audio
        for _ in range(fill):
            on_caller_audio(silence)
