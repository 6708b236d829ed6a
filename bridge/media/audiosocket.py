"""The AudioSocket-over-TCP media leg: one listener for every call, a thin shell per call over
`AudioSocketCore` (`bridge.media.audiosocket_core`, which does the media).

Asterisk dials us (asterisk-features "AudioSocket"): the bridge listens on one TCP port
(`AudioSocketListener`), bound before any ExternalMedia is asked for, since Asterisk connects
while it handles the REST request (fixture `audiosocket`: the connection may come before the
REST answer). Every connection starts with a UUID frame, which says whose it is:

    waiting for the UUID --first byte not 0x01 / bad frame / timeout------> refused, closed
        |
        +-- UUID an ARI leg expects (`expect`) ----------------------------> that leg's
        +-- UUID of a leg already connected, or of a call that ended ------> refused, closed
        +-- any other UUID, `on_dialplan_call` given and it takes the call -> a new
        |   `DialplanAudioSocketLeg`
        +-- any other UUID, no dialplan calls wanted ----------------------> refused, closed

A refusal is logged (`audiosocket_rejected` with the reason) and touches no other connection.

Once attached, the leg feeds the connection's frames to the core and, on every tick of the
shared clock, writes what the core sends; a transport that stops reading fails the call.

Ending: Asterisk ends a call by closing the connection (never by 0x00): `on_media_ended`.
`close()` of an ARI leg just closes the connection (ARI deletes the channel itself); a
dialplan leg, which has no ARI channel to delete, sends 0x00 first (`hangup_on_close`), which
ends the call in Asterisk within a millisecond (fixture `audiosocket_dialplan`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID, uuid4

from ari.models import Channel
from bridge.errors import AudioSocketError
from bridge.logs import get_logger
from bridge.media.audiosocket_codec import (
    MAX_AUDIO_PAYLOAD,
    AudioSocketDecoder,
    Frame,
    Kind,
    encode_hangup,
    uuid_of,
)
from bridge.media.audiosocket_core import AudioSocketCore, slin_spec
from bridge.media.leg import MediaEvents, MediaFormats
from bridge.media.ticker import Ticker

# Given the new connection's UUID and its leg, returns what the leg reports to (the new
# call), or None to refuse the call.
DialplanCallback = Callable[[UUID, "DialplanAudioSocketLeg"], MediaEvents | None]
_EXPIRED_KEPT = 4096


class AudioSocketLeg:
    """The ARI mode: ExternalMedia `encapsulation=audiosocket`, Asterisk dials the listener
    with the UUID `open()` registered. Implements `bridge.media.leg.MediaLeg`."""

    transport = "audiosocket"
    hangup_on_close = False

    def __init__(
        self,
        *,
        events: MediaEvents | None,
        listener: AudioSocketListener,
        ticker: Ticker,
        sample_rate: int = 8000,
        connect_timeout: float = 5.0,
        max_queue_ms: int = 2000,
        silence_fill: bool = True,
        caller_silence_fill: bool = True,
        playout_reserve_ms: int = 40,
        max_write_buffer_ms: int = 1000,
        hangup_on_close: bool | None = None,
        log: Any = None,
    ) -> None:
        spec = slin_spec(sample_rate)
        self.formats = MediaFormats(spec, spec)
        self._listener = listener
        self._ticker = ticker
        self._connect_timeout = connect_timeout
        self._max_write_buffer_ms = max_write_buffer_ms
        if hangup_on_close is not None:
            self.hangup_on_close = hangup_on_close
        self._log = log or get_logger("bridge.audiosocket")
        self._core_options: dict[str, Any] = {
            "sample_rate": sample_rate,
            "max_queue_ms": max_queue_ms,
            "silence_fill": silence_fill,
            "caller_silence_fill": caller_silence_fill,
            "playout_reserve_ms": playout_reserve_ms,
        }
        self.core: AudioSocketCore
        self._events: MediaEvents | None = None
        if events is not None:
            self._bind_core(events)
        self.uuid: UUID | None = None
        self._connection: AudioSocketConnection | None = None
        self.peer: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def _bind_core(self, events: MediaEvents) -> None:
        self._events = events
        self.core = AudioSocketCore(events=events, log=self._log, **self._core_options)

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def accepts_connection(self) -> bool:
        return not self._closed and self._connection is None and self.core.finished is None

    # ---- MediaLeg -----------------------------------------------------------------------

    async def open(self) -> Mapping[str, str]:
        self.uuid = uuid4()
        self._listener.expect(self.uuid, self)
        return {
            "format": "slin" if self.formats.tx.sample_rate == 8000 else
                      f"slin{self.formats.tx.sample_rate // 1000}",
            "encapsulation": "audiosocket",
            "transport": "tcp",
            "external_host": self._listener.external_host,
            "data": str(self.uuid),
        }  # fmt: skip

    def start(self, channel: Channel) -> None:
        if self._closed or self._connection is not None or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._connect_timeout, self._never_connected)

    def play(self, audio: bytes) -> None:
        self.core.outbound.play(audio)

    def clear(self) -> None:
        self.core.clear()

    def mark(self, name: str) -> None:
        self.core.outbound.mark(name)

    def drain(self) -> None:
        if self._connection is None:  # nothing can be played: drained now
            assert self._events is not None
            self._events.on_playout_drained()
            return
        self.core.outbound.drain()

    def close(self, *, hangup: bool | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if hangup is not None:
            self.hangup_on_close = hangup
        self._cancel_timer()
        self._ticker.remove(self)
        if self._events is not None:
            self.core.stop()
        if self.uuid is not None:
            self._listener.forget(self.uuid)
        connection = self._connection
        if connection is not None:
            if self.hangup_on_close:
                connection.write(encode_hangup())
            connection.close()

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"audiosocket_uuid": str(self.uuid) if self.uuid else None}
        if self.peer is not None:
            fields["audiosocket_peer"] = self.peer
        return fields

    def describe(self) -> dict[str, Any]:
        return {"audiosocket_peer": self.peer, "audiosocket_rate": self.core.wire_rate}

    def stats(self) -> dict[str, int]:
        # A dialplan leg whose call was refused is closed before it was ever bound.
        return self.core.stats() if self._events is not None else {}

    # ---- the connection (called by the listener's AudioSocketConnection) ----------------

    def attach(self, connection: AudioSocketConnection) -> None:
        self._cancel_timer()
        self._connection = connection
        self.peer = connection.peer
        self._log.info("audiosocket_connected", audiosocket_peer=self.peer)
        self._ticker.add(self)

    def frames_received(self, frames: list[Frame]) -> None:
        core = self.core
        core.receive(frames)
        if core.finished is not None:
            self._drop_connection(abort=False)

    def protocol_error(self, reason: str) -> None:
        self._log.warning("audiosocket_protocol_error", reason=reason)
        self.core.fail(f"AudioSocket protocol error: {reason}")
        self._drop_connection(abort=True)

    def connection_lost(self, exc: Exception | None, reason: str) -> None:
        self._connection = None
        self._ticker.remove(self)
        if exc is not None:
            self.core.fail(f"AudioSocket connection lost: {exc!r}")
        else:
            self.core.end(reason)

    # ---- the shared clock ---------------------------------------------------------------

    def on_tick(self, frames: int, skipped: int) -> None:
        connection = self._connection
        if connection is None:
            return
        transport = connection.transport
        self.core.tick(frames, skipped, transport.write)
        buffered = transport.get_write_buffer_size()
        if buffered and buffered > self.core.wire_bytes(self._max_write_buffer_ms):
            self._log.warning("audiosocket_not_reading", buffered_bytes=buffered)
            self.core.fail(f"Asterisk is not reading the AudioSocket ({buffered} bytes unsent)")
            self._drop_connection(abort=True)

    def on_tick_error(self, exc: Exception) -> None:
        self._log.error("audiosocket_tick_failed", error=repr(exc))
        self.core.fail(f"send failed: {exc!r}")
        self._drop_connection(abort=True)

    # ---- details ------------------------------------------------------------------------

    def _never_connected(self) -> None:
        self._timer = None
        if self._connection is None and not self._closed:
            self._log.warning("audiosocket_never_connected", timeout=self._connect_timeout)
            self.core.fail("AudioSocket connection never came")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _drop_connection(self, *, abort: bool) -> None:
        self._ticker.remove(self)
        connection = self._connection
        if connection is not None:
            connection.close(abort=abort)


class DialplanAudioSocketLeg(AudioSocketLeg):
    """The dialplan mode (`AudioSocket(uuid,host:port)`, `Dial(AudioSocket/host:port/uuid)`):
    made by the listener for a connection nobody expected, already connected. `open()`
    returns {} and `start()` does nothing; `close()` sends 0x00 (hang up) before closing.
    It reports to the events the `on_dialplan_call` callback returned (`bind`)."""

    hangup_on_close = True

    def __init__(
        self,
        *,
        uuid: UUID,
        connection: AudioSocketConnection,
        listener: AudioSocketListener,
        ticker: Ticker,
        **options: Any,
    ) -> None:
        super().__init__(events=None, listener=listener, ticker=ticker, **options)
        self.uuid = uuid
        self._pending = connection
        self.peer = connection.peer

    def bind(self, events: MediaEvents) -> None:
        """Report to `events` from now on and start the media (ticking, silence)."""
        self._bind_core(events)
        self.attach(self._pending)

    async def open(self) -> Mapping[str, str]:
        return {}

    def start(self, channel: Channel) -> None:
        pass


class AudioSocketConnection(asyncio.Protocol):
    """One accepted TCP connection: waits for its UUID frame, then feeds its leg."""

    def __init__(self, listener: AudioSocketListener) -> None:
        self._listener = listener
        self._decoder = AudioSocketDecoder(listener.max_payload)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = "?"
        self.leg: AudioSocketLeg | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._close_reason: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self._listener._connections.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._listener.uuid_timeout, self._uuid_timeout)

    def data_received(self, data: bytes) -> None:
        leg = self.leg
        if leg is None:
            self._identify(data)
            return
        try:
            frames = self._decoder.feed(data)
        except AudioSocketError as exc:
            leg.protocol_error(str(exc))
            return
        if frames:
            leg.frames_received(frames)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener._connections.discard(self)
        self._cancel_timer()
        leg = self.leg
        if leg is None:
            if not self._closing:
                self._listener.reject(self, "connection closed before its UUID frame")
            return
        reason = self._close_reason or "Asterisk closed the AudioSocket connection"
        try:
            self._decoder.eof()
        except AudioSocketError as error:
            reason = f"{reason} ({error})"
        leg.connection_lost(exc, reason)

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self, *, abort: bool = False, reason: str | None = None) -> None:
        self._closing = True
        self._close_reason = reason
        self._cancel_timer()
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def _identify(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._decoder.pending and data[0] != Kind.UUID:
            self._listener.reject(self, f"first frame is kind 0x{data[0]:02x}, not a UUID")
            return
        try:
            frames = self._decoder.feed(data)
        except AudioSocketError as exc:
            self._listener.reject(self, str(exc))
            return
        if not frames:
            return  # the UUID frame is not complete yet: at most 18 bytes wait
        self._cancel_timer()
        leg = self._listener.route(uuid_of(frames[0]), self)
        if leg is not None:
            self.leg = leg
            if len(frames) > 1:
                leg.frames_received(frames[1:])

    def _uuid_timeout(self) -> None:
        self._timer = None
        if self.leg is None and not self._closing:
            self._listener.reject(self, "no UUID frame within the timeout")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class AudioSocketListener:
    """The one TCP server Asterisk's AudioSocket connections reach, for every call."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ticker: Ticker,
        advertise_host: str | None = None,
        on_dialplan_call: DialplanCallback | None = None,
        dialplan_sample_rate: int = 8000,
        dialplan_leg_options: Mapping[str, Any] | None = None,
        uuid_timeout: float = 5.0,
        max_payload: int = MAX_AUDIO_PAYLOAD,
        log: Any = None,
    ) -> None:
        if advertise_host is None and host in ("", "0.0.0.0", "::"):
            raise ValueError("listening on a wildcard address: give the address Asterisk dials")
        slin_spec(dialplan_sample_rate)
        self._host = host
        self._port = port
        self._advertise_host = advertise_host or host
        self._ticker = ticker
        self._on_dialplan_call = on_dialplan_call
        self._dialplan_sample_rate = dialplan_sample_rate
        self._dialplan_leg_options = dict(dialplan_leg_options or {})
        self.uuid_timeout = uuid_timeout
        self.max_payload = max_payload
        self._log = log or get_logger("bridge.audiosocket")
        self._server: asyncio.Server | None = None
        self._connections: set[AudioSocketConnection] = set()
        self._expected: dict[UUID, AudioSocketLeg] = {}
        self._connected: dict[UUID, AudioSocketLeg] = {}
        self._expired: OrderedDict[UUID, None] = OrderedDict()
        self.address: tuple[str, int] | None = None
        self.counters = {"accepted": 0, "rejected": 0, "dialplan_calls": 0}

    @property
    def external_host(self) -> str:
        """host:port as Asterisk dials it (ExternalMedia `external_host`)."""
        if self.address is None:
            raise RuntimeError("the AudioSocket listener is not started")
        host = self._advertise_host
        return f"[{host}]:{self.address[1]}" if ":" in host else f"{host}:{self.address[1]}"

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.protocol_factory, self._host, self._port)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (host, port)
        self._log.info("audiosocket_listening", address=f"{host}:{port}",
                       external_host=self.external_host)  # fmt: skip

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self._connections):
            connection.close(reason="the AudioSocket listener closed")
        if server is not None:
            await server.wait_closed()

    def protocol_factory(self) -> AudioSocketConnection:
        return AudioSocketConnection(self)

    # ---- the registry of UUIDs ----------------------------------------------------------

    def expect(self, value: UUID, leg: AudioSocketLeg) -> None:
        """An ARI leg's UUID: its connection goes to `leg`."""
        self._expected[value] = leg

    def forget(self, value: UUID) -> None:
        """The call of `value` ended: a connection with it from now on is refused."""
        self._expected.pop(value, None)
        self._connected.pop(value, None)
        self._expired[value] = None
        if len(self._expired) > _EXPIRED_KEPT:
            self._expired.popitem(last=False)

    def route(self, value: UUID, connection: AudioSocketConnection) -> AudioSocketLeg | None:
        """The leg an identified connection belongs to; None if refused (then closed)."""
        leg = self._expected.pop(value, None)
        if leg is not None and leg.accepts_connection:
            self._connected[value] = leg
            self.counters["accepted"] += 1
            leg.attach(connection)
            return leg
        if leg is not None:
            reason = "UUID of a call that has failed"
        elif value in self._connected:
            reason = "UUID already connected"
        elif value in self._expired:
            reason = "UUID of a call that has ended"
        elif self._on_dialplan_call is None:
            reason = "unknown UUID (no dialplan calls taken)"
        else:
            leg, reason = self._dialplan_call(self._on_dialplan_call, value, connection)
            if leg is not None:
                return leg
        self.reject(connection, reason, audiosocket_uuid=str(value))
        return None

    def _dialplan_call(
        self, callback: DialplanCallback, value: UUID, connection: AudioSocketConnection
    ) -> tuple[AudioSocketLeg | None, str]:
        leg = DialplanAudioSocketLeg(
            uuid=value, connection=connection, listener=self, ticker=self._ticker,
            sample_rate=self._dialplan_sample_rate, **self._dialplan_leg_options,
        )  # fmt: skip
        try:
            events = callback(value, leg)
        except Exception as exc:
            self._log.exception("audiosocket_dialplan_call_failed", audiosocket_uuid=str(value))
            events, reason = None, f"dialplan call not set up: {exc!r}"
        else:
            reason = "dialplan call refused"
        if events is None:
            return None, reason
        self._connected[value] = leg
        self.counters["accepted"] += 1
        self.counters["dialplan_calls"] += 1
        leg.bind(events)
        return leg, ""

    def reject(self, connection: AudioSocketConnection, reason: str, **fields: Any) -> None:
        self.counters["rejected"] += 1
        self._log.warning("audiosocket_rejected", reason=reason, peer=connection.peer, **fields)
        connection.close(abort=False)


__all__ = [
    "AudioSocketConnection",
    "AudioSocketLeg",
    "AudioSocketListener",
    "DialplanAudioSocketLeg",
]
