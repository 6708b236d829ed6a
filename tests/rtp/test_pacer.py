from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp.formats import ULAW
from rtp.pacer import DeadlineClock, FrameQueue, Playout
from rtp.sender import RtpSender

FRAME = ULAW.frame_bytes()
SILENCE = ULAW.silence()


def make_queue(max_bytes: int = 64_000) -> FrameQueue:
    return FrameQueue(FRAME, SILENCE, max_bytes)


def audio(size: int) -> bytes:
    """Bytes that differ from their neighbours and from silence, so reordering would show."""
    return bytes(i % 251 for i in range(size))


def drain(queue: FrameQueue) -> list[bytes]:
    frames: list[bytes] = []
    while True:
        frame, _ = queue.pop_frame()
        if frame is None:
            return frames
        frames.append(frame)


def assert_frames_are(frames: list[bytes], expected: bytes) -> None:
    assert all(len(frame) == FRAME for frame in frames)
    assert b"".join(frames) == expected


# ---- FrameQueue: any chunking in, exact frames out ----------------------------------------


@pytest.mark.parametrize(
    "chunk",
    [
        320,  # 40 ms
        760,  # 95 ms
        1100,  # 137.5 ms: frames straddle chunks
        16000,  # 2 s in one message
        1,
        159,
        161,
    ],
)
def test_chunks_of_any_size_come_out_as_exact_frames(chunk: int) -> None:
    stream = audio(16000 + 1100)
    queue = make_queue()
    frames: list[bytes] = []
    for offset in range(0, len(stream), chunk):
        assert queue.push(stream[offset : offset + chunk]) == 0
        frames += drain(queue)
    whole = len(stream) // FRAME * FRAME
    assert_frames_are(frames, stream[:whole])
    assert queue.queued_bytes == len(stream) - whole == 140
    assert queue.flush_tail() == 20
    assert queue.flush_tail() == 0
    (tail,) = drain(queue)
    assert tail == stream[whole:] + SILENCE[:20]
    assert queue.dropped_bytes == 0
    assert queue.queued_bytes == 0


@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 15)), max_size=40))
def test_any_interleaving_of_pushes_and_pops_loses_nothing(
    steps: list[tuple[int, int]],
) -> None:
    stream = audio(sum(size for size, _ in steps))
    queue = make_queue(max_bytes=len(stream) + FRAME)
    frames: list[bytes] = []
    offset = 0
    for size, pops in steps:
        queue.push(stream[offset : offset + size])
        offset += size
        for _ in range(pops):
            frame, marks = queue.pop_frame()
            assert marks == ()
            if frame is not None:
                frames.append(frame)
        assert queue.queued_frames == queue.queued_bytes // FRAME
    frames += drain(queue)
    assert_frames_are(frames, stream[: len(frames) * FRAME])
    assert len(frames) == len(stream) // FRAME
    assert queue.queued_bytes == len(stream) % FRAME


def test_consumed_audio_is_let_go_while_the_queue_never_drains() -> None:
    # The queue stays one byte short of empty for 200 s of audio; the popped head must not
    # pile up in the buffer meanwhile.
    queue = make_queue()
    queue.push(b"\x01")
    for _ in range(10_000):
        queue.push(audio(FRAME))
        frame, _ = queue.pop_frame()
        assert frame is not None
    assert queue.queued_bytes == 1
    assert len(queue._buf) < 4 * FRAME


def test_queued_counts() -> None:
    queue = make_queue()
    assert (queue.queued_bytes, queue.queued_frames) == (0, 0)
    queue.push(audio(500))
    assert (queue.queued_bytes, queue.queued_frames) == (500, 3)
    queue.pop_frame()
    assert (queue.queued_bytes, queue.queued_frames) == (340, 2)


def test_pop_on_empty_or_partial_queue() -> None:
    queue = make_queue()
    assert queue.pop_frame() == (None, ())
    queue.push(audio(159))
    assert queue.pop_frame() == (None, ())
    assert queue.queued_bytes == 159


# ---- FrameQueue: the cap ------------------------------------------------------------------


def test_cap_drops_the_newest_audio_and_counts_it() -> None:
    queue = make_queue(max_bytes=1000)
    stream = audio(1100)
    assert queue.push(stream) == 100
    assert queue.push(b"more") == 4
    assert queue.dropped_bytes == 104
    assert queue.queued_bytes == 1000
    frames = drain(queue)
    assert_frames_are(frames, stream[:960])
    assert queue.push(audio(200)) == 0
    assert queue.queued_bytes == 240


def test_cap_after_flush_tail_overshoot() -> None:
    queue = make_queue(max_bytes=1000)
    queue.push(audio(1000))
    assert queue.flush_tail() == 120
    assert queue.queued_bytes == 1120
    assert queue.push(b"late") == 4
    frames = drain(queue)
    assert_frames_are(frames, audio(1000) + SILENCE[:120])


# ---- FrameQueue: marks --------------------------------------------------------------------


def test_mark_is_released_with_the_frame_that_holds_its_last_byte() -> None:
    queue = make_queue()
    queue.push(audio(320))
    queue.add_mark("first")
    queue.push(audio(200))
    queue.add_mark("second")
    queue.push(audio(120))
    released = [queue.pop_frame()[1] for _ in range(5)]
    # Byte 520 (end of "second") lies in the fourth frame (bytes 480..639).
    assert released == [(), ("first",), (), ("second",), ()]


def test_marks_at_the_same_place_come_out_together_in_order() -> None:
    queue = make_queue()
    queue.push(audio(160))
    queue.add_mark("a")
    queue.add_mark("b")
    frame, marks = queue.pop_frame()
    assert frame is not None
    assert marks == ("a", "b")


def test_mark_on_an_empty_queue_comes_out_of_the_next_pop() -> None:
    queue = make_queue()
    queue.add_mark("now")
    assert queue.pop_frame() == (None, ("now",))
    assert queue.pop_frame() == (None, ())


def test_mark_after_everything_was_popped() -> None:
    queue = make_queue()
    queue.push(audio(320))
    drain(queue)
    queue.add_mark("done")
    assert queue.pop_frame() == (None, ("done",))


def test_mark_behind_a_partial_frame_waits_for_flush_tail() -> None:
    queue = make_queue()
    queue.push(audio(100))
    queue.add_mark("end")
    assert queue.pop_frame() == (None, ())
    queue.flush_tail()
    frame, marks = queue.pop_frame()
    assert frame == audio(100) + SILENCE[:60]
    assert marks == ("end",)


def test_clear_drops_audio_and_releases_every_pending_mark() -> None:
    queue = make_queue()
    queue.push(audio(400))
    queue.add_mark("a")
    queue.push(audio(400))
    queue.add_mark("b")
    frame, marks = queue.pop_frame()
    assert frame is not None
    assert marks == ()
    assert queue.clear() == ["a", "b"]
    assert queue.queued_bytes == 0
    assert queue.pop_frame() == (None, ())
    assert queue.clear() == []
    # Positions stay consistent after a clear.
    queue.push(audio(160))
    queue.add_mark("c")
    assert queue.pop_frame() == (audio(160), ("c",))


@given(st.lists(st.integers(0, 700), min_size=1, max_size=20))
def test_every_mark_comes_out_exactly_when_its_audio_has_been_popped(sizes: list[int]) -> None:
    queue = make_queue(max_bytes=sum(sizes) + FRAME)
    for index, size in enumerate(sizes):
        queue.push(audio(size))
        queue.add_mark(str(index))
    queue.flush_tail()
    popped = 0
    seen: list[str] = []
    while True:
        frame, marks = queue.pop_frame()
        popped += 0 if frame is None else len(frame)
        seen += marks
        # A mark is out once the bytes before it are out, and not a frame earlier.
        ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        assert seen == [str(i) for i, end in enumerate(ends) if end <= popped]
        if frame is None:
            break
    assert seen == [str(i) for i in range(len(sizes))]


def test_construction_checks() -> None:
    with pytest.raises(ValueError):
        FrameQueue(0, b"", 1000)
    with pytest.raises(ValueError):
        FrameQueue(FRAME, SILENCE[:-1], 1000)
    with pytest.raises(ValueError):
        FrameQueue(FRAME, SILENCE, FRAME - 1)


def test_repr() -> None:
    queue = make_queue()
    queue.push(audio(200))
    queue.add_mark("m")
    assert repr(queue) == "FrameQueue(200 bytes queued, 1 marks, dropped=0)"


# ---- DeadlineClock ------------------------------------------------------------------------


def test_first_tick_is_due_at_start() -> None:
    clock = DeadlineClock(0.02, start=100.0)
    assert clock.next_deadline == 100.0
    assert clock.due(99.999) == 0
    assert clock.due(100.0) == 1
    assert clock.next_deadline == pytest.approx(100.02)
    assert clock.due(100.0199) == 0
    assert clock.due(100.02) == 1


def test_one_hour_with_a_jittery_timer_has_no_drift() -> None:
    rng = random.Random(20)
    start = 1_000.0
    clock = DeadlineClock(0.02, start)
    frames = 0
    wakeups = 0
    while clock.next_deadline < start + 3600:
        # The timer is armed at the deadline and fires up to 2 ms early or 18 ms late.
        now = clock.next_deadline + rng.uniform(-0.002, 0.018)
        frames += clock.due(now)
        wakeups += 1
    frames += clock.due(start + 3600 - 1e-9)
    assert abs(frames - 180_000) <= 1
    assert clock.skipped_total == 0
    assert wakeups > frames  # the early wakeups really happened and sent nothing


def test_one_hour_polled_by_a_slow_fixed_timer_has_no_drift() -> None:
    # A timer that re-arms itself at now + 20.1 ms would send 179 104 frames in an hour.
    start = 5.0
    clock = DeadlineClock(0.02, start)
    frames = 0
    counts = set()
    for tick in range(1, 179_105):
        due = clock.due(start + tick * 0.0201)
        counts.add(due)
        frames += due
    assert counts == {1, 2}
    assert abs(frames - 180_000) <= 1
    assert clock.skipped_total == 0


def test_a_100_ms_stall_sends_at_most_max_burst_and_reports_the_skipped_ticks() -> None:
    clock = DeadlineClock(0.02, start=0.0)
    for k in range(10):
        assert clock.due(k * 0.02 + 0.001) == 1
    # Tick 9 was sent at 0.181; the loop wakes 100 ms later: ticks 10..14 are due.
    assert clock.due(0.281) == 2
    assert clock.skipped == 3
    assert clock.skipped_total == 3
    assert clock.next_deadline == pytest.approx(0.30)
    assert clock.due(0.30) == 1
    assert clock.skipped == 0
    assert clock.skipped_total == 3


def test_one_frame_late_is_caught_up_without_skipping() -> None:
    clock = DeadlineClock(0.02, start=0.0)
    assert clock.due(0.0) == 1
    assert clock.due(0.041) == 2
    assert clock.skipped == 0


def test_max_burst_one() -> None:
    clock = DeadlineClock(0.02, start=0.0, max_burst=1)
    assert clock.due(0.05) == 1
    assert clock.skipped == 2
    assert clock.next_deadline == pytest.approx(0.06)


@given(
    st.floats(0.001, 1.0),
    st.floats(-1e6, 1e6),
    st.integers(1, 5),
    st.lists(st.floats(0.0, 0.5), max_size=60),
)
def test_every_tick_is_sent_or_skipped_exactly_once(
    period: float, start: float, max_burst: int, gaps: list[float]
) -> None:
    clock = DeadlineClock(period, start, max_burst)
    now = start
    sent = 0
    for gap in gaps:
        now += gap
        due = clock.due(now)
        assert 0 <= due <= max_burst
        assert clock.skipped == 0 or due == max_burst
        sent += due
        ticks = round((clock.next_deadline - start) / period)
        assert clock.next_deadline > now
        assert ticks == 0 or start + (ticks - 1) * period <= now
    ticks = round((clock.next_deadline - start) / period)
    assert sent + clock.skipped_total == ticks


@given(st.floats(0.001, 1.0), st.floats(-1e6, 1e6), st.integers(1, 2000))
def test_a_timer_armed_at_next_deadline_always_finds_a_tick(
    period: float, start: float, steps: int
) -> None:
    clock = DeadlineClock(period, start, max_burst=steps + 1)
    clock.due(start + (steps - 1) * period)
    deadline = clock.next_deadline
    assert clock.due(deadline) >= 1


def test_clock_construction_checks() -> None:
    with pytest.raises(ValueError):
        DeadlineClock(0.0, 0.0)
    with pytest.raises(ValueError):
        DeadlineClock(0.02, 0.0, max_burst=0)


# ---- Playout: the reserve at the start of a talkspurt -------------------------------------


def make_playout(reserve_frames: int = 2) -> Playout:
    return Playout(make_queue(), reserve_frames)


def tick_frames(playout: Playout, ticks: int) -> list[bytes | None]:
    return [playout.next_frame()[0] for _ in range(ticks)]


def test_a_talkspurt_is_held_for_the_reserve_then_plays_a_frame_per_tick() -> None:
    playout = make_playout()
    assert not playout.playing
    playout.push(audio(480))
    assert (playout.playing, playout.holding) == (True, True)
    assert tick_frames(playout, 2) == [None, None]
    assert tick_frames(playout, 4) == [
        audio(480)[:160],
        audio(480)[160:320],
        audio(480)[320:],
        None,
    ]
    assert (playout.playing, playout.holding) == (False, False)


def test_reserve_zero_never_holds() -> None:
    playout = make_playout(0)
    playout.push(audio(160))
    assert not playout.holding
    assert tick_frames(playout, 2) == [audio(160), None]


def test_every_talkspurt_gets_its_own_reserve_and_nothing_in_between_is_held() -> None:
    playout = make_playout(1)
    playout.push(audio(160))
    assert tick_frames(playout, 1) == [None]
    playout.push(audio(160))
    assert tick_frames(playout, 1) == [audio(160)]
    playout.push(audio(160))  # mid-talkspurt: straight on
    assert tick_frames(playout, 2) == [audio(160), audio(160)]
    assert tick_frames(playout, 1) == [None]  # ran dry
    playout.push(audio(160))
    assert tick_frames(playout, 2) == [None, audio(160)]


def test_a_proven_lead_ends_the_hold() -> None:
    playout = make_playout(2)
    for _ in range(4):
        playout.push(audio(160))
    # Four frames at the first tick: at most two explained by real time (one frame elapsed,
    # one message), so the bot is two frames, a full reserve, ahead.
    assert tick_frames(playout, 1) == [audio(160)]


def test_one_big_message_proves_no_lead() -> None:
    playout = make_playout(2)
    playout.push(audio(16000))
    assert tick_frames(playout, 3) == [None, None, audio(160)]


def test_skipped_frame_times_count_towards_the_hold() -> None:
    playout = make_playout(3)
    playout.push(audio(320))
    playout.skip(2)
    assert tick_frames(playout, 2) == [None, audio(320)[:160]]
    playout.skip(5)  # not holding: nothing to count
    assert tick_frames(playout, 1) == [audio(320)[160:]]


def test_marks_come_out_during_the_hold_once_their_audio_is_out() -> None:
    playout = make_playout(2)
    playout.queue.add_mark("before")
    playout.push(audio(160))
    playout.queue.add_mark("after")
    assert playout.next_frame() == (None, ("before",))
    assert playout.next_frame() == (None, ())
    assert playout.next_frame() == (audio(160), ("after",))


def test_flush_ends_the_hold_and_pads_the_tail() -> None:
    playout = make_playout(2)
    playout.push(audio(200))
    assert playout.flush() == 120
    assert not playout.holding
    assert tick_frames(playout, 3) == [audio(160), audio(200)[160:] + SILENCE[:120], None]


def test_clear_ends_the_talkspurt_and_returns_the_marks() -> None:
    playout = make_playout(2)
    playout.push(audio(400))
    playout.queue.add_mark("m")
    playout.next_frame()
    assert playout.clear() == ["m"]
    assert (playout.playing, playout.holding, playout.queue.queued_bytes) == (False, False, 0)
    playout.push(audio(160))
    assert playout.holding


def test_playout_checks_and_repr() -> None:
    with pytest.raises(ValueError):
        make_playout(-1)
    playout = make_playout(2)
    assert repr(playout).startswith("Playout(idle, reserve=2 frames, FrameQueue(0 bytes")
    playout.push(audio(10))
    assert repr(playout).startswith("Playout(holding,")


# ---- pacer + playout + sender in (simulated) real time ------------------------------------

# Bot audio as a function of its byte position; 251 is prime, so a frame cut in the wrong
# place never matches, and 0xff (silence) never occurs.
_PATTERN = bytes(i % 251 for i in range(251 * 65))


def bot_audio(position: int, size: int) -> bytes:
    assert size <= len(_PATTERN) - 251
    start = position % 251
    return _PATTERN[start : start + size]


class RealTimeRun:
    """A bot sending messages at exactly real time, a jittery timer, and what went out."""

    def __init__(self, reserve_frames: int = 2, max_queue_ms: int = 2000) -> None:
        self.start = 1_000.0
        self.clock = DeadlineClock(0.02, self.start)
        queue = FrameQueue(FRAME, SILENCE, max_bytes=8 * max_queue_ms)
        self.playout = Playout(queue, reserve_frames)
        self.sender = RtpSender(ULAW, ssrc=7, sequence_number=65_000, timestamp=0xFFFF_0000)
        self.first_timestamp = self.sender.timestamp
        self.sent_audio = 0  # bytes of bot audio sent so far
        self.speaking = False
        self.frames = 0
        self.silence_since_speech = 0
        self.silent_frames_in_speech = 0

    def wake(self, now: float) -> None:
        frames = self.clock.due(now)
        self.sender.skip(self.clock.skipped)
        self.playout.skip(self.clock.skipped)
        for _ in range(frames):
            frame, _marks = self.playout.next_frame()
            if frame is None:
                self.silence_since_speech += self.speaking
                frame = SILENCE
            else:
                assert frame == bot_audio(self.sent_audio, FRAME), self.sent_audio
                self.sent_audio += FRAME
                self.speaking = True
                # Silence between two frames of bot audio: a gap in its speech.
                self.silent_frames_in_speech += self.silence_since_speech
                self.silence_since_speech = 0
            packet = self.sender.packet(frame)
            assert len(packet) == 12 + FRAME
            self.frames += 1
        # The next packet's timestamp is media time on the deadline grid, never behind now
        # and at most one frame ahead: 8000 x elapsed seconds, within a frame.
        media_time = ((self.sender.timestamp - self.first_timestamp) & 0xFFFF_FFFF) / 8000
        assert 0 < media_time - (now - self.start) <= 0.02 + 1e-9


def run_real_time(run: RealTimeRun, sizes_ms: list[float], seconds: float, rng: random.Random,
                  stalls: int = 0) -> int:  # fmt: skip
    """Feed messages of `sizes_ms` in turn, each at its media start time, for `seconds`;
    wake the timer at each deadline a little early or late, with a few long stalls."""
    stall_at = set(rng.sample(range(int(seconds * 50)), stalls))
    message_time, position, index, wakeups = 0.0, 0, 0, 0
    while run.clock.next_deadline < run.start + seconds:
        lateness = rng.uniform(-0.002, 0.018)
        if wakeups in stall_at:
            lateness = rng.uniform(0.05, 0.2)
        now = run.clock.next_deadline + lateness
        while run.start + message_time <= now and message_time < seconds:
            size = round(sizes_ms[index % len(sizes_ms)] * 8)
            run.playout.push(bot_audio(position, size))
            position += size
            message_time += sizes_ms[index % len(sizes_ms)] / 1000
            index += 1
        run.wake(now)
        wakeups += 1
    return position


def test_one_hour_through_pacer_playout_and_sender_keeps_rtp_time_and_every_byte() -> None:
    rng = random.Random(3600)
    run = RealTimeRun()
    queued = run_real_time(run, [40, 95, 137.5], 3600, rng, stalls=5)
    assert run.clock.skipped_total > 0  # the stalls really skipped frame times
    assert run.silent_frames_in_speech == 0
    assert run.playout.queue.dropped_bytes == 0
    # Everything the bot sent went out, in exact frames, but for what is still queued.
    assert run.sent_audio + run.playout.queue.queued_bytes == queued
    assert run.frames + run.clock.skipped_total == round(
        (run.clock.next_deadline - run.start) / 0.02
    )


@pytest.mark.parametrize("sizes_ms", [[40], [95], [137.5], [20, 137.5, 95, 40]])
def test_real_time_messages_of_any_size_come_out_as_even_frames(sizes_ms: list[float]) -> None:
    run = RealTimeRun()
    queued = run_real_time(run, sizes_ms, 20, random.Random(len(sizes_ms)))
    assert run.silent_frames_in_speech == 0
    assert queued - run.sent_audio == run.playout.queue.queued_bytes < 2 * 1100 + FRAME


def test_a_single_two_second_message_comes_out_as_even_frames() -> None:
    run = RealTimeRun()
    run.playout.push(bot_audio(0, 16000))
    rng = random.Random(2)
    while run.clock.next_deadline < run.start + 2.2:
        run.wake(run.clock.next_deadline + rng.uniform(-0.002, 0.018))
    assert run.sent_audio == 16000
    assert run.silent_frames_in_speech == 0
