"""The RTP-over-UDP media leg: one UDP socket per call, a thin shell over the pure `rtp` core.

Inbound: a datagram is accepted only from the address Asterisk announced for this channel
(UNICASTRTP_LOCAL_ADDRESS/PORT), only if it is valid RTP of the call's payload type, and only
once per sequence number; anything else is counted and dropped, never fatal.
Outbound: the shared Ticker calls `on_tick` every 20 ms; each tick sends one frame from the
same socket we gave as `external_host` (Asterisk's strict RTP locks onto the first source that
sends to it, asterisk-facts §7): the bot's audio when some is queued, silence otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import random
from collections.abc import Mapping
from typing import Any

from ari.models import Channel
from bridge.errors import RtpParseError
from bridge.logs import get_logger
from bridge.media import MediaEvents
from bridge.ports import PortPool
from bridge.ticker import Ticker
from rtp.formats import AudioFormat
from rtp.inbound import SequenceTracker
from rtp.pacer import FrameQueue
from rtp.packet import MAX_DATAGRAM, parse_header_fast
from rtp.sender import RtpSender

_BIND_ATTEMPTS = 16


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, leg: RtpLeg) -> None:
        self._leg = leg

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._leg.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a previous send: Asterisk's side is not there (yet).
        self._leg.count("icmp_errors")


class RtpLeg:
    def __init__(
        self,
        *,
        events: MediaEvents,
        host: str,
        pool: PortPool,
        ticker: Ticker,
        audio_format: AudioFormat,
        asterisk_host: str,
        max_queue_ms: int = 2000,
        silence_fill: bool = True,
        rng: random.Random | None = None,
        log: Any = None,
    ) -> None:
        self._events = events
        self._host = host
        self._pool = pool
        self._ticker = ticker
        self._format = audio_format
        self._asterisk_host = asterisk_host
        self._silence_fill = silence_fill
        self._log = log or get_logger("bridge.rtp")
        rng = rng or random.SystemRandom()
        self._sender = RtpSender(
            audio_format,
            ssrc=rng.getrandbits(32),
            sequence_number=rng.getrandbits(16),
            timestamp=rng.getrandbits(32),
        )
        frame_bytes = audio_format.frame_bytes()
        self._silence = audio_format.silence()
        self._queue = FrameQueue(
            frame_bytes, self._silence, max_bytes=max(frame_bytes, frame_bytes * max_queue_ms // 20)
        )
        self._tracker = SequenceTracker()
        self._transport: asyncio.DatagramTransport | None = None
        self.port: int | None = None
        self.remote: tuple[str, int] | None = None
        self._draining = False
        self._talking = False
        self._closed = False
        self._counters: dict[str, int] = {
            "rx_packets": 0,
            "tx_packets": 0,
            "tx_silence": 0,
            "rx_bad": 0,
            "rx_wrong_source": 0,
            "rx_wrong_pt": 0,
            "rx_duplicate": 0,
            "rx_oversize": 0,
            "rx_before_start": 0,
            "icmp_errors": 0,
        }

    # ---- MediaLeg -----------------------------------------------------------------------

    def external_media_params(self) -> Mapping[str, str]:
        return {"encapsulation": "rtp", "transport": "udp"}

    async def open(self) -> str:
        loop = asyncio.get_running_loop()
        for _ in range(min(_BIND_ATTEMPTS, self._pool.size)):
            port = self._pool.acquire()
            if port is None:
                break
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), local_addr=(self._host, port)
                )
            except OSError as exc:
                self._pool.release(port)
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    self._log.warning("rtp_port_busy", rtp_port=port)
                    continue
                raise
            self._transport = transport  # type: ignore[assignment]
            self.port = port
            return f"{_host_for_url(self._host)}:{port}"
        raise OSError(errno.EADDRINUSE, "no free RTP port in --rtp-ports")

    def start(self, channel: Channel) -> None:
        address = channel.channelvars.get("UNICASTRTP_LOCAL_ADDRESS", "")
        port_text = channel.channelvars.get("UNICASTRTP_LOCAL_PORT", "")
        if not port_text.isdigit():
            raise ValueError(f"ExternalMedia channel has no UNICASTRTP_LOCAL_PORT ({port_text!r})")
        if not address or ipaddress.ip_address(address).is_unspecified:
            # Asterisk bound its RTP to a wildcard; its packets come from the ARI host.
            address = self._asterisk_host
        self.remote = (address, int(port_text))
        self._ticker.add(self)

    def play(self, audio: bytes) -> None:
        dropped = self._queue.push(audio)
        if dropped:
            self.count("tx_overflow_bytes", dropped)

    def clear(self) -> None:
        marks = self._queue.clear()
        if marks:
            self._events.on_marks_played(marks)

    def mark(self, name: str) -> None:
        self._queue.add_mark(name)

    def drain(self) -> None:
        self._draining = True
        self._queue.flush_tail()
        if self._transport is None or self.remote is None:
            self._events.on_playout_drained()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ticker.remove(self)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self.port is not None:
            self._pool.release(self.port)

    def stats(self) -> dict[str, int]:
        inbound = dataclasses.asdict(self._tracker.stats())
        return {**self._counters, **{f"rx_seq_{k}": v for k, v in inbound.items()}}

    # ---- inbound ------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def datagram_received(self, data: bytes, addr: Any) -> None:
        counters = self._counters
        if self.remote is None:
            counters["rx_before_start"] += 1
            return
        if addr[0] != self.remote[0] or addr[1] != self.remote[1]:
            counters["rx_wrong_source"] += 1
            if counters["rx_wrong_source"] in (1, 100, 10000):
                self._log.warning("rtp_wrong_source", source=f"{addr[0]}:{addr[1]}")
            return
        if len(data) > MAX_DATAGRAM:
            counters["rx_oversize"] += 1
            return
        try:
            # Same checks as RtpPacket.parse, without building an object (8x faster).
            payload_type, sequence, _ts, ssrc, _marker, payload = parse_header_fast(data)
        except RtpParseError as exc:
            counters["rx_bad"] += 1
            self._log.debug("rtp_rejected", reason=str(exc))
            return
        if payload_type != self._format.payload_type:
            counters["rx_wrong_pt"] += 1
            return
        if not self._tracker.accept(sequence, ssrc):
            counters["rx_duplicate"] += 1
            return
        counters["rx_packets"] += 1
        self._events.on_caller_audio(payload)

    # ---- outbound (called by the Ticker) ------------------------------------------------

    def on_tick(self, frames: int, skipped: int) -> None:
        transport, remote = self._transport, self.remote
        if transport is None or remote is None:
            return
        if skipped:
            self._sender.skip(skipped)
        for _ in range(frames):
            frame, marks = self._queue.pop_frame()
            if frame is None and self._draining:
                if marks:
                    self._events.on_marks_played(list(marks))
                self._draining = False
                self._events.on_playout_drained()
                return
            if frame is None and self._silence_fill:
                frame = self._silence
                self._counters["tx_silence"] += 1
            if frame is not None:
                marker = not self._talking
                self._talking = True
                transport.sendto(self._sender.packet(frame, marker), remote)
                self._counters["tx_packets"] += 1
            else:
                self._talking = False
            if marks:
                self._events.on_marks_played(list(marks))

    def on_tick_error(self, exc: Exception) -> None:
        self._log.error("rtp_tick_failed", error=repr(exc))
        self._events.on_media_failed(f"send failed: {exc!r}")


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
