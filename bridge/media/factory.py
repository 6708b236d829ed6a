"""Which media leg a call gets, and what each transport has room for.

    rtp          ExternalMedia over UnicastRTP: one UDP socket per call from --rtp-ports
    audiosocket  ExternalMedia encapsulation=audiosocket: Asterisk dials our one TCP listener
    websocket    ExternalMedia transport=websocket: we dial Asterisk's /media/<id>

The listeners (AudioSocket, chan_websocket client mode) also take calls from the dialplan
alone; the factory owns them, the controller is told of each such call.

Formats: `--format` names what Asterisk carries. RTP takes ulaw, alaw or slin16 (slin16 is
answered in µ-law: Asterisk drops the PT 118 it sends, asterisk-facts §10); AudioSocket
carries only slin, so it follows the format's rate (slin16 -> 16 kHz, any other -> 8 kHz);
chan_websocket takes all four as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.errors import ConfigError
from bridge.media.audiosocket import AudioSocketLeg, AudioSocketListener, DialplanCallback
from bridge.media.leg import MediaEvents, MediaLeg
from bridge.media.ports import PortPool
from bridge.media.rtp import RtpLeg
from bridge.media.ticker import Ticker
from bridge.media.websocket import WebSocketLeg
from bridge.media.websocket_server import DialplanCallback as WsDialplanCallback
from bridge.media.websocket_server import WebSocketMediaServer
from rtp.formats import SLIN16, ULAW, format_by_name

if TYPE_CHECKING:
    from bridge.service.config import Settings

TRANSPORTS = ("rtp", "audiosocket", "websocket")


class MediaFactory:
    def __init__(
        self,
        settings: Settings,
        ticker: Ticker,
        *,
        on_dialplan_audiosocket: DialplanCallback | None = None,
        on_dialplan_websocket: WsDialplanCallback | None = None,
    ) -> None:
        self._settings = s = settings
        self._ticker = ticker
        self.pool = PortPool(*s.rtp_ports)
        self._leg_options: dict[str, Any] = {
            "max_queue_ms": s.max_queue_ms,
            "silence_fill": s.silence_fill,
            "caller_silence_fill": s.caller_silence_fill,
            "playout_reserve_ms": s.playout_reserve_ms,
        }
        self.audiosocket: AudioSocketListener | None = None
        self.websocket: WebSocketMediaServer | None = None
        listen = parse_listen(s.audiosocket_listen, "--audiosocket-listen")
        if listen is not None:
            self.audiosocket = AudioSocketListener(
                host=listen[0],
                port=listen[1],
                ticker=ticker,
                advertise_host=None if listen[0] not in ("0.0.0.0", "::") else s.rtp_host,
                on_dialplan_call=on_dialplan_audiosocket,
                dialplan_sample_rate=audiosocket_rate(s.format),
                dialplan_leg_options=self._leg_options,
            )
        listen = parse_listen(s.websocket_listen, "--websocket-listen")
        if listen is not None and on_dialplan_websocket is not None:
            self.websocket = WebSocketMediaServer(
                host=listen[0],
                port=listen[1],
                ticker=ticker,
                on_dialplan_call=on_dialplan_websocket,
                dialplan_leg_options=self._leg_options,
            )

    async def start(self) -> None:
        """Bind the listeners: before any call, since Asterisk connects to the AudioSocket
        listener while it handles the externalMedia request."""
        if self.audiosocket is not None:
            await self.audiosocket.start()
        if self.websocket is not None:
            await self.websocket.start()

    async def close(self) -> None:
        if self.audiosocket is not None:
            await self.audiosocket.close()
        if self.websocket is not None:
            await self.websocket.close()

    def unavailable(self, transport: str, calls: Callable[[str], int]) -> str:
        """Why a new call on `transport` cannot be had now ("" if it can); `calls(name)`:
        how many calls use that transport now. Only RTP has a per-call resource to run out
        of (its UDP ports); the others share one listener or dial out."""
        if transport not in TRANSPORTS:
            return f"unknown transport {transport!r}"
        if transport == "audiosocket" and self.audiosocket is None:
            return "transport audiosocket needs --audiosocket-listen"
        if transport == "rtp" and calls("rtp") >= self.pool.size:
            return "no free RTP port"
        return ""

    def leg(self, transport: str, events: MediaEvents, log: Any) -> MediaLeg:
        s = self._settings
        if transport == "audiosocket":
            assert self.audiosocket is not None  # unavailable() said so
            return AudioSocketLeg(
                events=events,
                listener=self.audiosocket,
                ticker=self._ticker,
                sample_rate=audiosocket_rate(s.format),
                log=log,
                **self._leg_options,
            )
        if transport == "websocket":
            return WebSocketLeg(
                events=events,
                ticker=self._ticker,
                audio_format=s.format,
                ari_url=s.ari_url,
                json_control=s.websocket_control == "json",
                log=log,
                **self._leg_options,
            )
        fmt = format_by_name("ulaw" if s.format == "slin" else s.format)
        return RtpLeg(
            events=events,
            host=s.rtp_host,
            pool=self.pool,
            ticker=self._ticker,
            audio_format=fmt,
            asterisk_host=s.ari_host,
            tx_format=ULAW if fmt is SLIN16 else fmt,
            reorder_window_ms=s.reorder_window_ms,
            log=log,
            **self._leg_options,
        )


def audiosocket_rate(fmt: str) -> int:
    return 16000 if fmt == "slin16" else 8000


def parse_listen(text: str, flag: str) -> tuple[str, int] | None:
    """'HOST:PORT' or '[v6]:PORT' -> (host, port); '' -> None (listener off)."""
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag} must be HOST:PORT, got {text!r}")
    return host, int(port)
