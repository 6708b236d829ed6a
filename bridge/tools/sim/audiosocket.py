"""AudioSocket as Asterisk 23.4.1 speaks it: the framing, and Asterisk's end of one TCP link.

Frame = kind (1 byte) + payload length (2 bytes, big-endian) + payload
(`include/asterisk/res_audiosocket.h`). Asterisk always connects (it is the TCP client), first
sends kind 0x01 with the 16 raw bytes of the UUID, then audio (kind by the channel's format,
16-bit little-endian) and DTMF (0x03, one ASCII byte). It never sends 0x00 or 0xFF: on hang-up
the socket just closes (recorded in `audiosocket` and `audiosocket_dialplan`).

What Asterisk accepts from the far side is `ast_audiosocket_receive_frame_with_hangup()`:
* kind 0x00: a hang-up, whatever the length (the payload is never read);
* an audio kind 0x10-0x18 with a payload of 1 byte or more: played (any rate; Asterisk
  translates it to the channel's format);
* anything else (0x01, 0x03, 0xFF, unknown kinds, an empty audio frame): an error, and the
  channel hangs up (the AudioSocket() application returns -1, chan_audiosocket's read gives
  NULL). The simulator calls that "protocol_violation".
The TCP connection closing is a hang-up too.

`AudioSocketParser` is pure (bytes in, frames out); `AudioSocketLink` is the asyncio adapter:
it records every frame both ways with `loop.time()` and reports audio and the end to its owner.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import cast

HEADER = struct.Struct("!BH")
MAX_PAYLOAD = 0xFFFF  # the length field's limit: a frame can never be longer


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


AUDIO_KINDS = frozenset(range(Kind.SLIN, Kind.SLIN192 + 1))
# The kind Asterisk writes audio of each channel format with (ast_audiosocket_send_frame):
# any other format (ulaw, ...) goes out as 0x10 with that codec's bytes in it.
KIND_OF_FORMAT = {
    "slin": Kind.SLIN, "slin12": Kind.SLIN12, "slin16": Kind.SLIN16, "slin24": Kind.SLIN24,
    "slin32": Kind.SLIN32, "slin44": Kind.SLIN44, "slin48": Kind.SLIN48, "slin96": Kind.SLIN96,
    "slin192": Kind.SLIN192,
}  # fmt: skip
FORMAT_OF_KIND = {kind: fmt for fmt, kind in KIND_OF_FORMAT.items()}


def kind_for_format(fmt: str) -> Kind:
    return KIND_OF_FORMAT.get(fmt, Kind.SLIN)


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"AudioSocket payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(kind, len(payload)) + payload


def uuid_frame(value: str) -> bytes:
    """Kind 0x01 with the UUID's 16 raw bytes (ast_audiosocket_init)."""
    return encode_frame(Kind.UUID, uuid.UUID(value).bytes)


def is_uuid(value: str) -> bool:
    """What uuid_parse() accepts: the 36-character string form."""
    try:
        return len(value) == 36 and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def verdict(kind: int, payload: bytes) -> str:
    """What Asterisk does with a frame from the far side: "audio", "hangup" or "violation"."""
    if kind == Kind.HANGUP:
        return "hangup"
    if kind in AUDIO_KINDS and payload:
        return "audio"
    return "violation"


class AudioSocketParser:
    """Frames out of a TCP byte stream. Pure: keeps the bytes of an unfinished frame."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if kind == Kind.HANGUP:  # Asterisk stops reading at the header of a hang-up
                frames.append((kind, b""))
                self._buffer.clear()
                break
            if len(self._buffer) < HEADER.size + length:
                break
            frames.append((kind, bytes(self._buffer[HEADER.size : HEADER.size + length])))
            del self._buffer[: HEADER.size + length]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)


@dataclass(frozen=True, slots=True)
class AsFrame:
    t: float  # loop.time() when sent / received
    kind: int
    payload: bytes

    def __repr__(self) -> str:
        return f"<AsFrame {self.t:.3f} 0x{self.kind:02x} {len(self.payload)}B>"


class AudioSocketLink(asyncio.Protocol):
    """Asterisk's end of one AudioSocket TCP connection (Asterisk is the client).

    `on_frame(kind, payload)` hears every frame the far side sent that Asterisk accepts as
    audio; `on_end(reason)` is called once: "bridge_hangup" (0x00), "bridge_closed" (EOF or
    reset), "protocol_violation" (a kind Asterisk refuses). `close()` is Asterisk hanging up:
    the socket closes, no 0x00 is sent (recorded).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, label: str, *, keep: bool = True) -> None:
        self._loop = loop
        self.label = label
        self._keep = keep
        self._parser = AudioSocketParser()
        self.transport: asyncio.Transport | None = None
        self.received: list[AsFrame] = []
        self.sent: list[AsFrame] = []
        self.frames_in = self.frames_out = 0
        self.last_activity = loop.time()
        self.end_reason: str | None = None
        self.closed = loop.create_future()  # resolves when the TCP connection is gone
        self.on_frame: Callable[[int, bytes], None] | None = None
        self.on_end: Callable[[str], None] | None = None
        self.echo: Callable[[int, bytes], None] | None = None  # an Echo() far end, when bridged

    def __repr__(self) -> str:
        return f"<AudioSocketLink {self.label} in={self.frames_in} out={self.frames_out}>"

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._parser.feed(data)
        except ValueError:
            frames = [(Kind.ERROR, b"")]
        for kind, payload in frames:
            if self.end_reason is not None:
                return  # Asterisk stopped reading at the frame that ended the call
            now = self._loop.time()
            self.frames_in += 1
            self.last_activity = now
            if self._keep:
                self.received.append(AsFrame(now, kind, payload))
            outcome = verdict(kind, payload)
            if outcome == "audio":
                if self.on_frame is not None:
                    self.on_frame(kind, payload)
                if self.echo is not None:
                    self.echo(kind, payload)
            else:
                self._end("bridge_hangup" if outcome == "hangup" else "protocol_violation")
                self.close()

    def eof_received(self) -> bool:
        self._end("bridge_closed")
        return False  # close our side too: Asterisk closes the socket

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("bridge_closed")
        if not self.closed.done():
            self.closed.set_result(None)

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            if self.on_end is not None:
                self.on_end(reason)

    def send(self, kind: int, payload: bytes = b"") -> None:
        if not self.is_open or self.end_reason is not None:
            return
        assert self.transport is not None
        self.transport.write(encode_frame(kind, payload))
        now = self._loop.time()
        self.frames_out += 1
        self.last_activity = now
        if self._keep:
            self.sent.append(AsFrame(now, kind, payload))

    def close(self) -> None:
        """Asterisk hangs up: the TCP connection closes, no 0x00 frame (recorded)."""
        if self.end_reason is None:
            self.end_reason = "asterisk_closed"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """The Asterisk process died: a reset, nothing more."""
        if self.end_reason is None:
            self.end_reason = "asterisk_closed"
        if self.transport is not None:
            self.transport.abort()


async def connect_audiosocket(
    loop: asyncio.AbstractEventLoop, address: tuple[str, int], label: str, *, keep: bool = True
) -> AudioSocketLink:
    """Connect like ast_audiosocket_connect(): TCP, no delay; OSError when refused."""
    _, link = await loop.create_connection(
        lambda: AudioSocketLink(loop, label, keep=keep), address[0], address[1]
    )
    return link
