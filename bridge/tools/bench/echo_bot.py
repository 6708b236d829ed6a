"""A light Twilio-dialect bot for the load: echo every media message, or answer in 1 s bursts.

Why hand-written WebSocket framing and not `websockets` or aiohttp: at N=500 this bot takes
25,000 messages a second in and sends 25,000 out, on the core it shares with the RTP
generator and the fake Asterisk. Anything it spends there is taken from the generator and
can show up as lateness of our own packets. A bare `asyncio.Protocol` that unmasks with
websockets' C helper and writes frames with one `transport.write` costs a few microseconds a
message; measured at N=500 it is several times cheaper than a websockets server doing the
same echo (see the bench report). It is a test tool: it speaks just enough RFC 6455 for the
relays under test (handshake, masked client frames, text, ping/pong, close), caps every
message size, and never compresses.

Modes: `echo` sends each `media` message text back unchanged (the relay parses it like any
bot's media). `bursty` decodes the µ-law of each `media`, and once it holds one second sends
it as a single message, as a TTS answering in chunks does; the relay must pace it out.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_c_apply_mask: Callable[[bytes, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - websockets ships the C helper on every platform we use
    _c_apply_mask = None

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE = 16 * 1024
MAX_MESSAGE = 4 << 20
BURST_BYTES = 8000  # one second of µ-law
_MEDIA_PREFIXES = (b'{"event":"media"', b'{"event": "media"')
_PAYLOAD_KEYS = (b'"payload":"', b'"payload": "')
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


def apply_mask(data: bytes, mask: bytes) -> bytes:
    if _c_apply_mask is not None:
        return bytes(_c_apply_mask(data, mask))
    repeated = (mask * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(data), "big"
    )


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 1 << 16:
        return bytes((0x80 | opcode, 126)) + _U16.pack(size) + payload
    return bytes((0x80 | opcode, 127)) + _U64.pack(size) + payload


@dataclass(slots=True)
class BotStats:
    connections: int = 0
    media_in: int = 0
    media_out: int = 0
    other_in: int = 0
    bad: int = 0
    closes: dict[str, int] = field(default_factory=dict)


class BotServer:
    """Accepts the relays' bot connections on 127.0.0.1; `on_start(call_id, channel_id)`."""

    def __init__(self, mode: str, on_start: Callable[[str, str], None]) -> None:
        if mode not in ("echo", "bursty"):
            raise ValueError(f"bot mode must be echo or bursty, not {mode!r}")
        self.mode = mode
        self.on_start = on_start
        self.stats = BotStats()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: BotProtocol(self), host, port, backlog=2048
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class BotProtocol(asyncio.Protocol):
    def __init__(self, server: BotServer) -> None:
        self._server = server
        self._stats = server.stats
        self._bursty = server.mode == "bursty"
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._upgraded = False
        self._fragments: list[bytes] = []
        self._audio = bytearray()
        self._stream_sid = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._upgraded and not self._handshake():
            return
        pos, size = 0, len(buf)
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = _U16.unpack_from(buf, pos + 2)[0], 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = _U64.unpack_from(buf, pos + 2)[0], 10
            if length > MAX_MESSAGE:
                self._fail(1009)
                return
            mask = b""
            if second & 0x80:
                if size - pos < head + 4:
                    break
                mask = bytes(buf[pos + head : pos + head + 4])
                head += 4
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            pos = end
            self._frame(first, apply_mask(payload, mask) if mask else payload)
            if self._transport is None:
                return
        del buf[:pos]

    # ---- handshake ------------------------------------------------------------------------

    def _handshake(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HANDSHAKE:
                self._abort()
            return False
        request = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        key = ""
        for line in request[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        if not request[0].startswith("GET ") or not key:
            self._abort()
            return False
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        self._upgraded = True
        return True

    # ---- frames ---------------------------------------------------------------------------

    def _frame(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if opcode == 0x0 or not first & 0x80:  # fragmented: collect until the final frame
            self._fragments.append(payload)
            if not first & 0x80:
                return
            payload, self._fragments = b"".join(self._fragments), []
            opcode = 0x1
        if opcode == 0x1:
            self._text(payload)
        elif opcode == 0x8:
            code = _U16.unpack_from(payload)[0] if len(payload) >= 2 else 1005
            key = str(code)
            self._stats.closes[key] = self._stats.closes.get(key, 0) + 1
            self._send(frame(0x8, payload[:2]))
            self._abort(close=True)
        elif opcode == 0x9:
            self._send(frame(0xA, payload))

    def _text(self, message: bytes) -> None:
        if message.startswith(_MEDIA_PREFIXES):
            self._stats.media_in += 1
            if self._bursty:
                self._collect(message)
            else:
                self._send(frame(0x1, message))
                self._stats.media_out += 1
            return
        self._stats.other_in += 1
        try:
            obj: Any = json.loads(message)
        except ValueError:
            self._stats.bad += 1
            return
        if isinstance(obj, dict) and obj.get("event") == "start":
            start = obj.get("start") or {}
            params = start.get("customParameters") or {}
            self._stream_sid = str(obj.get("streamSid") or start.get("streamSid") or "")
            self._server.on_start(str(params.get("call_id", "")), str(params.get("channel_id", "")))

    def _collect(self, message: bytes) -> None:
        for key in _PAYLOAD_KEYS:
            start = message.find(key)
            if start >= 0:
                start += len(key)
                break
        else:
            self._stats.bad += 1
            return
        end = message.find(b'"', start)
        self._audio += base64.b64decode(message[start:end])
        if len(self._audio) < BURST_BYTES:
            return
        chunk = bytes(self._audio[:BURST_BYTES])
        del self._audio[:BURST_BYTES]
        payload = base64.b64encode(chunk).decode("ascii")
        sid = self._stream_sid
        reply = f'{{"event":"media","streamSid":"{sid}","media":{{"payload":"{payload}"}}}}'
        self._send(frame(0x1, reply.encode()))
        self._stats.media_out += 1

    def _send(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _fail(self, code: int) -> None:
        self._send(frame(0x8, _U16.pack(code)))
        self._abort(close=True)

    def _abort(self, close: bool = False) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            if close:
                transport.close()
            else:
                transport.abort()
