"""The host API of --workers (bridge.ops.host_api) over real HTTP on 127.0.0.1, in front of
two real worker APIs (bridge.ops.http_api over the stand-in controllers of test_http_api),
plus a worker that is gone (a closed port) and one that never answers. Nothing sleeps: the
hung worker is given up on by the host's own (short) timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, cast

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.bot.control import TransferRequest
from bridge.call.commands import EndedBy, HangupRequested
from bridge.errors import ConfigError
from bridge.ops.fanout import WorkerSeat
from bridge.ops.host_api import HostApi
from bridge.ops.http_api import HttpApi
from bridge.ops.metrics import BridgeMetrics
from bridge.ops.requests import MAX_BODY
from tests.bridge.ops.test_http_api import (
    ACCOUNT,
    TOKEN,
    FakeCall,
    OutboundController,
    basic,
    settings,
    twilio_path,
)
from tests.bridge.ops.test_metrics import fake_controller

HUNG_TIMEOUT_S = 0.2  # the host's per-request timeout in these tests


@dataclass
class Worker:
    api: HttpApi
    controller: OutboundController
    seat: WorkerSeat


@dataclass
class Host:
    api: HostApi
    workers: list[Worker]
    seats: list[WorkerSeat]  # what the supervisor would say now; tests change it
    session: aiohttp.ClientSession
    base: str

    async def request(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.base + path, headers=headers, **kwargs
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()

    def seat(self, tag: str, **changes: Any) -> None:
        """The supervisor's view of worker `tag` changes (calls, draining, ...)."""
        self.seats[:] = [replace(s, **changes) if s.tag == tag else s for s in self.seats]


def seat_at(tag: str, address: tuple[str, int] | None, **kw: Any) -> WorkerSeat:
    return WorkerSeat(tag=tag, slot=int(tag[0]), generation=0, address=address, running=True,
                      ready=True, draining=False, calls=kw.pop("calls", 0), **kw)  # fmt: skip


@contextlib.asynccontextmanager
async def worker(tag: str) -> AsyncIterator[Worker]:
    controller = OutboundController(settings())
    controller.metrics = BridgeMetrics(fake_controller())  # type: ignore[attr-defined]
    api = HttpApi(cast(Any, controller))
    await api.start()
    assert api.address is not None
    try:
        yield Worker(api, controller, seat_at(tag, api.address))
    finally:
        await api.close()


@contextlib.asynccontextmanager
async def hosting(extra: list[WorkerSeat] | None = None, **overrides: Any) -> AsyncIterator[Host]:
    """The host API (`overrides` of its settings) in front of workers "0" and "1" (and
    `extra` seats), listening."""
    async with worker("0") as w0, worker("1") as w1:
        seats = [w0.seat, w1.seat, *(extra or [])]
        api = HostApi(settings(**overrides), lambda: seats, ask_timeout=HUNG_TIMEOUT_S)
        await api.start()
        assert api.address is not None
        try:
            async with aiohttp.ClientSession() as session:
                host, port = api.address
                yield Host(api, [w0, w1], seats, session, f"http://{host}:{port}")
        finally:
            await api.close()


def closed_port() -> tuple[str, int]:
    """An address where nothing listens (any more): a worker that is gone."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return "127.0.0.1", sock.getsockname()[1]


@contextlib.asynccontextmanager
async def hung_worker() -> AsyncIterator[tuple[str, int]]:
    """A worker that takes the connection and never answers (stuck in a long callback)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the host gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()
        await server.wait_closed()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with hosting() as h:
        yield h


# ---- health, auth ---------------------------------------------------------------------------


async def test_healthz_is_the_supervisors_and_the_rest_needs_the_token(host: Host) -> None:
    host.seats.clear()  # no worker at all: the supervisor itself is healthy
    assert await host.request("GET", "/healthz", token=None) == (200, {"status": "ok"})
    for method, path in [("GET", "/calls"), ("GET", "/metrics"), ("GET", "/readyz"),
                         ("DELETE", "/calls/x"), ("POST", "/calls")]:  # fmt: skip
        status, body = await host.request(method, path, token=None)
        assert (status, body) == (401, {"error": "missing bearer token"})
    status, body = await host.request("GET", "/calls", token="wrong")
    assert (status, body) == (401, {"error": "wrong bearer token"})


async def test_readyz_is_ready_while_one_worker_is(host: Host) -> None:
    status, body = await host.request("GET", "/readyz")
    assert status == 200
    assert body == {"ready": True, "workers": [{"worker": "0", "ready": True},
                                               {"worker": "1", "ready": True}]}  # fmt: skip
    host.workers[1].controller.draining = True
    status, body = await host.request("GET", "/readyz")
    assert status == 200 and body["workers"][1] == {
        "worker": "1", "ready": False, "reason": "draining",
    }  # fmt: skip
    host.workers[0].controller.events.connected.clear()
    status, body = await host.request("GET", "/readyz")
    assert status == 503 and body["ready"] is False
    assert body["reason"].startswith("no worker is ready (0: ARI events socket not connected")
    assert body["reason"].endswith("; 1: draining)")


# ---- metrics ------------------------------------------------------------------------------


async def test_metrics_label_each_workers_series_and_skip_one_that_is_gone() -> None:
    async with hosting([seat_at("2", closed_port())]) as host:
        for scrape in (1, 2):
            status, body = await host.request("GET", "/metrics")
            assert status == 200
            got = samples(body)
            for tag in ("0", "1"):
                assert got[("pipecat_bridge_rtp_ports", (("worker", tag),))] == 5
                key = ("pipecat_bridge_calls_active", (("transport", "rtp"), ("worker", tag)))
                assert got[key] == 0
            assert not any(dict(labels).get("worker") == "2" for name, labels in got
                           if not name.startswith("pipecat_bridge_host_"))  # fmt: skip
            errors = ("pipecat_bridge_host_scrape_errors_total", (("worker", "2"),))
            assert got[errors] == scrape
            assert got[("pipecat_bridge_host_workers", (("state", "ready"),))] == 3
        host.seats.pop()  # worker 2 is gone for good: so is its count
        got = samples((await host.request("GET", "/metrics"))[1])
        assert not [k for k in got if k[0] == "pipecat_bridge_host_scrape_errors_total"]


# ---- calls --------------------------------------------------------------------------------


async def test_calls_are_every_workers_each_with_its_worker(host: Host) -> None:
    host.workers[0].controller.add(FakeCall("a"))
    host.workers[1].controller.add(FakeCall("b"))
    status, views = await host.request("GET", "/calls")
    assert status == 200
    assert [(v["id"], v["worker"]) for v in views] == [("a", "0"), ("b", "1")]
    status, view = await host.request("GET", "/calls/b")
    assert status == 200 and (view["id"], view["worker"], view["state"]) == ("b", "1", "up")
    assert await host.request("GET", "/calls/zzz") == (404, {"error": "no call 'zzz'"})


async def test_hangup_and_transfer_reach_the_worker_that_has_the_call(host: Host) -> None:
    a = host.workers[0].controller.add(FakeCall("a"))
    b = host.workers[1].controller.add(FakeCall("b"))
    status, view = await host.request("DELETE", "/calls/b")
    assert status == 202 and (view["id"], view["worker"], view["state"]) == ("b", "1", "ending")
    assert [type(e) for e in b.fed] == [HangupRequested] and a.fed == []
    assert b.fed[0].by is EndedBy.API  # type: ignore[attr-defined]
    status, body = await host.request("DELETE", "/calls/b")
    assert (status, body) == (409, {"error": "call 'b' is ending already"})  # the worker's word
    status, view = await host.request("POST", "/calls/a/transfer", json={"target": "PJSIP/200"})
    assert status == 202 and view["worker"] == "0"
    (transfer,) = a.fed
    assert isinstance(transfer, TransferRequest) and transfer.target == "PJSIP/200"
    status, body = await host.request("POST", "/calls/a/transfer", json={"target": "x", "y": 1})
    assert (status, body) == (400, {"error": "unknown fields: y"})
    status, body = await host.request(
        "POST", "/calls/a/transfer", data=b"{" + b" " * MAX_BODY + b"}",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 413 and "larger than" in body["error"]
    assert len(a.fed) == 1  # neither reached a worker


async def test_originate_goes_to_the_least_busy_worker_that_takes_it(host: Host) -> None:
    outbound = pytest.importorskip("bridge.service.outbound")
    w0, w1 = host.workers
    host.seat("0", calls=3)
    host.seat("1", calls=1)
    status, view = await host.request("POST", "/calls", json={"endpoint": "PJSIP/1001"})
    assert status == 202 and (view["id"], view["worker"]) == ("out-1", "1")
    assert len(w1.controller.originated) == 1 and w0.controller.originated == []
    # Full (503): nothing was placed there, the next worker places it.
    w1.controller.refuse = outbound.OriginateError(503, "max calls reached")
    status, view = await host.request("POST", "/calls", json={"endpoint": "PJSIP/1002"})
    assert status == 202 and view["worker"] == "0" and len(w0.controller.originated) == 1
    # A bad request is the same 400 on every worker: it is answered, not retried.
    status, body = await host.request("POST", "/calls", json={"endpoint": "PJSIP/1", "x": 1})
    assert (status, body) == (400, {"error": "unknown field(s): x"})
    w0.controller.refuse = outbound.OriginateError(503, "bridge draining")
    status, body = await host.request("POST", "/calls", json={"endpoint": "PJSIP/1003"})
    assert (status, body) == (503, {"error": "bridge draining"})  # the last worker's word
    # Draining or not ready: not asked at all.
    host.seat("0", draining=True)
    host.seat("1", ready=False)
    status, body = await host.request("POST", "/calls", json={"endpoint": "PJSIP/1004"})
    assert (status, body) == (503, {"error": "no worker takes calls now"})


async def test_an_expected_call_is_registered_on_every_worker(host: Host) -> None:
    pytest.importorskip("bridge.service.outbound")
    body = {"uuid": "0b5f8f8e-7c44-4d39-9d4e-3a8f2c6b9e01", "caller": "5551000"}
    status, answer = await host.request("POST", "/calls/expected", json=body)
    assert status == 201 and answer["uuid"] == body["uuid"] and "worker" not in answer
    assert [len(w.controller.expected) for w in host.workers] == [1, 1]
    status, answer = await host.request("POST", "/calls/expected", json=body)
    assert status == 409 and "already expected" in answer["error"]


async def test_twilio_hangup_is_checked_here_and_done_by_the_worker(host: Host) -> None:
    call = host.workers[1].controller.add(FakeCall("c1"))
    form = {"data": {"Status": "completed"}, "token": None}
    status, body = await host.request("POST", twilio_path("c1"), headers=basic(password="no"),
                                      **form)  # fmt: skip
    assert status == 401 and body["code"] == 20003 and call.fed == []
    status, body = await host.request("POST", twilio_path("c1", "AC" + "2" * 32),
                                      headers=basic(), **form)  # fmt: skip
    assert status == 404 and body["code"] == 20404
    status, body = await host.request("POST", twilio_path("c1"), headers=basic(),
                                      data={"Status": "ringing"}, token=None)  # fmt: skip
    assert status == 400 and body["code"] == 20001 and call.fed == []
    status, body = await host.request("POST", twilio_path("c1"), headers=basic(), **form)
    assert status == 200 and body["account_sid"] == ACCOUNT and "worker" not in body
    (hangup,) = call.fed
    assert isinstance(hangup, HangupRequested) and hangup.drain and hangup.by is EndedBy.BOT
    status, body = await host.request("POST", twilio_path("zzz"), headers=basic(), **form)
    assert status == 404 and body["code"] == 20404


# ---- workers that do not answer -------------------------------------------------------------


async def test_no_worker_answering_is_a_503_that_says_why(host: Host) -> None:
    host.seats[:] = [seat_at("0", closed_port()), seat_at("1", None)]
    status, body = await host.request("GET", "/calls")
    assert status == 503 and body["error"].startswith("no worker answered (0: cannot connect")
    status, body = await host.request("DELETE", "/calls/a")
    assert status == 503 and "0: cannot connect" in body["error"]
    status, body = await host.request("POST", twilio_path("a"), headers=basic(), token=None,
                                      data={"Status": "completed"})  # fmt: skip
    assert status == 503 and body["code"] == 20503
    assert (await host.request("GET", "/metrics"))[0] == 200  # a scrape never fails
    status, body = await host.request("GET", "/readyz")
    assert status == 503 and body["workers"][1] == {
        "worker": "1", "ready": False, "reason": "starting",
    }  # fmt: skip


async def test_a_hung_worker_is_given_up_on_and_the_others_answer() -> None:
    async with hung_worker() as address, hosting([seat_at("2", address)]) as host:
        host.workers[0].controller.add(FakeCall("a"))
        status, view = await host.request("GET", "/calls/a")  # won before the timeout
        assert status == 200 and view["worker"] == "0"
        status, views = await host.request("GET", "/calls")
        assert status == 200 and [v["id"] for v in views] == ["a"]
        got = samples((await host.request("GET", "/metrics"))[1])
        assert got[("pipecat_bridge_host_scrape_errors_total", (("worker", "2"),))] == 1
        status, body = await host.request("GET", "/readyz")
        assert status == 200
        assert body["workers"][2] == {"worker": "2", "ready": False,
                                      "reason": f"no answer in {HUNG_TIMEOUT_S:g} s"}  # fmt: skip


async def test_originate_is_never_sent_twice_after_a_timeout() -> None:
    pytest.importorskip("bridge.service.outbound")
    # A worker's POST /calls may wait for Asterisk: the host waits --rest-timeout longer.
    rest_timeout = 0.1
    async with (
        hung_worker() as address,
        hosting([seat_at("2", address)], rest_timeout=rest_timeout) as host,
    ):
        host.seat("0", calls=5)
        host.seat("1", calls=5)  # worker 2, the idle one, is asked first and never answers
        status, body = await host.request("POST", "/calls", json={"endpoint": "PJSIP/1"})
        assert status == 503
        assert f"2: no answer in {rest_timeout + HUNG_TIMEOUT_S:g} s" in body["error"]
        assert [w.controller.originated for w in host.workers] == [[], []]


# ---- the listener ---------------------------------------------------------------------------


async def test_listening_on_a_taken_port_is_a_config_error(host: Host) -> None:
    assert host.api.address is not None
    host_, port = host.api.address
    other = HostApi(settings(http_listen=f"{host_}:{port}"), list)
    with pytest.raises(ConfigError, match="cannot listen for HTTP"):
        await other.start()


async def test_http_listen_empty_turns_the_host_api_off() -> None:
    api = HostApi(settings(http_listen=""), list)
    await api.start()
    assert api.address is None
    await api.close()
