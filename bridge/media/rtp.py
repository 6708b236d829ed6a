"""The RTP-over-UDP media leg: one UDP socket per call, a thin shell over the pure `rtp` core.

Inbound: a datagram is accepted only from the address Asterisk announced for this channel
(UNICASTRTP_LOCAL_ADDRESS/PORT), only if it is valid RTP of the format the channel sends
(`audio_format`); anything else is counted and dropped, never fatal. Accepted packets go
through a small reorder window (`rtp.jitter`) that costs nothing while they come in order.
When the caller's RTP stops (a silent Local caller sends nothing at all, asterisk-facts §8),
silence in the caller's format is handed on once per tick so the bot's VAD keeps running.

Outbound: the shared Ticker calls `on_tick` every 20 ms; each tick sends one frame of
`tx_format` from the same socket we gave as `external_host` (Asterisk's strict RTP locks onto
the first source that sends to it, asterisk-facts §7): the bot's audio when some is queued,
silence otherwise. Each talkspurt starts after a small reserve (`rtp.pacer.Playout`). The
formats differ for slin16 calls: Asterisk sends PT 118 but drops it inbound (§10), so those
calls are answered in ulaw.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import math
import random
from collections.abc import Iterable, Mapping
from typing import Any

from ari.models import Channel
from bridge.errors import RtpParseError
from bridge.logs import get_logger
from bridge.media.leg import MediaEvents
from bridge.media.ports import PortPool
from bridge.media.ticker import Ticker
from rtp.formats import AudioFormat
from rtp.jitter import ReorderBuffer
from rtp.pacer import FrameQueue, Playout
from rtp.packet import MAX_DATAGRAM, parse_header_fast
from rtp.sender import RtpSender

_BIND_ATTEMPTS = 16
_PTIME_MS = 20
# Caller silence starts after this many ticks in a row without caller audio. Asterisk's packets
# come 13.7-26.4 ms apart (asterisk-facts §9), so a live stream can leave one tick empty, never
# two: the fill begins 40-60 ms after the last packet. A gap the reorder window is waiting on
# is never filled; the held audio comes out when the window closes.
_CALLER_FILL_AFTER_TICKS = 2


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
        tx_format: AudioFormat | None = None,
        max_queue_ms: int = 2000,
        silence_fill: bool = True,
        caller_silence_fill: bool = True,
        playout_reserve_ms: int = 40,
        reorder_window_ms: int = 40,
        rng: random.Random | None = None,
        log: Any = None,
    ) -> None:
        if playout_reserve_ms < 0 or reorder_window_ms < 0:
            raise ValueError("playout_reserve_ms and reorder_window_ms must not be negative")
        tx_format = tx_format or audio_format
        self._events = events
        self._host = host
        self._pool = pool
        self._ticker = ticker
        self._format = audio_format
        self._tx_format = tx_format
        self._rx_payload_type = int(audio_format.payload_type)
        self._asterisk_host = asterisk_host
        self._silence_fill = silence_fill
        self._caller_silence_fill = caller_silence_fill
        self._max_queue_ms = max_queue_ms
        self._log = log or get_logger("bridge.rtp")
        rng = rng or random.SystemRandom()
        self._sender = RtpSender(
            tx_format,
            ssrc=rng.getrandbits(32),
            sequence_number=rng.getrandbits(16),
            timestamp=rng.getrandbits(32),
        )
        frame_bytes = tx_format.frame_bytes()
        self._silence = tx_format.silence()
        queue = FrameQueue(
            frame_bytes, self._silence, max_bytes=max(frame_bytes, frame_bytes * max_queue_ms // 20)
        )
        self._playout = Playout(queue, math.ceil(playout_reserve_ms / _PTIME_MS))
        self._reorder = ReorderBuffer(math.ceil(reorder_window_ms / _PTIME_MS))
        self._caller_silence = audio_format.silence()
        # Ticks in a row without caller audio; starting at the threshold fills from the first
        # tick, since Asterisk sends nothing until the caller makes a sound.
        self._rx_quiet_ticks = _CALLER_FILL_AFTER_TICKS - 1
        self._rx_delivered_seen = 0
        self._transport: asyncio.DatagramTransport | None = None
        self.port: int | None = None
        self.remote: tuple[str, int] | None = None
        # The remote's parts, for the per-packet check; None matches no source before start.
        self._remote_host: str | None = None
        self._remote_port: int | None = None
        self._draining = False
        self._talking = False
        self._overflowing = False
        self._closed = False
        self._counters: dict[str, int] = {
            "rx_silence_filled": 0,
            "tx_packets": 0,
            "tx_silence": 0,
            "tx_overflow_bytes": 0,
            "tx_overflow_bursts": 0,
            "rx_bad": 0,
            "rx_wrong_source": 0,
            "rx_wrong_pt": 0,
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
        self._remote_host, self._remote_port = self.remote
        self._ticker.add(self)

    def play(self, audio: bytes) -> None:
        playout = self._playout
        if not playout.playing:
            self._overflowing = False  # a new talkspurt: a new burst may be logged
        dropped = playout.push(audio)
        if dropped:
            self._overflow(dropped)

    def clear(self) -> None:
        self._overflowing = False
        marks = self._playout.clear()
        if marks:
            self._events.on_marks_played(marks)

    def mark(self, name: str) -> None:
        self._playout.queue.add_mark(name)

    def drain(self) -> None:
        self._draining = True
        self._playout.flush()
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
        reorder = self._reorder
        return {
            "rx_packets": reorder.delivered,
            **self._counters,
            "rx_lost": reorder.lost,
            "rx_late": reorder.late,
            "rx_duplicate": reorder.duplicates,
            "rx_reordered": reorder.reordered,
            "rx_jumps": reorder.jumps,
            "rx_ssrc_changes": reorder.ssrc_changes,
            "rx_restarts": reorder.restarts,
        }

    # ---- inbound ------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The hot path: a few comparisons, one unpack, one slice for a packet in order.
        if addr[0] != self._remote_host or addr[1] != self._remote_port:
            self._from_elsewhere(addr)
            return
        if len(data) > MAX_DATAGRAM:
            self._counters["rx_oversize"] += 1
            return
        try:
            # Same checks as RtpPacket.parse, without building an object (8x faster).
            payload_type, sequence, _ts, ssrc, _marker, payload = parse_header_fast(data)
        except RtpParseError as exc:
            self._counters["rx_bad"] += 1
            self._log.debug("rtp_rejected", reason=str(exc))
            return
        if payload_type != self._rx_payload_type:
            self._counters["rx_wrong_pt"] += 1
            return
        reorder = self._reorder
        if reorder.push(sequence, ssrc, payload):
            self._events.on_caller_audio(payload)
        elif reorder.ready:
            self._deliver(reorder.take_ready())

    def _from_elsewhere(self, addr: Any) -> None:
        counters = self._counters
        if self.remote is None:
            counters["rx_before_start"] += 1
            return
        counters["rx_wrong_source"] += 1
        if counters["rx_wrong_source"] in (1, 100, 10000):
            self._log.warning("rtp_wrong_source", source=f"{addr[0]}:{addr[1]}")

    def _deliver(self, payloads: Iterable[bytes]) -> None:
        on_caller_audio = self._events.on_caller_audio
        for payload in payloads:
            on_caller_audio(payload)

    def _fill_caller_silence(self, frames: int, skipped: int) -> None:
        reorder = self._reorder
        delivered = reorder.delivered
        if delivered != self._rx_delivered_seen:
            self._rx_delivered_seen = delivered
            self._rx_quiet_ticks = 0
            return
        quiet = self._rx_quiet_ticks = self._rx_quiet_ticks + frames + skipped
        fill = quiet - _CALLER_FILL_AFTER_TICKS + 1
        if fill <= 0 or reorder.holding:
            return
        fill = frames if fill > frames else fill
        self._counters["rx_silence_filled"] += fill
        silence, on_caller_audio = self._caller_silence, self._events.on_caller_audio
        for _ in range(fill):
            on_caller_audio(silence)

    # ---- outbound (called by the Ticker) ------------------------------------------------

    def on_tick(self, frames: int, skipped: int) -> None:
        transport, remote = self._transport, self.remote
        if transport is None or remote is None:
            return
        released = self._reorder.tick(frames + skipped)
        if released:
            self._deliver(released)
        if self._caller_silence_fill:
            self._fill_caller_silence(frames, skipped)
        playout = self._playout
        if skipped:
            self._sender.skip(skipped)
            playout.skip(skipped)
        for _ in range(frames):
            frame, marks = playout.next_frame()
            if frame is None and self._draining and not playout.holding:
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

    def _overflow(self, dropped: int) -> None:
        self._counters["tx_overflow_bytes"] += dropped
        if not self._overflowing:
            # Once per burst: a bot far ahead of real time would otherwise log every message.
            self._overflowing = True
            self._counters["tx_overflow_bursts"] += 1
            self._log.warning(
                "bot_audio_overflow", dropped_bytes=dropped, max_queue_ms=self._max_queue_ms
            )


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
