"""Audio conversion between an RTP format and a bot dialect: G.711 / 16-bit PCM, any byte
order, 8-48 kHz. Pure and stateful per direction of one call; no I/O, no clock.

    Transcoder(src, dst).convert(data) -> bytes
        decode src to int16 samples -> resample if the rates differ -> encode dst

Resampling is a streaming polyphase FIR (Kaiser-windowed sinc, ~80 dB stopband, passband to
~85% of the lower Nyquist rate) whose history carries across calls, so converting 20 ms at a
time gives exactly the samples that converting the whole signal at once would: no clicks at
frame edges. Its delay is fixed, `Transcoder.delay` = 3 ms, and every input frame yields its
share of output at once (160 µ-law samples in -> 320 samples at 16 kHz out, every frame).

Why not soxr.ResampleStream, which Pipecat uses: at every quality above "QQ" (cubic, no
anti-aliasing) libsoxr emits in blocks, not per chunk. Fed 20 ms frames at 8 <-> 16 kHz
(soxr 1.0.0), "HQ" returns nothing for the first five frames, then ~104 ms of audio every
fifth frame ("VHQ": ~95 ms): up to ~120 ms of added latency each way, in bursts. It is also
where the 137.5 ms blocks of a Pipecat bot with 24 kHz output come from ("VHQ" 24 -> 8 kHz:
1,100 samples every seventh 20 ms chunk). Measured quality of
this resampler (tests/rtp/test_transcode.py): flat to 3.4 kHz (-0.005 dB), -6 dB at 3.8 kHz,
aliases of 4.2 kHz -66 dB, of >= 4.4 kHz below 1 LSB; 70 dB SNR against soxr "VHQ"
one-shot resampling of telephone-band noise.

Measured cost of convert() per 20 ms frame (best of 5 x 5000, Python 3.11, numpy 2.4; run
`pytest -m slow -s tests/rtp/test_transcode.py -k cost` to re-measure):

    identity (ulaw 8k -> ulaw 8k)         0.04 µs   the input object itself
    ulaw 8k -> pcm16le 8k                 1.5 µs    table lookup
    pcm16be 16k (slin16) -> ulaw 8k       11 µs     byte swap, 2:1 FIR, table lookup
    ulaw 8k -> pcm16le 16k                12.5 µs   table lookup, 1:2 FIR
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

from rtp import formats
from rtp.g711 import ALAW_TO_PCM16, PCM16_OFFSET, PCM16_TO_ALAW, PCM16_TO_ULAW, ULAW_TO_PCM16

# pcm16be is RTP L16 (slin16 from ExternalMedia: network byte order, RFC 3551);
# pcm16le is what AudioSocket and the Exotel/Vonage dialects carry.
CODECS = ("ulaw", "alaw", "pcm16be", "pcm16le")
SAMPLE_RATES = (8000, 16000, 24000, 32000, 48000)

_PCM_DTYPES = {"pcm16be": np.dtype(">i2"), "pcm16le": np.dtype("<i2")}
_G711_DECODE = {"ulaw": ULAW_TO_PCM16, "alaw": ALAW_TO_PCM16}
_G711_ENCODE = {"ulaw": PCM16_TO_ULAW, "alaw": PCM16_TO_ALAW}

# Resampler design. 3 ms of delay buys 97 taps at 16 kHz: a transition band of ~830 Hz
# centred just below the lower rate's Nyquist frequency (3.8 kHz for 8 <-> 16 kHz), so
# telephone speech (300-3400 Hz) passes flat and what would alias or image from beyond
# ~4.2 kHz lands ~80 dB down.
RESAMPLER_DELAY_MS = 3
_CUTOFF = 0.475  # of the lower sample rate
_KAISER_BETA = 7.86  # 80 dB stopband (Kaiser's formula: 0.1102 * (80 - 8.7))
_NO_SAMPLES = np.zeros(0, dtype=np.int16)
_NO_SAMPLES.flags.writeable = False


@dataclass(frozen=True, slots=True)
class AudioSpec:
    """How audio is spelled on one side: codec and sample rate, mono."""

    codec: str
    sample_rate: int

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; known: {', '.join(CODECS)}")
        if self.sample_rate not in SAMPLE_RATES:
            rates = ", ".join(map(str, SAMPLE_RATES))
            raise ValueError(f"unsupported sample rate {self.sample_rate!r}; supported: {rates}")

    @property
    def sample_bytes(self) -> int:
        return 2 if self.codec in _PCM_DTYPES else 1

    def frame_bytes(self, ptime_ms: int = 20) -> int:
        """Bytes in ptime_ms of audio."""
        return self.sample_rate * ptime_ms // 1000 * self.sample_bytes

    def __repr__(self) -> str:
        return f"AudioSpec({self.codec}/{self.sample_rate})"


_FORMAT_SPECS = {
    formats.ULAW.name: AudioSpec("ulaw", 8000),
    formats.ALAW.name: AudioSpec("alaw", 8000),
    formats.SLIN16.name: AudioSpec("pcm16be", 16000),
}


def spec_for_format(fmt: formats.AudioFormat) -> AudioSpec:
    """The AudioSpec of an RTP payload in an ExternalMedia format."""
    try:
        return _FORMAT_SPECS[fmt.name]
    except KeyError:
        raise ValueError(f"no AudioSpec for RTP format {fmt.name!r}") from None


class Resampler:
    """Streaming rational resampler: upsample by L, FIR low-pass, downsample by M, in one
    polyphase step. Output j sits at L*in_rate-domain position j*M and needs input up to
    floor(j*M / L), so it is produced as soon as that sample arrives."""

    __slots__ = ("_consumed", "_down", "_history", "_produced", "_taps", "_up", "delay")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0 or in_rate == out_rate:
            raise ValueError(f"cannot resample {in_rate} Hz -> {out_rate} Hz")
        common = gcd(in_rate, out_rate)
        self._up, self._down = out_rate // common, in_rate // common
        self._taps, half = _polyphase_taps(in_rate, out_rate, self._up, self._down)
        # A linear-phase filter delays by its half-length, a whole number of output samples.
        self.delay = half / (in_rate * self._up)
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next input starts a new signal."""
        self._history = np.zeros(self._taps.shape[1] - 1)
        self._consumed = 0  # input samples taken since the start
        self._produced = 0  # output samples given since the start

    def process(self, samples: np.ndarray) -> np.ndarray:
        """int16 samples in -> every int16 sample they complete, out."""
        up, down, width = self._up, self._down, self._taps.shape[1]
        buffer = np.concatenate((self._history, samples))
        self._history = buffer[len(buffer) - (width - 1) :]
        base, first = self._consumed, self._produced
        self._consumed += len(samples)
        ready = (self._consumed * up - 1) // down + 1 if self._consumed else 0
        if ready <= first:
            return _NO_SAMPLES
        self._produced = ready
        # Output j sits at position j * down of the common rate and needs input samples up
        # to (j * down) // up. Compute every phase at every input position in range (one
        # correlation per phase: the cheapest vectorised form measured), then keep each
        # output's own phase; at most `down` times the multiply-adds strictly needed.
        lo, hi = first * down // up, (ready - 1) * down // up
        segment = buffer[lo - base : hi - base + width]
        if up == 1:
            out = np.correlate(segment, self._taps[0], "valid")[::down]
        else:
            phases = np.stack([np.correlate(segment, taps, "valid") for taps in self._taps], 1)
            if down == 1:  # consecutive outputs: consecutive (input, phase) pairs
                out = phases.ravel()[first - lo * up : ready - lo * up]
            else:
                position = np.arange(first, ready, dtype=np.int64) * down
                newest = position // up
                out = phases[newest - lo, position - newest * up]
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _polyphase_taps(in_rate: int, out_rate: int, up: int, down: int) -> tuple[np.ndarray, int]:
    """taps[phase] = the prototype's taps for that phase, reversed to dot with a window of
    input samples oldest-first; and the prototype's half-length."""
    rate = in_rate * up  # the prototype filter runs at the common rate
    half = down * round(RESAMPLER_DELAY_MS * out_rate / 1000)
    n = np.arange(-half, half + 1)
    cutoff = _CUTOFF * min(in_rate, out_rate) / rate  # cycles per sample at `rate`
    prototype = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(len(n), _KAISER_BETA)
    width = -(-len(n) // up)
    prototype = np.pad(prototype, (0, width * up - len(n)))
    phases = prototype.reshape(width, up).T.copy()
    # Unity DC gain per phase: no ripple at the up rate from phases summing differently.
    phases /= phases.sum(axis=1, keepdims=True)
    taps = np.ascontiguousarray(phases[:, ::-1])
    taps.flags.writeable = False
    return taps, half


class Transcoder:
    """Converts one direction of one call's audio from `src` to `dst`, chunk by chunk.

    convert() takes bytes of any length, never raises on them, and keeps what it cannot use
    yet: an odd trailing byte of 16-bit input, the resampler's history. When src == dst it
    returns the very object it was given (the µ-law -> twilio hot path)."""

    __slots__ = ("_carry", "_identity", "_resampler", "dst", "src")

    def __init__(self, src: AudioSpec, dst: AudioSpec) -> None:
        self.src = src
        self.dst = dst
        self._identity = src == dst
        self._carry = b""  # an odd byte of 16-bit input waiting for its other half
        self._resampler: Resampler | None = None
        if src.sample_rate != dst.sample_rate:
            self._resampler = Resampler(src.sample_rate, dst.sample_rate)

    def __repr__(self) -> str:
        return f"Transcoder({self.src!r} -> {self.dst!r})"

    @property
    def delay(self) -> float:
        """Seconds by which the output lags the input (the resampler's; 0 without one)."""
        return self._resampler.delay if self._resampler is not None else 0.0

    def reset(self) -> None:
        """Drop the carried byte and the resampler history (e.g. after a bot's clear)."""
        self._carry = b""
        if self._resampler is not None:
            self._resampler.reset()

    def convert(self, data: bytes) -> bytes:
        if self._identity:
            return data
        samples = self._decode(data)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        return self._encode(samples)

    def _decode(self, data: bytes) -> np.ndarray:
        codec = self.src.codec
        if codec in _G711_DECODE:
            return _G711_DECODE[codec][np.frombuffer(data, dtype=np.uint8)]
        if self._carry:
            data = self._carry + data
        whole = len(data) // 2
        self._carry = data[2 * whole :]
        return np.frombuffer(data, dtype=_PCM_DTYPES[codec], count=whole)

    def _encode(self, samples: np.ndarray) -> bytes:
        codec = self.dst.codec
        if codec in _G711_ENCODE:
            return _G711_ENCODE[codec][samples.astype(np.int32) + PCM16_OFFSET].tobytes()
        return samples.astype(_PCM_DTYPES[codec], copy=False).tobytes()
