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

Control, one line each on stdin: `start <socket> <host> <port>` (send to the relay's RTP
address from the next tick on), `stop <socket>`, `dump <path>` (write the records as .npz,
print a JSON line of self-check numbers, exit). The first stdout line is the bound ports.
"""

from __future__ import annotations

import argparse
import array
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


class Stream:
    """One call's socket: what it sends next and where."""

    __slots__ = ("counter", "dest", "fd", "index", "overflow", "packet", "seq", "sock", "ssrc",
                 "ts")  # fmt: skip

    def __init__(self, index: int, sock: socket.socket, rng: random.Random) -> None:
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
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
    def __init__(self, count: int, host: str, seed: int) -> None:
        rng = random.Random(seed)
        self.streams: list[Stream] = []
        self.by_fd: dict[int, Stream] = {}
        self.epoll = select.epoll()
        for index in range(count):
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
        return [s.sock.getsockname()[1] for s in self.streams]

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
                    self._drain(stream)
                elif not self._read_control(control_fd):
                    return
            now = time.monotonic()
            if now >= deadline:
                self.rec.late.append(now - deadline)
                self._send_tick()
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
                stream.sock.sendto(stream.packet, stream.dest)  # type: ignore[arg-type]
            except OSError:  # ENOBUFS, ECONNREFUSED from an earlier ICMP: counted as sent, lost
                self.send_errors += 1
            tx_sock(stream.index)
            tx_counter(counter)
            tx_time(sent)

    def _drain(self, stream: Stream) -> None:
        recvmsg = stream.sock.recvmsg
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
            stream.dest = (words[2], int(words[3]))
            if stream not in self.active:
                self.active.append(stream)
        elif words[0] == "stop":
            stream = self.streams[int(words[1])]
            if stream in self.active:
                self.active.remove(stream)
        elif words[0] == "dump":
            self._dump_path = words[1]

    def _dump(self, path: str) -> None:
        for stream in self.streams:  # the last arrivals, already queued in the kernel
            self._drain(stream)
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
        print(json.dumps({"dumped": path, "stats": stats}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.bench.rtpgen")
    parser.add_argument("--sockets", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    generator = Generator(args.sockets, args.host, args.seed)
    print(json.dumps({"ports": generator.ports, "pid": os.getpid()}), flush=True)
    generator.run(sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
