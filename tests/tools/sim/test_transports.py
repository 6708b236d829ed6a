"""AudioSocket and chan_websocket over real loopback sockets, against the recordings.

The bridge's side is a tiny hand-written AudioSocket TCP server and a plain aiohttp WebSocket
client or server; the ARI side is the plain client of `ari_client`. Each test does what the
recorded client did and compares frames, texts and event order with the recording.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.recording import load_recording
from tests.tools.sim.ari_client import TIMEOUT, Ari, per_channel

UUID = "310fef72-91eb-4f7c-afc0-10cc3f359062"  # the recorded one


class AsConnection:
    """One AudioSocket connection as the bridge's server sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.frames: asyncio.Queue[tuple[float, int, bytes] | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                kind, length = struct.unpack("!BH", await reader.readexactly(3))
                payload = await reader.readexactly(length)
                self.frames.put_nowait((loop.time(), kind, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.frames.put_nowait(None)  # EOF

    async def frame(self) -> tuple[float, int, bytes] | None:
        return await asyncio.wait_for(self.frames.get(), TIMEOUT)

    async def until_eof(self) -> list[tuple[float, int, bytes]]:
        frames = []
        while (frame := await self.frame()) is not None:
            frames.append(frame)
        return frames

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.writer.write(struct.pack("!BH", kind, len(payload)) + payload)


class AsServer:
    def __init__(self) -> None:
        self.connections: asyncio.Queue[AsConnection] = asyncio.Queue()

    async def start(self) -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections.put_nowait(AsConnection(reader, writer))

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def accept(self) -> AsConnection:
        return await asyncio.wait_for(self.connections.get(), TIMEOUT)


@pytest.fixture
async def as_server() -> AsyncIterator[AsServer]:
    server = AsServer()
    await server.start()
    yield server
    server.server.close()


async def audiosocket_channel(ari: Ari, server: AsServer, fmt: str = "slin",
                              **extra: str) -> tuple[Any, AsConnection]:  # fmt: skip
    answer = await ari.request(
        "POST", "/ari/channels/externalMedia", app="pipecat",
        external_host=f"127.0.0.1:{server.port}", format=fmt, encapsulation="audiosocket",
        transport="tcp", direction="both", data=UUID, **extra,
    )  # fmt: skip
    assert answer.status == 200, answer.text
    # Asterisk connected while handling the request: the connection is there already.
    assert server.connections.qsize() == 1
    return answer.body, await server.accept()


async def bridge_with(ari: Ari, caller_id: str, channel_id: str) -> None:
    assert ari.events is not None
    await ari.events.wait_for("StasisStart", channel_id)
    bridge = (await ari.request("POST", "/ari/bridges", type="mixing")).body
    added = await ari.request("POST", f"/ari/bridges/{bridge['id']}/addChannel",
                              channel=f"{caller_id},{channel_id}")  # fmt: skip
    assert added.status == 204


# -- ARI + AudioSocket -------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "kind", "size"), [("slin", 0x10, 320), ("slin16", 0x12, 640)])
async def test_audiosocket_external_media_as_recorded(
    sim: SimulatedAsterisk, ari: Ari, as_server: AsServer, fmt: str, kind: int, size: int
) -> None:
    events = await ari.connect()
    await sim.wait_app_active()
    call = await sim.place_call("basic_ulaw")
    await events.wait_for("StasisStart", call.caller_id)
    em, conn = await audiosocket_channel(ari, as_server, fmt, channelId="em-as-1")
    assert em["name"] == f"AudioSocket/127.0.0.1:{as_server.port}-{UUID}"
    assert em["state"] == "Down" and em["id"] == "em-as-1"
    assert em["channelvars"] == {"AUDIOSOCKET_SERVICE": f"127.0.0.1:{as_server.port}",
                                 "AUDIOSOCKET_UUID": UUID}  # fmt: skip
    _, first_kind, first = await conn.frame() or (0, 0, b"")
    assert (first_kind, first) == (0x01, uuid.UUID(UUID).bytes)
    start = await events.wait_for("StasisStart", "em-as-1")
    assert start["args"] == [UUID]
    assert start["channel"]["dialplan"]["app_data"] == f"pipecat,{UUID}"
    await bridge_with(ari, call.caller_id, "em-as-1")
    frames = [await conn.frame() for _ in range(5)]
    assert all(f is not None and (f[1], len(f[2])) == (kind, size) for f in frames)
    await ari.request("DELETE", f"/ari/channels/{call.caller_id}")
    await ari.request("DELETE", "/ari/channels/em-as-1")
    rest = await conn.until_eof()
    assert all(f[1] != 0x00 for f in rest)  # no hang-up frame: the socket just closes
    recorded = load_recording("audiosocket").per_channel_types()["1795313749.95"]
    assert per_channel(events.parsed)["em-as-1"] == recorded
    assert not sim.leftovers().media_connections


async def test_audiosocket_caller_dtmf_and_echo(sim: SimulatedAsterisk, ari: Ari,
                                                as_server: AsServer) -> None:  # fmt: skip
    events = await ari.connect()
    await sim.wait_app_active()
    call = await sim.place_call("dtmf", echo=True)
    em, conn = await audiosocket_channel(ari, as_server)
    await conn.frame()
    await bridge_with(ari, call.caller_id, em["id"])
    tone = struct.pack("<160h", *([8000, -8000] * 80))
    conn.send(0x10, tone)
    _, kind, echoed = await conn.frame() or (0, 0, b"")
    assert kind == 0x10 and len(echoed) == 320  # through the caller's µ-law leg
    _, kind, digit = await conn.frame() or (0, 0, b"")
    assert (kind, digit) == (0x03, b"1")
    dtmf = await events.wait_for("ChannelDtmfReceived", call.caller_id)
    assert dtmf["digit"] == "1"


@pytest.mark.parametrize("kind", [0x00, 0x01, 0x03, 0xFF])
async def test_audiosocket_frames_asterisk_refuses_hang_the_channel_up(
    sim: SimulatedAsterisk, ari: Ari, as_server: AsServer, kind: int
) -> None:
    events = await ari.connect()
    await sim.wait_app_active()
    em, conn = await audiosocket_channel(ari, as_server)
    await events.wait_for("StasisStart", em["id"])
    await conn.frame()  # 0x01 + UUID
    conn.send(kind, b"\x01" * (16 if kind == 0x01 else 1 if kind else 0))
    await events.wait_for("ChannelDestroyed", em["id"])
    assert await conn.until_eof() == []
    types = per_channel(events.parsed)[em["id"]]
    assert "ChannelHangupRequest" not in types  # the read returned NULL: no request event
    assert types[-2:] == ["ChannelVarset", "ChannelDestroyed"]
    reason = "bridge_hangup" if kind == 0 else "protocol_violation"
    assert sim.media_links[em["id"]].end_reason == reason


async def test_audiosocket_errors(sim: SimulatedAsterisk, ari: Ari, as_server: AsServer) -> None:
    await ari.connect()
    await sim.wait_app_active()
    base = {"app": "pipecat", "format": "slin", "encapsulation": "audiosocket", "transport": "tcp"}
    host = f"127.0.0.1:{as_server.port}"
    no_data = await ari.request("POST", "/ari/channels/externalMedia", external_host=host, **base)
    assert (no_data.status, no_data.body) == (400, {"message": "data can not be empty"})
    closed = AsServer()
    await closed.start()
    closed.server.close()
    await closed.server.wait_closed()
    closed_host = f"127.0.0.1:{closed.port}"
    refused = await ari.request("POST", "/ari/channels/externalMedia", external_host=closed_host,
                                data=UUID, **base)  # fmt: skip
    assert refused.status == 500
    bad_uuid = await ari.request("POST", "/ari/channels/externalMedia", external_host=host,
                                 data="not-a-uuid", **base)  # fmt: skip
    bad_format = await ari.request("POST", "/ari/channels/externalMedia", external_host=host,
                                   data=UUID, **{**base, "format": "notacodec"})  # fmt: skip
    assert bad_uuid.status == bad_format.status == 500
    assert as_server.connections.qsize() == 0 and sim.channels == {}


# -- ARI + chan_websocket ------------------------------------------------------------------------


async def ws_channel(ari: Ari, **extra: str) -> dict[str, Any]:
    answer = await ari.request(
        "POST", "/ari/channels/externalMedia", app="pipecat", format="ulaw", encapsulation="none",
        transport="websocket", connection_type="server", direction="both", **extra,
    )  # fmt: skip
    assert answer.status == 200, answer.text
    return dict(answer.body)


@pytest.mark.parametrize("json_control", [False, True])
async def test_websocket_server_mode_as_recorded(sim: SimulatedAsterisk, ari: Ari,
                                                 json_control: bool) -> None:  # fmt: skip
    events = await ari.connect()
    await sim.wait_app_active()
    call = await sim.place_call("basic_ulaw")
    await events.wait_for("StasisStart", call.caller_id)
    em = await ws_channel(ari, **({"transport_data": "f(json)"} if json_control else {}))
    assert re.fullmatch(r"WebSocket/INCOMING/0x[0-9a-f]{12}", em["name"]) and em["state"] == "Down"
    cid = em["channelvars"]["MEDIA_WEBSOCKET_CONNECTION_ID"]
    assert list(em["channelvars"]) == ["MEDIA_WEBSOCKET_CONNECTION_ID",
                                       "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE"]  # fmt: skip
    size = await ari.request("GET", f"/ari/channels/{em['id']}/variable",
                             variable="MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE")  # fmt: skip
    assert size.body == {"value": "160"}
    dial = await events.wait_for("Dial", em["id"])
    assert dial["dialstring"] == ("INCOMING/f(json)d(both)" if json_control else "INCOMING/d(both)")
    starts = [e["channel"]["id"] for e in events.parsed if e["type"] == "StasisStart"]
    assert em["id"] not in starts  # not before the media socket connects
    session = ari.session
    ws = await session.ws_connect(f"{sim.base_url}/media/{cid}", protocols=("media",))
    assert ws.protocol == "media"
    start = (await ws.receive(TIMEOUT)).data
    if json_control:
        body = json.loads(start)
        rows = load_recording("chan_websocket").path.joinpath("media_ws.jsonl").read_text()
        texts = [json.loads(line).get("text", "") for line in rows.splitlines()]
        recorded = json.loads(next(t for t in texts if t.startswith('{"event":"MEDIA_START"')))
        assert list(body) == list(recorded) and body["channel_variables"] == em["channelvars"]
    else:
        assert start == (f"MEDIA_START connection_id:{cid} channel:{em['name']} "
                         f"channel_id:{em['id']} format:ulaw optimal_frame_size:160 "
                         "ptime:20")  # fmt: skip
    await bridge_with(ari, call.caller_id, em["id"])
    audio = await ws.receive(TIMEOUT)
    assert audio.type == aiohttp.WSMsgType.BINARY and len(audio.data) == 160
    await ari.request("DELETE", f"/ari/channels/{call.caller_id}")
    await ari.request("DELETE", f"/ari/channels/{em['id']}")
    texts = []
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            texts.append(message.data)
    assert ws.close_code == 1000 and texts == []  # no HANGUP message, just the close
    recorded = load_recording("chan_websocket").per_channel_types()["1795313629.47"]
    assert per_channel(events.parsed)[em["id"]] == recorded


async def test_websocket_queue_mark_status_flush_and_xoff(sim: SimulatedAsterisk, ari: Ari) -> None:
    await ari.connect()
    await sim.wait_app_active()
    em = await ws_channel(ari)
    cid = em["channelvars"]["MEDIA_WEBSOCKET_CONNECTION_ID"]
    ws = await ari.session.ws_connect(f"{sim.base_url}/media/{cid}", protocols=("media",))
    await ws.receive(TIMEOUT)  # MEDIA_START
    link = sim.media_links[em["id"]]
    await ws.send_bytes(b"\x55" * 160 * 5)
    await ws.send_str("MARK_MEDIA m1")
    assert (await ws.receive(TIMEOUT)).data == "MEDIA_MARK_PROCESSED m1"
    assert len(link.played) == 5  # reported once the audio queued before it had played
    gaps = [b[0] - a[0] for a, b in zip(link.played, link.played[1:], strict=False)]
    assert all(0.015 < gap < 0.030 for gap in gaps)  # one frame per 20 ms slot
    await ws.send_str("GET_STATUS")
    status = (await ws.receive(TIMEOUT)).data
    assert status == (f"STATUS channel_id:{em['id']} queue_length:0 xon_level:800 xoff_level:900 "
                      "queue_full:false bulk_media:false media_paused:false")  # fmt: skip
    await ws.send_bytes(b"\x55" * 160 * 900)
    assert (await ws.receive(TIMEOUT)).data == "MEDIA_XOFF"
    await ws.send_str("MARK_MEDIA never")
    await ws.send_str("FLUSH_MEDIA")
    assert (await ws.receive(TIMEOUT)).data == "MEDIA_XON"  # the next slot: queue empty
    await ws.send_str("MARK_MEDIA " + "x" * 200)  # > 128 bytes: ignored
    await ws.send_str("HANGUP")
    async for message in ws:
        assert message.type != aiohttp.WSMsgType.TEXT  # the flushed mark is never reported
    assert ws.close_code == 1000
    assert em["id"] not in sim.channels and link.end_reason == "bridge_hangup"


async def test_websocket_media_path_errors_and_dtmf(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    await sim.wait_app_active()
    async with ari.session.get(f"{sim.base_url}/media/nosuch",
                               headers={"Upgrade": "websocket"}) as resp:  # fmt: skip
        assert resp.status == 404
    call = await sim.place_call("dtmf")
    em = await ws_channel(ari, transport_data="f(json)")
    url = f"{sim.base_url}/media/{em['channelvars']['MEDIA_WEBSOCKET_CONNECTION_ID']}"
    ws = await ari.session.ws_connect(url, protocols=("media",))
    with pytest.raises(aiohttp.WSServerHandshakeError) as second:
        await ari.session.ws_connect(url, protocols=("media",))
    assert second.value.status == 409
    await ws.receive(TIMEOUT)
    await bridge_with(ari, call.caller_id, em["id"])
    dtmf = json.loads((await ws.receive(TIMEOUT)).data)
    assert dtmf == {"event": "DTMF_END", "channel_id": em["id"], "digit": "1"}
    assert events.find(lambda e: e["type"] == "ChannelDtmfReceived") is not None


async def test_websocket_client_mode_as_recorded(sim: SimulatedAsterisk, ari: Ari) -> None:
    server = MediaServer()
    url = await server.start()
    sim.websocket_clients["lab_media"] = url
    events = await ari.connect()
    await sim.wait_app_active()
    answer = await ari.request(
        "POST", "/ari/channels/externalMedia", app="pipecat", external_host="lab_media",
        format="ulaw", encapsulation="none", transport="websocket", connection_type="client",
        direction="both",
    )  # fmt: skip
    em = answer.body
    assert re.fullmatch(r"WebSocket/lab_media/0x[0-9a-f]{12}", em["name"])
    assert em["channelvars"]["MEDIA_WEBSOCKET_CONNECTION_ID"] == "lab_media"
    peer = await server.accept()
    assert peer.protocol == "media" and "Authorization" not in peer.headers
    assert (await peer.text()) == (f"MEDIA_START connection_id:lab_media channel:{em['name']} "
                                   f"channel_id:{em['id']} format:ulaw "
                                   "optimal_frame_size:160 ptime:20")  # fmt: skip
    await events.wait_for("StasisStart", em["id"])
    await ari.request("DELETE", f"/ari/channels/{em['id']}")
    assert await peer.closed() == 1000
    await server.stop()


# -- dialplan: AudioSocket() and Dial(AudioSocket/...) -------------------------------------------


async def test_audiosocket_application_times_out_after_2s_without_traffic(
    sim: SimulatedAsterisk, as_server: AsServer
) -> None:
    call = await sim.dial_audiosocket(("127.0.0.1", as_server.port), uuid=UUID, echo=True,
                                      scenario="echo_roundtrip")  # fmt: skip
    conn = await as_server.accept()
    assert await conn.frame() is not None  # 0x01 + UUID
    for _ in range(5):
        conn.send(0x12, b"\x10\x00" * 320)  # any slin rate is accepted; the app answers 8 kHz
        _, kind, echoed = await conn.frame() or (0, 0, b"")
        assert (kind, len(echoed)) == (0x10, 320)
    last = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(call.ended, TIMEOUT) == "inactivity_timeout"
    assert await conn.until_eof() == []  # closed without a 0x00
    quiet = asyncio.get_running_loop().time() - last
    assert 1.95 < quiet < 2.5 and not call.continued
    assert not sim.leftovers()


async def test_audiosocket_application_plays_the_caller_and_ends_on_0x00(
    sim: SimulatedAsterisk, as_server: AsServer
) -> None:
    call = await sim.dial_audiosocket(("127.0.0.1", as_server.port))
    conn = await as_server.accept()
    _, kind, raw = await conn.frame() or (0, 0, b"")
    assert kind == 0x01 and str(uuid.UUID(bytes=raw)) == call.uuid
    frames = [await conn.frame() for _ in range(3)]
    assert all(f is not None and (f[1], len(f[2])) == (0x10, 320) for f in frames)
    call.send_dtmf("5")
    while (frame := await conn.frame()) is not None and frame[1] != 0x03:
        pass
    assert frame is not None and frame[2] == b"5"
    conn.send(0x00)
    assert await asyncio.wait_for(call.ended, TIMEOUT) == "bridge_hangup"
    assert call.continued  # AudioSocket() returned 0: the dialplan goes on


@pytest.mark.parametrize("kind", [0x01, 0x03, 0xFF])
async def test_audiosocket_application_refuses_kinds(sim: SimulatedAsterisk, as_server: AsServer,
                                                     kind: int) -> None:  # fmt: skip
    call = await sim.dial_audiosocket(("127.0.0.1", as_server.port), scenario="echo_roundtrip")
    conn = await as_server.accept()
    conn.send(kind, b"1")
    assert await asyncio.wait_for(call.ended, TIMEOUT) == "protocol_violation"
    assert not call.continued and (await conn.until_eof())[0][1] == 0x01


async def test_dial_audiosocket_slin16_has_no_timeout_and_continues_with_g(
    sim: SimulatedAsterisk, as_server: AsServer
) -> None:
    call = await sim.dial_audiosocket(("127.0.0.1", as_server.port), slin16=True,
                                      application=False, continue_on_hangup=True)  # fmt: skip
    conn = await as_server.accept()
    await conn.frame()
    frames = [await conn.frame() for _ in range(3)]
    assert all(f is not None and (f[1], len(f[2])) == (0x12, 640) for f in frames)
    quiet = await sim.dial_audiosocket(("127.0.0.1", as_server.port), application=False,
                                       scenario="echo_roundtrip")  # fmt: skip
    quiet_conn = await as_server.accept()
    with pytest.raises(TimeoutError):  # what must not happen: 2.3 s of silence ends nothing
        await asyncio.wait_for(asyncio.shield(quiet.ended), 2.3)
    quiet.hangup()
    assert [f[1] for f in await quiet_conn.until_eof()] == [0x01]
    assert await quiet.ended == "caller_hangup" and not quiet.continued
    conn.writer.close()
    assert await asyncio.wait_for(call.ended, TIMEOUT) == "bridge_closed" and call.continued
    refused = await sim.dial_audiosocket(("127.0.0.1", 9))
    assert await refused.ended == "connect_failed"
    assert not sim.leftovers()


# -- dialplan: Dial(WebSocket/...) -------------------------------------------------------------


class MediaPeer:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws, self.query, self.headers = ws, dict(request.query), request.headers
        self.protocol = ws.ws_protocol
        self.messages: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def text(self) -> str:
        while True:
            message = await asyncio.wait_for(self.messages.get(), TIMEOUT)
            if message.type == aiohttp.WSMsgType.TEXT:
                return str(message.data)

    async def binary(self) -> bytes:
        while True:
            message = await asyncio.wait_for(self.messages.get(), TIMEOUT)
            if message.type == aiohttp.WSMsgType.BINARY:
                return bytes(message.data)

    async def closed(self) -> int:
        return await asyncio.wait_for(self.done, TIMEOUT)


class MediaServer:
    """The bridge's media WebSocket server (client mode: Asterisk connects to it)."""

    def __init__(self) -> None:
        self.peers: asyncio.Queue[MediaPeer] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("media",))
        await ws.prepare(request)
        peer = MediaPeer(ws, request)
        self.peers.put_nowait(peer)
        async for message in ws:
            peer.messages.put_nowait(message)
        peer.done.set_result(ws.close_code or 0)
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/media", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"ws://127.0.0.1:{self.runner.addresses[0][1]}/media"

    async def accept(self) -> MediaPeer:
        return await asyncio.wait_for(self.peers.get(), TIMEOUT)

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def media_server() -> AsyncIterator[tuple[MediaServer, str]]:
    server = MediaServer()
    url = await server.start()
    yield server, url
    await server.stop()


async def test_dial_websocket_plain(sim: SimulatedAsterisk,
                                    media_server: tuple[MediaServer, str]) -> None:  # fmt: skip
    server, url = media_server
    call = await sim.dial_websocket(url, variables={"call_id": "a b/c&d", "lang": "en"})
    peer = await server.accept()
    assert peer.query == {"call_id": "a b/c&d", "lang": "en"} and peer.protocol == "media"
    assert "call_id=a%20b%2Fc%26d&lang=en" in call.url
    start = await peer.text()
    assert start == (f"MEDIA_START connection_id:pipecat_bridge channel:{call.label} "
                     f"channel_id:{call.channel_id} format:slin16 optimal_frame_size:640 "
                     "ptime:20")  # fmt: skip
    assert len(await peer.binary()) == 640  # the caller's audio, 16 kHz
    await peer.ws.send_bytes(b"\x00\x01" * 320 * 4)
    await peer.ws.send_str("MARK_MEDIA played")
    assert await peer.text() == "MEDIA_MARK_PROCESSED played"
    assert len(call.played) == 4
    call.hangup()
    assert await peer.closed() == 1000 and await call.ended == "caller_hangup"
    await call.wait_closed()
    assert call.close_code == 1000 and not sim.leftovers()


async def test_dial_websocket_json_and_hangup_command(
    sim: SimulatedAsterisk, media_server: tuple[MediaServer, str]
) -> None:
    server, url = media_server
    call = await sim.dial_websocket(url, endpoint="bridge", fmt="ulaw", json_control=True,
                                    inherited={"__TENANT": "acme"},
                                    scenario="echo_roundtrip")  # fmt: skip
    peer = await server.accept()
    start = json.loads(await peer.text())
    assert start == {"event": "MEDIA_START", "connection_id": "bridge", "channel": call.label,
                     "channel_id": call.channel_id, "format": "ulaw", "optimal_frame_size": 160,
                     "ptime": 20, "channel_variables": {
                         "MEDIA_WEBSOCKET_CONNECTION_ID": "bridge",
                         "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160",
                         "__TENANT": "acme"}}  # fmt: skip
    await peer.ws.send_bytes(b"\x7e" * 160)
    assert await peer.binary() == b"\x7e" * 160  # played at ptime, echoed by the far end
    call.send_dtmf("#")
    assert json.loads(await peer.text())["digit"] == "#"
    await peer.ws.send_str('{"command": "HANGUP"}')
    assert await peer.closed() == 1000
    assert await call.ended == "bridge_hangup" and not call.continued
