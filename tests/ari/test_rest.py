"""AriRestClient against a loopback HTTP server that answers as the recorded Asterisk 23.4.1 did."""

from __future__ import annotations

import asyncio
import base64
import functools
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tenacity import AsyncRetrying

import ari.rest
from ari.models import Bridge, Channel
from ari.rest import AriRestClient
from bridge.errors import AriHttpError, AriUnavailableError
from tests.recordings import rest_exchanges

CALLER_ID = "1795313560.0"
MEDIA_ID = "1795313560.2"
BRIDGE_ID = "dce72379-b387-4cd6-b25a-96b494a821f7"
BASIC_AUTH = "Basic " + base64.b64encode(b"asterisk:s3cret").decode("ascii")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    body: str = ""
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None


def recorded(scenario: str, method: str, path: str, status: int | None = None) -> Answer:
    """The first recorded answer to METHOD PATH (path as on the wire, with /ari)."""
    for line in rest_exchanges(scenario):
        if (line["method"], line["path"]) == (method, path) and status in (None, line["status"]):
            return Answer(
                line["status"],
                line["reason"],
                line["body_text"],
                line["headers"].get("Content-Type"),
            )
    raise LookupError(f"{scenario}: no recorded {method} {path}")


NO_CONTENT = recorded("basic_ulaw", "POST", f"/ari/channels/{CALLER_ID}/answer")
CHANNEL_NOT_FOUND = recorded("errors", "POST", "/ari/channels/nonexistent/answer")
BRIDGE_NOT_FOUND = recorded("errors", "DELETE", "/ari/bridges/nonexistent")
ALLOCATION_FAILED = recorded("errors", "POST", "/ari/channels", status=500)
UNAUTHORIZED = recorded("errors", "GET", "/ari/asterisk/info")
BRIDGE_EXISTS = recorded("errors", "POST", "/ari/bridges", status=409)
EMPTY_LIST = recorded("basic_ulaw", "GET", "/ari/channels")
BRIDGE_CREATED = recorded("basic_ulaw", "POST", "/ari/bridges")
MEDIA_CREATED = recorded("basic_ulaw", "POST", "/ari/channels/externalMedia")
JSON = "application/json"


@dataclass
class FakeAsterisk:
    """Answers (method, path) from `routes`; counts every request it sees.

    `drop` requests are answered by closing the connection abruptly (the client sees
    aiohttp.ServerDisconnectedError); a route in `hang` waits on `release`, which no test sets.
    """

    url: str = ""
    routes: dict[tuple[str, str], Answer] = field(default_factory=dict)
    hang: set[tuple[str, str]] = field(default_factory=set)
    drop: int = 0
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = (request.method, request.path)
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                request.headers.get("Authorization"),
            )
        )
        if self.drop > 0:
            self.drop -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if key in self.hang:
            await self.release.wait()
        answer = self.routes.get(
            key, Answer(404, "Not Found", '{"message":"Resource not found"}', JSON)
        )
        return web.Response(
            status=answer.status,
            reason=answer.reason,
            body=answer.body.encode(),
            content_type=answer.content_type,
        )


async def no_backoff(_seconds: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def instant_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's retry backoff (0.1 s, 0.2 s, ...) would only slow the tests down."""
    monkeypatch.setattr(
        ari.rest, "AsyncRetrying", functools.partial(AsyncRetrying, sleep=no_backoff)
    )


@pytest.fixture
async def asterisk() -> AsyncIterator[FakeAsterisk]:
    fake = FakeAsterisk()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/")).rstrip("/")
    yield fake
    fake.release.set()  # let a hanging handler finish so the server shuts down at once
    await server.close()


@pytest.fixture
async def client(asterisk: FakeAsterisk) -> AsyncIterator[AriRestClient]:
    async with AriRestClient(f"{asterisk.url}/ari", "asterisk", "s3cret", timeout=2.0) as rest:
        yield rest


def assert_seen(asterisk: FakeAsterisk, *expected: tuple[str, str, dict[str, str]]) -> None:
    assert [(s.method, s.path, s.query) for s in asterisk.seen] == list(expected)
    assert all(s.authorization == BASIC_AUTH for s in asterisk.seen)


async def assert_http_error(
    call: Any, method: str, path: str, status: int, message: str
) -> AriHttpError:
    with pytest.raises(AriHttpError) as info:
        await call
    exc = info.value
    assert (exc.method, exc.path, exc.status, exc.message) == (method, path, status, message)
    assert str(exc) == f"{method} {path} -> {status} {message}"
    return exc


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---- typed operations: method, path, query, parsed answer --------------------------------


async def test_answer(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("POST", f"/ari/channels/{CALLER_ID}/answer")] = NO_CONTENT
    assert NO_CONTENT.status == 204 and NO_CONTENT.body == ""
    await client.answer(CALLER_ID)
    assert_seen(asterisk, ("POST", f"/ari/channels/{CALLER_ID}/answer", {}))


async def test_hangup(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("DELETE", f"/ari/channels/{CALLER_ID}")] = NO_CONTENT
    await client.hangup(CALLER_ID)
    assert_seen(asterisk, ("DELETE", f"/ari/channels/{CALLER_ID}", {}))


async def test_create_bridge(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("POST", "/ari/bridges")] = BRIDGE_CREATED
    bridge = await client.create_bridge(BRIDGE_ID, "pipecat-1795313560.0")
    assert bridge == Bridge(
        id=BRIDGE_ID,
        technology="simple_bridge",
        bridge_type="mixing",
        name="pipecat-1795313560.0",
        channels=(),
    )
    assert_seen(
        asterisk,
        (
            "POST",
            "/ari/bridges",
            {"type": "mixing", "name": "pipecat-1795313560.0", "bridgeId": BRIDGE_ID},
        ),
    )


RTP_PARAMS = {
    "format": "ulaw",
    "encapsulation": "rtp",
    "transport": "udp",
    "external_host": "127.0.0.1:31000",
}


async def test_create_external_media(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("POST", "/ari/channels/externalMedia")] = MEDIA_CREATED
    channel = await client.create_external_media(
        channel_id=MEDIA_ID, app="pipecat", params=RTP_PARAMS
    )
    assert channel == Channel(
        id=MEDIA_ID,
        name="UnicastRTP/127.0.0.1:31000-0x7f749c00edb0",
        state="Down",
        caller_number="",
        caller_name="",
        context="default",
        exten="s",
        priority=1,
        app_name="AppDial2",
        app_data="(Outgoing Line)",
        channelvars={"UNICASTRTP_LOCAL_PORT": "10314", "UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1"},
    )
    assert channel.is_media_channel
    assert_seen(
        asterisk,
        (
            "POST",
            "/ari/channels/externalMedia",
            {
                "app": "pipecat",
                "external_host": "127.0.0.1:31000",
                "format": "ulaw",
                "encapsulation": "rtp",
                "transport": "udp",
                "direction": "both",
                "channelId": MEDIA_ID,
            },
        ),
    )


async def test_add_channels(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("POST", f"/ari/bridges/{BRIDGE_ID}/addChannel")] = NO_CONTENT
    await client.add_channels(BRIDGE_ID, [CALLER_ID, MEDIA_ID])
    assert_seen(
        asterisk,
        ("POST", f"/ari/bridges/{BRIDGE_ID}/addChannel", {"channel": f"{CALLER_ID},{MEDIA_ID}"}),
    )


async def test_delete_bridge(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("DELETE", f"/ari/bridges/{BRIDGE_ID}")] = NO_CONTENT
    await client.delete_bridge(BRIDGE_ID)
    assert_seen(asterisk, ("DELETE", f"/ari/bridges/{BRIDGE_ID}", {}))


async def test_continue_in_dialplan(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("POST", f"/ari/channels/{CALLER_ID}/continue")] = NO_CONTENT
    await client.continue_in_dialplan(CALLER_ID, "pipecat-in", "100", 2)
    assert_seen(
        asterisk,
        (
            "POST",
            f"/ari/channels/{CALLER_ID}/continue",
            {"context": "pipecat-in", "extension": "100", "priority": "2"},
        ),
    )


async def test_list_channels_and_bridges_empty(
    asterisk: FakeAsterisk, client: AriRestClient
) -> None:
    asterisk.routes[("GET", "/ari/channels")] = EMPTY_LIST
    asterisk.routes[("GET", "/ari/bridges")] = EMPTY_LIST
    assert await client.list_channels() == []
    assert await client.list_bridges() == []
    assert_seen(asterisk, ("GET", "/ari/channels", {}), ("GET", "/ari/bridges", {}))


async def test_list_channels_parses_each(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    caller = recorded("basic_ulaw", "POST", "/ari/channels")
    listing = f"[{caller.body},{MEDIA_CREATED.body}]"
    asterisk.routes[("GET", "/ari/channels")] = Answer(200, "OK", listing, JSON)
    channels = await client.list_channels()
    assert [(c.id, c.is_media_channel) for c in channels] == [(CALLER_ID, False), (MEDIA_ID, True)]
    assert channels[0].caller_number == "5551000"


async def test_application(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    body = '{"name":"pipecat","channel_ids":[],"bridge_ids":[],"endpoint_ids":[]}'
    asterisk.routes[("GET", "/ari/applications/pipecat")] = Answer(200, "OK", body, JSON)
    assert await client.application("pipecat") == {
        "name": "pipecat",
        "channel_ids": [],
        "bridge_ids": [],
        "endpoint_ids": [],
    }


async def test_application_answer_that_is_not_an_object(
    asterisk: FakeAsterisk, client: AriRestClient
) -> None:
    asterisk.routes[("GET", "/ari/applications/pipecat")] = Answer(200, "OK", "[]", JSON)
    await assert_http_error(
        client.application("pipecat"),
        "GET",
        "/applications/pipecat",
        200,
        "answer is not an object",
    )


@pytest.mark.parametrize("suffix", ["", "/", "/ari", "/ari/"])
async def test_base_url_with_or_without_ari(asterisk: FakeAsterisk, suffix: str) -> None:
    asterisk.routes[("GET", "/ari/channels")] = EMPTY_LIST
    async with AriRestClient(asterisk.url + suffix, "asterisk", "s3cret") as rest:
        assert await rest.list_channels() == []
    assert_seen(asterisk, ("GET", "/ari/channels", {}))


# ---- Asterisk's errors -------------------------------------------------------------------


async def test_not_found_carries_asterisks_message(
    asterisk: FakeAsterisk, client: AriRestClient
) -> None:
    asterisk.routes[("POST", "/ari/channels/nonexistent/answer")] = CHANNEL_NOT_FOUND
    await assert_http_error(
        client.answer("nonexistent"),
        "POST",
        "/channels/nonexistent/answer",
        404,
        "Channel not found",
    )
    assert len(asterisk.seen) == 1  # an HTTP error is an answer: never retried


async def test_bridge_not_found(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("DELETE", "/ari/bridges/nonexistent")] = BRIDGE_NOT_FOUND
    await assert_http_error(
        client.delete_bridge("nonexistent"),
        "DELETE",
        "/bridges/nonexistent",
        404,
        "Bridge not found",
    )
    assert len(asterisk.seen) == 1


async def test_error_key_as_originate_uses(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    assert ALLOCATION_FAILED.body == '{"error":"Allocation failed"}'
    asterisk.routes[("POST", "/ari/channels")] = ALLOCATION_FAILED
    await assert_http_error(
        client.request("POST", "/channels", {"endpoint": "Bogus/xyz", "app": "pipecat"}),
        "POST",
        "/channels",
        500,
        "Allocation failed",
    )
    assert_seen(asterisk, ("POST", "/ari/channels", {"endpoint": "Bogus/xyz", "app": "pipecat"}))


async def test_conflict_on_create_bridge(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("POST", "/ari/bridges")] = BRIDGE_EXISTS
    await assert_http_error(
        client.create_bridge("c828efd4-c86b-4a02-8157-1396c03d4a7a", "x"),
        "POST",
        "/bridges",
        409,
        "Bridge with id 'c828efd4-c86b-4a02-8157-1396c03d4a7a' already exists",
    )


async def test_unauthorized(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("GET", "/ari/asterisk/info")] = UNAUTHORIZED
    await assert_http_error(
        client.request("GET", "/asterisk/info", idempotent=True),
        "GET",
        "/asterisk/info",
        401,
        "Authentication required",
    )
    assert len(asterisk.seen) == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (Answer(502, "Bad Gateway", "upstream down\n", "text/plain"), "upstream down"),
        (Answer(503, "Service Unavailable"), "Service Unavailable"),
        (Answer(500, "Internal Server Error", '{"message": 42}', JSON), "Internal Server Error"),
        (Answer(500, "Internal Server Error", '["x"]', JSON), "Internal Server Error"),
    ],
)
async def test_error_without_a_usable_message(
    asterisk: FakeAsterisk, client: AriRestClient, answer: Answer, message: str
) -> None:
    asterisk.routes[("POST", "/ari/bridges")] = answer
    await assert_http_error(
        client.create_bridge(BRIDGE_ID, "x"), "POST", "/bridges", answer.status, message
    )


async def test_2xx_that_is_not_json(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("GET", "/ari/channels")] = Answer(200, "OK", "<html>", "text/html")
    await assert_http_error(client.list_channels(), "GET", "/channels", 200, "answer is not JSON")


async def test_2xx_that_is_not_a_channel(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("POST", "/ari/channels/externalMedia")] = Answer(200, "OK", "{}", JSON)
    with pytest.raises(AriHttpError, match="unexpected answer: channel has no id") as info:
        await client.create_external_media(
            channel_id=MEDIA_ID, app="pipecat", params=RTP_PARAMS
        )
    assert info.value.status == 200


# ---- transport failures, retries, timeouts -----------------------------------------------


async def test_connection_refused_is_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}/ari"
    async with AriRestClient(url, "asterisk", "s3cret", timeout=2.0) as rest:
        with pytest.raises(AriUnavailableError, match="POST /bridges: ClientConnectorError"):
            await rest.create_bridge(BRIDGE_ID, "x")


async def test_connection_refused_after_retries_is_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with AriRestClient(url, "asterisk", "s3cret", timeout=2.0, retries=2) as rest:
        with pytest.raises(AriUnavailableError, match="GET /channels"):
            await rest.list_channels()


@pytest.mark.parametrize(
    ("operation", "method", "path"),
    [
        ("list_channels", "GET", "/ari/channels"),
        ("hangup", "DELETE", f"/ari/channels/{CALLER_ID}"),
        ("delete_bridge", "DELETE", f"/ari/bridges/{CALLER_ID}"),
        ("answer", "POST", f"/ari/channels/{CALLER_ID}/answer"),
    ],
)
async def test_idempotent_request_is_retried_after_dropped_connections(
    asterisk: FakeAsterisk, client: AriRestClient, operation: str, method: str, path: str
) -> None:
    # Two drops, not one: aiohttp itself resends a GET or DELETE once after a disconnect,
    # so only a second drop shows that the client's own retry is there.
    asterisk.routes[(method, path)] = EMPTY_LIST if method == "GET" else NO_CONTENT
    asterisk.drop = 2
    if operation == "list_channels":
        assert await client.list_channels() == []
    else:
        await getattr(client, operation)(CALLER_ID)
    assert_seen(asterisk, *[(method, path, {})] * 3)


async def test_idempotent_request_gives_up_after_its_retries(
    asterisk: FakeAsterisk, client: AriRestClient
) -> None:
    asterisk.drop = 1000
    with pytest.raises(
        AriUnavailableError, match="POST /channels/x/answer: ServerDisconnectedError"
    ):
        await client.answer("x")
    assert len(asterisk.seen) == 3  # retries=3 by default; aiohttp never resends a POST


async def test_get_gives_up_too(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.drop = 1000
    with pytest.raises(AriUnavailableError, match="GET /channels: ServerDisconnectedError"):
        await client.list_channels()
    assert 3 <= len(asterisk.seen) <= 6


async def test_create_bridge_is_not_retried(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("POST", "/ari/bridges")] = BRIDGE_CREATED
    asterisk.drop = 1
    with pytest.raises(AriUnavailableError, match="POST /bridges: ServerDisconnectedError"):
        await client.create_bridge(BRIDGE_ID, "x")
    assert len(asterisk.seen) == 1


async def test_external_media_is_not_retried(asterisk: FakeAsterisk, client: AriRestClient) -> None:
    asterisk.routes[("POST", "/ari/channels/externalMedia")] = MEDIA_CREATED
    asterisk.drop = 1
    with pytest.raises(AriUnavailableError):
        await client.create_external_media(
            channel_id=MEDIA_ID, app="pipecat", params=RTP_PARAMS
        )
    assert len(asterisk.seen) == 1


async def test_client_works_again_after_a_dropped_connection(
    asterisk: FakeAsterisk, client: AriRestClient
) -> None:
    asterisk.routes[("POST", "/ari/bridges")] = BRIDGE_CREATED
    asterisk.drop = 1
    with pytest.raises(AriUnavailableError):
        await client.create_bridge(BRIDGE_ID, "x")
    assert (await client.create_bridge(BRIDGE_ID, "x")).id == BRIDGE_ID
    assert len(asterisk.seen) == 2


async def test_timeout_is_unavailable(asterisk: FakeAsterisk) -> None:
    asterisk.hang.add(("POST", "/ari/bridges"))
    async with AriRestClient(asterisk.url, "asterisk", "s3cret", timeout=0.2) as rest:
        with pytest.raises(AriUnavailableError, match="POST /bridges: TimeoutError"):
            await rest.create_bridge(BRIDGE_ID, "x")
    assert len(asterisk.seen) == 1


async def test_idempotent_timeout_is_retried_then_unavailable(asterisk: FakeAsterisk) -> None:
    asterisk.hang.add(("GET", "/ari/channels"))
    async with AriRestClient(asterisk.url, "asterisk", "s3cret", timeout=0.2, retries=2) as rest:
        with pytest.raises(AriUnavailableError, match="GET /channels: TimeoutError"):
            await rest.list_channels()
    assert len(asterisk.seen) == 2
