"""Softmix and recordings, kept simple but real audio: 8 kHz int16 frames, summed and clipped.

Recorded (transfer_originate_answer, bridge_record_mixed): once a bridge mixes (a third member,
or a hidden Recorder) Asterisk sends the UnicastRTP leg a packet every 20 ms whether or not
anybody talks: µ-law silence (0xff) when nobody does, its own SSRC and sequence, timestamps
from 160 up, marker 0, the first frame silent. `MixBuffer` holds what each member said since
the last frame; each 20 ms frame is the sum of every other member's 160 samples (`mix`).

A recording is a `Track`: audio laid down where it was heard (seconds from the start), silence
elsewhere, cut to the recording's length; `wav_bytes` writes it the way format_wav does (the
recorded files: RIFF, 16-byte fmt chunk, PCM mono 8 kHz 16-bit, a 44-byte header).

`ring_tone`: the `tone:ring` indication of the default zone (indications.conf `us`:
440+480 Hz, 2 s on, 4 s off), for what a caller hears while a transfer target rings.

Pure: numpy only, no sockets, no clocks.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bridge.tools.sim.audio import Samples, encode, resample, rtp_payload_samples
from bridge.tools.sim.templates import RtpShape, rtp_header

RATE = 8000
FRAME = 160  # samples in one 20 ms frame at 8 kHz
MAX_QUEUED = 4  # frames a member may be ahead of the mixer before the oldest is dropped


def packet_samples(packet: bytes) -> Samples | None:
    """One RTP packet's audio at 8 kHz (µ-law, a-law or slin16), None if not audio we read."""
    decoded = rtp_payload_samples(packet)
    if decoded is None:
        return None
    samples, rate = decoded
    return resample(samples, rate, RATE)


class MixBuffer:
    """What each bridge member sent since the mixer last took a frame."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Samples]] = {}

    def push(self, source: str, samples: Samples) -> None:
        queue = self._queues.setdefault(source, deque())
        for start in range(0, len(samples), FRAME):
            queue.append(samples[start : start + FRAME])
        while len(queue) > MAX_QUEUED:
            queue.popleft()  # a member running ahead of the mixer: Asterisk drops too

    def take_frame(self) -> dict[str, Samples]:
        """One 20 ms frame per member that has audio waiting (padded to 160 samples)."""
        frame: dict[str, Samples] = {}
        for source, queue in self._queues.items():
            if queue:
                chunk = queue.popleft()
                frame[source] = np.pad(chunk, (0, FRAME - len(chunk)))
        return frame

    def forget(self, source: str) -> None:
        self._queues.pop(source, None)


def mix(frame: Mapping[str, Samples], exclude: str | None = None) -> Samples:
    """The sum of every member's frame but `exclude`'s (what that member hears), clipped."""
    total = np.zeros(FRAME, dtype=np.int32)
    for source, samples in frame.items():
        if source != exclude:
            total[: len(samples)] += samples.astype(np.int32)
    return np.clip(total, -32768, 32767).astype(np.int16)


def ring_tone(first_sample: int, count: int = FRAME) -> Samples:
    """`count` samples of the us ring cadence from `first_sample` (0: the tone's start)."""
    index = np.arange(first_sample, first_sample + count)
    t = index / RATE
    tone = 4000 * (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 480 * t))
    on = (index % (6 * RATE)) < 2 * RATE
    return np.where(on, tone, 0).astype(np.int16)


class Track:
    """A recording's audio: frames placed at their offsets from the start, summed."""

    def __init__(self) -> None:
        self._pieces: list[tuple[int, Samples]] = []

    def add(self, offset: float, samples: Samples) -> None:
        if offset >= 0 and len(samples):
            self._pieces.append((round(offset * RATE), samples))

    def render(self, seconds: float) -> Samples:
        length = max(0, round(seconds * RATE))
        total = np.zeros(length, dtype=np.int32)
        for start, samples in self._pieces:
            end = min(length, start + len(samples))
            if end > start:
                total[start:end] += samples[: end - start].astype(np.int32)
        return np.clip(total, -32768, 32767).astype(np.int16)


def wav_bytes(samples: Samples, rate: int = RATE) -> bytes:
    """PCM mono 16-bit WAV with the 44-byte header format_wav writes."""
    data = samples.astype("<i2").tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16,
        b"data", len(data),
    )  # fmt: skip
    return header + data


@dataclass(slots=True)
class RtpSender:
    """The stream Asterisk sends on one UnicastRTP channel while its bridge mixes."""

    shape: RtpShape
    ssrc: int
    seq: int
    timestamp: int = 0

    def packet(self, payload: bytes) -> bytes:
        self.timestamp += self.shape.samples_per_packet  # the first one: 160, as recorded
        header = rtp_header(marker=False, payload_type=self.shape.payload_type, seq=self.seq,
                            timestamp=self.timestamp, ssrc=self.ssrc)  # fmt: skip
        self.seq = (self.seq + 1) & 0xFFFF
        return header + payload


def frame_payload(samples: Samples, fmt: str) -> bytes:
    """One mixed frame in the channel's format; µ-law / a-law silence as Asterisk writes it
    (0xff / 0xd5: the recorded mixed silence is all 0xff)."""
    if not samples.any() and fmt in SILENCE:
        return SILENCE[fmt] * len(samples)
    return encode(samples, RATE, fmt)


SILENCE = {"ulaw": b"\xff", "alaw": b"\xd5"}
