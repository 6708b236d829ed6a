"""G.711 µ-law and A-law <-> 16-bit PCM by lookup tables (ITU-T G.711). numpy indexing does a
whole frame in one call: no per-sample Python.

Both decoders and the A-law encoder equal audioop's (what Pipecat uses) for every input. The
µ-law encoder rounds 381 of the 65,536 inputs (negatives at a decision level) one code away
from audioop's; decoding, then encoding, is bit-exact either way.

The tables are public and read-only so that rtp.transcode can index them with sample arrays
it already holds, without a round trip through bytes:

    ULAW_TO_PCM16[code]            -> int16 sample        (256 entries)
    PCM16_TO_ULAW[sample + 32768]  -> µ-law code, uint8   (65,536 entries)
    ALAW_TO_PCM16, PCM16_TO_ALAW   the same for A-law

The bytes functions take and give little-endian PCM and expect an even number of PCM bytes
(rtp.transcode.Transcoder carries an odd byte over to the next call instead).
"""

from __future__ import annotations

import numpy as np

# Offset that turns a signed 16-bit sample into an index of the encode tables.
PCM16_OFFSET = 32768


def _frozen(table: np.ndarray) -> np.ndarray:
    table.flags.writeable = False
    return table


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype("<i2")


def _ulaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(pcm), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    # A-law inverts every even bit on the wire (XOR 0x55); a set top bit means positive.
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    step = ((a & 0x0F) << 4) + 0x108  # segments 1-7: implicit leading one, half-step offset
    magnitude = np.where(exponent == 0, step - 0x100, step << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype("<i2")


def _alaw_encode_table() -> np.ndarray:
    # A-law quantises 13 bits; the arithmetic shift keeps -1..-8 at -1, so -1 - x keeps
    # negative magnitudes in 0..4095 (symmetric with the positives, no "-0" code).
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    positive = pcm >= 0
    magnitude = np.where(positive, pcm, -1 - pcm)
    top_bit = np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32)
    segment = np.maximum(top_bit - 4, 0)
    mantissa = (magnitude >> np.maximum(segment, 1)) & 0x0F
    code = (segment << 4) | mantissa
    return (code ^ np.where(positive, 0xD5, 0x55)).astype(np.uint8)


ULAW_TO_PCM16 = _frozen(_ulaw_decode_table())
PCM16_TO_ULAW = _frozen(_ulaw_encode_table())
ALAW_TO_PCM16 = _frozen(_alaw_decode_table())
PCM16_TO_ALAW = _frozen(_alaw_encode_table())


def _table_index(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int32) + PCM16_OFFSET


def ulaw_to_pcm16(data: bytes) -> bytes:
    """µ-law bytes -> little-endian signed 16-bit PCM."""
    return ULAW_TO_PCM16[np.frombuffer(data, dtype=np.uint8)].tobytes()


def pcm16_to_ulaw(data: bytes) -> bytes:
    """Little-endian signed 16-bit PCM (even length) -> µ-law bytes."""
    return PCM16_TO_ULAW[_table_index(data)].tobytes()


def alaw_to_pcm16(data: bytes) -> bytes:
    """A-law bytes -> little-endian signed 16-bit PCM."""
    return ALAW_TO_PCM16[np.frombuffer(data, dtype=np.uint8)].tobytes()


def pcm16_to_alaw(data: bytes) -> bytes:
    """Little-endian signed 16-bit PCM (even length) -> A-law bytes."""
    return PCM16_TO_ALAW[_table_index(data)].tobytes()
