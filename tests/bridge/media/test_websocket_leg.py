"""The chan_websocket leg: the pure core pushed by hand, and the adapters over real loopback
sockets against a small fake chan_websocket (a `websockets` server for /media/<id>, a
`websockets` client dialling our server), with the shared clock driven by hand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import InvalidStatus

from ari.models import Channel
from bridge.media.ticker import Ticker
from bridge.media.websocket import WebSocketLeg, media_url
from bridge.media.websocket_control import MediaStart
from bridge.media.websocket_core import WebSocketMediaCore
from bridge.media.websocket_server import DialplanWebSocketLeg, WebSocketMediaServer

FIXTURES = Path(__file__).parents[2] / "fixtures" / "asterisk-23.4.1"


def recorded(scenario: str) -> list[dict[str, Any]]:
    with (FIXTURES / scenario / "media_ws.jsonl").open() as lines:
        return [json.loads(line) for line in lines]


SERVER_RECORDING = recorded("chan_websocket")
CLIENT_RECORDING = recorded("chan_websocket_client")
# The exact texts Asterisk 23.4.1 sent: a plain and a JSON call (server mode), client mode.
PLAIN_START = SERVER_RECORDING[1]["text"]
JSON_START = next(r["text"] for r in SERVER_RECORDING if r.get("text", "").startswith("{"))
CLIENT_START = CLIENT_RECORDING[1]["text"]
PLAIN_MARK_PROCESSED = "MEDIA_MARK_PROCESSED {}"
JSON_MARK_PROCESSED = (
    '{{"event":"MEDIA_MARK_PROCESSED","channel_id":"1795313634.50","correlation_id":"{}"}}'
)
CALLER_ULAW = [
    bytes.fromhex(r["data_hex"])
    for r in SERVER_RECORDING
    if r.get("kind") == "media_ws_in" and r.get("type") == "binary" and r["len"] == 160
][:5]
SHORT_ULAW = next(bytes.fromhex(r["data_hex"]) for r in SERVER_RECORDING if r.get("len") == 22)
SLIN16_START = (
    "MEDIA_START connection_id:lab_media channel:WebSocket/lab_media/0x7f74b800ccf0 "
    "channel_id:{} format:slin16 optimal_frame_size:640 ptime:20"
)
ULAW_SILENCE = b"\xff" * 160
SLIN16_SILENCE = b"\x00" * 640


def test_the_recorded_texts_are_what_the_tests_use() -> None:
    assert PLAIN_START.startswith("MEDIA_START connection_id:64a53336")
    assert json.loads(JSON_START)["event"] == "MEDIA_START"
    assert "connection_id:lab_media" in CLIENT_START
    assert len(CALLER_ULAW) == 5 and len(SHORT_ULAW) == 22


# ---- helpers ---------------------------------------------------------------------------------


class FakeTicker(Ticker):
    def add(self, member: Any) -> None:
        self._members[id(member)] = member

    def remove(self, member: Any) -> None:
        self._members.pop(id(member), None)

    def tick(self, frames: int = 1, skipped: int = 0) -> None:
        for member in list(self._members.values()):
            member.on_tick(frames, skipped)

    @property
    def members(self) -> int:
        return len(self._members)


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))

    def events(self) -> list[str]:
        return [event for _level, event, _fields in self.lines]


class Events:
    """Records what a leg reports; `until()` awaits a condition on it."""

    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.dtmf: list[str] = []
        self.marks: list[str] = []
        self.drained = 0
        self.failed: list[str] = []
        self.ended: list[str] = []
        self._changed = asyncio.Event()

    def _note(self) -> None:
        self._changed.set()

    def on_caller_audio(self, payload: bytes) -> None:
        self.audio.append(payload)
        self._note()

    def on_caller_dtmf(self, digit: str) -> None:
        self.dtmf.append(digit)
        self._note()

    def on_marks_played(self, names: list[str]) -> None:
        self.marks.extend(names)
        self._note()

    def on_playout_drained(self) -> None:
        self.drained += 1
        self._note()

    def on_media_failed(self, reason: str) -> None:
        self.failed.append(reason)
        self._note()

    def on_media_ended(self, reason: str) -> None:
        self.ended.append(reason)
        self._note()

    async def until(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def settle(condition: Callable[[], bool], rounds: int = 10_000) -> None:
    """Let the loop run (sleep(0) only) until `condition` holds: for leg state that no event
    reports, e.g. a MEDIA_XOFF read."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class FakeAsterisk:
    """chan_websocket's server mode: /media/<connection_id>, subprotocol `media`."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.paths: list[str] = []
        self.server: Server | None = None

    async def handler(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        self.paths.append(conn.request.path)
        await self.connections.put(conn)
        await conn.wait_closed()

    @property
    def ari_url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"http://asterisk:secret@127.0.0.1:{port}/ari"


@pytest.fixture
async def asterisk() -> AsyncIterator[FakeAsterisk]:
    fake = FakeAsterisk()
    async with serve(fake.handler, "127.0.0.1", 0, subprotocols=["media"]) as server:  # type: ignore[list-item]
        fake.server = server
        yield fake


def media_channel(connection_id: str = "64a53336-a589-47e1-9153-d0ddc2e57bb6") -> Channel:
    return Channel(
        "1795313629.47",
        "WebSocket/INCOMING/0x7f74a80090b0",
        "Down",
        channelvars={
            "MEDIA_WEBSOCKET_CONNECTION_ID": connection_id,
            "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160",
        },
    )


async def started_leg(
    asterisk: FakeAsterisk,
    start_text: str = PLAIN_START,
    *,
    ticking: bool = True,
    **options: Any,
) -> tuple[WebSocketLeg, ServerConnection, Events, FakeTicker]:
    """A leg connected to the fake Asterisk, which has sent `start_text`."""
    events, ticker = Events(), FakeTicker()
    options = {"audio_format": "ulaw", "playout_reserve_ms": 0, "lead_frames": 0, **options}
    leg = WebSocketLeg(events=events, ticker=ticker, ari_url=asterisk.ari_url, **options)
    leg.start(media_channel())
    conn = await asyncio.wait_for(asterisk.connections.get(), 5)
    await conn.send(start_text)
    if ticking:
        await settle(lambda: ticker.members == 1)
    return leg, conn, events, ticker


async def recv(conn: ClientConnection | ServerConnection) -> str | bytes:
    return await asyncio.wait_for(conn.recv(), 5)


async def recv_n(conn: ClientConnection | ServerConnection, n: int) -> list[str | bytes]:
    return [await recv(conn) for _ in range(n)]


async def close_leg(leg: WebSocketLeg) -> None:
    leg.close()
    await asyncio.wait_for(leg.wait_closed(), 5)


# ---- the ARI mode over loopback ------------------------------------------------------------


async def test_open_asks_for_a_server_mode_websocket() -> None:
    leg = WebSocketLeg(events=Events(), ticker=FakeTicker(), audio_format="ulaw",
                       ari_url="http://127.0.0.1:8088")  # fmt: skip
    assert await leg.open() == {"format": "ulaw", "encapsulation": "none",
                                "transport": "websocket", "connection_type": "server"}  # fmt: skip
    json_leg = WebSocketLeg(events=Events(), ticker=FakeTicker(), audio_format="slin16",
                            ari_url="http://127.0.0.1:8088", json_control=True)  # fmt: skip
    assert (await json_leg.open())["transport_data"] == "f(json)"
    assert json_leg.formats.rx.codec == "pcm16le" and json_leg.formats.rx.sample_rate == 16000


def test_start_needs_the_connection_id() -> None:
    leg = WebSocketLeg(events=Events(), ticker=FakeTicker(), audio_format="ulaw",
                       ari_url="http://127.0.0.1:8088")  # fmt: skip
    with pytest.raises(ValueError, match="MEDIA_WEBSOCKET_CONNECTION_ID"):
        leg.start(Channel("x", "WebSocket/INCOMING/0x1", "Down"))


@pytest.mark.parametrize(
    ("ari_url", "expected"),
    [
        ("http://127.0.0.1:8088", "ws://127.0.0.1:8088/media/abc"),
        ("http://u:p@10.0.0.5:8088/ari/", "ws://10.0.0.5:8088/media/abc"),
        ("https://pbx.example:8089/asterisk/ari", "wss://pbx.example:8089/asterisk/media/abc"),
    ],
)
def test_media_url_sits_beside_ari(ari_url: str, expected: str) -> None:
    assert media_url(ari_url, "abc") == expected


async def test_plain_ulaw_both_ways_one_frame_per_tick(asterisk: FakeAsterisk) -> None:
    leg, conn, events, ticker = await started_leg(asterisk)
    assert asterisk.paths == ["/media/64a53336-a589-47e1-9153-d0ddc2e57bb6"]
    assert conn.subprotocol == "media"
    assert leg.core is not None and leg.core.media_start is not None
    assert leg.core.media_start.channel_id == "1795313629.47"
    # Caller audio: Asterisk's frames reach the call untouched, in order.
    for frame in CALLER_ULAW:
        await conn.send(frame)
    await events.until(lambda: len(events.audio) == 5)
    assert events.audio == CALLER_ULAW
    # Bot audio: one 160-byte binary frame per tick, silence when there is none.
    leg.play(b"\x55" * 400)
    ticker.tick()
    ticker.tick()
    ticker.tick()  # the half frame waits for more audio: silence
    assert await recv_n(conn, 3) == [b"\x55" * 160, b"\x55" * 160, ULAW_SILENCE]
    leg.clear()  # the next message proves no frame was sent in between
    assert await recv(conn) == "FLUSH_MEDIA"
    await close_leg(leg)
    assert events.failed == [] and events.ended == []


async def test_a_stall_never_bursts(asterisk: FakeAsterisk) -> None:
    leg, conn, _events, ticker = await started_leg(asterisk)
    leg.play(b"\x55" * 1600)
    ticker.tick(2, 5)  # the clock's own burst limit after a stall: two frames, no more
    assert await recv_n(conn, 2) == [b"\x55" * 160] * 2
    leg.clear()
    assert await recv(conn) == "FLUSH_MEDIA"
    await close_leg(leg)


async def test_a_lead_of_silence_starts_the_stream(asterisk: FakeAsterisk) -> None:
    leg, conn, _events, ticker = await started_leg(asterisk, lead_frames=2)
    leg.play(b"\x55" * 160)
    ticker.tick()
    assert await recv_n(conn, 3) == [ULAW_SILENCE, ULAW_SILENCE, b"\x55" * 160]
    ticker.tick()
    assert await recv(conn) == ULAW_SILENCE  # continuous from then on: no second lead
    leg.clear()
    leg.play(b"\x56" * 160)
    ticker.tick()  # Asterisk's queue was flushed: the cushion is rebuilt
    assert await recv_n(conn, 4) == ["FLUSH_MEDIA", ULAW_SILENCE, ULAW_SILENCE, b"\x56" * 160]
    await close_leg(leg)


async def test_slin16_both_ways(asterisk: FakeAsterisk) -> None:
    leg, conn, events, ticker = await started_leg(
        asterisk, SLIN16_START.format("1795313629.47"), audio_format="slin16"
    )
    assert leg.formats.rx.sample_rate == 16000 and leg.formats.tx.codec == "pcm16le"
    frame = bytes(range(256)) * 2 + bytes(128)
    await conn.send(frame)
    await conn.send(frame * 2)  # two frames in one message: two frames to the call
    await conn.send(b"\x01\x02" * 50)  # a short last frame: padded to 20 ms
    await events.until(lambda: len(events.audio) == 4)
    assert events.audio[:3] == [frame] * 3
    assert events.audio[3] == b"\x01\x02" * 50 + bytes(540)
    leg.play(b"\x10\x00" * 640)  # 40 ms
    ticker.tick()
    ticker.tick()
    ticker.tick()
    assert await recv_n(conn, 3) == [b"\x10\x00" * 320, b"\x10\x00" * 320, SLIN16_SILENCE]
    await close_leg(leg)


async def test_xoff_pauses_and_xon_resumes(asterisk: FakeAsterisk) -> None:
    leg, conn, _events, ticker = await started_leg(asterisk)
    assert leg.core is not None
    await conn.send("MEDIA_XOFF")
    await settle(lambda: leg.core is not None and leg.core.paused)
    leg.play(b"\x55" * 320)
    ticker.tick()
    ticker.tick()  # paused: nothing goes out, nothing is lost
    assert leg.stats()["tx_paused_ticks"] == 2
    assert leg.core.outbound.playout.queue.queued_bytes == 320
    await conn.send("MEDIA_XON")
    await settle(lambda: leg.core is not None and not leg.core.paused)
    ticker.tick()
    ticker.tick()
    assert await recv_n(conn, 2) == [b"\x55" * 160] * 2
    await close_leg(leg)


async def test_a_mark_is_reported_only_once_asterisk_has_played_it(
    asterisk: FakeAsterisk,
) -> None:
    leg, conn, events, ticker = await started_leg(asterisk)
    leg.play(b"\x55" * 160)
    leg.mark("greeting")
    ticker.tick()
    assert await recv_n(conn, 2) == [b"\x55" * 160, "MARK_MEDIA m1"]
    ticker.tick()
    assert await recv(conn) == ULAW_SILENCE
    assert events.marks == []  # sent is not heard
    await conn.send(PLAIN_MARK_PROCESSED.format("m1"))
    await events.until(lambda: events.marks == ["greeting"])
    await close_leg(leg)


async def test_json_control_long_mark_names_use_short_ids(asterisk: FakeAsterisk) -> None:
    leg, conn, events, ticker = await started_leg(asterisk, JSON_START, json_control=True)
    name = "bot-mark-" + "ü" * 200  # far over Asterisk's 128-byte text limit
    leg.play(b"\x55" * 160)
    leg.mark(name)
    ticker.tick()
    frame, command = await recv_n(conn, 2)
    assert frame == b"\x55" * 160
    assert isinstance(command, str) and len(command.encode()) <= 128
    assert json.loads(command) == {"command": "MARK_MEDIA", "correlation_id": "m1"}
    await conn.send(JSON_MARK_PROCESSED.format("m1"))
    await events.until(lambda: events.marks == [name])
    leg.clear()
    assert json.loads(await recv(conn)) == {"command": "FLUSH_MEDIA"}
    await close_leg(leg)


async def test_plain_start_answers_plain_even_if_json_was_asked(asterisk: FakeAsterisk) -> None:
    leg, conn, _events, _ticker = await started_leg(asterisk, json_control=True)
    leg.clear()
    assert await recv(conn) == "FLUSH_MEDIA"
    await close_leg(leg)


async def test_clear_flushes_asterisk_and_reports_every_pending_mark(
    asterisk: FakeAsterisk,
) -> None:
    leg, conn, events, ticker = await started_leg(asterisk)
    leg.play(b"\x55" * 160)
    leg.mark("sent")
    leg.play(b"\x56" * 800)
    leg.mark("queued")
    ticker.tick()
    assert await recv_n(conn, 2) == [b"\x55" * 160, "MARK_MEDIA m1"]
    leg.clear()
    assert events.marks == ["sent", "queued"]  # the one in Asterisk's queue first
    assert await recv(conn) == "FLUSH_MEDIA"
    await conn.send(PLAIN_MARK_PROCESSED.format("m1"))  # stale: never reported twice
    ticker.tick()
    assert await recv(conn) == ULAW_SILENCE  # the cleared audio is gone
    await conn.send("DTMF_END digit:5 channel_id:1795313629.47")
    await events.until(lambda: events.dtmf == ["5"])
    assert events.marks == ["sent", "queued"]
    await close_leg(leg)


async def test_drain_waits_until_asterisk_has_played_it(asterisk: FakeAsterisk) -> None:
    leg, conn, events, ticker = await started_leg(asterisk)
    leg.play(b"\x55" * 200)  # the tail is padded to a whole frame
    leg.drain()
    ticker.tick()
    ticker.tick()
    ticker.tick()  # all sent: the drain marker goes out
    sent = await recv_n(conn, 3)
    assert sent[:2] == [b"\x55" * 160, b"\x55" * 40 + b"\xff" * 120]
    assert isinstance(sent[2], str) and sent[2].startswith("MARK_MEDIA ")
    assert events.drained == 0
    await conn.send(PLAIN_MARK_PROCESSED.format(sent[2].split()[1]))
    await events.until(lambda: events.drained == 1)
    await close_leg(leg)


async def test_dtmf_end_reaches_the_call(asterisk: FakeAsterisk) -> None:
    leg, conn, events, _ticker = await started_leg(asterisk, JSON_START)
    await conn.send('{"event":"DTMF_END","channel_id":"1795313634.50","digit":"#"}')
    await conn.send("DTMF_END digit:7 channel_id:1795313634.50")
    await events.until(lambda: events.dtmf == ["#", "7"])
    await close_leg(leg)


async def test_garbage_text_is_logged_and_ignored(asterisk: FakeAsterisk) -> None:
    log = FakeLog()
    leg, conn, events, _ticker = await started_leg(asterisk, log=log)
    for text in ("", "lowercase nonsense", "{not json", '{"event": 5}', "DTMF_END digit:X",
                 "MEDIA_SOMETHING_NEW a:b", "STATUS queue_length:many"):  # fmt: skip
        await conn.send(text)
    await conn.send("DTMF_END digit:1 channel_id:1795313629.47")
    await events.until(lambda: events.dtmf == ["1"])
    stats = leg.stats()
    assert stats["rx_bad_control"] == 6 and stats["rx_unknown_control"] == 1
    assert log.events().count("websocket_control_rejected") == 6
    assert events.failed == [] and events.ended == []
    await close_leg(leg)


async def test_asterisk_closing_1000_ends_the_media(asterisk: FakeAsterisk) -> None:
    leg, conn, events, ticker = await started_leg(asterisk)
    await conn.close(1000)
    await events.until(lambda: events.ended == ["asterisk closed the media socket"])
    assert ticker.members == 0 and events.failed == []
    await close_leg(leg)


async def test_an_abnormal_close_fails_the_media(asterisk: FakeAsterisk) -> None:
    leg, conn, events, _ticker = await started_leg(asterisk)
    await conn.close(1011, "internal error")
    await events.until(lambda: bool(events.failed))
    assert events.failed == ["media socket closed (1011 internal error)"]
    await close_leg(leg)


async def test_no_media_start_fails_within_the_timeout(asterisk: FakeAsterisk) -> None:
    events, ticker = Events(), FakeTicker()
    leg = WebSocketLeg(events=events, ticker=ticker, audio_format="ulaw",
                       ari_url=asterisk.ari_url, media_start_timeout=0.1)  # fmt: skip
    leg.start(media_channel())
    await events.until(lambda: bool(events.failed), within=2)
    assert events.failed == ["no MEDIA_START"]
    assert ticker.members == 0
    await close_leg(leg)


async def test_a_wrong_format_fails_the_media(asterisk: FakeAsterisk) -> None:
    leg, _conn, events, ticker = await started_leg(asterisk, audio_format="slin16",
                                                   ticking=False)  # fmt: skip
    await events.until(lambda: bool(events.failed))
    assert events.failed == ["MEDIA_START format 'ulaw', asked for 'slin16'"]
    assert ticker.members == 0
    await close_leg(leg)


async def test_no_asterisk_to_connect_to_fails_the_media() -> None:
    probe = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nobody listens on `port` any more
    events = Events()
    leg = WebSocketLeg(events=events, ticker=FakeTicker(), audio_format="ulaw",
                       ari_url=f"http://127.0.0.1:{port}")  # fmt: skip
    leg.start(media_channel())
    await events.until(lambda: bool(events.failed))
    assert events.failed[0].startswith("media socket not connected")
    await close_leg(leg)


async def test_close_while_connected_reports_nothing(asterisk: FakeAsterisk) -> None:
    leg, conn, events, ticker = await started_leg(asterisk)
    await close_leg(leg)
    assert ticker.members == 0
    with pytest.raises(Exception, match="1000"):
        await recv(conn)  # the socket closed normally, no HANGUP in the ARI mode
    assert events.failed == [] and events.ended == []


# ---- the dialplan mode: Asterisk dials our server --------------------------------------------


class Dialplan:
    """The `on_dialplan_call` callback: keeps each call's leg, params and events."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls: dict[str, tuple[DialplanWebSocketLeg, dict[str, str], Events]] = {}
        self.refuse = refuse
        self.asynchronous = False
        self.arrived = asyncio.Event()

    def __call__(
        self, leg: DialplanWebSocketLeg, params: dict[str, str], start: MediaStart
    ) -> Events | Awaitable[Events | None] | None:
        if self.asynchronous:
            self.asynchronous = False
            return self._later(leg, params, start)
        return self._take(leg, params, start)

    async def _later(
        self, leg: DialplanWebSocketLeg, params: dict[str, str], start: MediaStart
    ) -> Events | None:
        await asyncio.sleep(0)  # e.g. the bot's connection being opened
        return self._take(leg, params, start)

    def _take(
        self, leg: DialplanWebSocketLeg, params: dict[str, str], start: MediaStart
    ) -> Events | None:
        self.arrived.set()
        if self.refuse:
            return None
        events = Events()
        assert start.channel_id is not None
        self.calls[start.channel_id] = (leg, params, events)
        return events


@pytest.fixture
async def media_server() -> AsyncIterator[tuple[WebSocketMediaServer, Dialplan, FakeTicker]]:
    dialplan, ticker = Dialplan(), FakeTicker()
    server = WebSocketMediaServer(host="127.0.0.1", port=0, ticker=ticker,
                                  on_dialplan_call=dialplan, media_start_timeout=0.2,
                                  dialplan_leg_options={"playout_reserve_ms": 0,
                                                        "lead_frames": 0})  # fmt: skip
    await server.start()
    yield server, dialplan, ticker
    await server.close()


def server_url(server: WebSocketMediaServer, path: str = "/media") -> str:
    assert server.address is not None
    return f"ws://127.0.0.1:{server.address[1]}{path}"


async def test_dialplan_call_params_reach_the_callback(
    media_server: tuple[WebSocketMediaServer, Dialplan, FakeTicker],
) -> None:
    server, dialplan, ticker = media_server
    url = server_url(server, "/media?caller=%2B49301234&lang=de&empty=")
    async with connect(url, subprotocols=["media"]) as asterisk:  # type: ignore[list-item]
        await asterisk.send(CLIENT_START)
        await settle(lambda: ticker.members == 1)
        leg, params, events = dialplan.calls["1795313762.101"]
        assert params == {"caller": "+49301234", "lang": "de", "empty": ""}
        assert leg.connection_id == "lab_media" and leg.channel_id == "1795313762.101"
        assert await leg.open() == {}
        leg.start(media_channel())  # nothing to do: already connected
        await asterisk.send(CALLER_ULAW[0])
        await asterisk.send(SHORT_ULAW)
        await events.until(lambda: len(events.audio) == 2)
        assert events.audio == [CALLER_ULAW[0], SHORT_ULAW + ULAW_SILENCE[:138]]
        leg.play(b"\x55" * 160)
        ticker.tick()
        assert await recv(asterisk) == b"\x55" * 160
        leg.close()  # our side ends the call: HANGUP, then the close
        assert await recv(asterisk) == "HANGUP"
        await asyncio.wait_for(asterisk.wait_closed(), 5)
        assert asterisk.close_code == 1000
        await asyncio.wait_for(leg.wait_closed(), 5)
    assert server.calls == {} and events.failed == [] and events.ended == []


async def test_closing_the_server_ends_its_calls(
    media_server: tuple[WebSocketMediaServer, Dialplan, FakeTicker],
) -> None:
    server, dialplan, ticker = media_server
    dialplan.asynchronous = True  # the callback may be a coroutine
    async with connect(server_url(server), subprotocols=["media"]) as asterisk:  # type: ignore[list-item]
        await asterisk.send(CLIENT_START)
        await settle(lambda: ticker.members == 1)
        _leg, _params, events = dialplan.calls["1795313762.101"]
        await server.close()
        assert events.failed == ["the WebSocket media server closed"]
        assert await recv(asterisk) == "HANGUP"
        await asyncio.wait_for(asterisk.wait_closed(), 5)
    assert server.calls == {} and ticker.members == 0


async def test_two_dialplan_calls_are_kept_apart_by_channel_id(
    media_server: tuple[WebSocketMediaServer, Dialplan, FakeTicker],
) -> None:
    server, dialplan, ticker = media_server
    url = server_url(server)
    async with (
        connect(url + "?n=1", subprotocols=["media"]) as one,  # type: ignore[list-item]
        connect(url + "?n=2", subprotocols=["media"]) as two,  # type: ignore[list-item]
    ):
        await one.send(SLIN16_START.format("1795313762.101"))
        await two.send(SLIN16_START.format("1795313762.105"))
        await settle(lambda: ticker.members == 2)
        assert set(server.calls) == {"1795313762.101", "1795313762.105"}
        leg_one, params_one, events_one = dialplan.calls["1795313762.101"]
        leg_two, params_two, events_two = dialplan.calls["1795313762.105"]
        assert (params_one, params_two) == ({"n": "1"}, {"n": "2"})
        await one.send(b"\x01\x00" * 320)
        await two.send(b"\x02\x00" * 320)
        await events_one.until(lambda: len(events_one.audio) == 1)
        await events_two.until(lambda: len(events_two.audio) == 1)
        assert events_one.audio == [b"\x01\x00" * 320]
        assert events_two.audio == [b"\x02\x00" * 320]
        leg_one.play(b"\x11\x00" * 320)
        leg_two.play(b"\x22\x00" * 320)
        ticker.tick()
        assert await recv(one) == b"\x11\x00" * 320
        assert await recv(two) == b"\x22\x00" * 320
        await one.close()  # Asterisk hangs the first up: the second goes on
        await events_one.until(lambda: events_one.ended == ["asterisk closed the media socket"])
        await settle(lambda: set(server.calls) == {"1795313762.105"})
        await two.send("DTMF_END digit:9 channel_id:1795313762.105")
        await events_two.until(lambda: events_two.dtmf == ["9"])
    await events_two.until(lambda: bool(events_two.ended))


async def test_a_connection_without_media_start_is_rejected_alone(
    media_server: tuple[WebSocketMediaServer, Dialplan, FakeTicker],
) -> None:
    server, dialplan, _ticker = media_server
    log = FakeLog()
    server._log = log
    async with (
        connect(server_url(server), subprotocols=["media"]) as silent,  # type: ignore[list-item]
        connect(server_url(server), subprotocols=["media"]) as good,  # type: ignore[list-item]
    ):
        await good.send(CLIENT_START)
        await asyncio.wait_for(silent.wait_closed(), 5)  # rejected after 0.2 s
        assert silent.close_code == 1000 and silent.close_reason == "no MEDIA_START"
        await good.send("DTMF_END digit:3 channel_id:1795313762.101")
        _leg, _params, events = dialplan.calls["1795313762.101"]
        await events.until(lambda: events.dtmf == ["3"])
    assert ("warning", "websocket_rejected") in [(lv, ev) for lv, ev, _f in log.lines]
    assert server.counters == {"accepted": 1, "rejected": 1}


async def test_the_first_message_must_be_media_start(
    media_server: tuple[WebSocketMediaServer, Dialplan, FakeTicker],
) -> None:
    server, dialplan, _ticker = media_server
    async with connect(server_url(server), subprotocols=["media"]) as asterisk:  # type: ignore[list-item]
        await asterisk.send(b"\xff" * 160)
        await asyncio.wait_for(asterisk.wait_closed(), 5)
    assert asterisk.close_reason == "first message is not MEDIA_START"
    assert dialplan.calls == {}


async def test_a_refused_dialplan_call_is_closed(
    media_server: tuple[WebSocketMediaServer, Dialplan, FakeTicker],
) -> None:
    server, dialplan, ticker = media_server
    dialplan.refuse = True
    async with connect(server_url(server), subprotocols=["media"]) as asterisk:  # type: ignore[list-item]
        await asterisk.send(CLIENT_START)
        await asyncio.wait_for(asterisk.wait_closed(), 5)
    assert asterisk.close_reason == "dialplan call refused"
    assert ticker.members == 0 and server.calls == {}


@pytest.mark.parametrize(
    ("path", "subprotocols", "status"),
    [("/media", ["other"], 400), ("/media", None, 400), ("/elsewhere", ["media"], 404)],
)
async def test_wrong_path_or_subprotocol_is_refused_cleanly(
    media_server: tuple[WebSocketMediaServer, Dialplan, FakeTicker],
    path: str,
    subprotocols: list[str] | None,
    status: int,
) -> None:
    server, dialplan, _ticker = media_server
    with pytest.raises(InvalidStatus) as refused:
        await connect(server_url(server, path), subprotocols=subprotocols)  # type: ignore[arg-type]
    assert refused.value.response.status_code == status
    assert not dialplan.arrived.is_set()


# ---- the pure core ---------------------------------------------------------------------------


def make_core(start: str = PLAIN_START, **options: Any) -> tuple[WebSocketMediaCore, Events]:
    events = Events()
    options = {"audio_format": "ulaw", "playout_reserve_ms": 0, "lead_frames": 0, **options}
    core = WebSocketMediaCore(events=events, log=FakeLog(), **options)
    core.text_received(start)
    return core, events


def test_core_media_start_without_channel_id_is_tolerated() -> None:
    core, events = make_core(
        "MEDIA_START connection_id:x channel:WebSocket/INCOMING/0x1 format:ulaw "
        "optimal_frame_size:160 ptime:20"
    )
    assert core.media_start is not None and core.media_start.channel_id is None
    assert events.failed == []


def test_core_audio_before_media_start_is_dropped() -> None:
    events = Events()
    core = WebSocketMediaCore(events=events, audio_format="ulaw", log=FakeLog())
    core.binary_received(CALLER_ULAW[0])
    core.tick(1, 0)
    assert events.audio == [] and core.data_to_send() == []
    assert core.stats()["rx_before_start"] == 1


def test_core_rechunks_a_longer_ptime_both_ways() -> None:
    core, events = make_core(
        "MEDIA_START connection_id:x channel:c channel_id:1 format:ulaw "
        "optimal_frame_size:240 ptime:30"
    )
    core.binary_received(b"\x01" * 240)
    core.binary_received(b"\x02" * 240)
    assert events.audio == [b"\x01" * 160, b"\x01" * 80 + b"\x02" * 80, b"\x02" * 160]
    core.play(b"\x55" * 480)
    sent: list[str | bytes] = []
    for _ in range(3):
        core.tick(1, 0)
        sent.extend(core.data_to_send())
    assert sent == [b"\x55" * 240, b"\x55" * 240]  # 60 ms in 30 ms frames, never short


def test_core_pads_a_partial_frame_after_two_quiet_ticks() -> None:
    core, events = make_core(
        "MEDIA_START connection_id:x channel:c channel_id:1 format:ulaw "
        "optimal_frame_size:240 ptime:30",
        caller_silence_fill=False,
    )
    core.binary_received(b"\x01" * 240)
    core.tick(1, 0)
    assert events.audio == [b"\x01" * 160]
    core.tick(1, 0)
    assert events.audio == [b"\x01" * 160, b"\x01" * 80 + b"\xff" * 80]


def test_core_fills_caller_silence() -> None:
    core, events = make_core()
    core.tick(1, 0)
    core.tick(1, 0)
    assert events.audio == [ULAW_SILENCE, ULAW_SILENCE]
    core.binary_received(CALLER_ULAW[0])
    core.tick(1, 0)
    assert events.audio[-1] == CALLER_ULAW[0]


def test_core_reports_an_unconfirmed_mark_after_the_timeout() -> None:
    core, events = make_core(mark_timeout_ms=100)  # an Asterisk without MARK_MEDIA
    core.mark("m")
    core.tick(1, 0)
    assert core.data_to_send()[-1] == "MARK_MEDIA m1"
    for _ in range(4):
        core.tick(1, 0)
    assert events.marks == []
    core.tick(1, 0)
    assert events.marks == ["m"]
    assert core.stats()["marks_timed_out"] == 1


def test_core_drain_times_out_without_asterisk_answer() -> None:
    core, events = make_core(drain_timeout_ms=60)
    core.drain()
    core.tick(1, 0)  # nothing queued: the drain marker goes out at once
    command = core.data_to_send()[-1]
    assert isinstance(command, str) and command.startswith("MARK_MEDIA")
    core.tick(2, 0)
    assert events.drained == 0
    core.tick(1, 0)
    assert events.drained == 1


def test_core_processed_mark_releases_the_earlier_ones_too() -> None:
    core, events = make_core()
    core.mark("a")
    core.tick(1, 0)
    core.mark("b")
    core.tick(1, 0)
    core.text_received(PLAIN_MARK_PROCESSED.format("m2"))  # m1's answer was lost
    assert events.marks == ["a", "b"]


def test_core_clear_during_drain_reports_drained() -> None:
    core, events = make_core()
    core.drain()
    core.tick(1, 0)
    core.clear()
    assert events.drained == 1
    assert core.data_to_send()[-1] == "FLUSH_MEDIA"


def test_core_drain_before_media_start_is_immediate() -> None:
    events = Events()
    core = WebSocketMediaCore(events=events, audio_format="slin16", log=FakeLog())
    core.drain()
    assert events.drained == 1


def test_core_unsupported_frame_size_fails() -> None:
    _core, events = make_core(
        "MEDIA_START connection_id:x channel:c channel_id:1 format:slin16 "
        "optimal_frame_size:641 ptime:20",
        audio_format="slin16",
    )
    assert events.failed == ["MEDIA_START optimal_frame_size 641 unusable for slin16"]


def test_core_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported chan_websocket format 'opus'"):
        WebSocketMediaCore(events=Events(), audio_format="opus", log=FakeLog())
