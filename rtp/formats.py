"""The audio formats an ExternalMedia channel can carry over RTP, and their framing.

Asterisk's UnicastRTP has no SDP, so payload types are fixed by Asterisk itself: the static
G.711 ones, and 118 for slin16 (facts 9). Asterisk sends PT 118 but drops it inbound (facts
10): a slin16 channel must be answered with ulaw.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType


class PayloadType(IntEnum):
    PCMU = 0
    PCMA = 8
    SLIN16 = 118


@dataclass(frozen=True, slots=True)
class AudioFormat:
    name: str  # the ARI `format=` value
    payload_type: PayloadType
    sample_rate: int
    sample_bytes: int
    # The encoding of one silent sample; G.711 silence is not zero bytes.
    silence_byte_pattern: bytes

    def __post_init__(self) -> None:
        if len(self.silence_byte_pattern) != self.sample_bytes:
            raise ValueError("silence_byte_pattern must be exactly one sample")

    def timestamp_step(self, ptime_ms: int = 20) -> int:
        """RTP timestamp units per frame: the samples in one frame."""
        if ptime_ms <= 0:
            raise ValueError(f"ptime_ms must be positive, got {ptime_ms}")
        return self.sample_rate * ptime_ms // 1000

    def frame_bytes(self, ptime_ms: int = 20) -> int:
        return self.timestamp_step(ptime_ms) * self.sample_bytes

    def silence(self, ptime_ms: int = 20) -> bytes:
        return self.silence_byte_pattern * self.timestamp_step(ptime_ms)


ULAW = AudioFormat("ulaw", PayloadType.PCMU, 8000, 1, b"\xff")
ALAW = AudioFormat("alaw", PayloadType.PCMA, 8000, 1, b"\xd5")
# Big-endian on the wire (network order), unlike AudioSocket's little-endian slin.
SLIN16 = AudioFormat("slin16", PayloadType.SLIN16, 16000, 2, b"\x00\x00")

_BY_NAME = MappingProxyType({fmt.name: fmt for fmt in (ULAW, ALAW, SLIN16)})


def format_by_name(name: str) -> AudioFormat:
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise ValueError(f"unknown RTP audio format {name!r} (known: {known})") from None
