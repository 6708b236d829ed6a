"""The UDP side of SimulatedAsterisk: Asterisk's end of each UnicastRTP channel's RTP.

`EmMedia` is one UnicastRTP channel's socket: what it received (through strict RTP, facts §7),
dropped and sent, always to `external_host` (§6). `SimCall` is one call's far end: its timeline
played on one deadline timer from the bridged moment, futures to await and RTP lists to assert on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, cast

from bridge.tools.sim.templates import STRICT_RTP_LEARN_SECONDS, EchoStream, StrictRtp, TimelineItem

Packet = tuple[float, bytes, tuple[str, int]]  # (loop.time() monotonic, datagram, address)
MAX_DATAGRAM = 2048  # more than any RTP packet Asterisk handles on a UnicastRTP channel


class EmMedia(asyncio.DatagramProtocol):
    """The UDP socket of one UnicastRTP channel: Asterisk's end of the RTP stream.

    Asterisk sends from here to `external_host` only (facts §6) and receives through strict
    RTP (§7). Per-packet work is an append and, for an echoing far end, one header rewrite.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, remote: tuple[str, int], fmt: str, keep: bool = True
    ) -> None:
        self._loop = loop
        self.remote = remote
        self.format = fmt
        self._keep = keep  # False: count packets only (soak runs must not grow per packet)
        self.packets_in = 0  # accepted
        self.packets_out = 0
        self.strict = StrictRtp(remote, learn_until=loop.time() + STRICT_RTP_LEARN_SECONDS)
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self.received: list[Packet] = []  # accepted, as Asterisk would `Got` them
        self.dropped: list[tuple[float, bytes, tuple[str, int], str]] = []  # ..., reason
        self.sent: list[Packet] = []
        self.send_errors = 0
        self.echo: EchoStream | None = None  # set while bridged to an echoing far end
        self.on_audio: Callable[[bytes], None] | None = None  # every accepted packet
        # wait_received(): conditions checked after every accepted packet
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = (host, port)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        now, source = self._loop.time(), (str(addr[0]), int(addr[1]))
        if len(data) < 12 or len(data) > MAX_DATAGRAM or data[0] >> 6 != 2:
            reason = "not_rtp"
        elif not self.strict.accept(source, now):
            reason = "strict_rtp"
        elif data[1] & 0x7F > 34:
            reason = "payload_type"  # dynamic PT without SDP: dropped by Asterisk (facts §10)
        else:
            self.packets_in += 1
            if self._keep:
                self.received.append((now, data, source))
            if self.on_audio is not None:
                self.on_audio(data)
            if self._waiters:
                self._wake()
            if self.echo is not None and self.format == "ulaw":
                echoed = self.echo.echo(data)
                if echoed is not None:
                    self.send(echoed)
            return
        if self._keep:
            self.dropped.append((now, data, source, reason))

    async def wait_received(self, condition: Callable[[], bool]) -> None:
        """Until `condition` (of `received`, say) holds, checked as each packet arrives."""
        if condition():
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((condition, waiter))
        try:
            await waiter
        finally:
            self._waiters = [(c, w) for c, w in self._waiters if w is not waiter]

    def _wake(self) -> None:
        for condition, waiter in self._waiters:
            if not waiter.done() and condition():
                waiter.set_result(None)

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1  # ICMP port unreachable: nobody listens at external_host (yet)

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.sendto(data, self.remote)
        self.packets_out += 1
        if self._keep:
            self.sent.append((self._loop.time(), data, self.remote))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_media(
    loop: asyncio.AbstractEventLoop,
    remote: tuple[str, int],
    fmt: str,
    ports: tuple[int, int],
    rng: random.Random,
    *,
    keep: bool = True,
) -> EmMedia:
    """Bind Asterisk's RTP socket: an even port in the rtp.conf range (facts §6)."""
    low, high = ports
    for _ in range(100):
        port = rng.randrange(low + low % 2, high + 1, 2)
        try:
            _, media = await loop.create_datagram_endpoint(
                lambda: EmMedia(loop, remote, fmt, keep), local_addr=("127.0.0.1", port)
            )
        except OSError:
            continue  # taken: Asterisk tries another port of its range as well
        return media
    raise OSError(f"no free even UDP port in {low}-{high}")


class SimCall:
    """One inbound call as the far end sees it; futures to await, lists to assert on."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        scenario: str,
        caller_id: str,
        caller_name: str,
        args: list[str],
        echo: bool,
        timeline: list[TimelineItem],
    ) -> None:
        self._loop = loop
        self.scenario, self.caller_id, self.caller_name = scenario, caller_id, caller_name
        self.args, self.echo = args, echo
        self.em_channel_id: str | None = None
        self.bridge_id: str | None = None
        self.media: EmMedia | None = None
        self.hung_up_by: str | None = None  # "caller" | "app" | "restart" (Asterisk restarted)
        self.continued_to: tuple[str, str, int] | None = None  # where `continue` sent it
        self.bridged: asyncio.Future[float] = loop.create_future()  # loop.time() of the moment
        self.ended: asyncio.Future[str] = loop.create_future()  # hung_up_by
        self.dtmf_sent: list[str] = []
        # What the far end got from the app: digits (loop.time() each ended, as Read() takes
        # them), the cause of our hang-up, and the bridge's ring-back / music on hold
        # (loop.time(), "start" | "stop", media URI or "moh:<class>").
        self.dtmf_received: list[tuple[float, str]] = []
        self.far_end_cause: int | None = None
        self.heard: list[tuple[float, str, str]] = []
        self.echo_stream: EchoStream | None = None  # an Echo() far end's stream, once bridged
        self._dtmf_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._timeline = timeline
        self._next = 0
        self._t0 = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._play: Callable[[SimCall, str, Any], None] | None = None

    def __repr__(self) -> str:
        return f"<SimCall {self.caller_id} {self.scenario} em={self.em_channel_id}>"

    def received_digit(self, now: float, digit: str) -> None:
        """A digit the app sent (POST /channels/{id}/dtmf) reached this far end."""
        self.dtmf_received.append((now, digit))
        for count, waiter in list(self._dtmf_waiters):
            if len(self.dtmf_received) >= count and not waiter.done():
                waiter.set_result(None)
                self._dtmf_waiters.remove((count, waiter))

    async def wait_dtmf(self, count: int) -> list[tuple[float, str]]:
        """Until the far end has received `count` digits from the app."""
        if len(self.dtmf_received) < count:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._dtmf_waiters.append((count, waiter))
            await waiter
        return self.dtmf_received[:count]

    @property
    def digits_received(self) -> str:
        return "".join(digit for _, digit in self.dtmf_received)

    @property
    def hearing(self) -> list[str]:
        """What the bridge plays to the far end now (ring-back, music on hold), from `heard`."""
        playing: list[str] = []
        for _, change, media in self.heard:
            if change == "start":
                playing.append(media)
            elif media in playing:
                playing.remove(media)
        return playing

    @property
    def rtp_received(self) -> list[Packet]:
        return self.media.received if self.media else []

    @property
    def rtp_sent(self) -> list[Packet]:
        return self.media.sent if self.media else []

    @property
    def rtp_dropped(self) -> list[tuple[float, bytes, tuple[str, int], str]]:
        return self.media.dropped if self.media else []

    def start(self, now: float, play: Callable[[SimCall, str, Any], None]) -> None:
        """The bridged moment: the far end's timeline runs from `now`."""
        self._t0, self._play = now, play
        self.bridged.set_result(now)
        self._tick()

    def _tick(self) -> None:
        # Absolute deadlines from the bridged moment: a late tick catches up, never drifts.
        self._timer = None
        now = self._loop.time()
        while self._next < len(self._timeline) and not self.ended.done():
            offset, kind, payload = self._timeline[self._next]
            deadline = self._t0 + offset
            if deadline > now:
                self._timer = self._loop.call_at(deadline, self._tick)
                return
            self._next += 1
            if self._play is not None:
                self._play(self, kind, payload)

    def finish(self, by: str) -> None:
        self.cancel_timer()
        if not self.ended.done():
            self.hung_up_by = by
            self.ended.set_result(by)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
