"""Sample formats of the simulated far end: G.711, signed linear at any rate, resampling.

The recorded callers are RTP streams (µ-law PT 0, or slin16 PT 118 big-endian). AudioSocket and
chan_websocket carry the same audio in the channel's own format (`slin` = 16-bit little-endian
at 8 kHz, `slin16` at 16 kHz, ...), so a payload is decoded to int16 samples and re-encoded in
that format, one RTP packet at a time: a short last packet stays a short frame, as Asterisk's
translation of one frame gives one frame.

The codec table is Asterisk's (`main/codec_builtin.c`): chan_websocket's optimal frame size is
`default_ms * minimum_bytes / minimum_ms`, and codecs with `minimum_bytes <= 10` cannot be
re-framed (passthrough, optimal size 0).

Pure: numpy only, no sockets, no clocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    rate: int  # samples per second
    default_ms: int
    minimum_bytes: int
    minimum_ms: int

    @property
    def passthrough(self) -> bool:
        """chan_websocket cannot cut this codec's stream at arbitrary bytes (websocket_new)."""
        return self.minimum_bytes <= 10

    @property
    def optimal_frame_size(self) -> int:
        if self.passthrough:
            return 0
        return self.default_ms * self.minimum_bytes // self.minimum_ms


def _codecs() -> dict[str, Codec]:
    rows = [
        ("ulaw", 8000, 20, 80, 10), ("alaw", 8000, 20, 80, 10), ("gsm", 8000, 20, 33, 20),
        ("g726", 8000, 20, 40, 10), ("g726aal2", 8000, 20, 40, 10), ("adpcm", 8000, 20, 40, 10),
        ("g722", 16000, 20, 80, 10), ("g729", 8000, 20, 10, 10), ("ilbc", 8000, 20, 38, 20),
        ("lpc10", 8000, 20, 7, 20), ("speex", 8000, 20, 10, 10), ("speex16", 16000, 20, 10, 10),
        ("speex32", 32000, 20, 10, 10), ("opus", 48000, 20, 10, 20), ("g719", 48000, 20, 160, 20),
        ("siren7", 16000, 20, 80, 20), ("siren14", 32000, 20, 120, 20),
        ("testlaw", 8000, 20, 80, 10),
    ]  # fmt: skip
    codecs = {name: Codec(name, *rest) for name, *rest in rows}
    for rate in (8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000):
        name = "slin" if rate == 8000 else f"slin{rate // 1000}"
        codecs[name] = Codec(name, rate, 20, rate // 50, 10)  # 10 ms of 16-bit samples
    return codecs


CODECS: dict[str, Codec] = _codecs()


def is_slin(fmt: str) -> bool:
    return fmt.startswith("slin")


# -- G.711 (ITU-T G.711 segment tables, as Asterisk's ulaw.c / alaw.c) ---------------------


def _ulaw_table() -> Samples:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent, mantissa = (codes >> 4) & 0x07, codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> Samples:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (codes >> 4) & 0x07, codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8,
                         ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))  # fmt: skip
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_TO_LINEAR = _ulaw_table()
ALAW_TO_LINEAR = _alaw_table()


def _nearest_code(table: Samples, samples: Samples) -> npt.NDArray[np.uint8]:
    """The G.711 code whose value is nearest each sample (exact for decoded G.711)."""
    order = np.argsort(table, kind="stable")
    values = table[order].astype(np.int32)
    wanted = samples.astype(np.int32)
    index = np.clip(np.searchsorted(values, wanted), 1, len(values) - 1)
    lower_closer = (wanted - values[index - 1]) <= (values[index] - wanted)
    return order[np.where(lower_closer, index - 1, index)].astype(np.uint8)


def encode(samples: Samples, rate: int, fmt: str) -> bytes:
    """`samples` at `rate` in format `fmt`; b"" for a codec the simulator cannot make."""
    codec = CODECS.get(fmt)
    if codec is None:
        return b""
    if fmt in ("ulaw", "alaw") or is_slin(fmt):
        samples = resample(samples, rate, codec.rate)
    if fmt == "ulaw":
        return _nearest_code(ULAW_TO_LINEAR, samples).tobytes()
    if fmt == "alaw":
        return _nearest_code(ALAW_TO_LINEAR, samples).tobytes()
    if is_slin(fmt):
        return samples.astype("<i2").tobytes()
    return b""


def decode(payload: bytes, fmt: str) -> tuple[Samples, int] | None:
    """int16 samples and their rate, or None for a codec the simulator cannot read."""
    codec = CODECS.get(fmt)
    codes = np.frombuffer(payload, dtype=np.uint8)
    if fmt == "ulaw":
        return ULAW_TO_LINEAR[codes], 8000
    if fmt == "alaw":
        return ALAW_TO_LINEAR[codes], 8000
    if codec is not None and is_slin(fmt):
        usable = len(payload) - len(payload) % 2
        return np.frombuffer(payload[:usable], dtype="<i2").astype(np.int16), codec.rate
    return None


def resample(samples: Samples, source: int, target: int) -> Samples:
    """Linear interpolation: enough for a simulator (Asterisk's own resampler is speex's)."""
    if source == target or len(samples) == 0:
        return samples
    count = len(samples) * target // source
    positions = np.arange(count) * (source / target)
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.int16)


def rtp_payload_samples(packet: bytes) -> tuple[Samples, int] | None:
    """The audio of one recorded RTP packet (PT 0 µ-law, 8 a-law, 118 slin16 big-endian)."""
    if len(packet) < 12:
        return None
    start = 12 + 4 * (packet[0] & 0x0F)
    payload, payload_type = packet[start:], packet[1] & 0x7F
    if payload_type == 0:
        return decode(payload, "ulaw")
    if payload_type == 8:
        return decode(payload, "alaw")
    if payload_type == 118:
        usable = len(payload) - len(payload) % 2
        return np.frombuffer(payload[:usable], dtype=">i2").astype(np.int16), 16000
    return None


def rtp_to_format(packet: bytes, fmt: str) -> bytes:
    """One far-end RTP packet as one frame of the channel's format (b"": nothing to send).

    The same codec both sides passes through untouched, as Asterisk does without a translator.
    """
    if len(packet) >= 12 and (packet[1] & 0x7F, fmt) in ((0, "ulaw"), (8, "alaw")):
        return packet[12 + 4 * (packet[0] & 0x0F) :]
    audio = rtp_payload_samples(packet)
    return b"" if audio is None else encode(audio[0], audio[1], fmt)


def through_ulaw(frame: bytes, fmt: str) -> bytes:
    """A frame after a round trip through the caller's µ-law leg (what an Echo() returns).

    The recorded AudioSocket echo differs from what was sent exactly so: G.711 quantisation
    (the 8 kHz band limit of a 16 kHz round trip is not modelled).
    """
    audio = decode(frame, fmt)
    if audio is None or fmt == "ulaw":
        return frame
    samples, rate = audio
    quantised = ULAW_TO_LINEAR[_nearest_code(ULAW_TO_LINEAR, samples)]
    return encode(quantised, rate, fmt)
