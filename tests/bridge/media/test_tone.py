"""The comfort tone: its length, level and pitch in every format a leg plays."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.media.tone import TONE_DBFS, TONE_HZ, comfort_tone
from rtp.transcode import AudioSpec, Transcoder

SPECS = [AudioSpec("ulaw", 8000), AudioSpec("alaw", 8000), AudioSpec("pcm16le", 8000),
         AudioSpec("pcm16be", 16000)]  # fmt: skip


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.codec}/{s.sample_rate}")
def test_one_second_at_425_hz_and_minus_20_dbfs(spec: AudioSpec) -> None:
    audio = comfort_tone(spec, 1.0)
    assert len(audio) == spec.sample_rate * spec.sample_bytes
    pcm = np.frombuffer(Transcoder(spec, AudioSpec("pcm16le", spec.sample_rate)).convert(audio),
                        "<i2").astype(float)  # fmt: skip
    peak_dbfs = 20 * np.log10(np.abs(pcm).max() / 32767)
    assert peak_dbfs == pytest.approx(TONE_DBFS, abs=0.5)
    spectrum = np.abs(np.fft.rfft(pcm))
    assert np.fft.rfftfreq(len(pcm), 1 / spec.sample_rate)[spectrum.argmax()] == pytest.approx(
        TONE_HZ, abs=1.0)
    assert abs(pcm[0]) < 100 and abs(pcm[-1]) < 100  # ramped: no click
