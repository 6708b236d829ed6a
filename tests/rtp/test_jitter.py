from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp.jitter import MAX_DROPOUT, MAX_MISORDER, ReorderBuffer, ReorderStats
from rtp.seq import uint16_add
from tests.rtp import load_rtp_records

SSRC = 0x51EB8DC0


def payload(sequence_number: int, ssrc: int = SSRC) -> bytes:
    """A payload that names its packet, so the order of delivery shows."""
    return sequence_number.to_bytes(2, "big") + ssrc.to_bytes(4, "big")


def numbers(payloads: list[bytes] | tuple[bytes, ...]) -> list[int]:
    return [int.from_bytes(p[:2], "big") for p in payloads]


def push(buffer: ReorderBuffer, *sequence_numbers: int, ssrc: int = SSRC) -> list[int]:
    """Push each packet; the numbers delivered, in delivery order."""
    out: list[bytes] = []
    for sequence_number in sequence_numbers:
        data = payload(sequence_number, ssrc)
        if buffer.push(sequence_number, ssrc, data):
            out.append(data)
        else:
            out += buffer.take_ready()
    return numbers(out)


def tick(buffer: ReorderBuffer, frames: int = 1) -> list[int]:
    return numbers(list(buffer.tick(frames)))


def assert_stats(buffer: ReorderBuffer, **expected: int) -> None:
    stats = buffer.stats()
    for name, value in expected.items():
        assert getattr(stats, name) == value, name


# ---- the normal case ----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["basic_ulaw", "slin16", "concurrent", "ws_reconnect"])
def test_recorded_streams_go_straight_through(scenario: str) -> None:
    buffers: dict[str, ReorderBuffer] = {}
    count = 0
    for record in load_rtp_records(scenario):
        if record["dir"] != "in":
            continue
        buffer = buffers.get(record["call"])
        data = bytes.fromhex(record["data_hex"])[12:]
        if buffer is None:
            buffer = buffers[record["call"]] = ReorderBuffer()
            assert not buffer.push(record["sn"], record["ssrc"], data)
            assert buffer.take_ready() == [data]
        else:
            # Every later packet takes the fast path: delivered at once, nothing held.
            assert buffer.push(record["sn"], record["ssrc"], data)
        count += 1
        assert not buffer.holding
    assert count > 170
    assert sum(b.delivered for b in buffers.values()) == count
    for buffer in buffers.values():
        assert_stats(buffer, lost=0, late=0, duplicates=0, reordered=0, jumps=0, ssrc_changes=0)


def test_in_order_across_the_wrap() -> None:
    buffer = ReorderBuffer()
    sequence = [uint16_add(65530, i) for i in range(12)]
    assert push(buffer, *sequence) == sequence
    assert buffer.expected == 6
    assert_stats(buffer, delivered=12, lost=0)


# ---- gaps ---------------------------------------------------------------------------------


def test_a_gap_holds_later_packets_until_the_missing_one_arrives() -> None:
    buffer = ReorderBuffer(window_frames=2)
    assert push(buffer, 1, 2, 4) == [1, 2]
    assert buffer.holding
    assert tick(buffer) == []
    assert push(buffer, 3) == [3, 4]
    assert not buffer.holding
    assert push(buffer, 5) == [5]
    assert_stats(buffer, delivered=5, lost=0, reordered=1, late=0)


def test_a_gap_is_given_up_after_the_window_in_ticks() -> None:
    buffer = ReorderBuffer(window_frames=2)
    assert push(buffer, 1, 2, 4, 5) == [1, 2]
    assert tick(buffer) == []
    assert tick(buffer) == []
    # The third tick after 4 was held: 3 is at least 40 ms late.
    assert tick(buffer) == [4, 5]
    assert_stats(buffer, lost=1, late=0)
    assert push(buffer, 3) == []
    assert push(buffer, 3) == []
    assert_stats(buffer, lost=1, late=1, duplicates=1, delivered=4)


def test_a_stall_can_expire_a_gap_in_one_tick() -> None:
    buffer = ReorderBuffer(window_frames=2)
    push(buffer, 1, 3)
    assert tick(buffer, 3) == [3]
    assert_stats(buffer, lost=1)


def test_a_packet_more_than_a_window_ahead_gives_up_the_gap_at_once() -> None:
    buffer = ReorderBuffer(window_frames=2)
    assert push(buffer, 1, 3, 4) == [1]
    # 5 is three numbers past the hole: 2 would be more than a window late.
    assert push(buffer, 5) == [3, 4, 5]
    assert_stats(buffer, lost=1, reordered=0)


def test_a_big_gap_keeps_the_last_window_of_it_open() -> None:
    buffer = ReorderBuffer(window_frames=2)
    assert push(buffer, 1, 10) == [1]
    # Numbers 2..7 are given up; 8 and 9 could still come within the window.
    assert_stats(buffer, lost=6)
    assert push(buffer, 9) == []
    assert push(buffer, 8) == [8, 9, 10]
    assert_stats(buffer, lost=6, reordered=2)


def test_the_earliest_packet_to_overtake_a_gap_times_it() -> None:
    buffer = ReorderBuffer(window_frames=2)
    push(buffer, 1, 4)
    tick(buffer)
    assert push(buffer, 3) == []  # 2 and 3 missing; 3 arrives late but in time
    tick(buffer)
    # 4 has now been held for three ticks: 2 is given up, 3 and 4 go out.
    assert tick(buffer) == [3, 4]
    assert_stats(buffer, lost=1, reordered=1)


def test_several_gaps_in_the_window() -> None:
    buffer = ReorderBuffer(window_frames=4)
    assert push(buffer, 1, 3, 5) == [1]
    assert push(buffer, 2) == [2, 3]
    assert push(buffer, 4) == [4, 5]
    assert_stats(buffer, lost=0, reordered=2)


def test_window_zero_delivers_everything_at_once() -> None:
    buffer = ReorderBuffer(window_frames=0)
    assert push(buffer, 1, 3, 2, 4) == [1, 3, 4]
    assert not buffer.holding
    assert tick(buffer) == []
    assert_stats(buffer, lost=1, late=1, reordered=0)


def test_duplicates_of_delivered_and_of_held_packets() -> None:
    buffer = ReorderBuffer()
    assert push(buffer, 1, 1, 3, 3) == [1]
    assert push(buffer, 2, 2, 3) == [2, 3]
    assert_stats(buffer, duplicates=4, delivered=3, late=0)


def test_gap_across_the_wrap() -> None:
    buffer = ReorderBuffer(window_frames=3)
    assert push(buffer, 65534, 1, 0) == [65534]
    assert push(buffer, 65535) == [65535, 0, 1]
    assert_stats(buffer, lost=0, reordered=2)


def test_packet_older_than_the_first_is_late() -> None:
    buffer = ReorderBuffer()
    assert push(buffer, 500, 501, 499, 499) == [500, 501]
    assert_stats(buffer, late=1, duplicates=1, lost=0)


def test_history_edge() -> None:
    buffer = ReorderBuffer(window_frames=0)
    push(buffer, 1000, 1000 + MAX_MISORDER + 1)  # next expected: 1000 + MAX_MISORDER + 2
    assert push(buffer, 1002) == []  # exactly MAX_MISORDER behind it: late
    assert push(buffer, 1001) == []  # one more: an implausible jump
    assert_stats(buffer, late=1, jumps=1, duplicates=0, lost=MAX_MISORDER)


def test_flush_gives_up_every_gap() -> None:
    buffer = ReorderBuffer(window_frames=5)
    push(buffer, 1, 3, 6)
    assert numbers(buffer.flush()) == [3, 6]
    assert buffer.flush() == []
    assert_stats(buffer, lost=3)


# ---- starting over ------------------------------------------------------------------------


def test_new_ssrc_starts_over_after_what_the_old_one_held() -> None:
    buffer = ReorderBuffer()
    push(buffer, 10, 11, 13)
    assert push(buffer, 40000, 40001, ssrc=0x1234) == [13, 40000, 40001]
    assert buffer.ssrc == 0x1234
    assert_stats(buffer, delivered=5, lost=1, ssrc_changes=1)
    # Numbers of the new stream that collide with the old one are not duplicates.
    assert push(buffer, 11, 12, ssrc=0x9999) == [11, 12]
    assert_stats(buffer, ssrc_changes=2, duplicates=0, late=0)


def test_same_ssrc_restarting_far_behind_is_followed_after_one_packet() -> None:
    buffer = ReorderBuffer()
    push(buffer, 30000, 30001)
    assert push(buffer, 100, 101, 102) == [101, 102]
    assert_stats(buffer, restarts=1, jumps=1, lost=0, delivered=4)


def test_huge_jump_ahead_is_a_restart_not_a_loss() -> None:
    buffer = ReorderBuffer()
    push(buffer, 0)
    jump = 1 + MAX_DROPOUT + 1
    assert push(buffer, jump, jump + 1) == [jump + 1]
    assert_stats(buffer, restarts=1, lost=0, jumps=1)


def test_largest_plausible_jump_counts_as_loss() -> None:
    buffer = ReorderBuffer(window_frames=0)
    assert push(buffer, 0, 1 + MAX_DROPOUT) == [0, 1 + MAX_DROPOUT]
    assert_stats(buffer, lost=MAX_DROPOUT, restarts=0)


def test_stray_old_packets_do_not_restart() -> None:
    buffer = ReorderBuffer()
    push(buffer, 30000)
    assert push(buffer, 100, 30001, 101) == [30001]
    assert_stats(buffer, restarts=0, jumps=2)


def test_history_stays_small_over_a_long_lossy_call() -> None:
    # An unbounded history would make every shift cost O(call length).
    buffer = ReorderBuffer(window_frames=0)
    delivered = push(buffer, *(i & 0xFFFF for i in range(0, 200_000, 2)))
    assert len(delivered) == 100_000
    assert buffer._history.bit_length() <= MAX_MISORDER
    assert_stats(buffer, lost=99_999)


def test_stats_and_repr() -> None:
    buffer = ReorderBuffer()
    assert repr(buffer).startswith("ReorderBuffer(window=2, ssrc=none, expected=-1, held=0,")
    push(buffer, 7, 9)
    assert buffer.stats() == ReorderStats(
        delivered=1, lost=0, late=0, duplicates=0, reordered=0, jumps=0, ssrc_changes=0, restarts=0
    )
    assert repr(buffer).startswith("ReorderBuffer(window=2, ssrc=0x51eb8dc0, expected=8, held=1,")


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError):
        ReorderBuffer(-1)


# ---- properties ---------------------------------------------------------------------------


@st.composite
def reordered_within(draw: st.DrawFn, window: int) -> list[tuple[int, int]]:
    """(offset, arrival slot) pairs: each packet is overtaken by at most `window` later ones.

    Packet i arrives in slot i + delay, delay in 0..window, ties broken at random; the first
    packet arrives first (the stream starts with whatever comes first).
    """
    count = draw(st.integers(1, 300))
    delays = draw(st.lists(st.integers(0, window), min_size=count, max_size=count))
    ties = draw(st.permutations(range(count)))
    keyed = sorted((i + delays[i], ties[i], i) for i in range(1, count))
    return [(0, 0), *((i, slot) for slot, _, i in keyed)]


@given(st.integers(0, 6).flatmap(lambda w: st.tuples(st.just(w), reordered_within(w))),
       st.integers(0, 0xFFFF), st.booleans())  # fmt: skip
def test_any_reordering_within_the_window_comes_out_whole_and_in_order(
    case: tuple[int, list[tuple[int, int]]], start: int, with_ticks: bool
) -> None:
    window, arrivals = case
    buffer = ReorderBuffer(window)
    out: list[int] = []
    slot = 0
    highest = -1
    overtaken = 0
    for offset, arrival_slot in arrivals:
        while with_ticks and slot < arrival_slot:  # one tick per packet time
            out += tick(buffer)
            slot += 1
        out += push(buffer, uint16_add(start, offset))
        overtaken += offset < highest
        highest = max(highest, offset)
    assert out == [uint16_add(start, i) for i in range(len(arrivals))]
    assert_stats(buffer, lost=0, late=0, duplicates=0, jumps=0, reordered=overtaken)
    assert not buffer.holding


@given(
    st.integers(0, 4),
    st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.integers(1, 4), st.just(0)),
            st.tuples(st.just("near"), st.integers(-120, 120), st.sampled_from([1, 1, 1, 2])),
            st.tuples(st.just("any"), st.integers(0, 0xFFFF), st.sampled_from([1, 2])),
        ),
        max_size=300,
    ),
)
def test_any_input_never_raises_and_never_delivers_a_number_twice(
    window: int, steps: list[tuple[str, int, int]]
) -> None:
    buffer = ReorderBuffer(window)
    base = 1000
    pushes = 0
    last: int | None = None
    epoch = (0, 0)
    for kind, value, ssrc in steps:
        if kind == "tick":
            out = tick(buffer, value)
        else:
            number = uint16_add(base, value) if kind == "near" else value
            base = number if kind == "near" and value > 0 else base
            out = push(buffer, number, ssrc=ssrc)
            pushes += 1
        for index, number in enumerate(out):
            if index == len(out) - 1 and (buffer.restarts, buffer.ssrc_changes) != epoch:
                # A new stream begins with this packet (after what the old one still held):
                # its numbers may repeat the old one's.
                epoch = (buffer.restarts, buffer.ssrc_changes)
                last = None
            # Strictly forward, by less than half the number space: never the same one twice.
            assert last is None or 0 < (number - last) & 0xFFFF < 0x8000
            last = number
        # Nothing waits longer than the window.
        assert all(buffer._ticks - since <= window for _, since in buffer._held.values())
    held = len(buffer._held)
    stats = buffer.stats()
    assert pushes == stats.delivered + held + stats.duplicates + stats.late + stats.jumps


@st.composite
def lossy_stream(draw: st.DrawFn, window: int) -> list[int]:
    """Offsets from a start number, some dropped, some doubled, each copy overtaken by at
    most `window` later numbers; offset 0 arrives first."""
    count = draw(st.integers(1, 300))
    copies = draw(st.lists(st.sampled_from([0, 1, 1, 1, 2]), min_size=count, max_size=count))
    delays = draw(st.lists(st.integers(0, window), min_size=2 * count, max_size=2 * count))
    ties = draw(st.lists(st.integers(0, 1000), min_size=2 * count, max_size=2 * count))
    keyed = sorted(
        (offset + delays[2 * offset + copy], ties[2 * offset + copy], offset)
        for offset in range(1, count)
        for copy in range(copies[offset])
    )
    return [0, *(offset for _, _, offset in keyed)]


@given(st.integers(0, 6).flatmap(lambda w: st.tuples(st.just(w), lossy_stream(w))),
       st.integers(0, 0xFFFF))  # fmt: skip
def test_loss_and_duplicates_are_counted_exactly(case: tuple[int, list[int]], start: int) -> None:
    window, offsets = case
    buffer = ReorderBuffer(window)
    out: list[int] = []
    for offset in offsets:
        out += push(buffer, uint16_add(start, offset))
    out += numbers(buffer.flush())
    arrived = sorted(set(offsets))
    assert out == [uint16_add(start, offset) for offset in arrived]
    assert_stats(
        buffer,
        delivered=len(arrived),
        duplicates=len(offsets) - len(arrived),
        lost=arrived[-1] + 1 - len(arrived),
        late=0,
        jumps=0,
    )
