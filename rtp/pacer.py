"""Outbound pacing, as arithmetic: when frames are due, and which bytes go in each one.

The adapter owns the timer. Each time it fires, with `now` from the loop's monotonic clock:

    frames = clock.due(now)
    sender.skip(clock.skipped)          # media time lost to a stall; skipped ticks come first
    for _ in range(frames):
        frame, marks = playout.next_frame()  # None: nothing to say, send silence or nothing
        ...
    loop.call_at(clock.next_deadline, ...)

Deadlines sit on a fixed grid `start + k * period`, so timer lateness never accumulates into
drift. After a stall the clock sends at most `max_burst` frames at once and skips the rest of
the missed ticks: the queued audio is delayed rather than lost, and the RTP timestamps, which
the skipped ticks still advance, keep tracking real time.

`FrameQueue` turns bot audio of any chunking into exact frames and keeps the marks; `Playout`
decides per tick whether a frame goes out, holding a small reserve at each talkspurt start.
"""

from __future__ import annotations

from collections import deque


class DeadlineClock:
    __slots__ = ("_next_tick", "max_burst", "period", "skipped", "skipped_total", "start")

    def __init__(self, period: float, start: float, max_burst: int = 2) -> None:
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        if max_burst < 1:
            raise ValueError(f"max_burst must be at least 1, got {max_burst}")
        self.period = period
        self.start = start
        self.max_burst = max_burst
        # Tick k is due at start + k * period; tick 0 is due at `start` itself.
        self._next_tick = 0
        # Ticks dropped by the latest `due` call, and by all of them.
        self.skipped = 0
        self.skipped_total = 0

    @property
    def next_deadline(self) -> float:
        return self.start + self._next_tick * self.period

    def due(self, now: float) -> int:
        """Consume the ticks whose deadline is at or before `now`; return how many to send."""
        self.skipped = 0
        if now < self.next_deadline:
            return 0
        # Ticks 0..passed-1 are due. The division can be off by one at an exact deadline, so
        # settle it with the very expression `next_deadline` uses: a timer armed there must
        # always find its tick due, or the adapter would spin re-arming the same instant.
        passed = int((now - self.start) // self.period) + 1
        while self.start + passed * self.period <= now:
            passed += 1
        while passed > self._next_tick + 1 and self.start + (passed - 1) * self.period > now:
            passed -= 1
        frames = passed - self._next_tick
        self._next_tick = passed
        if frames > self.max_burst:
            self.skipped = frames - self.max_burst
            self.skipped_total += self.skipped
            return self.max_burst
        return frames

    def __repr__(self) -> str:
        return (
            f"DeadlineClock(period={self.period}, next={self.next_deadline:.6f}, "
            f"skipped_total={self.skipped_total})"
        )


_NO_MARKS: tuple[str, ...] = ()


class FrameQueue:
    """Bot audio in chunks of any size, out in frames of exactly `frame_bytes`.

    Marks follow Twilio's semantics: `add_mark(name)` tags the current end of the queued audio,
    and `pop_frame()` returns the mark once the frame holding the last byte queued before it
    has been popped (a mark on an empty queue comes out of the very next `pop_frame()`, with or
    without a frame). `clear()` drops the audio and hands back every pending mark at once, as
    a barge-in must. Positions are absolute byte counts, so marks never need rewriting.
    """

    __slots__ = (
        "_buf",
        "_marks",
        "_popped_total",
        "_read",
        "_silence",
        "dropped_bytes",
        "frame_bytes",
        "max_bytes",
    )

    def __init__(self, frame_bytes: int, silence: bytes, max_bytes: int) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        if len(silence) != frame_bytes:
            raise ValueError("silence must be exactly one frame")
        if max_bytes < frame_bytes:
            raise ValueError("max_bytes must hold at least one frame")
        self.frame_bytes = frame_bytes
        self.max_bytes = max_bytes
        self.dropped_bytes = 0
        self._silence = silence
        # Unread audio is _buf[_read:]; the consumed head is cut off only now and then.
        self._buf = bytearray()
        self._read = 0
        self._popped_total = 0
        self._marks: deque[tuple[int, str]] = deque()

    @property
    def queued_bytes(self) -> int:
        return len(self._buf) - self._read

    @property
    def queued_frames(self) -> int:
        return self.queued_bytes // self.frame_bytes

    def push(self, data: bytes) -> int:
        """Queue `data`; return how many of its bytes did not fit under `max_bytes`."""
        # flush_tail may overshoot the cap by part of a frame, so room can be negative.
        room = max(self.max_bytes - self.queued_bytes, 0)
        if len(data) <= room:
            self._buf += data
            return 0
        # The newest audio goes: what is queued is already promised to the caller's ear.
        self._buf += memoryview(data)[:room]
        dropped = len(data) - room
        self.dropped_bytes += dropped
        return dropped

    def add_mark(self, name: str) -> None:
        self._marks.append((self._popped_total + self.queued_bytes, name))

    def pop_frame(self) -> tuple[bytes | None, tuple[str, ...]]:
        """Next whole frame (None if less than one is queued) and the marks it released."""
        buf = self._buf
        start = self._read
        end = start + self.frame_bytes
        frame: bytes | None = None
        if end <= len(buf):
            frame = bytes(buf[start:end])
            self._popped_total += self.frame_bytes
            if end == len(buf):
                buf.clear()
                self._read = 0
            elif end > len(buf) // 2:
                # Cutting once the dead head outweighs the live tail keeps it amortised O(1).
                del buf[:end]
                self._read = 0
            else:
                self._read = end
        if not self._marks:
            return frame, _NO_MARKS
        return frame, self._release_marks()

    def pop_marks(self) -> tuple[str, ...]:
        """The marks whose audio is all out already, without taking a frame."""
        if not self._marks:
            return _NO_MARKS
        return self._release_marks()

    def flush_tail(self) -> int:
        """Pad a trailing partial frame with silence so it can go out; return the pad size."""
        partial = self.queued_bytes % self.frame_bytes
        if not partial:
            return 0
        pad = self.frame_bytes - partial
        self._buf += self._silence[:pad]
        return pad

    def clear(self) -> list[str]:
        """Drop all queued audio; return every pending mark, oldest first."""
        self._popped_total += self.queued_bytes
        self._buf.clear()
        self._read = 0
        released = [name for _, name in self._marks]
        self._marks.clear()
        return released

    def _release_marks(self) -> tuple[str, ...]:
        marks = self._marks
        popped = self._popped_total
        if marks[0][0] > popped:
            return _NO_MARKS
        released = []
        while marks and marks[0][0] <= popped:
            released.append(marks.popleft()[1])
        return tuple(released)

    def __repr__(self) -> str:
        return (
            f"FrameQueue({self.queued_bytes} bytes queued, {len(self._marks)} marks, "
            f"dropped={self.dropped_bytes})"
        )


class Playout:
    """A FrameQueue played one frame per tick, with a reserve at the start of each talkspurt.

    A bot that sends at exactly real time leaves the queue nearly empty between its messages:
    a message a little late, or a frame that straddles two messages, would put silence inside
    its speech. So when a talkspurt starts (audio arrives while nothing is playing) the first
    frame waits `reserve_frames` ticks; every later message may then be up to that much late.

    Only a sender that has shown it is ahead of real time by a full reserve starts sooner (a
    TTS burst). How much queued audio alone proves nothing: a real-time sender's message
    holds its whole length the moment it arrives, and the queue is as good as empty again
    just before the next one. So the lead is counted without the largest message: after `n`
    ticks a real-time sender can have sent at most `n` frames plus one message.

    Marks whose audio is all out are still released while holding. `flush()` (drain) ends any
    hold so everything queued plays out; `clear()` (barge-in) ends the talkspurt.
    """

    __slots__ = (
        "_arrived",
        "_held_ticks",
        "_holding",
        "_largest",
        "_reserve_bytes",
        "playing",
        "queue",
        "reserve_frames",
    )

    def __init__(self, queue: FrameQueue, reserve_frames: int) -> None:
        if reserve_frames < 0:
            raise ValueError(f"reserve_frames must not be negative, got {reserve_frames}")
        self.queue = queue
        self.reserve_frames = reserve_frames
        self._reserve_bytes = reserve_frames * queue.frame_bytes
        # In a talkspurt: from the audio that started it until the queue runs dry.
        self.playing = False
        self._holding = False
        # Frame times held so far, and what the bot sent meanwhile (see `_ahead`).
        self._held_ticks = 0
        self._arrived = 0
        self._largest = 0

    @property
    def holding(self) -> bool:
        return self._holding

    def push(self, data: bytes) -> int:
        """Queue bot audio; return how many bytes did not fit (see `FrameQueue.push`)."""
        size = len(data)
        if not self.playing and size:
            self.playing = True
            self._holding = self.reserve_frames > 0
            self._held_ticks = self._arrived = self._largest = 0
        if self._holding:
            self._arrived += size
            self._largest = max(self._largest, size)
        return self.queue.push(data)

    def skip(self, frames: int) -> None:
        """Frame times lost to a stall count towards the hold: it is a matter of time."""
        if self._holding:
            self._held_ticks += frames

    def next_frame(self) -> tuple[bytes | None, tuple[str, ...]]:
        """This tick's frame (None: nothing to say) and the marks it released."""
        queue = self.queue
        if self._holding:
            if self._held_ticks < self.reserve_frames and not self._ahead():
                self._held_ticks += 1
                return None, queue.pop_marks()
            self._holding = False
        frame, marks = queue.pop_frame()
        # Ran dry: the next audio starts a new talkspurt, with a new reserve.
        self.playing = frame is not None
        return frame, marks

    def flush(self) -> int:
        """Play out everything: pad the tail to a frame and stop holding. Returns the pad."""
        self._holding = False
        return self.queue.flush_tail()

    def clear(self) -> list[str]:
        """Drop everything queued now; return every pending mark."""
        self.playing = False
        self._holding = False
        return self.queue.clear()

    def _ahead(self) -> bool:
        # This is tick `_held_ticks + 1` since the first audio, so at most that many frame
        # times have passed; a real-time sender's lead can't exceed its largest message.
        elapsed = (self._held_ticks + 1) * self.queue.frame_bytes
        return self._arrived - self._largest - elapsed >= self._reserve_bytes

    def __repr__(self) -> str:
        state = "holding" if self._holding else "playing" if self.playing else "idle"
        return f"Playout({state}, reserve={self.reserve_frames} frames, {self.queue!r})"
