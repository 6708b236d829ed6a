from __future__ import annotations

import math
import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from pipecat.audio.utils import pcm_to_ulaw, ulaw_to_pcm  # noqa: F401  (reference below)

from rtp.g711 import pcm16_to_ulaw, ulaw_to_pcm16

# Reference values from ITU-T G.711 (the audioop tables Pipecat uses).
KNOWN = {0xFF: 0, 0x7F: 0, 0x80: 32124, 0x00: -32124, 0xF0: 120, 0x70: -120}


def test_decode_known_codes() -> None:
    pcm = struct.unpack("<6h", ulaw_to_pcm16(bytes(KNOWN)))
    assert pcm == tuple(KNOWN.values())


@given(st.binary(max_size=400))
def test_encode_of_decode_is_identity_except_negative_zero(data: bytes) -> None:
    assert pcm16_to_ulaw(ulaw_to_pcm16(data)) == data.replace(b"\x7f", b"\xff")


def test_tone_survives_within_g711_error() -> None:
    t = np.arange(8000) / 8000
    tone = (8000 * np.sin(2 * math.pi * 1000 * t)).astype("<i2")
    back = np.frombuffer(ulaw_to_pcm16(pcm16_to_ulaw(tone.tobytes())), dtype="<i2")
    error = np.abs(back.astype(np.int32) - tone.astype(np.int32))
    assert error.max() <= 8000 // 16  # µ-law step at that level is under 1/16 of it
    assert np.corrcoef(back, tone)[0, 1] > 0.999
