"""Numbering of our outgoing RTP stream.

One SSRC per stream, sequence numbers that never skip (the receiver counts gaps as loss), and
timestamps that track media time. When pacing drops frames after a stall, `skip` advances the
timestamp without sending so the receiver's jitter buffer sees the real elapsed time, and the
next packet carries the marker bit as the start of a new talkspurt (RFC 3551 section 4.1).
The very first packet carries it too, as the lab sender did and Asterisk accepted.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from rtp.formats import AudioFormat
from rtp.seq import uint16_add, uint32_add

if TYPE_CHECKING:
    from random import Random

# Version and payload type share one 16-bit word with the marker, so a header is one pack.
_HEADER = struct.Struct("!HHII")
_VERSION_2 = 0x8000
_MARKER = 0x0080


class RtpSender:
    __slots__ = (
        "_marker_pending",
        "_word",
        "octets_sent",
        "packets_sent",
        "payload_type",
        "sequence_number",
        "ssrc",
        "timestamp",
        "timestamp_step",
    )

    def __init__(
        self,
        audio_format: AudioFormat,
        *,
        ssrc: int,
        sequence_number: int,
        timestamp: int,
        ptime_ms: int = 20,
    ) -> None:
        if not (0 <= ssrc <= 0xFFFFFFFF and 0 <= timestamp <= 0xFFFFFFFF):
            raise ValueError("ssrc and timestamp must be 32-bit unsigned")
        if not 0 <= sequence_number <= 0xFFFF:
            raise ValueError("sequence_number must be 16-bit unsigned")
        self.ssrc = ssrc
        self.payload_type = int(audio_format.payload_type)
        self.timestamp_step = audio_format.timestamp_step(ptime_ms)
        # The number and timestamp the next packet will carry.
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.packets_sent = 0
        self.octets_sent = 0
        self._word = _VERSION_2 | self.payload_type
        self._marker_pending = True

    @classmethod
    def random_start(cls, audio_format: AudioFormat, rng: Random, ptime_ms: int = 20) -> RtpSender:
        """Random SSRC, sequence and timestamp, as RFC 3550 asks, from the caller's `rng`."""
        return cls(
            audio_format,
            ssrc=rng.getrandbits(32),
            sequence_number=rng.getrandbits(16),
            timestamp=rng.getrandbits(32),
            ptime_ms=ptime_ms,
        )

    def packet(self, payload: bytes, marker: bool = False) -> bytes:
        """One datagram for one frame of `payload`; advances sequence and timestamp."""
        word = self._word
        if marker or self._marker_pending:
            word |= _MARKER
            self._marker_pending = False
        datagram = _HEADER.pack(word, self.sequence_number, self.timestamp, self.ssrc) + payload
        self.sequence_number = uint16_add(self.sequence_number, 1)
        self.timestamp = uint32_add(self.timestamp, self.timestamp_step)
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return datagram

    def skip(self, frames: int) -> None:
        """Account for `frames` frames of media time that will never be sent."""
        if frames < 0:
            raise ValueError(f"cannot skip {frames} frames")
        if frames:
            self.timestamp = uint32_add(self.timestamp, frames * self.timestamp_step)
            self._marker_pending = True

    def __repr__(self) -> str:
        return (
            f"RtpSender(pt={self.payload_type}, ssrc=0x{self.ssrc:08x}, "
            f"next seq={self.sequence_number} ts={self.timestamp})"
        )
