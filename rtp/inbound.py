"""Bookkeeping for the RTP stream Asterisk sends us: what to keep, and what went missing.

Follows RFC 3550 appendix A.1 in spirit. A packet is kept unless it is a duplicate or more
than `MAX_MISORDER` behind the highest sequence number seen. A packet that fills a gap is
`late` and un-counts one loss. An implausible jump (too far behind, or more than
`MAX_DROPOUT` ahead) is dropped once, and if the very next packet continues from it the
sender is taken to have restarted its sequence. A new SSRC starts the tracking over: Asterisk
changes SSRC when the channel behind the bridge changes (a masquerade, a transfer).
"""

from __future__ import annotations

from dataclasses import dataclass

from rtp.seq import uint16_add, uint16_diff

MAX_MISORDER = 100
# 60 s of 20 ms packets: more than that ahead is a restart, not a loss.
MAX_DROPOUT = 3000

# Bit i of the window is set when highest - i has been received.
_WINDOW_MASK = (1 << (MAX_MISORDER + 1)) - 1


@dataclass(frozen=True, slots=True)
class InboundStats:
    received: int
    lost: int
    duplicates: int
    late: int
    too_old: int
    ssrc_changes: int
    restarts: int


class SequenceTracker:
    __slots__ = (
        "_bad_sequence",
        "_span",
        "_window",
        "duplicates",
        "highest",
        "late",
        "lost",
        "received",
        "restarts",
        "ssrc",
        "ssrc_changes",
        "too_old",
    )

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.highest = 0
        self._window = 0
        # How many numbers up to `highest` have gone by since the last restart: a hole older
        # than that was never counted as lost.
        self._span = 0
        self._bad_sequence: int | None = None
        self.received = 0  # packets kept
        self.lost = 0  # sequence numbers skipped and not (yet) filled by a late packet
        self.duplicates = 0
        self.late = 0  # kept, but arrived after a higher sequence number
        self.too_old = 0  # dropped: behind the window, or an implausible jump
        self.ssrc_changes = 0  # not counting the first SSRC
        self.restarts = 0  # same SSRC, sequence numbers started over

    def accept(self, sequence_number: int, ssrc: int) -> bool:
        """Record one arriving packet; False means drop it (duplicate or too old)."""
        if ssrc != self.ssrc:
            if self.ssrc is not None:
                self.ssrc_changes += 1
            self.ssrc = ssrc
            return self._restart(sequence_number)

        distance = uint16_diff(sequence_number, self.highest)
        if 0 < distance <= MAX_DROPOUT:
            self.lost += distance - 1
            self._window = ((self._window << distance) | 1) & _WINDOW_MASK
            self._span += distance
            self.highest = sequence_number
            self._bad_sequence = None
            self.received += 1
            return True
        if -MAX_MISORDER <= distance <= 0:
            bit = 1 << -distance
            if self._window & bit:
                self.duplicates += 1
                return False
            self._window |= bit
            if -distance < self._span:
                self.lost -= 1
            self.late += 1
            self.received += 1
            return True
        if sequence_number == self._bad_sequence:
            self.restarts += 1
            return self._restart(sequence_number)
        self._bad_sequence = uint16_add(sequence_number, 1)
        self.too_old += 1
        return False

    def stats(self) -> InboundStats:
        return InboundStats(
            received=self.received,
            lost=self.lost,
            duplicates=self.duplicates,
            late=self.late,
            too_old=self.too_old,
            ssrc_changes=self.ssrc_changes,
            restarts=self.restarts,
        )

    def _restart(self, sequence_number: int) -> bool:
        self.highest = sequence_number
        self._window = 1
        self._span = 1
        self._bad_sequence = None
        self.received += 1
        return True

    def __repr__(self) -> str:
        ssrc = "none" if self.ssrc is None else f"0x{self.ssrc:08x}"
        return f"SequenceTracker(ssrc={ssrc}, highest={self.highest}, {self.stats()})"
