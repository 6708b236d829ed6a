"""The RTP-over-UDP media leg: one UDP socket per call, a thin shell over `RtpCore`.

The socket is bound before ExternalMedia is asked for (its address is `external_host`), and
every frame goes out from it: Asterisk's strict RTP locks onto the first source that sends to
it (asterisk-facts §7). Asterisk's own address is in the ExternalMedia channel's variables
(UNICASTRTP_LOCAL_ADDRESS/PORT). The formats differ for slin16 calls: Asterisk sends PT 118
but drops it inbound (§10), so those calls are answered in µ-law.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
from collections.abc import Mapping
from typing import Any

from ari.models import Channel
from bridge.logs import get_logger
from bridge.media.leg import MediaEvents, MediaFormats
from bridge.media.ports import PortPool
from bridge.media.rtp_core import RtpCore
from bridge.media.ticker import Ticker
from rtp.formats import AudioFormat
from rtp.transcode import spec_for_format

_BIND_ATTEMPTS = 16


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, leg: RtpLeg) -> None:
        self.datagram_received = leg.datagram_received  # type: ignore[method-assign]
        self._leg = leg

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a previous send: Asterisk's side is not there (yet).
        self._leg.count("icmp_errors")


class RtpLeg:
    transport = "rtp"

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
        tx_format = tx_format or audio_format
        self._events = events
        self._host = host
        self._pool = pool
        self._ticker = ticker
        self._format = audio_format
        self._asterisk_host = asterisk_host
        self._log = log or get_logger("bridge.rtp")
        self.formats = MediaFormats(spec_for_format(audio_format), spec_for_format(tx_format))
        self.core = RtpCore(
            events=events,
            audio_format=audio_format,
            tx_format=tx_format,
            max_queue_ms=max_queue_ms,
            silence_fill=silence_fill,
            caller_silence_fill=caller_silence_fill,
            playout_reserve_ms=playout_reserve_ms,
            reorder_window_ms=reorder_window_ms,
            rng=rng or random.SystemRandom(),
            log=self._log,
        )
        # The per-packet entry point is the core's own method: no extra call per datagram.
        self.datagram_received = self.core.datagram_received
        self._transport: asyncio.DatagramTransport | None = None
        self.port: int | None = None
        self._closed = False

    @property
    def remote(self) -> tuple[str, int] | None:
        return self.core.remote

    # ---- MediaLeg -----------------------------------------------------------------------

    async def open(self) -> Mapping[str, str]:
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
            return {
                "format": self._format.name,
                "encapsulation": "rtp",
                "transport": "udp",
                "external_host": f"{_host_for_url(self._host)}:{port}",
            }
        raise OSError(errno.EADDRINUSE, "no free RTP port in --rtp-ports")

    def start(self, channel: Channel) -> None:
        address = channel.channelvars.get("UNICASTRTP_LOCAL_ADDRESS", "")
        port_text = channel.channelvars.get("UNICASTRTP_LOCAL_PORT", "")
        if not port_text.isdigit():
            raise ValueError(f"ExternalMedia channel has no UNICASTRTP_LOCAL_PORT ({port_text!r})")
        if not address or ipaddress.ip_address(address).is_unspecified:
            # Asterisk bound its RTP to a wildcard; its packets come from the ARI host.
            address = self._asterisk_host
        self.core.set_remote((address, int(port_text)))
        self._ticker.add(self)

    def play(self, audio: bytes) -> None:
        self.core.outbound.play(audio)

    def clear(self) -> None:
        self.core.outbound.clear()

    def mark(self, name: str) -> None:
        self.core.outbound.mark(name)

    def drain(self) -> None:
        self.core.outbound.drain()
        if self._transport is None or self.core.remote is None:
            self._events.on_playout_drained()

    def close(self, *, hangup: bool | None = None) -> None:
        # RTP has no way to end the call on Asterisk's side: ARI hangs the channel up.
        if self._closed:
            return
        self._closed = True
        self._ticker.remove(self)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self.port is not None:
            self._pool.release(self.port)

    def log_fields(self) -> dict[str, Any]:
        return {"rtp_port": self.port}

    def describe(self) -> dict[str, Any]:
        return {"asterisk_rtp": self.core.remote}

    def stats(self) -> dict[str, int]:
        return self.core.stats()

    def count(self, name: str, n: int = 1) -> None:
        counters = self.core.counters
        counters[name] = counters.get(name, 0) + n

    # ---- the shared clock ---------------------------------------------------------------

    def on_tick(self, frames: int, skipped: int) -> None:
        transport = self._transport
        if transport is not None:
            self.core.tick(frames, skipped, transport.sendto)

    def on_tick_error(self, exc: Exception) -> None:
        self._log.error("rtp_tick_failed", error=repr(exc))
        self._events.on_media_failed(f"send failed: {exc!r}")


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
