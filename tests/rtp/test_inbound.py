from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp.inbound import MAX_DROPOUT, MAX_MISORDER, InboundStats, SequenceTracker
from rtp.seq import uint16_add
from tests.rtp import load_rtp_records

SSRC = 0x51EB8DC0


def feed(tracker: SequenceTracker, *sequence_numbers: int, ssrc: int = SSRC) -> list[bool]:
    return [tracker.accept(sequence_number, ssrc) for sequence_number in sequence_numbers]


def assert_stats(tracker: SequenceTracker, **expected: int) -> None:
    stats = tracker.stats()
    for name, value in expected.items():
        assert getattr(stats, name) == value, name


@pytest.mark.parametrize("scenario", ["basic_ulaw", "concurrent", "ws_reconnect"])
def test_recorded_inbound_streams_are_clean(scenario: str) -> None:
    trackers: dict[str, SequenceTracker] = {}
    count = 0
    for record in load_rtp_records(scenario):
        if record["dir"] == "in":
            tracker = trackers.setdefault(record["call"], SequenceTracker())
            assert tracker.accept(record["sn"], record["ssrc"])
            count += 1
    assert count > 170
    assert sum(t.received for t in trackers.values()) == count
    for tracker in trackers.values():
        assert_stats(tracker, lost=0, duplicates=0, late=0, too_old=0, ssrc_changes=0)


def test_in_order_across_the_wrap() -> None:
    tracker = SequenceTracker()
    assert all(feed(tracker, *(uint16_add(65530, i) for i in range(12))))
    assert tracker.highest == 5
    assert_stats(tracker, received=12, lost=0, late=0)


def test_gap_counts_loss_and_a_late_packet_takes_it_back() -> None:
    tracker = SequenceTracker()
    assert feed(tracker, 1, 2, 5) == [True, True, True]
    assert_stats(tracker, received=3, lost=2)
    assert feed(tracker, 3) == [True]
    assert_stats(tracker, received=4, lost=1, late=1)
    assert feed(tracker, 3, 5) == [False, False]
    assert_stats(tracker, received=4, lost=1, late=1, duplicates=2)
    assert tracker.highest == 5


def test_gap_across_the_wrap() -> None:
    tracker = SequenceTracker()
    feed(tracker, 65534, 1)
    assert_stats(tracker, lost=2)
    assert feed(tracker, 65535, 0) == [True, True]
    assert_stats(tracker, lost=0, late=2, received=4)


def test_window_edge() -> None:
    tracker = SequenceTracker()
    feed(tracker, 1000, 1000 + MAX_MISORDER + 1)
    assert tracker.accept(1001, SSRC)  # exactly MAX_MISORDER behind
    assert not tracker.accept(1000, SSRC)  # MAX_MISORDER + 1 behind: too old
    assert_stats(tracker, late=1, too_old=1, duplicates=0, lost=MAX_MISORDER - 1)


def test_packet_older_than_the_first_is_late_but_no_loss() -> None:
    tracker = SequenceTracker()
    assert feed(tracker, 500, 501, 499) == [True, True, True]
    assert_stats(tracker, late=1, lost=0)
    assert not tracker.accept(499, SSRC)
    assert_stats(tracker, duplicates=1)


def test_new_ssrc_starts_over() -> None:
    tracker = SequenceTracker()
    feed(tracker, 10, 11, 12)
    assert feed(tracker, 40000, 40001, ssrc=0x1234) == [True, True]
    assert tracker.ssrc == 0x1234
    assert_stats(tracker, received=5, lost=0, ssrc_changes=1)
    # Sequence numbers of the new stream that collide with the old one are not duplicates.
    assert feed(tracker, 12, 13, ssrc=0x9999) == [True, True]
    assert_stats(tracker, ssrc_changes=2, duplicates=0, lost=0)


def test_same_ssrc_restarting_far_behind_is_followed_after_one_packet() -> None:
    tracker = SequenceTracker()
    feed(tracker, 30000, 30001)
    assert feed(tracker, 100, 101, 102) == [False, True, True]
    assert_stats(tracker, restarts=1, too_old=1, lost=0, received=4)
    assert tracker.highest == 102


def test_huge_jump_ahead_is_a_restart_not_a_loss() -> None:
    tracker = SequenceTracker()
    feed(tracker, 0)
    jump = MAX_DROPOUT + 1
    assert feed(tracker, jump, jump + 1) == [False, True]
    assert_stats(tracker, restarts=1, lost=0, too_old=1)
    assert tracker.highest == jump + 1


def test_largest_plausible_jump_counts_as_loss() -> None:
    tracker = SequenceTracker()
    assert feed(tracker, 0, MAX_DROPOUT) == [True, True]
    assert_stats(tracker, lost=MAX_DROPOUT - 1, restarts=0)


def test_stray_old_packets_do_not_restart() -> None:
    tracker = SequenceTracker()
    feed(tracker, 30000)
    assert feed(tracker, 100, 30001, 101) == [False, True, False]
    assert_stats(tracker, restarts=0, too_old=2)


def test_window_stays_small_over_a_long_call() -> None:
    # An unbounded window would make every shift cost O(call length).
    tracker = SequenceTracker()
    assert all(feed(tracker, *(i & 0xFFFF for i in range(0, 200_000, 2))))
    assert tracker._window.bit_length() <= MAX_MISORDER + 1
    assert_stats(tracker, lost=99_999)


def test_stats_snapshot_and_repr() -> None:
    tracker = SequenceTracker()
    assert repr(tracker).startswith("SequenceTracker(ssrc=none, highest=0,")
    feed(tracker, 7, 9)
    assert tracker.stats() == InboundStats(
        received=2, lost=1, duplicates=0, late=0, too_old=0, ssrc_changes=0, restarts=0
    )
    assert repr(tracker).startswith("SequenceTracker(ssrc=0x51eb8dc0, highest=9,")


@st.composite
def jittery_deliveries(draw: st.DrawFn) -> tuple[int, list[int]]:
    """Offsets from a start number: some dropped, some doubled, each at most 49 places late."""
    count = draw(st.integers(1, 400))
    copies = draw(st.lists(st.sampled_from([0, 1, 1, 1, 2]), min_size=count, max_size=count))
    delays = draw(st.lists(st.integers(0, 49), min_size=2 * count, max_size=2 * count))
    keyed = [(0, 0)] + [
        (offset + delays[2 * offset + copy], offset)
        for offset in range(1, count)
        for copy in range(copies[offset])
    ]
    keyed.sort()
    return draw(st.integers(0, 0xFFFF)), [offset for _, offset in keyed]


@given(jittery_deliveries())
def test_reordered_duplicated_lossy_stream_any_start(case: tuple[int, list[int]]) -> None:
    start, offsets = case
    tracker = SequenceTracker()
    seen: set[int] = set()
    highest = -1
    late = 0
    for offset in offsets:
        fresh = offset not in seen
        assert tracker.accept(uint16_add(start, offset), SSRC) is fresh
        late += fresh and offset < highest
        seen.add(offset)
        highest = max(highest, offset)
    assert tracker.highest == uint16_add(start, highest)
    assert_stats(
        tracker,
        received=len(seen),
        duplicates=len(offsets) - len(seen),
        late=late,
        lost=highest + 1 - len(seen),
        too_old=0,
        restarts=0,
    )
