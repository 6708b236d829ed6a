from __future__ import annotations

import math
import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from pipecat.audio.utils import alaw_to_pcm, create_stream_resampler, pcm_to_alaw, ulaw_to_pcm

from rtp.g711 import (
    ALAW_TO_PCM16,
    PCM16_TO_ALAW,
    PCM16_TO_ULAW,
    ULAW_TO_PCM16,
    alaw_to_pcm16,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)

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


# A-law: the tables against a per-sample transcription of ITU-T G.711's A-law segments.


def reference_alaw_decode(code: int) -> int:
    value = code ^ 0x55  # even bits are inverted on the wire
    segment = (value >> 4) & 0x07
    magnitude = ((value & 0x0F) << 4) + 8  # the middle of the quantisation step
    if segment > 0:
        magnitude = (magnitude + 0x100) << (segment - 1)  # implicit leading one
    return magnitude if value & 0x80 else -magnitude


def reference_alaw_encode(sample: int) -> int:
    value = sample >> 3  # 13-bit linear
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    segment_ends = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
    segment = next(s for s, end in enumerate(segment_ends) if value <= end)
    mantissa = (value >> (segment if segment > 1 else 1)) & 0x0F
    return ((segment << 4) | mantissa) ^ mask


ALL_PCM = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))


def test_alaw_decode_table_is_g711() -> None:
    expected = [reference_alaw_decode(code) for code in ALL_CODES]
    assert list(struct.unpack("<256h", alaw_to_pcm16(ALL_CODES))) == expected
    known = {0xD5: 8, 0x55: -8, 0xAA: 32256, 0x2A: -32256, 0xC5: 264, 0xE5: 1056}
    assert struct.unpack("<6h", alaw_to_pcm16(bytes(known))) == tuple(known.values())


def test_alaw_encode_table_is_g711_for_every_sample() -> None:
    expected = bytes(reference_alaw_encode(s) for s in range(-32768, 32768))
    assert pcm16_to_alaw(ALL_PCM) == expected


async def test_alaw_tables_equal_pipecats_audioop() -> None:
    resampler = create_stream_resampler()
    assert alaw_to_pcm16(ALL_CODES) == await alaw_to_pcm(ALL_CODES, 8000, 8000, resampler)
    assert pcm16_to_alaw(ALL_PCM) == await pcm_to_alaw(ALL_PCM, 8000, 8000, resampler)
    assert ulaw_to_pcm16(ALL_CODES) == await ulaw_to_pcm(ALL_CODES, 8000, 8000, resampler)


def test_alaw_every_code_round_trips() -> None:
    # A-law has no "-0": all 256 codes survive decode -> encode.
    assert pcm16_to_alaw(alaw_to_pcm16(ALL_CODES)) == ALL_CODES


@given(st.binary(max_size=400))
def test_alaw_encode_of_decode_is_identity(data: bytes) -> None:
    assert pcm16_to_alaw(alaw_to_pcm16(data)) == data


def test_alaw_error_is_at_most_half_a_step_for_every_sample() -> None:
    pcm = np.frombuffer(ALL_PCM, dtype="<i2").astype(np.int32)
    back = np.frombuffer(alaw_to_pcm16(pcm16_to_alaw(ALL_PCM)), dtype="<i2").astype(np.int32)
    # The step is 16 below 512 and doubles with every segment above.
    step = 16 << np.maximum(np.floor(np.log2(np.abs(pcm) + 1)).astype(np.int32) - 8, 0)
    assert (np.abs(back - pcm) <= step // 2).all()


def test_tables_are_read_only() -> None:
    for table in (ULAW_TO_PCM16, PCM16_TO_ULAW, ALAW_TO_PCM16, PCM16_TO_ALAW):
        assert not table.flags.writeable
    assert (len(ULAW_TO_PCM16), len(PCM16_TO_ULAW)) == (256, 65536)
