"""The AudioSocket listener and legs over real loopback TCP, with a tiny AudioSocket client
playing Asterisk's side and the shared clock driven by hand: no timers waited on, no sleeps."""

from __future__ import annotations

import asyncio
import itertools
import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ari.models import Channel
from bridge.media.audiosocket import (
    AudioSocketLeg,
    AudioSocketListener,
    DialplanAudioSocketLeg,
)
from bridge.media.audiosocket_codec import (
    Frame,
    Kind,
    encode_audio,
    encode_dtmf,
    encode_error,
    encode_hangup,
    encode_uuid,
)
from bridge.media.audiosocket_core import AudioSocketCore
from bridge.media.ticker import Ticker
from rtp.transcode import AudioSpec

T = TypeVar("T")
CHANNEL = Channel("1795313749.95", "AudioSocket/127.0.0.1:31801-x", "Up")


class FakeTicker(Ticker):
    def add(self, member: Any) -> None:
        self._members[id(member)] = member

    def remove(self, member: Any) -> None:
        self._members.pop(id(member), None)

    def has(self, member: Any) -> bool:
        return id(member) in self._members


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for _level, event, fields in self.lines if event == name]


class Events:
    """A MediaEvents that records, and lets a test await what it has recorded."""

    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.dtmf: list[str] = []
        self.marks: list[str] = []
        self.drained = 0
        self.failed: list[str] = []
        self.ended: list[str] = []
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def on_caller_audio(self, payload: bytes) -> None:
        self.audio.append(payload)
        self._wake()

    def on_caller_dtmf(self, digit: str) -> None:
        self.dtmf.append(digit)
        self._wake()

    def on_marks_played(self, names: list[str]) -> None:
        self.marks.extend(names)

    def on_playout_drained(self) -> None:
        self.drained += 1

    def on_media_failed(self, reason: str) -> None:
        self.failed.append(reason)
        self._wake()

    def on_media_ended(self, reason: str) -> None:
        self.ended.append(reason)
        self._wake()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(2):
            while not condition():
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter


async def within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(2):
        return await awaitable


async def settle(condition: Callable[[], bool]) -> None:
    """Loopback data is in the peer's socket when send() returns: a few loop passes see it."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


class Client:
    """Asterisk's side of one AudioSocket connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, listener: AudioSocketListener, *frames: bytes) -> Client:
        assert listener.address is not None
        client = cls(*await asyncio.open_connection(*listener.address))
        client.send(*frames)
        return client

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    async def frame(self) -> tuple[int, bytes]:
        kind, length = struct.unpack("!BH", await within(self.reader.readexactly(3)))
        return kind, await within(self.reader.readexactly(length))

    async def frames(self, count: int) -> list[tuple[int, bytes]]:
        return [await self.frame() for _ in range(count)]

    async def rest(self) -> bytes:
        """Everything until the bridge closes the connection."""
        return await within(self.reader.read())

    def close(self) -> None:
        self.writer.close()


def slin(n: int, rate: int = 8000, ms: int = 20) -> bytes:
    """`ms` of 16-bit samples that name their frame and are not silence."""
    return struct.pack("<h", 1000 + n) * (rate * ms // 1000)


@pytest.fixture
def ticker() -> FakeTicker:
    return FakeTicker()


@pytest.fixture
def log() -> FakeLog:
    return FakeLog()


class Dialplan:
    """An on_dialplan_call that takes every call and reports it to its own Events."""

    def __init__(self) -> None:
        self.calls: list[tuple[uuid.UUID, DialplanAudioSocketLeg, Events]] = []

    def __call__(self, value: uuid.UUID, leg: DialplanAudioSocketLeg) -> Events:
        events = Events()
        self.calls.append((value, leg, events))
        return events


async def make_listener(ticker: FakeTicker, log: FakeLog, **options: Any) -> AudioSocketListener:
    listener = AudioSocketListener(host="127.0.0.1", port=0, ticker=ticker, log=log, **options)
    await listener.start()
    return listener


async def ari_call(
    listener: AudioSocketListener, ticker: FakeTicker, rate: int = 8000, **options: Any
) -> tuple[AudioSocketLeg, Events, Client]:
    """An ARI leg, opened and started, with Asterisk connected to it."""
    events = Events()
    leg = AudioSocketLeg(events=events, listener=listener, ticker=ticker, sample_rate=rate,
                         log=FakeLog(), **{"playout_reserve_ms": 0, **options})  # fmt: skip
    params = await leg.open()
    client = await Client.connect(listener, encode_uuid(uuid.UUID(params["data"])))
    leg.start(CHANNEL)
    await settle(lambda: leg.connected)
    return leg, events, client


# ---- routing by UUID ----------------------------------------------------------------------


async def test_open_registers_a_uuid_and_asterisk_connecting_with_it_attaches(
    ticker: FakeTicker, log: FakeLog
) -> None:
    listener = await make_listener(ticker, log)
    events = Events()
    leg = AudioSocketLeg(events=events, listener=listener, ticker=ticker, sample_rate=16000)
    params = await leg.open()
    assert listener.address is not None
    assert params == {
        "format": "slin16",
        "encapsulation": "audiosocket",
        "transport": "tcp",
        "external_host": f"127.0.0.1:{listener.address[1]}",
        "data": str(leg.uuid),
    }
    assert leg.formats.rx == leg.formats.tx == AudioSpec("pcm16le", 16000)
    # The connection comes before the REST answer (fixture `audiosocket`, second call).
    client = await Client.connect(listener, encode_uuid(uuid.UUID(params["data"])))
    await settle(lambda: leg.connected)
    leg.start(CHANNEL)
    assert ticker.has(leg)
    assert leg.log_fields()["audiosocket_uuid"] == params["data"]
    assert leg.describe()["audiosocket_peer"] == leg.log_fields()["audiosocket_peer"]
    client.send(encode_audio(Kind.SLIN16, slin(1, 16000)), encode_dtmf("5"))
    await events.until(lambda: events.dtmf == ["5"])
    assert events.audio == [slin(1, 16000)]
    assert log.events("audiosocket_rejected") == []
    leg.close()
    await listener.close()


async def test_an_unknown_uuid_is_a_dialplan_call(ticker: FakeTicker, log: FakeLog) -> None:
    dialplan = Dialplan()
    listener = await make_listener(ticker, log, on_dialplan_call=dialplan)
    value = uuid.uuid4()
    client = await Client.connect(listener, encode_uuid(value), encode_audio(Kind.SLIN, slin(1)))
    await settle(lambda: bool(dialplan.calls))
    got, leg, events = dialplan.calls[0]
    assert got == value == leg.uuid
    assert leg.transport == "audiosocket" and leg.connected and ticker.has(leg)
    assert await leg.open() == {}
    leg.start(CHANNEL)  # nothing to wait for
    await events.until(lambda: len(events.audio) == 1)
    assert events.audio == [slin(1)]  # the frame that came with the UUID
    leg.on_tick(1, 0)
    assert await client.frame() == (Kind.SLIN, bytes(320))
    # Its close hangs up: 0x00, then the connection closes.
    leg.close()
    assert await client.rest() == encode_hangup()
    assert not ticker.has(leg)
    assert (events.failed, events.ended) == ([], [])
    await listener.close()


async def test_a_dialplan_call_the_controller_refuses_is_closed(
    ticker: FakeTicker, log: FakeLog
) -> None:
    listener = await make_listener(ticker, log, on_dialplan_call=lambda value, leg: None)
    client = await Client.connect(listener, encode_uuid(uuid.uuid4()))
    assert await client.rest() == b""
    assert [f["reason"] for f in log.events("audiosocket_rejected")] == ["dialplan call refused"]
    await listener.close()


async def test_without_dialplan_calls_an_unknown_uuid_is_refused(
    ticker: FakeTicker, log: FakeLog
) -> None:
    listener = await make_listener(ticker, log)
    value = uuid.uuid4()
    client = await Client.connect(listener, encode_uuid(value))
    assert await client.rest() == b""
    (rejected,) = log.events("audiosocket_rejected")
    assert rejected["reason"] == "unknown UUID (no dialplan calls taken)"
    assert rejected["audiosocket_uuid"] == str(value)
    await listener.close()


async def test_a_second_connection_with_a_connected_uuid_is_refused(
    ticker: FakeTicker, log: FakeLog
) -> None:
    listener = await make_listener(ticker, log, on_dialplan_call=Dialplan())
    leg, events, client = await ari_call(listener, ticker)
    intruder = await Client.connect(listener, encode_uuid(leg.uuid))  # type: ignore[arg-type]
    assert await intruder.rest() == b""
    assert [f["reason"] for f in log.events("audiosocket_rejected")] == ["UUID already connected"]
    client.send(encode_audio(Kind.SLIN, slin(7)))  # the first one is untouched
    await events.until(lambda: len(events.audio) == 1)
    leg.close()
    await listener.close()


async def test_the_uuid_of_a_call_that_ended_is_refused(ticker: FakeTicker, log: FakeLog) -> None:
    listener = await make_listener(ticker, log, on_dialplan_call=Dialplan())
    events = Events()
    leg = AudioSocketLeg(events=events, listener=listener, ticker=ticker)
    params = await leg.open()
    leg.close()  # the call ended before Asterisk connected
    late = await Client.connect(listener, encode_uuid(uuid.UUID(params["data"])))
    assert await late.rest() == b""
    reasons = [f["reason"] for f in log.events("audiosocket_rejected")]
    assert reasons == ["UUID of a call that has ended"]
    assert (events.failed, events.ended) == ([], [])
    await listener.close()


async def test_no_uuid_within_the_timeout_closes_the_connection(
    ticker: FakeTicker, log: FakeLog
) -> None:
    listener = await make_listener(ticker, log, uuid_timeout=0.01)
    client = await Client.connect(listener)
    assert await client.rest() == b""
    assert [f["reason"] for f in log.events("audiosocket_rejected")] == [
        "no UUID frame within the timeout"
    ]
    await listener.close()


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (encode_audio(Kind.SLIN, slin(1)), "first frame is kind 0x10, not a UUID"),
        (encode_dtmf("1"), "first frame is kind 0x03, not a UUID"),
        (b"\x01\x00\x11" + bytes(17), "AudioSocket UUID payload is 17 bytes, not 16"),
    ],
)
async def test_a_first_frame_that_is_not_a_uuid_closes_the_connection(
    ticker: FakeTicker, log: FakeLog, first: bytes, reason: str
) -> None:
    listener = await make_listener(ticker, log, on_dialplan_call=Dialplan())
    client = await Client.connect(listener, first)
    assert await client.rest() == b""
    assert [f["reason"] for f in log.events("audiosocket_rejected")] == [reason]
    await listener.close()


async def test_an_oversized_frame_fails_its_call_only(ticker: FakeTicker, log: FakeLog) -> None:
    listener = await make_listener(ticker, log)
    bad_leg, bad_events, bad = await ari_call(listener, ticker)
    good_leg, good_events, good = await ari_call(listener, ticker)
    bad.send(b"\x10\x23\x28")  # 9000 bytes of audio announced: more than any frame
    assert await bad.rest() == b""
    assert bad_events.failed == [
        "AudioSocket protocol error: "
        "AudioSocket audio payload of 9000 bytes exceeds the 8192-byte limit"
    ]
    assert not ticker.has(bad_leg)
    good.send(encode_audio(Kind.SLIN, slin(3)))
    await good_events.until(lambda: len(good_events.audio) == 1)
    good_leg.on_tick(1, 0)
    assert await good.frame() == (Kind.SLIN, bytes(320))
    assert good_events.failed == []
    bad_leg.close()
    good_leg.close()
    await listener.close()


async def test_asterisk_never_connecting_fails_the_call(ticker: FakeTicker, log: FakeLog) -> None:
    listener = await make_listener(ticker, log)
    events = Events()
    leg = AudioSocketLeg(events=events, listener=listener, ticker=ticker, connect_timeout=0.01)
    await leg.open()
    leg.start(CHANNEL)
    await events.until(lambda: bool(events.failed))
    assert events.failed == ["AudioSocket connection never came"]
    leg.drain()  # nothing can be played: drained at once
    assert events.drained == 1
    leg.close()
    await listener.close()


async def test_listener_close_closes_every_connection(ticker: FakeTicker, log: FakeLog) -> None:
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker)
    waiting = await Client.connect(listener)  # has not sent its UUID yet
    await settle(lambda: listener.connections == 2)
    await listener.close()
    assert await client.rest() == b""
    assert await waiting.rest() == b""
    await events.until(lambda: bool(events.ended))
    assert events.ended == ["the AudioSocket listener closed"]
    leg.close()


# ---- audio and DTMF in --------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "kind"), [(8000, Kind.SLIN), (16000, Kind.SLIN16)])
async def test_caller_audio_reaches_the_call_frame_by_frame(
    ticker: FakeTicker, log: FakeLog, rate: int, kind: Kind
) -> None:
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker, rate=rate)
    frames = [slin(n, rate) for n in range(5)] + [slin(9, rate)[: rate // 1000 * 11 // 2 * 2]]
    client.send(*(encode_audio(kind, frame) for frame in frames))  # the beep's short last frame
    await events.until(lambda: len(events.audio) == len(frames))
    assert events.audio == frames
    assert leg.stats()["rx_frames"] == 6
    assert log.events("audiosocket_rate") == []
    leg.close()
    await listener.close()


async def test_dtmf_reaches_the_call(ticker: FakeTicker, log: FakeLog) -> None:
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker)
    client.send(encode_dtmf("1"), encode_audio(Kind.SLIN, slin(1)), encode_dtmf("#"))
    await events.until(lambda: len(events.dtmf) == 2)
    assert events.dtmf == ["1", "#"]
    assert events.audio == [slin(1)]
    assert leg.stats()["rx_dtmf"] == 2
    leg.close()
    await listener.close()


async def test_the_bot_hears_silence_while_the_caller_sends_nothing(
    ticker: FakeTicker, log: FakeLog
) -> None:
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker)
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    assert events.audio == [bytes(320)] * 2
    client.send(encode_audio(Kind.SLIN, slin(1)))
    await events.until(lambda: len(events.audio) == 3)
    leg.on_tick(1, 0)  # the caller's frame came this tick: no fill
    assert events.audio == [bytes(320)] * 2 + [slin(1)]
    assert leg.stats()["rx_silence_filled"] == 2
    leg.close()
    await listener.close()


# ---- audio out: one frame per tick --------------------------------------------------------


async def test_one_frame_per_tick_and_silence_when_the_bot_is_quiet(
    ticker: FakeTicker, log: FakeLog
) -> None:
    listener = await make_listener(ticker, log)
    leg, _events, client = await ari_call(listener, ticker)
    leg.on_tick(1, 0)
    assert await client.frame() == (Kind.SLIN, bytes(320))
    leg.play(slin(1) + slin(2)[:160])  # 1.5 frames: the half waits for more audio
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    assert await client.frames(2) == [(Kind.SLIN, slin(1)), (Kind.SLIN, bytes(320))]
    leg.play(slin(2)[160:])
    leg.on_tick(1, 0)
    assert await client.frame() == (Kind.SLIN, slin(2))
    leg.on_tick(2, 0)  # a late tick: two frames, no more
    assert await client.frames(2) == [(Kind.SLIN, bytes(320))] * 2
    assert leg.stats()["tx_packets"] == 6
    assert leg.stats()["tx_silence"] == 4
    leg.close()
    assert await client.rest() == b""  # an ARI leg just closes: no 0x00
    await listener.close()


async def test_marks_come_once_the_audio_before_them_was_sent(
    ticker: FakeTicker, log: FakeLog
) -> None:
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker)
    leg.play(slin(1) + slin(2))
    leg.mark("two")
    leg.play(slin(3))
    leg.mark("three")
    leg.on_tick(1, 0)
    assert events.marks == []
    leg.on_tick(1, 0)
    assert events.marks == ["two"]
    assert await client.frames(2) == [(Kind.SLIN, slin(1)), (Kind.SLIN, slin(2))]
    leg.on_tick(1, 0)
    assert events.marks == ["two", "three"]
    leg.close()
    await listener.close()


async def test_clear_drops_the_queue(ticker: FakeTicker, log: FakeLog) -> None:
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker)
    leg.play(slin(1) + slin(2) + slin(3))
    leg.mark("end")
    leg.on_tick(1, 0)
    leg.clear()
    assert events.marks == ["end"]
    leg.on_tick(2, 0)
    assert await client.frames(3) == [(Kind.SLIN, slin(1))] + [(Kind.SLIN, bytes(320))] * 2
    leg.close()
    await listener.close()


async def test_drain_reports_once_everything_was_sent(ticker: FakeTicker, log: FakeLog) -> None:
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker)
    leg.play(slin(1) + slin(2)[:100])
    leg.drain()  # the tail is padded to a frame
    leg.on_tick(2, 0)
    assert events.drained == 0
    assert await client.frames(2) == [(Kind.SLIN, slin(1)), (Kind.SLIN, slin(2)[:100] + bytes(220))]
    leg.on_tick(1, 0)
    assert events.drained == 1
    leg.close()
    await listener.close()


async def test_the_rate_asterisk_sends_is_answered_converted(
    ticker: FakeTicker, log: FakeLog
) -> None:
    # Declared 8 kHz, but Asterisk sends slin16 (0x12): the call still sees 8 kHz both ways.
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker, rate=8000)
    leg.on_tick(1, 0)
    assert await client.frame() == (Kind.SLIN, bytes(320))  # before Asterisk's first audio
    client.send(*(encode_audio(Kind.SLIN16, slin(n, 16000)) for n in range(3)))
    await events.until(lambda: len(events.audio) == 4)  # after one frame of caller fill
    assert [len(frame) for frame in events.audio] == [320] * 4
    assert leg.formats.rx == AudioSpec("pcm16le", 8000)
    leg.play(slin(1) * 3)
    leg.on_tick(3, 0)
    frames = await client.frames(3)
    assert [(kind, len(payload)) for kind, payload in frames] == [(Kind.SLIN16, 640)] * 3
    # A steady 1001 at 8 kHz is a steady 1001 at 16 kHz once the filter has filled.
    assert set(struct.unpack("<320h", frames[2][1])) == {1001}
    (rate,) = leg._log.events("audiosocket_rate")
    assert rate == {"asterisk_rate": 16000, "declared_rate": 8000, "converted": True}
    assert leg.describe()["audiosocket_rate"] == 16000
    leg.close()
    await listener.close()


# ---- the end ------------------------------------------------------------------------------


async def test_asterisk_closing_ends_the_media(ticker: FakeTicker, log: FakeLog) -> None:
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker)
    client.close()
    await events.until(lambda: bool(events.ended))
    assert events.ended == ["Asterisk closed the AudioSocket connection"]
    assert not ticker.has(leg) and not leg.connected
    leg.close()
    assert events.failed == []
    await listener.close()


@pytest.mark.parametrize(
    ("frame", "ended", "failed"),
    [
        (encode_hangup(), "Asterisk sent an AudioSocket hang-up frame", None),
        (
            encode_error(2),
            None,
            "Asterisk sent an AudioSocket error frame (code 0x02: frame forwarding)",
        ),
        (encode_error(), None, "Asterisk sent an AudioSocket error frame (no code)"),
        (encode_uuid(uuid.uuid4()), None, "Asterisk sent a second AudioSocket UUID frame"),
    ],
)
async def test_frames_asterisk_never_sends_end_the_call(
    ticker: FakeTicker, log: FakeLog, frame: bytes, ended: str | None, failed: str | None
) -> None:
    listener = await make_listener(ticker, log)
    leg, events, client = await ari_call(listener, ticker)
    client.send(frame, encode_audio(Kind.SLIN, slin(1)))  # nothing after it counts
    assert await client.rest() == b""
    assert events.ended == ([ended] if ended else [])
    assert events.failed == ([failed] if failed else [])
    assert events.audio == []
    leg.close()
    await listener.close()


# ---- with a fake transport: a write buffer that grows, arbitrary TCP reads ----------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.closed = self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def test_asterisk_not_reading_fails_the_call(ticker: FakeTicker, log: FakeLog) -> None:
    dialplan = Dialplan()
    listener = AudioSocketListener(host="127.0.0.1", port=0, ticker=ticker, log=log,
                                   on_dialplan_call=dialplan)  # fmt: skip
    connection, transport = listener.protocol_factory(), FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(encode_uuid(uuid.uuid4()))
    (_value, leg, events) = dialplan.calls[0]
    transport.buffered = 50 * 323  # one second of slin on the wire: still acceptable
    leg.on_tick(1, 0)
    assert events.failed == []
    transport.buffered += 1
    leg.on_tick(1, 0)
    assert events.failed == ["Asterisk is not reading the AudioSocket (16151 bytes unsent)"]
    assert transport.aborted and not ticker.has(leg)
    connection.connection_lost(None)
    assert events.ended == []


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_any_split_of_the_stream_gives_the_same_frames(cuts: list[int]) -> None:
    value = uuid.uuid4()
    audio = [slin(n)[: 320 - 2 * n] for n in range(4)]
    stream = b"".join(
        [encode_uuid(value), encode_audio(Kind.SLIN, audio[0]), encode_dtmf("7")]
        + [encode_audio(Kind.SLIN, frame) for frame in audio[1:]]
    )
    points = sorted({cut % len(stream) for cut in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]

    async def scenario() -> None:
        dialplan, log = Dialplan(), FakeLog()
        listener = AudioSocketListener(host="127.0.0.1", port=0, ticker=FakeTicker(), log=log,
                                       on_dialplan_call=dialplan)  # fmt: skip
        connection, transport = listener.protocol_factory(), FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            connection.data_received(chunk)
        connection.connection_lost(None)
        ((got, _leg, events),) = dialplan.calls
        assert got == value
        assert events.audio == audio
        assert events.dtmf == ["7"]
        assert events.ended == ["Asterisk closed the AudioSocket connection"]
        assert log.events("audiosocket_rejected") == []

    asyncio.run(scenario())


def test_a_stream_cut_inside_a_frame_says_so() -> None:
    async def scenario() -> None:
        dialplan = Dialplan()
        listener = AudioSocketListener(host="127.0.0.1", port=0, ticker=FakeTicker(),
                                       log=FakeLog(), on_dialplan_call=dialplan)  # fmt: skip
        connection = listener.protocol_factory()
        connection.connection_made(FakeTransport())  # type: ignore[arg-type]
        connection.data_received(encode_uuid(uuid.uuid4()) + encode_audio(Kind.SLIN, slin(1))[:9])
        connection.connection_lost(None)
        ((_got, _leg, events),) = dialplan.calls
        assert events.ended == [
            "Asterisk closed the AudioSocket connection "
            "(AudioSocket stream ended inside a frame (9 bytes pending))"
        ]

    asyncio.run(scenario())


def test_bad_settings_are_refused(ticker: FakeTicker) -> None:
    with pytest.raises(ValueError, match="wildcard"):
        AudioSocketListener(host="0.0.0.0", port=0, ticker=ticker)
    with pytest.raises(ValueError):
        AudioSocketListener(host="127.0.0.1", port=0, ticker=ticker, dialplan_sample_rate=11025)
    listener = AudioSocketListener(host="0.0.0.0", port=0, ticker=ticker, advertise_host="10.0.0.5")
    with pytest.raises(RuntimeError):
        _ = listener.external_host
    with pytest.raises(ValueError):
        AudioSocketLeg(events=Events(), listener=listener, ticker=ticker, sample_rate=44100)


# ---- the pure core alone ------------------------------------------------------------------


def test_the_core_fails_a_rate_it_cannot_convert() -> None:
    events = Events()
    core = AudioSocketCore(events=events, sample_rate=8000, log=FakeLog())
    core.receive([Frame(Kind.SLIN12, slin(1, 12000))])  # 12 kHz: no AudioSpec for it
    assert events.failed == ["Asterisk sends AudioSocket audio at 12000 Hz: cannot convert it"]
    core.receive([Frame(Kind.SLIN, slin(1))])
    written: list[bytes] = []
    core.tick(1, 0, written.append)
    assert (events.audio, written) == ([], [])  # a finished core does nothing more


def test_the_core_sends_in_the_rate_asterisk_last_used() -> None:
    events = Events()
    core = AudioSocketCore(events=events, sample_rate=16000, playout_reserve_ms=0, log=FakeLog())
    written: list[bytes] = []
    core.tick(1, 0, written.append)
    core.receive([Frame(Kind.SLIN, slin(1))])  # AudioSocket() at 8 kHz, declared 16 kHz
    core.tick(1, 0, written.append)
    assert [(data[0], len(data)) for data in written] == [(0x12, 643), (0x10, 323)]
    assert [len(frame) for frame in events.audio] == [640, 640]  # one fill, one converted
    assert core.stats()["rx_rate_changes"] == 1


@settings(max_examples=100, deadline=None)
@given(before=st.booleans(), garbage=st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_out_of_the_connection(before: bool, garbage: bytes) -> None:
    """Before or after the UUID, any bytes are frames, a refusal or a failed call."""

    async def scenario() -> None:
        dialplan, log = Dialplan(), FakeLog()
        listener = AudioSocketListener(host="127.0.0.1", port=0, ticker=FakeTicker(), log=log,
                                       on_dialplan_call=dialplan)  # fmt: skip
        connection, transport = listener.protocol_factory(), FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        stream = garbage if before else encode_uuid(uuid.uuid4()) + garbage
        for start in range(0, len(stream), 7):
            connection.data_received(stream[start : start + 7])
        connection.connection_lost(None)
        if dialplan.calls:
            ((_got, _leg, events),) = dialplan.calls
            assert len(events.failed) + len(events.ended) == 1
        else:
            assert len(log.events("audiosocket_rejected")) == 1

    asyncio.run(scenario())
