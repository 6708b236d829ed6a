"""The caller side of the load: one UDP socket per call, 20 ms µ-law RTP, every echo recorded.

Runs as its own process (`python -m bridge.tools.bench.rtpgen --sockets N`) so that neither the bot
nor the ARI server can delay a send or an arrival time. It has no asyncio on purpose: at
N=500 it sends and receives 25,000 packets a second each way on a shared core, and a bare
epoll loop costs about a third of what asyncio's datagram transports do per packet.

- All calls share one absolute-deadline 20 ms timer; a tick sends one packet on every active
  socket from a pre-allocated buffer (`pack_into`, `sendto`). Tick lateness is recorded so
  the report can say when the generator itself could not keep up.
- Each payload carries a tag: magic byte, socket index, per-socket counter and the send time
  (epoch seconds). The relays move µ-law bit-exactly, so the tag comes back intact and the
  round trip needs no lookup table. A payload without the tag is the relay's own silence.
- Arrival times are the kernel's (SO_TIMESTAMPNS, CLOCK_REALTIME like `time.time()`), so a
  busy moment in this process does not show up as a pacing gap of the relay. SO_RXQ_OVFL
  reports packets the kernel dropped on our sockets, which would be our loss, not the relay's.

Other transports (`--transport audiosocket|websocket`): the loadgen hands each call's TCP
connection over, already opened (AudioSocket: connected to the bridge's listener, 0x01 + UUID
sent; chan_websocket: the bridge's upgrade of /media/<id> answered), as a file descriptor on a
SOCK_SEQPACKET socket (`--attach-fd`, message `attach <socket> <hex bytes to send first>`).
Per tick each call then gets one frame on the same shared timer: AudioSocket kind 0x10 with
320 bytes of slin, or an unmasked binary WebSocket message of 160 bytes µ-law. The slin
frame's tag is written as samples that are exact µ-law values (one per nibble), so it
survives the bridge's slin -> µ-law -> slin untouched. Arrival times of TCP data are the
kernel's too (SO_TIMESTAMPNS on a TCP socket: the time of the last segment read); ping frames
get their pong, a close its close.

Control, one line each on stdin: `start <socket> <host> <port>` (send to the relay's RTP
address from the next tick on), `stop <socket>`, `dump <path>` (write the records as .npz,
print a JSON line of self-check numbers, exit). The first stdout line is the bound ports.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import math
import os
import random
import resource
import select
import socket
import struct
import sys
import time
from typing import Any

import numpy as np

PERIOD = 0.020
PAYLOAD_BYTES = 160
RTP_HEADER_BYTES = 12
TAG_MAGIC = 0xA5
# RTP header (V=2, PT 0) then the tag: magic, socket index, counter, send time.
PACKET = struct.Struct("!BBHIIBHId")
TAG = struct.Struct("!BHId")  # the tag alone, read at RTP_HEADER_BYTES
TAG_END = PACKET.size
MAX_DATAGRAM = 2048
# Linux values; Python's socket module does not export them.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
_TIMESPEC = struct.Struct("qq")
_U32 = struct.Struct("I")
ANC_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_U32.size)
FILLER = 0x55  # any µ-law byte that is not silence (0xFF)
TRANSPORTS = ("rtp", "audiosocket", "websocket")
SLIN_BYTES = 320
AS_HEADER = struct.Struct("!BH")
AS_SLIN = 0x10
AS_HANGUP = 0x00
WS_BINARY_HEADER = bytes((0x82, 126)) + struct.pack("!H", PAYLOAD_BYTES)  # unmasked, 160 B


def _ulaw_value(code: int) -> int:
    """G.711 µ-law code -> its linear value (what rtp.g711 decodes it to)."""
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return (0x84 - magnitude) if code & 0x80 else (magnitude - 0x84)


# A tag nibble as one slin sample: µ-law code 0x20 + nibble, decoded (round-trips exactly).
_NIBBLE_SAMPLE = [struct.pack("<h", _ulaw_value(0x20 + n)) for n in range(16)]
_BYTE_SAMPLES = [_NIBBLE_SAMPLE[b >> 4] + _NIBBLE_SAMPLE[b & 15] for b in range(256)]
_SAMPLE_NIBBLE = {sample: n for n, sample in enumerate(_NIBBLE_SAMPLE)}
SLIN_TAG_BYTES = TAG.size * 4
_SLIN_FILLER = struct.pack("<h", _ulaw_value(FILLER))


class Stream:
    """One call's socket: what it sends next and where."""

    __slots__ = ("counter", "dest", "fd", "inbuf", "index", "outbuf", "overflow", "packet", "seq",
                 "sock", "ssrc", "ts")  # fmt: skip

    def __init__(self, index: int, sock: socket.socket | None, rng: random.Random) -> None:
        self.index = index
        self.sock = sock
        self.fd = sock.fileno() if sock is not None else -1
        self.inbuf = bytearray()  # TCP: an unfinished frame
        self.outbuf = b""  # TCP: what the kernel did not take last time
        self.dest: tuple[str, int] | None = None
        self.seq = rng.getrandbits(16)
        self.ts = 0  # Asterisk's first packet carries one packet's worth: 160 (facts §9)
        self.ssrc = rng.getrandbits(32)
        self.counter = 0
        self.overflow = 0  # kernel's count of datagrams dropped on this socket
        self.packet = bytearray([FILLER]) * (RTP_HEADER_BYTES + PAYLOAD_BYTES)


class Recorder:
    """The columns of the run, as compact arrays (500k packets would be 100 MB as tuples)."""

    def __init__(self) -> None:
        self.tx_sock = array.array("H")
        self.tx_counter = array.array("I")
        self.tx_time = array.array("d")
        self.rx_sock = array.array("H")
        self.rx_time = array.array("d")
        self.rx_counter = array.array("q")  # -1: no tag (silence or foreign audio)
        self.rx_sent = array.array("d")  # send time from the tag; nan without one
        self.rx_seq = array.array("H")
        self.rx_crossed = 0  # a tag of another socket: a relay mixed two calls up
        self.late = array.array("d")  # per tick: seconds after its deadline it started
        self.pass_time = array.array("d")  # per tick: seconds to send every socket's packet

    def save(self, path: str) -> None:
        columns: dict[str, Any] = {
            name: np.frombuffer(value, dtype=value.typecode)
            for name, value in vars(self).items()
            if isinstance(value, array.array)
        }
        np.savez(path, **columns)


class Generator:
    def __init__(self, count: int, host: str, seed: int, transport: str = "rtp",
                 attach_fd: int = -1) -> None:  # fmt: skip
        rng = random.Random(seed)
        self.transport = transport
        self.streams: list[Stream] = []
        self.by_fd: dict[int, Stream] = {}
        self.epoll = select.epoll()
        self.attach: socket.socket | None = None
        self.rx_text = 0  # WebSocket text messages from the bridge (MARK_MEDIA and such)
        self.rx_other = 0  # anything else that is neither audio nor ping/close
        self.closed_by_relay = 0
        if transport != "rtp":
            self.attach = socket.socket(fileno=attach_fd)
            self.attach.setblocking(False)
            self.epoll.register(self.attach.fileno(), select.EPOLLIN)
            self.streams = [Stream(index, None, rng) for index in range(count)]
            self._prepare_frames()
        for index in range(count if transport == "rtp" else 0):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            # A naive relay answers a 1 s burst with 50 packets at once; keep them all.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((host, 0))
            sock.setblocking(False)
            stream = Stream(index, sock, rng)
            self.streams.append(stream)
            self.by_fd[stream.fd] = stream
            self.epoll.register(stream.fd, select.EPOLLIN)
        self.active: list[Stream] = []
        self.rec = Recorder()
        self.send_errors = 0
        self.resyncs = 0
        self._control = b""
        self._dump_path: str | None = None

    @property
    def ports(self) -> list[int]:
        if self.transport != "rtp":
            return []
        return [s.sock.getsockname()[1] for s in self.streams if s.sock is not None]

    def _prepare_frames(self) -> None:
        for stream in self.streams:
            if self.transport == "audiosocket":
                stream.packet = bytearray(AS_HEADER.pack(AS_SLIN, SLIN_BYTES)
                                          + _SLIN_FILLER * (SLIN_BYTES // 2))  # fmt: skip
            else:
                stream.packet = bytearray(WS_BINARY_HEADER + bytes([FILLER]) * PAYLOAD_BYTES)

    # ---- loop ------------------------------------------------------------------------------

    def run(self, control_fd: int) -> None:
        os.set_blocking(control_fd, False)
        self.epoll.register(control_fd, select.EPOLLIN)
        deadline = time.monotonic() + PERIOD
        while self._dump_path is None:
            timeout = deadline - time.monotonic()
            for fd, _mask in self.epoll.poll(max(timeout, 0.0)):
                stream = self.by_fd.get(fd)
                if stream is not None:
                    if self.transport == "rtp":
                        self._drain(stream)
                    else:
                        self._drain_tcp(stream)
                elif self.attach is not None and fd == self.attach.fileno():
                    self._take_connections()
                elif not self._read_control(control_fd):
                    return
            now = time.monotonic()
            if now >= deadline:
                self.rec.late.append(now - deadline)
                if self.transport == "rtp":
                    self._send_tick()
                else:
                    self._send_tick_tcp()
                self.rec.pass_time.append(time.monotonic() - now)
                deadline += PERIOD
                if now - deadline > 2 * PERIOD:
                    # Far behind: start a new grid rather than fire a burst of ticks.
                    self.resyncs += 1
                    deadline = now + PERIOD
        self._dump(self._dump_path)

    def _send_tick(self) -> None:
        pack_into, wall = PACKET.pack_into, time.time
        rec = self.rec
        tx_sock, tx_counter, tx_time = rec.tx_sock.append, rec.tx_counter.append, rec.tx_time.append
        for stream in self.active:
            seq = stream.seq = (stream.seq + 1) & 0xFFFF
            ts = stream.ts = (stream.ts + PAYLOAD_BYTES) & 0xFFFFFFFF
            counter = stream.counter = stream.counter + 1
            sent = wall()
            pack_into(stream.packet, 0, 0x80, 0, seq, ts, stream.ssrc, TAG_MAGIC, stream.index,
                      counter, sent)  # fmt: skip
            try:
                stream.sock.sendto(stream.packet, stream.dest)  # type: ignore[arg-type,union-attr]
            except OSError:  # ENOBUFS, ECONNREFUSED from an earlier ICMP: counted as sent, lost
                self.send_errors += 1
            tx_sock(stream.index)
            tx_counter(counter)
            tx_time(sent)

    def _drain(self, stream: Stream) -> None:
        recvmsg = stream.sock.recvmsg  # type: ignore[union-attr]
        rec = self.rec
        index = stream.index
        while True:
            try:
                data, ancillary, _flags, _addr = recvmsg(MAX_DATAGRAM, ANC_BYTES)
            except BlockingIOError:
                return
            except OSError:  # ICMP from a relay port that is gone: nothing to record
                continue
            arrival = math.nan
            for _level, kind, cdata in ancillary:
                if kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESPEC.unpack(cdata)
                    arrival = seconds + nanoseconds * 1e-9
                elif kind == SO_RXQ_OVFL:
                    stream.overflow = _U32.unpack(cdata)[0]
            if arrival != arrival:
                arrival = time.time()
            if len(data) < RTP_HEADER_BYTES:
                continue
            counter, sent = -1, math.nan
            seq = (data[2] << 8) | data[3]
            if len(data) >= TAG_END and data[RTP_HEADER_BYTES] == TAG_MAGIC:
                _magic, owner, counter, sent = TAG.unpack_from(data, RTP_HEADER_BYTES)
                if owner != index:
                    rec.rx_crossed += 1
            rec.rx_sock.append(index)
            rec.rx_time.append(arrival)
            rec.rx_counter.append(counter)
            rec.rx_sent.append(sent)
            rec.rx_seq.append(seq)

    # ---- TCP transports (AudioSocket, chan_websocket) -----------------------------------------

    def _take_connections(self) -> None:
        assert self.attach is not None
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.attach, 65536, 4)
            except BlockingIOError:
                return
            if not data and not fds:
                return
            words = data.split(b" ", 2)
            if words[0] != b"attach" or not fds:
                for fd in fds:
                    os.close(fd)
                continue
            stream = self.streams[int(words[1])]
            sock = socket.socket(fileno=fds[0])
            for extra in fds[1:]:
                os.close(extra)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            stream.sock, stream.fd = sock, sock.fileno()
            stream.inbuf.clear()
            stream.outbuf = bytes.fromhex(words[2].decode()) if len(words) > 2 else b""
            self.by_fd[stream.fd] = stream
            self.epoll.register(stream.fd, select.EPOLLIN)
            self._write(stream, b"")

    def _close_tcp(self, stream: Stream, farewell: bytes = b"") -> None:
        sock = stream.sock
        if sock is None:
            return
        if farewell:
            with contextlib.suppress(OSError):
                sock.send(farewell)
        self.by_fd.pop(stream.fd, None)
        with contextlib.suppress(OSError):
            self.epoll.unregister(stream.fd)
        sock.close()
        stream.sock, stream.fd = None, -1
        if stream in self.active:
            self.active.remove(stream)

    def _write(self, stream: Stream, data: bytes | bytearray) -> None:
        """Send, keeping what the kernel did not take for the next try (framing intact)."""
        sock = stream.sock
        if sock is None:
            return
        pending = stream.outbuf + data if stream.outbuf else data
        if not pending:
            return
        try:
            sent = sock.send(pending)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.send_errors += 1
            return
        stream.outbuf = bytes(pending[sent:]) if sent < len(pending) else b""

    def _send_tick_tcp(self) -> None:
        wall = time.time
        rec = self.rec
        tx_sock, tx_counter, tx_time = rec.tx_sock.append, rec.tx_counter.append, rec.tx_time.append
        slin = self.transport == "audiosocket"
        offset = AS_HEADER.size if slin else len(WS_BINARY_HEADER)
        for stream in self.active:
            if stream.sock is None:
                continue
            counter = stream.counter = stream.counter + 1
            sent = wall()
            tag = TAG.pack(TAG_MAGIC, stream.index, counter, sent)
            packet = stream.packet
            if slin:
                packet[offset : offset + SLIN_TAG_BYTES] = b"".join([_BYTE_SAMPLES[b] for b in tag])
            else:
                packet[offset : offset + TAG.size] = tag
            if stream.outbuf:
                self.send_errors += 1  # the relay is not reading: this frame waits behind
            self._write(stream, packet)
            tx_sock(stream.index)
            tx_counter(counter)
            tx_time(sent)

    def _drain_tcp(self, stream: Stream) -> None:
        sock = stream.sock
        if sock is None:
            return
        while True:
            try:
                data, ancillary, _flags, _addr = sock.recvmsg(65536, ANC_BYTES)
            except BlockingIOError:
                break
            except OSError:
                data, ancillary = b"", []
            if not data:
                self.closed_by_relay += 1
                self._close_tcp(stream)
                return
            arrival = math.nan
            for _level, kind, cdata in ancillary:
                if kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESPEC.unpack(cdata)
                    arrival = seconds + nanoseconds * 1e-9
            if arrival != arrival:
                arrival = time.time()
            stream.inbuf += data
            if self.transport == "audiosocket":
                self._audiosocket_frames(stream, arrival)
            else:
                self._websocket_frames(stream, arrival)
            if stream.sock is None:
                return

    def _record(self, stream: Stream, arrival: float, tag: bytes | None) -> None:
        rec = self.rec
        counter, sent = -1, math.nan
        if tag is not None and len(tag) >= TAG.size and tag[0] == TAG_MAGIC:
            _magic, owner, counter, sent = TAG.unpack_from(tag)
            if owner != stream.index:
                rec.rx_crossed += 1
        rec.rx_sock.append(stream.index)
        rec.rx_time.append(arrival)
        rec.rx_counter.append(counter)
        rec.rx_sent.append(sent)
        rec.rx_seq.append(0)

    def _audiosocket_frames(self, stream: Stream, arrival: float) -> None:
        buf = stream.inbuf
        pos = 0
        while len(buf) - pos >= AS_HEADER.size:
            kind, length = AS_HEADER.unpack_from(buf, pos)
            if kind == AS_HANGUP:
                self.closed_by_relay += 1
                self._close_tcp(stream)
                return
            end = pos + AS_HEADER.size + length
            if end > len(buf):
                break
            if 0x10 <= kind <= 0x18:
                self._record(stream, arrival, _slin_tag(buf, pos + AS_HEADER.size, length))
            else:
                self.rx_other += 1
            pos = end
        del buf[:pos]

    def _websocket_frames(self, stream: Stream, arrival: float) -> None:
        buf = stream.inbuf
        pos = 0
        while len(buf) - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            opcode, length, head = first & 0x0F, second & 0x7F, 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            mask = b""
            if second & 0x80:
                mask = bytes(buf[pos + head : pos + head + 4])
                head += 4
            end = pos + head + length
            if end > len(buf):
                break
            start = pos + head
            if opcode == 0x2:
                tag = bytes(buf[start : start + TAG.size])
                if mask:
                    tag = bytes(b ^ mask[i % 4] for i, b in enumerate(tag))
                self._record(stream, arrival, tag)
            elif opcode == 0x9:  # ping: pong with the same payload, unmasked
                payload = bytes(buf[start:end])
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                self._write(stream, bytes((0x8A, len(payload))) + payload)
            elif opcode == 0x8:  # close: echo the code, then go
                self.closed_by_relay += 1
                self._close_tcp(stream, bytes((0x88, 2)) + struct.pack("!H", 1000))
                return
            elif opcode == 0x1:
                self.rx_text += 1
            elif opcode != 0xA:
                self.rx_other += 1
            pos = end
        del buf[:pos]

    def _read_control(self, fd: int) -> bool:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False  # the loadgen is gone: so are we
        self._control += chunk
        *lines, self._control = self._control.split(b"\n")
        for line in lines:
            self._command(line.decode().split())
        return True

    def _command(self, words: list[str]) -> None:
        if not words:
            return
        if words[0] == "start":
            stream = self.streams[int(words[1])]
            if len(words) >= 4:
                stream.dest = (words[2], int(words[3]))
            if stream not in self.active:
                self.active.append(stream)
        elif words[0] == "stop":
            stream = self.streams[int(words[1])]
            if stream in self.active:
                self.active.remove(stream)
            if self.transport == "websocket":  # Asterisk hangs up: close 1000
                self._close_tcp(stream, bytes((0x88, 2)) + struct.pack("!H", 1000))
            elif self.transport == "audiosocket":  # the socket just closes (recorded)
                self._close_tcp(stream)
        elif words[0] == "dump":
            self._dump_path = words[1]

    def _dump(self, path: str) -> None:
        for stream in self.streams:  # the last arrivals, already queued in the kernel
            if self.transport == "rtp":
                self._drain(stream)
            else:
                self._drain_tcp(stream)
        self.rec.save(path)
        late = np.frombuffer(self.rec.late, dtype="d")
        passes = np.frombuffer(self.rec.pass_time, dtype="d")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats: dict[str, Any] = {
            "ticks": len(late),
            "late_p99_ms": float(np.percentile(late, 99) * 1e3) if len(late) else 0.0,
            "late_max_ms": float(late.max() * 1e3) if len(late) else 0.0,
            "pass_p99_ms": float(np.percentile(passes, 99) * 1e3) if len(passes) else 0.0,
            "resyncs": self.resyncs,
            "send_errors": self.send_errors,
            "rx_overflow": sum(s.overflow for s in self.streams),
            "rx_crossed": self.rec.rx_crossed,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
        if self.transport != "rtp":
            stats.update({"transport": self.transport, "rx_text": self.rx_text,
                          "rx_other": self.rx_other, "closed_by_relay": self.closed_by_relay})
        print(json.dumps({"dumped": path, "stats": stats}), flush=True)


def _slin_tag(buf: bytearray, start: int, length: int) -> bytes | None:
    """The tag written as one µ-law-exact sample per nibble; None if these are not tag samples."""
    if length < SLIN_TAG_BYTES:
        return None
    out = bytearray()
    lookup = _SAMPLE_NIBBLE.get
    for i in range(start, start + SLIN_TAG_BYTES, 4):
        high, low = lookup(bytes(buf[i : i + 2])), lookup(bytes(buf[i + 2 : i + 4]))
        if high is None or low is None:
            return None
        out.append(high << 4 | low)
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.bench.rtpgen")
    parser.add_argument("--sockets", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--transport", choices=TRANSPORTS, default="rtp")
    parser.add_argument("--attach-fd", type=int, default=-1,
                        help="SOCK_SEQPACKET the loadgen hands TCP connections over on")
    args = parser.parse_args(argv)
    generator = Generator(args.sockets, args.host, args.seed, args.transport, args.attach_fd)
    print(json.dumps({"ports": generator.ports, "pid": os.getpid()}), flush=True)
    generator.run(sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
