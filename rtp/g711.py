"""G.711 µ-law <-> 16-bit PCM by lookup tables (ITU-T G.711, the same tables as audioop and
Asterisk). numpy indexing does a whole frame in one call: no per-sample Python."""

from __future__ import annotations

import numpy as np


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _ulaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(pcm), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


_ULAW_TO_PCM = _ulaw_decode_table()
_PCM_TO_ULAW = _ulaw_encode_table()  # indexed by sample + 32768


def ulaw_to_pcm16(data: bytes) -> bytes:
    """µ-law bytes -> little-endian signed 16-bit PCM."""
    return _ULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def pcm16_to_ulaw(data: bytes) -> bytes:
    """Little-endian signed 16-bit PCM -> µ-law bytes."""
    samples = np.frombuffer(data, dtype="<i2").astype(np.int32) + 32768
    return _PCM_TO_ULAW[samples].tobytes()
