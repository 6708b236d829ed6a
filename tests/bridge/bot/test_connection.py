"""The bot WebSocket against hostile bots: real local servers on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import structlog
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from bridge.bot.connection import MAX_BOT_MESSAGE, BotConnection, safe_url
from bridge.errors import BotConnectError
from bridge.logs import configure_logging

SECRET = "s3cret-T0KEN"
Handler = Callable[[ServerConnection], Awaitable[None]]


# ---- helpers -----------------------------------------------------------------------------


@dataclass
class Reports:
    """What a BotConnection told its call."""

    messages: list[str | bytes] = field(default_factory=list)
    closes: list[tuple[int | None, str]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, message: str | bytes) -> None:
        self.messages.append(message)
        self.arrived.set()

    async def wait_messages(self, count: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()

    def on_closed(self, code: int | None, reason: str) -> None:
        self.closes.append((code, reason))
        self.closed.set()

    async def wait_closed(self, within: float = 5.0) -> tuple[int | None, str]:
        await asyncio.wait_for(self.closed.wait(), within)
        (report,) = self.closes  # exactly once
        return report


def bot_for(url: str, reports: Reports, **kwargs: Any) -> BotConnection:
    return BotConnection(url, on_message=reports.on_message, on_closed=reports.on_closed, **kwargs)


def loopback_socket(rcvbuf: int | None = None) -> socket.socket:
    """Bound to an ephemeral loopback port, not listening: connecting to it is refused.
    A small SO_RCVBUF (inherited by accepted sockets) makes a non-reading bot fill up fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def bot_server(
    handler: Handler, *, sock: socket.socket | None = None, scheme: str = "ws", **kwargs: Any
) -> AsyncIterator[str]:
    sock = sock or loopback_socket()
    port = sock.getsockname()[1]
    # A short close_timeout: at the end, a bot that stopped reading never sees a close frame.
    kwargs.setdefault("close_timeout", 0.1)
    async with serve(handler, sock=sock, compression=None, **kwargs):
        yield f"{scheme}://127.0.0.1:{port}/ws"


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def stop_reading(ws: ServerConnection) -> None:
    ws.transport.pause_reading()  # a hung bot: nothing is read, not even pings or a close
    await ws.wait_closed()


async def every_20ms_until(done: asyncio.Event, action: Callable[[], object]) -> None:
    """Act at media pace (what a call does) until `done`."""
    while not done.is_set():
        action()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.02)


async def max_loop_lag(until: asyncio.Event, step: float = 0.005) -> float:
    """How late a 5 ms sleep wakes up, at worst, until `until` is set."""
    loop = asyncio.get_running_loop()
    lag = 0.0
    while not until.is_set():
        start = loop.time()
        await asyncio.sleep(step)
        lag = max(lag, loop.time() - start - step)
    return lag


@pytest.fixture
def json_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The service's log lines, as configured for production (JSON), kept in memory.
    configure_logging is global, so what was configured is put back after."""
    saved = structlog.get_config()
    configure_logging("json", "debug")
    lines = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=lines))

    def records() -> list[dict[str, Any]]:
        return [json.loads(line) for line in lines.getvalue().splitlines()]

    yield records
    structlog.configure(**saved)


# ---- opening -----------------------------------------------------------------------------


async def test_echo_then_close_flushes_final_messages_in_order() -> None:
    received: list[str | bytes] = []
    done = asyncio.Event()

    async def record(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)
        done.set()

    reports = Reports()
    async with bot_server(record) as url:
        bot = bot_for(url, reports)
        await bot.connect()
        assert bot.connect_attempts == 1
        for index in range(50):
            assert bot.send(f"m{index}")
        await bot.close(["stop"], 1000)
        await asyncio.wait_for(done.wait(), 5)
    assert received == [f"m{index}" for index in range(50)] + ["stop"]
    assert bot.sent == 51
    assert reports.closes == []  # close() is ours: nothing to report
    assert not bot.send("late")


async def test_nothing_listening_is_retried_until_the_deadline(
    json_logs: Callable[[], list[dict[str, Any]]],
) -> None:
    sock = loopback_socket()  # bound, never listening: every attempt is refused
    port = sock.getsockname()[1]
    bot = bot_for(f"ws://127.0.0.1:{port}/ws", Reports(), open_timeout=0.5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with sock, pytest.raises(BotConnectError) as error:
        await bot.connect()
    elapsed = loop.time() - start
    assert elapsed < 0.5  # gives up when the next try could not start in time
    assert bot.connect_attempts == 3  # at 0, 0.1, 0.3; the next would start at 0.7
    assert "ConnectionRefusedError" in str(error.value)
    assert "gave up after 3 attempt(s)" in str(error.value)
    failures = [r for r in json_logs() if r["event"] == "bot_connect_failed"]
    assert [r["attempt"] for r in failures] == [1, 2, 3]  # each failure logged once
    assert [r["retry_in"] for r in failures] == [0.1, 0.2, None]


class RefusalCounter:
    """A stand-in for the connection's logger that sets `enough` at the n-th failed attempt."""

    def __init__(self, starts_after: int) -> None:
        self._left = starts_after
        self.enough = asyncio.Event()

    def bind(self, **_values: object) -> RefusalCounter:
        return self

    def __getattr__(self, level: str) -> Callable[..., None]:
        def log(event: str, *_args: object, **_values: object) -> None:
            if event == "bot_connect_failed":
                self._left -= 1
                if self._left <= 0:
                    self.enough.set()

        return log


async def test_bot_listening_late_is_reached_by_a_retry() -> None:
    sock = loopback_socket()
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()
    start = loop.time()
    server_up = asyncio.Event()
    # The scenario: the bot process is still starting. It comes up once the bridge has been
    # refused three times (at 0, 0.1 and 0.3 s), so the fourth attempt (0.7 s) gets in.
    refused = RefusalCounter(starts_after=3)

    async def start_late() -> None:
        await refused.enough.wait()
        async with serve(echo, sock=sock, compression=None):
            server_up.set()
            await asyncio.Event().wait()

    server = loop.create_task(start_late())
    reports = Reports()
    bot = bot_for(f"ws://127.0.0.1:{port}/ws", reports, open_timeout=3.0, log=refused)
    try:
        await bot.connect()
        assert server_up.is_set()
        assert loop.time() - start >= 0.5
        assert bot.connect_attempts == 4  # refused at 0, 0.1, 0.3; in at 0.7
        bot.send("hello")
        await bot.close()
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


@pytest.mark.parametrize(
    "status",
    [HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.BAD_GATEWAY, HTTPStatus.TOO_MANY_REQUESTS],
)
async def test_5xx_and_429_answers_are_retried(status: HTTPStatus) -> None:
    answered: list[int] = []

    def busy_twice(conn: ServerConnection, request: Request) -> Response | None:
        if len(answered) < 2:
            answered.append(status.value)
            return conn.respond(status, "not now\n")
        answered.append(101)
        return None

    async with bot_server(echo, process_request=busy_twice) as url:
        bot = bot_for(url, Reports())
        await bot.connect()
        await bot.close()
    assert answered == [status.value, status.value, 101]
    assert bot.connect_attempts == 3


@pytest.mark.parametrize(
    "status", [HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND]
)
async def test_4xx_answer_is_not_retried(status: HTTPStatus) -> None:
    requests = 0

    def reject(conn: ServerConnection, request: Request) -> Response:
        nonlocal requests
        requests += 1
        return conn.respond(status, "no\n")

    async with bot_server(echo, process_request=reject) as url:
        bot = bot_for(url, Reports(), open_timeout=3.0)
        with pytest.raises(BotConnectError) as error:
            await bot.connect()
    assert requests == 1
    assert bot.connect_attempts == 1
    assert f"HTTP {status.value}" in str(error.value)
    assert "not retried" in str(error.value)


async def test_handshake_that_never_answers_times_out_at_the_deadline() -> None:
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read()  # reads the upgrade request, answers nothing, until EOF
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    async with server:
        bot = bot_for(f"ws://127.0.0.1:{port}/ws", Reports(), open_timeout=0.4)
        start = loop.time()
        with pytest.raises(BotConnectError) as error:
            await bot.connect()
        elapsed = loop.time() - start
    assert 0.39 <= elapsed < 1.0
    assert accepted == 1  # the whole budget went to the one attempt
    assert "TimeoutError" in str(error.value)


# ---- TLS and headers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway private CA and a server certificate for 127.0.0.1 it signed."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    for command in (
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
         "-subj", "/CN=bridge test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "srv.pem", "-days", "1", "-extfile", "ext.cnf"],
    ):  # fmt: skip
        subprocess.run(["openssl", *command], cwd=d, check=True, capture_output=True)
    return Pki(ca=d / "ca.pem", cert=d / "srv.pem", key=d / "srv.key")


@contextlib.asynccontextmanager
async def tls_bot(pki: Pki) -> AsyncIterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    async with bot_server(echo, scheme="wss", ssl=context) as url:
        yield url


async def test_wss_with_the_private_ca_connects(pki: Pki) -> None:
    reports = Reports()
    async with tls_bot(pki) as url:
        bot = bot_for(url, reports, ca_file=str(pki.ca))
        await bot.connect()
        bot.send("over tls")
        await reports.wait_messages(1)
        await bot.close()
    assert reports.messages == ["over tls"]


async def test_wss_without_the_ca_fails_verification_and_is_not_retried(pki: Pki) -> None:
    async with tls_bot(pki) as url:
        bot = bot_for(url, Reports(), open_timeout=3.0)
        with pytest.raises(BotConnectError) as error:
            await bot.connect()
    assert bot.connect_attempts == 1
    assert "CERTIFICATE_VERIFY_FAILED" in str(error.value)
    assert "not retried" in str(error.value)


async def test_unreadable_ca_file_is_a_connect_error(tmp_path: Path) -> None:
    bot = bot_for("wss://127.0.0.1:9/ws", Reports(), ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(BotConnectError, match="cannot load bot CA file"):
        await bot.connect()


async def test_headers_are_sent_and_no_secret_is_ever_printed(
    json_logs: Callable[[], list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    # websockets' client would print every request header at debug.
    caplog.set_level(logging.DEBUG, logger="websockets.client")
    seen: list[list[str]] = []

    def check(conn: ServerConnection, request: Request) -> Response | None:
        seen.append(request.headers.get_all("Authorization"))
        if request.path.startswith("/denied"):
            return conn.respond(HTTPStatus.FORBIDDEN, f"bad token {SECRET}\n")
        return None

    headers = [("Authorization", f"Bearer {SECRET}")]
    async with bot_server(echo, process_request=check) as url:
        port = url.split(":")[2].split("/")[0]
        good = bot_for(f"{url}?token={SECRET}", Reports(), headers=headers)
        await good.connect()
        await good.close()
        denied = bot_for(
            f"ws://me:{SECRET}@127.0.0.1:{port}/denied?token={SECRET}&x=1",
            Reports(),
            headers=headers,
        )
        with pytest.raises(BotConnectError) as error:
            await denied.connect()
    assert seen[0] == [f"Bearer {SECRET}"]
    client_lines = [r.getMessage() for r in caplog.records if r.name == "websockets.client"]
    assert "HTTP 403" in str(error.value)
    assert "/denied?***" in str(error.value)
    for text in (str(error.value), repr(denied), *client_lines, json.dumps(json_logs())):
        assert SECRET not in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://127.0.0.1:8765/ws", "ws://127.0.0.1:8765/ws"),
        (f"wss://u:{SECRET}@bot.example/calls/1?token={SECRET}", "wss://bot.example/calls/1?***"),
        (f"wss://[::1]:9443/ws?sig={SECRET}#dialect=vonage", "wss://[::1]:9443/ws?***"),
    ],
)
def test_safe_url(url: str, expected: str) -> None:
    assert safe_url(url) == expected


# ---- a bot that misbehaves mid-call ------------------------------------------------------


async def test_bot_closing_1011_is_reported_once() -> None:
    async def crash(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1011, "bot crashed")

    reports = Reports()
    async with bot_server(crash) as url:
        bot = bot_for(url, reports)
        await bot.connect()
        bot.send("hello")
        assert await reports.wait_closed() == (1011, "bot crashed")
        assert not bot.send("after")
        await bot.close()
    assert reports.closes == [(1011, "bot crashed")]


async def test_non_utf8_text_frame_closes_1007() -> None:
    async def garbage(ws: ServerConnection) -> None:
        await ws.send(b"\xff\xfe not utf-8", text=True)
        await ws.wait_closed()

    reports = Reports()
    async with bot_server(garbage) as url:
        bot = bot_for(url, reports)
        await bot.connect()
        code, _reason = await reports.wait_closed()
        await bot.close()
    assert code == 1007
    assert reports.messages == []


async def test_message_over_1mib_closes_only_that_connection_1009() -> None:
    async def huge_or_echo(ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.path == "/huge":
            await ws.send(b"x" * MAX_BOT_MESSAGE)  # exactly the limit: accepted
            await ws.send(b"x" * (MAX_BOT_MESSAGE + 1))
            await ws.wait_closed()
        else:
            await echo(ws)

    hostile, healthy = Reports(), Reports()
    async with bot_server(huge_or_echo) as url:
        base = url.rsplit("/", 1)[0]
        bad = bot_for(f"{base}/huge", hostile)
        good = bot_for(url, healthy)
        await asyncio.gather(bad.connect(), good.connect())
        code, reason = await hostile.wait_closed()
        good.send("still here")
        await healthy.wait_messages(1)
        await asyncio.gather(bad.close(), good.close())
    assert code == 1009
    assert "exceeds limit" in reason
    assert [len(m) for m in hostile.messages] == [MAX_BOT_MESSAGE]
    assert healthy.messages == ["still here"]
    assert healthy.closes == []


@pytest.mark.parametrize("pings", [True, False], ids=["pings", "writer-watchdog-alone"])
async def test_bot_that_stops_reading_is_failed_without_stalling_the_loop(
    pings: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not pings:

        async def no_keepalive(self: BotConnection, ws: object) -> None:
            return None

        monkeypatch.setattr(BotConnection, "_keepalive", no_keepalive)
    stall_timeout = 0.3
    hostile, healthy = Reports(), Reports()
    big = b"\x00" * 65536
    loop = asyncio.get_running_loop()
    async with (
        bot_server(stop_reading, sock=loopback_socket(rcvbuf=4096)) as hung_url,
        bot_server(echo) as echo_url,
    ):
        hung = bot_for(hung_url, hostile, stall_timeout=stall_timeout)
        fine = bot_for(echo_url, healthy, stall_timeout=stall_timeout)
        await asyncio.gather(hung.connect(), fine.connect())
        lag = loop.create_task(max_loop_lag(hostile.closed))
        start = loop.time()
        for _ in range(400):  # ~26 MB: more than loopback's kernel buffers hold
            hung.send(big)
        # Another call, meanwhile, at media pace.
        await asyncio.wait_for(every_20ms_until(hostile.closed, lambda: fine.send("ping")), 2)
        elapsed = loop.time() - start
        code, reason = await hostile.wait_closed()
        assert not hung.send(big)
        await asyncio.gather(hung.close(), fine.close())
    assert code is None
    assert reason.startswith("bot stopped reading" if pings else "bot stopped reading for 0.3")
    assert stall_timeout <= elapsed < stall_timeout + 0.4
    assert await lag < 0.1
    assert 0 < hung.sent < 400
    assert len(healthy.messages) >= 10  # the other connection kept flowing
    assert healthy.closes == []


async def test_bot_that_stops_reading_at_media_rate_fails_its_pings() -> None:
    # 300-byte messages every 20 ms never fill the kernel buffers: the keepalive notices,
    # and does not wait for a close handshake the bot cannot answer (close_timeout is long).
    reports = Reports()
    loop = asyncio.get_running_loop()
    async with bot_server(stop_reading) as url:
        bot = bot_for(url, reports, stall_timeout=0.3, close_timeout=5)
        await bot.connect()
        start = loop.time()
        await asyncio.wait_for(every_20ms_until(reports.closed, lambda: bot.send("x" * 300)), 2)
        elapsed = loop.time() - start
        await bot.close()
    assert reports.closes == [(None, "bot stopped reading: a ping went unanswered for 0.15 s")]
    assert 0.15 <= elapsed < 0.3 + 0.2
    assert bot.sent >= 5


async def test_a_crash_in_on_message_ends_the_connection_and_is_reported() -> None:
    def broken(message: str | bytes) -> None:
        raise ZeroDivisionError

    reports = Reports()
    async with bot_server(echo) as url:
        bot = BotConnection(url, on_message=broken, on_closed=reports.on_closed)
        await bot.connect()
        bot.send("boom")
        assert await reports.wait_closed() == (
            None,
            "bridge error handling a bot message: ZeroDivisionError",
        )
        await bot.close()


async def test_close_returns_when_the_bot_never_answers_the_close_handshake() -> None:
    loop = asyncio.get_running_loop()
    async with bot_server(stop_reading) as url:
        bot = bot_for(url, Reports(), close_timeout=0.3)
        await bot.connect()
        bot.send("bye")
        start = loop.time()
        await bot.close()
        elapsed = loop.time() - start
    assert 0.25 <= elapsed < 0.8


async def test_close_returns_when_the_close_frame_cannot_even_be_written() -> None:
    # The bot's window is full: websockets would wait for it forever before its own close
    # timeout starts. close() still returns after close_timeout.
    loop = asyncio.get_running_loop()
    big = b"\x00" * 65536
    async with bot_server(stop_reading, sock=loopback_socket(rcvbuf=4096)) as url:
        bot = bot_for(url, Reports(), stall_timeout=60, close_timeout=0.3)
        await bot.connect()
        for _ in range(400):
            bot.send(big)
        start = loop.time()
        await bot.close([b"final"])
        elapsed = loop.time() - start
    assert 0.25 <= elapsed < 0.8
    assert bot.sent < 400


async def test_binary_and_text_from_the_bot_arrive_in_the_order_sent() -> None:
    # Vonage: audio in binary frames, `clear` in text. A clear must never overtake the audio
    # the bot sent before it, whichever path each frame takes through the connection.
    sent: list[str | bytes] = []
    for index in range(200):
        sent.append(bytes([index % 256]) * 640)
        if index % 7 == 0:
            sent.append(json.dumps({"action": "clear", "n": index}))
    sent.append(b"\x00" * 70_000)  # a large frame: 64-bit length header
    sent.append("after")

    async def burst(ws: ServerConnection) -> None:
        for message in sent:
            await ws.send(message)
        await ws.wait_closed()

    reports = Reports()
    async with bot_server(burst) as url:
        bot = bot_for(url, reports)
        await bot.connect()
        await reports.wait_messages(len(sent))
        await bot.close([], 1000)
    assert reports.messages == sent


async def test_text_and_binary_sent_to_the_bot_arrive_whole_and_in_order() -> None:
    # Both go out on the direct path while the bot keeps up; sizes cover every length header.
    sent: list[str | bytes] = []
    for size in (0, 1, 125, 126, 640, 65535, 65536, 100_000):
        sent.append(bytes(range(256)) * (size // 256) + bytes(size % 256))
        sent.append("t" * size)
    received: list[str | bytes] = []
    done = asyncio.Event()

    async def record(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)
            if len(received) == len(sent):
                done.set()

    reports = Reports()
    async with bot_server(record) as url:
        bot = bot_for(url, reports)
        await bot.connect()
        for message in sent:
            assert bot.send(message)
        await asyncio.wait_for(done.wait(), 5)
        await bot.close([], 1000)
    assert received == sent
