"""Put the caller's RTP stream back in order, within a small window, driven by ticks.

The packet that is next in sequence is delivered at once: in the normal case the window adds
no latency at all. When a number is missing, the packets after it are held until it arrives
or until the window runs out, and then delivery skips what never came. The window runs out
either way round:

* by count: a packet more than `window_frames` numbers ahead of the gap means the missing
  one is already more than a window late, so it is given up at once;
* by time: a gap is given up once a packet that overtook it has been held for more than
  `window_frames` ticks. Ticks are 20 ms apart but a hold starts anywhere between two of
  them, so the missing packet gets at least a full window, and less than a window and a
  frame.

`window_frames=0` never holds anything: each packet goes out as it comes, and one behind
what was already delivered is dropped as late.

Everything that is not delivered is counted: `lost` (numbers skipped over; a packet that
turns up after that is also `late`), `late` (arrived after delivery passed its number),
`duplicates`, and `jumps` (implausibly far from the stream, RFC 3550 A.1's "bad sequence").
`reordered` counts the packets the window saved: arrived after a higher number, delivered in
order all the same. A new SSRC starts the stream over (Asterisk changes it when the channel
behind the bridge changes), and so does a jump that the very next packet continues from (a
sender that restarted its numbering).

No clock and no timers: the owner calls `tick()` once per frame time and `push()` per packet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rtp.seq import uint16_add, uint16_diff

# Both measured from the next expected number. How far behind it a packet is still told
# apart as late or duplicate:
MAX_MISORDER = 100
# and 60 s of 20 ms packets: further ahead than that is a restart (or garbage), not a loss.
MAX_DROPOUT = 3000

_HISTORY_MASK = (1 << MAX_MISORDER) - 1
_NOTHING: Sequence[bytes] = ()


@dataclass(frozen=True, slots=True)
class ReorderStats:
    delivered: int
    lost: int
    late: int
    duplicates: int
    reordered: int
    jumps: int
    ssrc_changes: int
    restarts: int


class ReorderBuffer:
    __slots__ = (
        "_bad_sequence",
        "_delivered",
        "_held",
        "_history",
        "_in_order",
        "_ticks",
        "duplicates",
        "expected",
        "jumps",
        "late",
        "lost",
        "ready",
        "reordered",
        "restarts",
        "ssrc",
        "ssrc_changes",
        "window_frames",
    )

    def __init__(self, window_frames: int = 2) -> None:
        if window_frames < 0:
            raise ValueError(f"window_frames must not be negative, got {window_frames}")
        self.window_frames = window_frames
        self.ssrc: int | None = None
        # The number to deliver next; -1 matches no packet, so the first one takes the slow path.
        self.expected = -1
        # Delivered payloads waiting to be taken, in order (see `push`).
        self.ready: list[bytes] = []
        # Packets ahead of a gap: number -> (payload, tick count when it arrived).
        self._held: dict[int, tuple[bytes, int]] = {}
        # Bit i set: number expected - 1 - i was delivered (or turned up late), as of the last
        # slow-path step. The fast path only counts into `_in_order`, and `_sync` catches up.
        self._history = 0
        self._in_order = 0
        self._ticks = 0
        self._bad_sequence: int | None = None
        self._delivered = 0
        self.lost = 0
        self.late = 0
        self.duplicates = 0
        self.reordered = 0
        self.jumps = 0
        self.ssrc_changes = 0  # not counting the first SSRC
        self.restarts = 0  # same SSRC, numbering started over

    @property
    def holding(self) -> bool:
        """Packets are waiting for a missing one: more audio is on its way within a window."""
        return bool(self._held)

    @property
    def delivered(self) -> int:
        return self._delivered + self._in_order

    def push(self, sequence_number: int, ssrc: int, payload: bytes) -> bool:
        """Take one packet. True: deliver `payload` now, and nothing else came free.

        False: the packet was held or dropped, or it set packets free; then everything to
        deliver, in order and possibly including `payload`, is in `ready` (see `take_ready`).
        """
        if sequence_number == self.expected and ssrc == self.ssrc and not self._held:
            self.expected = (sequence_number + 1) & 0xFFFF
            self._in_order += 1
            return True
        self._push_slow(sequence_number, ssrc, payload)
        return False

    def take_ready(self) -> list[bytes]:
        ready = self.ready
        self.ready = []
        return ready

    def tick(self, frames: int = 1) -> Sequence[bytes]:
        """`frames` frame times have passed: give up on gaps whose window ran out.

        Returns the payloads that came free, in order.
        """
        self._ticks += frames
        held = self._held
        if not held:
            return _NOTHING
        # A gap is as late as the earliest packet that overtook it.
        expired = [n for n, (_, since) in held.items() if self._ticks - since > self.window_frames]
        if not expired:
            return _NOTHING
        self._sync()
        self._skip_to(max(expired, key=self._distance))
        self._release_run()
        return self.take_ready()

    def flush(self) -> list[bytes]:
        """Give up on every gap now and return all that is held, in order."""
        self._sync()
        self._release_all_held()
        return self.take_ready()

    def stats(self) -> ReorderStats:
        return ReorderStats(
            delivered=self.delivered,
            lost=self.lost,
            late=self.late,
            duplicates=self.duplicates,
            reordered=self.reordered,
            jumps=self.jumps,
            ssrc_changes=self.ssrc_changes,
            restarts=self.restarts,
        )

    # ---- the slow path: anything but the next packet with nothing held ------------------

    def _push_slow(self, sequence_number: int, ssrc: int, payload: bytes) -> None:
        self._sync()
        if ssrc != self.ssrc:
            if self.ssrc is not None:
                self.ssrc_changes += 1
            self.ssrc = ssrc
            self._restart(sequence_number, payload)
            return
        distance = uint16_diff(sequence_number, self.expected)
        if 0 <= distance <= MAX_DROPOUT:
            self._bad_sequence = None
            self._ahead(sequence_number, distance, payload)
        elif -MAX_MISORDER <= distance < 0:
            self._behind(distance)
        elif sequence_number == self._bad_sequence:
            self.restarts += 1
            self._restart(sequence_number, payload)
        else:
            # Dropped once; if the next packet carries on from here, the sender restarted.
            self._bad_sequence = uint16_add(sequence_number, 1)
            self.jumps += 1

    def _ahead(self, sequence_number: int, distance: int, payload: bytes) -> None:
        held = self._held
        if sequence_number in held:
            self.duplicates += 1
            return
        if held and any(self._distance(number) > distance for number in held):
            # Something later came first, and this one is still in time.
            self.reordered += 1
        if distance > self.window_frames:
            # The numbers more than a window behind this packet are later than the window.
            self._skip_to(uint16_add(sequence_number, -self.window_frames))
            self._release_run()
            distance = self._distance(sequence_number)
        if distance == 0:
            self._deliver(payload)
            self._release_run()
        else:
            held[sequence_number] = (payload, self._ticks)

    def _behind(self, distance: int) -> None:
        bit = 1 << (-distance - 1)
        if self._history & bit:
            self.duplicates += 1
        else:
            # Given up on already (or from before the stream began): too late to be heard.
            self.late += 1
            self._history |= bit

    def _restart(self, sequence_number: int, payload: bytes) -> None:
        # What the old stream still held is real audio: it goes out first, gaps skipped.
        self._release_all_held()
        self.expected = sequence_number
        self._history = 0
        self._bad_sequence = None
        self._deliver(payload)

    # ---- bookkeeping --------------------------------------------------------------------

    def _distance(self, sequence_number: int) -> int:
        return uint16_diff(sequence_number, self.expected)

    def _sync(self) -> None:
        count = self._in_order
        if count:
            # A packet in sequence came after the jump: the jump was a stray, not a restart.
            self._bad_sequence = None
            if count >= MAX_MISORDER:
                self._history = _HISTORY_MASK
            else:
                self._history = ((self._history << count) | ((1 << count) - 1)) & _HISTORY_MASK
            self._delivered += count
            self._in_order = 0

    def _deliver(self, payload: bytes) -> None:
        self.ready.append(payload)
        self._delivered += 1
        self._history = ((self._history << 1) | 1) & _HISTORY_MASK
        self.expected = (self.expected + 1) & 0xFFFF

    def _release_all_held(self) -> None:
        if self._held:
            self._skip_to(max(self._held, key=self._distance))
            self._release_run()

    def _release_run(self) -> None:
        held = self._held
        while self.expected in held:
            self._deliver(held.pop(self.expected)[0])

    def _skip_to(self, target: int) -> None:
        """Move delivery up to `target`: deliver what is held before it, count the rest lost."""
        base = self.expected
        count = uint16_diff(target, base)
        if count <= 0:
            return
        held = self._held
        delivered_bits = 0
        delivered = 0
        # Held packets sit within a window of `expected`, so this visits a handful at most.
        for offset in sorted(self._distance(number) for number in held):
            if offset >= count:
                break
            self.ready.append(held.pop(uint16_add(base, offset))[0])
            delivered_bits |= 1 << (count - 1 - offset)
            delivered += 1
        self._delivered += delivered
        self.lost += count - delivered
        shifted = self._history << count if count < MAX_MISORDER else 0
        self._history = (shifted | delivered_bits) & _HISTORY_MASK
        self.expected = target

    def __repr__(self) -> str:
        ssrc = "none" if self.ssrc is None else f"0x{self.ssrc:08x}"
        return (
            f"ReorderBuffer(window={self.window_frames}, ssrc={ssrc}, expected={self.expected}, "
            f"held={len(self._held)}, {self.stats()})"
        )
