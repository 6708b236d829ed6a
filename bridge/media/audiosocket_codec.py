"""AudioSocket framing (Asterisk 23.4.1 `res/res_audiosocket.c`): bytes in, frames out, no I/O.

A frame is a kind byte, a big-endian 16-bit payload length and the payload::

    +------+--------+--------+=========+
    | kind | len hi | len lo | payload |
    +------+--------+--------+=========+

What Asterisk sends us: one UUID frame (0x01, the 16 raw bytes of the ExternalMedia `data` or
the dialplan's UUID) first, then DTMF (0x03, one ASCII digit) and audio (0x10-0x18, 16-bit
little-endian PCM at the kind's rate). It never sends 0x00 or 0xFF: its hang-up is the TCP
connection closing. What it accepts from us: audio of any slin kind and 0x00 (hang up). A
0x01, 0x03 or 0xFF frame, an unknown kind or an empty payload makes it drop the call
(`ast_audiosocket_receive_frame_with_hangup` returns NULL). So the product builds frames only
with `encode_audio` and `encode_hangup`; `encode_uuid`, `encode_dtmf` and `encode_error` exist
for the simulator and the tests, which play Asterisk's side.

`AudioSocketDecoder.feed` takes TCP reads of any size (frames split across reads or packed
into one) and returns the complete frames. It checks the header before it waits for the
payload, so its buffer never holds more than one header plus `max_payload - 1` bytes. Each
defect raises `AudioSocketError` with one exact message; a TCP stream cannot resync after a
bad header, so the decoder is then broken for good (every later `feed` raises too) and the
caller closes the connection, which ends the call; frames before the defect in the same read are
not returned. `eof()` reports a connection that closed inside a frame.

Size limit: Asterisk itself accepts any length the 16-bit field can carry (it mallocs it), so
64 KiB - 1 is the protocol's own bound. We cap audio at `MAX_AUDIO_PAYLOAD` = 8 KiB by
default: a 20 ms frame is 320 bytes at 8 kHz, 640 at 16 kHz and 7680 at 192 kHz, the highest
rate AudioSocket has, so nothing Asterisk sends at its usual ptime comes near it, while a
garbage length cannot make us buffer 64 KiB per call.

Cost (CPython 3.11 on the shared 2-core dev VM, best of 7 timeit runs): `feed` of one whole
320-byte slin or 640-byte slin16 frame 1.1 us; 0.7 us per frame when a read carries ten; 2.0 us
for a frame split across two reads. The floor on the same machine, a bare function doing one
`unpack_from`, one slice and one append, is 0.35-0.65 us.
"""

from __future__ import annotations

import struct
import uuid
from enum import IntEnum
from typing import NamedTuple

from bridge.errors import AudioSocketError

HEADER_SIZE = 3
MAX_PAYLOAD = 0xFFFF
MAX_AUDIO_PAYLOAD = 8192

_HEADER = struct.Struct("!BH")


class Kind(IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN = 0x10
    SLIN12 = 0x11
    SLIN16 = 0x12
    SLIN24 = 0x13
    SLIN32 = 0x14
    SLIN44 = 0x15
    SLIN48 = 0x16
    SLIN96 = 0x17
    SLIN192 = 0x18
    ERROR = 0xFF


_RATES = {
    Kind.SLIN: 8000,
    Kind.SLIN12: 12000,
    Kind.SLIN16: 16000,
    Kind.SLIN24: 24000,
    Kind.SLIN32: 32000,
    Kind.SLIN44: 44100,
    Kind.SLIN48: 48000,
    Kind.SLIN96: 96000,
    Kind.SLIN192: 192000,
}
_KIND_OF_RATE = {rate: kind for kind, rate in _RATES.items()}
_KINDS = {int(kind): kind for kind in Kind}
# Plain ints and a bound tuple constructor: enum attribute lookups and NamedTuple's Python-level
# `__new__` were half the cost of the hot path.
_FIRST_AUDIO, _LAST_AUDIO, _DTMF = int(Kind.SLIN), int(Kind.SLIN192), Kind.DTMF
DTMF_DIGITS = frozenset(b"0123456789*#ABCD")

ERR_BROKEN = "AudioSocket stream is unusable after an earlier error"
ERR_KIND = "AudioSocket kind 0x{:02x} is unknown"
ERR_AUDIO_SIZE = "AudioSocket audio payload of {} bytes exceeds the {}-byte limit"
ERR_AUDIO_ODD = "AudioSocket audio payload of {} bytes is not whole 16-bit samples"
ERR_UUID_SIZE = "AudioSocket UUID payload is {} bytes, not 16"
ERR_DTMF_SIZE = "AudioSocket DTMF payload is {} bytes, not 1"
ERR_DTMF_DIGIT = "AudioSocket DTMF digit {!r} is not one of 0-9 * # A-D"
ERR_HANGUP_SIZE = "AudioSocket hang-up payload is {} bytes, not 0"
ERR_ERROR_SIZE = "AudioSocket error payload is {} bytes, not 0 or 1"
ERR_TRUNCATED = "AudioSocket stream ended inside a frame ({} bytes pending)"


class Frame(NamedTuple):
    """One decoded frame; `AudioSocketDecoder` has checked `payload` against `kind`.

    Immutable and typed like the frozen dataclasses elsewhere, but a NamedTuple: a frozen
    dataclass's `__init__` alone costs more than the rest of decoding a frame.
    """

    kind: Kind
    payload: bytes

    def __repr__(self) -> str:
        return f"Frame({self.kind.name}, {len(self.payload)} bytes)"


_new_frame = tuple.__new__


def is_audio(kind: int) -> bool:
    return _FIRST_AUDIO <= kind <= _LAST_AUDIO


def sample_rate_of(kind: int) -> int:
    """The PCM rate of an audio kind; ValueError for the others."""
    if not is_audio(kind):
        raise ValueError(f"AudioSocket kind 0x{kind:02x} carries no audio")
    return _RATES[Kind(kind)]


def kind_for_rate(rate: int) -> Kind:
    """The audio kind for a sample rate; ValueError for a rate AudioSocket does not have."""
    try:
        return _KIND_OF_RATE[rate]
    except KeyError:
        raise ValueError(f"AudioSocket has no slin kind for {rate} Hz") from None


def uuid_of(frame: Frame) -> uuid.UUID:
    if frame.kind is not Kind.UUID:
        raise ValueError(f"{frame!r} is not a UUID frame")
    return uuid.UUID(bytes=frame.payload)


def digit_of(frame: Frame) -> str:
    if frame.kind is not Kind.DTMF:
        raise ValueError(f"{frame!r} is not a DTMF frame")
    return frame.payload.decode("ascii")


class AudioSocketDecoder:
    """Sans-I/O decoder of the stream Asterisk sends: `feed(data)` returns the whole frames."""

    def __init__(self, max_payload: int = MAX_AUDIO_PAYLOAD) -> None:
        if not 0 < max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload {max_payload} is not in 1..{MAX_PAYLOAD}")
        self.max_payload = max_payload
        self._buffer = b""
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held until the next `feed`."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if self._broken:
            raise AudioSocketError(ERR_BROKEN)
        buffer = self._buffer + data if self._buffer else data
        frames: list[Frame] = []
        pos, size = 0, len(buffer)
        unpack_from, kinds, limit, new = _HEADER.unpack_from, _KINDS, self.max_payload, _new_frame
        try:
            while size - pos >= HEADER_SIZE:
                kind_byte, length = unpack_from(buffer, pos)
                if _FIRST_AUDIO <= kind_byte <= _LAST_AUDIO and length <= limit and not length & 1:
                    kind = kinds[kind_byte]
                else:
                    kind = self._check_header(kind_byte, length)
                end = pos + HEADER_SIZE + length
                if end > size:
                    break
                payload = buffer[pos + HEADER_SIZE : end]
                if kind is _DTMF and payload[0] not in DTMF_DIGITS:
                    raise AudioSocketError(ERR_DTMF_DIGIT.format(payload.decode("latin-1")))
                frames.append(new(Frame, (kind, payload)))
                pos = end
        except AudioSocketError:
            self._broken = True
            self._buffer = b""
            raise
        self._buffer = buffer[pos:] if pos < size else b""
        return frames

    def eof(self) -> None:
        """The peer closed the connection: raise if it did so inside a frame."""
        if self._buffer and not self._broken:
            self._broken = True
            raise AudioSocketError(ERR_TRUNCATED.format(len(self._buffer)))

    def _check_header(self, kind_byte: int, length: int) -> Kind:
        if _FIRST_AUDIO <= kind_byte <= _LAST_AUDIO:
            if length > self.max_payload:
                raise AudioSocketError(ERR_AUDIO_SIZE.format(length, self.max_payload))
            if length & 1:
                raise AudioSocketError(ERR_AUDIO_ODD.format(length))
            return _KINDS[kind_byte]
        kind = _KINDS.get(kind_byte)
        if kind is None:
            raise AudioSocketError(ERR_KIND.format(kind_byte))
        if kind is Kind.UUID and length != 16:
            raise AudioSocketError(ERR_UUID_SIZE.format(length))
        if kind is Kind.DTMF and length != 1:
            raise AudioSocketError(ERR_DTMF_SIZE.format(length))
        if kind is Kind.HANGUP and length:
            raise AudioSocketError(ERR_HANGUP_SIZE.format(length))
        if kind is Kind.ERROR and length > 1:
            raise AudioSocketError(ERR_ERROR_SIZE.format(length))
        return kind


# What the product sends.


def encode_audio(kind: int, pcm: bytes) -> bytes:
    """One audio frame of 16-bit little-endian PCM; Asterisk drops the call on an empty one."""
    if not is_audio(kind):
        raise ValueError(f"AudioSocket kind 0x{kind:02x} carries no audio")
    if not pcm or len(pcm) & 1 or len(pcm) > MAX_PAYLOAD - 1:
        raise ValueError(f"audio of {len(pcm)} bytes is not 2..65534 bytes of 16-bit samples")
    return _HEADER.pack(kind, len(pcm)) + pcm


_HANGUP = _HEADER.pack(Kind.HANGUP, 0)


def encode_hangup() -> bytes:
    return _HANGUP


# What only Asterisk sends: for the simulator and the tests. Sent to Asterisk, each of these
# makes it drop the call.


def encode_uuid(value: uuid.UUID) -> bytes:
    return _HEADER.pack(Kind.UUID, 16) + value.bytes


def encode_dtmf(digit: str) -> bytes:
    if len(digit) != 1 or not digit.isascii() or ord(digit) not in DTMF_DIGITS:
        raise ValueError(f"DTMF digit {digit!r} is not one of 0-9 * # A-D")
    return _HEADER.pack(Kind.DTMF, 1) + digit.encode("ascii")


def encode_error(code: int | None = None) -> bytes:
    if code is None:
        return _HEADER.pack(Kind.ERROR, 0)
    if not 0 <= code <= 0xFF:
        raise ValueError(f"AudioSocket error code {code} is not one byte")
    return _HEADER.pack(Kind.ERROR, 1) + bytes((code,))
