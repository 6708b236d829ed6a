"""The pure core of the RTP leg: what one ExternalMedia RTP stream does, without the socket.

Inbound: a datagram is accepted only from the address Asterisk announced for this channel
(UNICASTRTP_LOCAL_ADDRESS/PORT), only if it is valid RTP of the format the channel sends;
anything else is counted and dropped, never fatal. Accepted packets go through a small
reorder window (`rtp.jitter`) that costs nothing while they come in order, then to the call;
caller silence is filled in while the RTP stops (`bridge.media.pacing.CallerFill`).

Outbound: each tick of the shared clock sends one frame of `tx_format`, numbered by
`rtp.sender.RtpSender`, through the `sendto` the adapter passes: the bot's audio when some is
queued (`bridge.media.pacing.Outbound`), silence otherwise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

from bridge.errors import RtpParseError
from bridge.media.leg import MediaEvents
from bridge.media.pacing import PTIME_MS, CallerFill, Outbound
from rtp.formats import AudioFormat
from rtp.jitter import ReorderBuffer
from rtp.packet import MAX_DATAGRAM, parse_header_fast
from rtp.sender import RtpSender

SendTo = Callable[[bytes, tuple[str, int]], None]


class RtpCore:
    def __init__(
        self,
        *,
        events: MediaEvents,
        audio_format: AudioFormat,
        tx_format: AudioFormat,
        max_queue_ms: int = 2000,
        silence_fill: bool = True,
        caller_silence_fill: bool = True,
        playout_reserve_ms: int = 40,
        reorder_window_ms: int = 40,
        rng: random.Random,
        log: Any,
    ) -> None:
        if playout_reserve_ms < 0 or reorder_window_ms < 0:
            raise ValueError("playout_reserve_ms and reorder_window_ms must not be negative")
        self._events = events
        self._log = log
        self._rx_payload_type = int(audio_format.payload_type)
        self._sender = RtpSender(
            tx_format,
            ssrc=rng.getrandbits(32),
            sequence_number=rng.getrandbits(16),
            timestamp=rng.getrandbits(32),
        )
        self.outbound = Outbound(
            events=events,
            frame_bytes=tx_format.frame_bytes(),
            silence=tx_format.silence(),
            max_queue_ms=max_queue_ms,
            playout_reserve_ms=playout_reserve_ms,
            silence_fill=silence_fill,
            log=log,
        )
        self._reorder = ReorderBuffer(math.ceil(reorder_window_ms / PTIME_MS))
        self._fill = CallerFill(events, audio_format.silence()) if caller_silence_fill else None
        self.remote: tuple[str, int] | None = None
        # The remote's parts, for the per-packet check; None matches no source before start.
        self._remote_host: str | None = None
        self._remote_port: int | None = None
        self.counters: dict[str, int] = {
            "rx_bad": 0,
            "rx_wrong_source": 0,
            "rx_wrong_pt": 0,
            "rx_oversize": 0,
            "rx_before_start": 0,
            "icmp_errors": 0,
        }

    def set_remote(self, remote: tuple[str, int]) -> None:
        self.remote = remote
        self._remote_host, self._remote_port = remote

    # ---- inbound ------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The hot path: a few comparisons, one unpack, one slice for a packet in order.
        if addr[0] != self._remote_host or addr[1] != self._remote_port:
            self._from_elsewhere(addr)
            return
        if len(data) > MAX_DATAGRAM:
            self.counters["rx_oversize"] += 1
            return
        try:
            # Same checks as RtpPacket.parse, without building an object (8x faster).
            payload_type, sequence, _ts, ssrc, _marker, payload = parse_header_fast(data)
        except RtpParseError as exc:
            self.counters["rx_bad"] += 1
            self._log.debug("rtp_rejected", reason=str(exc))
            return
        if payload_type != self._rx_payload_type:
            self.counters["rx_wrong_pt"] += 1
            return
        reorder = self._reorder
        if reorder.push(sequence, ssrc, payload):
            self._events.on_caller_audio(payload)
        elif reorder.ready:
            self._deliver(reorder.take_ready())

    def _from_elsewhere(self, addr: Any) -> None:
        counters = self.counters
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

    # ---- outbound (one call per tick of the shared clock) -------------------------------

    def tick(self, frames: int, skipped: int, sendto: SendTo) -> None:
        remote = self.remote
        if remote is None:
            return
        reorder = self._reorder
        released = reorder.tick(frames + skipped)
        if released:
            self._deliver(released)
        if self._fill is not None:
            self._fill.tick(frames, skipped, reorder.delivered, holding=reorder.holding)
        if skipped:
            self._sender.skip(skipped)
        packet = self._sender.packet
        self.outbound.tick(frames, skipped, lambda frame, marker: sendto(packet(frame, marker),
                                                                          remote))

    def stats(self) -> dict[str, int]:
        reorder = self._reorder
        return {
            "rx_packets": reorder.delivered,
            "rx_silence_filled": self._fill.filled if self._fill is not None else 0,
            **self.outbound.counters,
            "tx_queued_ms": self.outbound.queued_ms,
            **self.counters,
            "rx_lost": reorder.lost,
            "rx_late": reorder.late,
            "rx_duplicate": reorder.duplicates,
            "rx_reordered": reorder.reordered,
            "rx_jumps": reorder.jumps,
            "rx_ssrc_changes": reorder.ssrc_changes,
            "rx_restarts": reorder.restarts,
        }
