"""A plain ARI client for driving SimulatedAsterisk in tests, and assertions over its answers.

aiohttp for REST (basic auth, as the recorded client), websockets for the events socket, a UDP
socket standing in for the bridge's `external_host`.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import websockets

from bridge.tools.sim.asterisk import SimCall, SimulatedAsterisk

RTP = struct.Struct("!BBHII")
TIMEOUT = 5.0  # generous: other test suites may share the machine


def shape(obj: Any) -> Any:
    """Keys in order and value types, recursively: what must match a recorded body."""
    if isinstance(obj, dict):
        return [(key, shape(value)) for key, value in obj.items()]
    if isinstance(obj, list):
        return ["list", shape(obj[0])] if obj else ["list"]
    return type(obj).__name__


def key_shape(obj: Any) -> Any:
    """Like `shape`, without looking into lists (an event's `args`, a bridge's `channels`)."""
    if isinstance(obj, dict):
        return [(key, key_shape(value)) for key, value in obj.items()]
    return "list" if isinstance(obj, list) else type(obj).__name__


def per_channel(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Event types per channel id, keyed like summary.json `per_channel` (Dial left out)."""
    out: dict[str, list[str]] = {}
    for event in events:
        if isinstance(event.get("channel"), dict):
            key = event["channel"]["id"]
        elif isinstance(event.get("bridge"), dict):
            key = f"bridge:{event['bridge']['id']}"
        else:
            continue
        out.setdefault(key, []).append(event["type"])
    return out


def rtp_fields(packet: bytes) -> tuple[int, int, int, int, int, int]:
    first, second, seq, timestamp, ssrc = RTP.unpack_from(packet)
    return first >> 6, second >> 7, second & 0x7F, seq, timestamp, ssrc


def assert_asterisk_headers(headers: Any, has_body: bool) -> None:
    assert headers["Server"] == "Asterisk/23.4.1"
    assert headers["Cache-Control"] == "no-cache, no-store"
    assert ("Content-Type" in headers) == has_body
    if has_body:
        assert headers["Content-Type"] == "application/json"


class Answer:
    def __init__(self, status: int, reason: str, headers: Any, data: bytes) -> None:
        self.status, self.reason, self.headers, self.data = status, reason, headers, data
        binary = headers.get("Content-Type", "").startswith("audio/")  # a stored recording
        self.text = "" if binary else data.decode()

    @property
    def body(self) -> Any:
        return json.loads(self.text) if self.text else None


class Events:
    """The events socket as an app sees it: every text frame, awaitable by predicate."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.raw: list[str] = []
        self.parsed: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, str)  # Asterisk sends text frames only
                async with self._changed:
                    self.raw.append(message)
                    self.parsed.append(json.loads(message))
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass

    def find(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        return next((event for event in self.parsed if predicate(event)), None)

    async def wait_for(
        self,
        event_type: str,
        channel_id: str | None = None,
        within: float = TIMEOUT,
        **fields: Any,
    ) -> dict[str, Any]:
        def matches(event: dict[str, Any]) -> bool:
            obj = event.get("channel") or event.get("peer") or {}
            return (
                event["type"] == event_type
                and (channel_id is None or obj.get("id") == channel_id)
                and all(event.get(k) == v for k, v in fields.items())
            )

        async def wait() -> dict[str, Any]:
            async with self._changed:
                await self._changed.wait_for(lambda: self.find(matches) is not None)
            found = self.find(matches)
            assert found is not None
            return found

        return await asyncio.wait_for(wait(), within)

    async def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], within: float = TIMEOUT
    ) -> dict[str, Any]:
        """The first event for which `predicate` holds, once it has arrived."""

        async def wait() -> dict[str, Any]:
            async with self._changed:
                await self._changed.wait_for(lambda: self.find(predicate) is not None)
            found = self.find(predicate)
            assert found is not None
            return found

        return await asyncio.wait_for(wait(), within)

    async def bridge_destroyed(self, bridge_id: str) -> dict[str, Any]:
        return await self.wait_until(
            lambda e: e["type"] == "BridgeDestroyed" and e["bridge"]["id"] == bridge_id
        )

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


class Ari:
    """A plain ARI client: aiohttp for REST (basic auth), websockets for events."""

    def __init__(self, sim: SimulatedAsterisk, session: aiohttp.ClientSession) -> None:
        self.sim, self.session = sim, session
        self.events: Events | None = None
        self.udps: list[Udp] = []

    async def open_udp(self) -> Udp:
        """A socket of the bridge's own: its `external_host`."""
        loop = asyncio.get_running_loop()
        _, udp = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
        self.udps.append(udp)
        return udp

    async def close(self) -> None:
        for udp in self.udps:
            if udp.transport is not None:
                udp.transport.close()
        if self.events is not None:
            await self.events.close()

    async def connect(self) -> Events:
        self.events = Events(await websockets.connect(self.sim.events_url, max_size=2**20))
        return self.events

    async def request(self, method: str, path: str, **params: str) -> Answer:
        """A REST request with HTTP basic auth, as the recorded client made them."""
        auth = aiohttp.encode_basic_auth(self.sim.user, self.sim.password)
        return await self.anonymous(method, path, {"Authorization": auth}, **params)

    async def anonymous(
        self, method: str, path: str, headers: dict[str, str] | None = None, /, **params: str
    ) -> Answer:
        """A REST request without credentials (unless `api_key` is among the params)."""
        async with self.session.request(
            method, self.sim.base_url + path, params=params, headers=headers or {}
        ) as resp:
            return Answer(resp.status, resp.reason or "", resp.headers, await resp.read())


class Udp(asyncio.DatagramProtocol):
    """The bridge's RTP socket (its `external_host`)."""

    def __init__(self) -> None:
        self.packets: asyncio.Queue[tuple[float, bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.put_nowait((asyncio.get_running_loop().time(), data, addr))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    async def recv(self) -> tuple[float, bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.packets.get(), TIMEOUT)

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))


class Bridged:
    """One call taken through the recorded bridge flow (basic_ulaw, requests 2-7)."""

    def __init__(self, call: SimCall, udp: Udp, answers: list[Answer], em: dict[str, Any],
                 bridge: dict[str, Any]) -> None:  # fmt: skip
        self.call, self.udp, self.answers, self.em, self.bridge = call, udp, answers, em, bridge

    @property
    def asterisk_port(self) -> int:
        return int(self.em["channelvars"]["UNICASTRTP_LOCAL_PORT"])


async def bridge_call(
    ari: Ari, call: SimCall, channel_id: str | None = None, *, seen_start: bool = True
) -> Bridged:
    """`seen_start=False`: a caller whose StasisStart went to nobody (a waiting caller)."""
    assert ari.events is not None
    if seen_start:
        await ari.events.wait_for("StasisStart", call.caller_id)
    udp = await ari.open_udp()
    cid = call.caller_id
    answers = [await ari.request("POST", f"/ari/channels/{cid}/answer")]
    answers.append(await ari.request("POST", "/ari/bridges", type="mixing", name=f"pipecat-{cid}"))
    params = {"app": "pipecat", "external_host": f"127.0.0.1:{udp.port}", "format": "ulaw",
              "encapsulation": "rtp", "transport": "udp", "direction": "both"}  # fmt: skip
    if channel_id:
        params["channelId"] = channel_id
    answers.append(await ari.request("POST", "/ari/channels/externalMedia", **params))
    em, bridge = answers[2].body, answers[1].body
    for name in ("UNICASTRTP_LOCAL_ADDRESS", "UNICASTRTP_LOCAL_PORT"):
        answers.append(
            await ari.request("GET", f"/ari/channels/{em['id']}/variable", variable=name)
        )
    await ari.events.wait_for("StasisStart", em["id"])  # facts §1b: not before
    path = f"/ari/bridges/{bridge['id']}/addChannel"
    answers.append(await ari.request("POST", path, channel=f"{cid},{em['id']}"))
    assert answers[-1].status == 204
    await asyncio.wait_for(call.bridged, TIMEOUT)
    return Bridged(call, udp, answers, em, bridge)


async def hang_up(ari: Ari, bridged: Bridged) -> list[Answer]:
    return [
        await ari.request("DELETE", f"/ari/channels/{bridged.call.caller_id}"),
        await ari.request("DELETE", f"/ari/channels/{bridged.em['id']}"),
        await ari.request("DELETE", f"/ari/bridges/{bridged.bridge['id']}"),
    ]


def assert_nothing_left(sim: SimulatedAsterisk) -> None:
    assert sim.channels == {}
    assert sim.bridges == {}
    assert sim.open_udp_sockets() == []
