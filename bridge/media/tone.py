"""The comfort tone a caller hears while the bot is away (--bot-reconnect-hold tone). Pure.

A soft 425 Hz tone (the European "please hold" pitch) at -20 dBFS, TONE_ON seconds of it every
TONE_PERIOD seconds, with 10 ms ramps so it never clicks. The runner pushes one burst into the
media leg each period: the leg's own playout clock paces it, as it paces the bot's audio, and
sends its silence in between.
"""

from __future__ import annotations

import numpy as np

from rtp.transcode import AudioSpec, Transcoder

TONE_HZ = 425.0
TONE_DBFS = -20.0
TONE_ON = 1.0  # seconds of tone...
TONE_PERIOD = 5.0  # ...every this many (1 s on, 4 s off)
RAMP = 0.010


def comfort_tone(spec: AudioSpec, seconds: float = TONE_ON) -> bytes:
    """`seconds` of the tone in `spec` (what the leg's play() takes)."""
    rate = spec.sample_rate
    n = round(seconds * rate)
    t = np.arange(n) / rate
    amplitude = 32767 * 10 ** (TONE_DBFS / 20)
    wave = amplitude * np.sin(2 * np.pi * TONE_HZ * t)
    ramp = min(int(RAMP * rate), n // 2)
    if ramp:
        envelope = np.linspace(0.0, 1.0, ramp)
        wave[:ramp] *= envelope
        wave[n - ramp :] *= envelope[::-1]
    pcm = np.round(wave).astype("<i2").tobytes()
    return Transcoder(AudioSpec("pcm16le", rate), spec).convert(pcm)
