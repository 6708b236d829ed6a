"""The host's one HTTP API under `--workers N` (aiohttp): the supervisor's listener.

The supervisor binds `--http-listen`; each worker binds a loopback port of its own
(bridge.service.workers) and says where in its sd_notify (`X_PIPECAT_HTTP=`). This API has
the same endpoints, auth rules, body cap and error shape as a worker's (bridge.ops.http_api,
whose helpers it uses) and answers from the workers' answers: who is asked and what their
answers make is bridge.ops.fanout, the merged /metrics bridge.ops.host_metrics.

Every worker request has its own short timeout and goes through one client session; a worker
that refuses, times out or restarts is one `NoAnswer` among the others, never a 500 here.
`/healthz` is the supervisor's own. The host's bearer token (the same `--http-token-file` the
workers read) goes to the workers on every request; the Twilio endpoint's Basic credentials
are checked here and passed on as they came.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import Metric
from yarl import URL

from bridge.errors import ConfigError
from bridge.logs import get_logger
from bridge.media.factory import parse_listen
from bridge.ops import fanout, host_metrics
from bridge.ops.fanout import Answer, NoAnswer, Result, WorkerSeat
from bridge.ops.http_api import (
    TWILIO_CALL_PATH,
    error,
    json_response,
    middlewares,
    read_body,
    twilio_authorised,
    twilio_error,
)
from bridge.ops.requests import MAX_BODY, ApiRequestError, parse_twilio_update

if TYPE_CHECKING:
    from bridge.service.config import Settings

log = get_logger("bridge.ops.host_api")

# A worker answers from memory; longer than this, it is stuck or gone for this request.
ASK_TIMEOUT_S = 2.0


class HostApi:
    def __init__(
        self,
        settings: Settings,
        seats: Callable[[], Sequence[WorkerSeat]],
        *,
        ask_timeout: float = ASK_TIMEOUT_S,
    ) -> None:
        """`seats()`: the workers the supervisor keeps now, read on every request."""
        self._settings = settings
        self._seats = seats
        self._token = settings.http_token.encode()
        self._timeout = ask_timeout
        # The worker's own POST /calls waits for Asterisk to accept the originate.
        self._originate_timeout = settings.rest_timeout + ask_timeout
        self.scrape_errors: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None  # once listening

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on --http-listen ('' = off); ConfigError if it cannot be bound."""
        listen = parse_listen(self._settings.http_listen, "--http-listen")
        if listen is None:
            log.info("host_api_disabled")
            return
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, listen[0], listen[1]).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen for HTTP on {listen[0]}:{listen[1]}: "
                              f"{exc.strerror or exc}") from None  # fmt: skip
        self._runner = runner
        self._session = aiohttp.ClientSession()  # one for every worker request
        host, port = runner.addresses[0][:2]
        self.address = (str(host), int(port))
        log.info("host_api_listening", address=f"{host}:{port}", token=bool(self._token))

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares(self._token))
        app.router.add_get("/healthz", self._healthz, allow_head=False)
        app.router.add_get("/readyz", self._readyz, allow_head=False)
        app.router.add_get("/metrics", self._metrics, allow_head=False)
        app.router.add_get("/calls", self._list_calls, allow_head=False)
        app.router.add_post("/calls", self._originate)
        app.router.add_post("/calls/expected", self._expect)
        app.router.add_get("/calls/{call_id}", self._find_call, allow_head=False)
        app.router.add_delete("/calls/{call_id}", self._find_call)
        app.router.add_post("/calls/{call_id}/transfer", self._find_call)
        app.router.add_post(TWILIO_CALL_PATH, self._twilio_update)
        return app

    # ---- asking the workers -------------------------------------------------------------

    async def _ask(self, seat: WorkerSeat, ask: Ask) -> Result:
        """One request to one worker: its answer, or why there was none."""
        if self._session is None or seat.address is None:
            return fanout.not_asked(seat)
        host, port = seat.address
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        headers = dict(ask.headers)
        if self._token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self._settings.http_token}"
        seconds = ask.timeout or self._timeout
        timeout = aiohttp.ClientTimeout(total=seconds)
        try:
            async with self._session.request(
                ask.method, URL(f"http://{netloc}{ask.path}", encoded=True), data=ask.body,
                headers=headers, timeout=timeout, allow_redirects=False,
            ) as response:  # fmt: skip
                data = await response.read()
                return Answer(seat.tag, response.status, data, response.content_type)
        except aiohttp.ClientConnectorError as exc:  # nothing reached the worker
            result = NoAnswer(seat.tag, f"cannot connect: {exc.os_error.strerror or exc}")
        except TimeoutError:
            result = NoAnswer(seat.tag, f"no answer in {seconds:g} s", maybe_done=True)
        except aiohttp.ClientError as exc:
            result = NoAnswer(seat.tag, f"{type(exc).__name__}: {exc}", maybe_done=True)
        log.info("host_worker_unanswered", worker=seat.tag, method=ask.method, why=result.why)
        return result

    async def _ask_all(self, seats: Sequence[WorkerSeat], ask: Ask) -> list[Result]:
        """Every worker at once; the results in the workers' order."""
        return list(await asyncio.gather(*(self._ask(seat, ask) for seat in seats)))

    async def _first_winner(self, seats: Sequence[WorkerSeat], ask: Ask) -> list[Result]:
        """Every worker at once, until one wins (fanout.wins): the results so far, in the
        order they came; the others' requests are cancelled (they were going to say 404)."""
        tasks = [asyncio.ensure_future(self._ask(seat, ask)) for seat in seats]
        results: list[Result] = []
        try:
            for next_done in asyncio.as_completed(tasks):
                result = await next_done
                results.append(result)
                if fanout.wins(result):
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return results

    # ---- health -------------------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        return json_response(200, {"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        seats = list(self._seats())
        results = await self._ask_all(fanout.reachable(seats), Ask("GET", "/readyz"))
        status, body = fanout.readiness(seats, results)
        return json_response(status, body)

    async def _metrics(self, _request: web.Request) -> web.Response:
        seats = list(self._seats())
        per_worker = []
        for result in await self._ask_all(fanout.reachable(seats), Ask("GET", "/metrics")):
            families = _worker_metrics(result)
            if families is None:
                self.scrape_errors[result.tag] = self.scrape_errors.get(result.tag, 0) + 1
            else:
                per_worker.append(families)
        # The counts of workers gone for good go with them, as their own series do.
        kept = {seat.tag for seat in seats}
        self.scrape_errors = {t: n for t, n in self.scrape_errors.items() if t in kept}
        families = host_metrics.merged(per_worker)
        families += host_metrics.host_families(seats, self.scrape_errors)
        response = web.Response(body=host_metrics.render(families))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # ---- calls --------------------------------------------------------------------------

    async def _list_calls(self, _request: web.Request) -> web.Response:
        results = await self._ask_all(fanout.reachable(self._seats()), Ask("GET", "/calls"))
        if not any(isinstance(r, Answer) for r in results):
            return error(503, fanout.unanswered(results))
        return json_response(200, fanout.concatenated(results))

    async def _find_call(self, request: web.Request) -> web.Response:
        """GET, DELETE /calls/{id}, POST /calls/{id}/transfer: the worker that has it."""
        ask = Ask(request.method, request.raw_path)
        if request.method == "POST":
            ask = await _with_body(ask, request)
        results = await self._first_winner(fanout.reachable(self._seats()), ask)
        answer = fanout.settle(results)
        if answer is None:
            return error(503, fanout.unanswered(results))
        return _passed_on(answer, tag=answer.status < 300)

    async def _originate(self, request: web.Request) -> web.Response:
        """The least busy worker that takes calls; the next one when it could not (nothing
        was placed: it was not there, or answered 503 or 501)."""
        ask = await _with_body(Ask("POST", "/calls", timeout=self._originate_timeout), request)
        results: list[Result] = []
        for seat in fanout.originate_order(self._seats()):
            result = await self._ask(seat, ask)
            results.append(result)
            if isinstance(result, Answer) and result.status not in fanout.TRY_NEXT:
                return _passed_on(result, tag=result.status < 300)
            if isinstance(result, NoAnswer) and result.maybe_done:
                break  # it may have placed the call: never place it twice
        last = next((r for r in reversed(results) if isinstance(r, Answer)), None)
        if last is not None:
            return _passed_on(last)
        return error(503, fanout.unanswered(results, none="no worker takes calls now"))

    async def _expect(self, request: web.Request) -> web.Response:
        """Every worker that takes calls registers it: the dialplan's media reaches one."""
        ask = await _with_body(Ask("POST", "/calls/expected"), request)
        results = await self._ask_all(fanout.takers(self._seats()), ask)
        answer = fanout.first_created(results)
        if answer is None:
            return error(503, fanout.unanswered(results, none="no worker takes calls now"))
        return _passed_on(answer)

    # ---- the Twilio-compatible hang-up ----------------------------------------------------

    async def _twilio_update(self, request: web.Request) -> web.Response:
        """Checked here as a worker would (credentials, account, form), then passed on with
        the same credentials to the worker that holds the call."""
        if not twilio_authorised(request, self._settings):
            log.info("twilio_unauthorized", remote=request.remote)
            return twilio_error(
                401, 20003, "Authenticate", headers={"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        if request.match_info["account_sid"] != self._settings.twilio_account_sid:
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        ask = await _with_body(Ask("POST", request.raw_path), request)
        try:
            parse_twilio_update(ask.body or b"")
        except ApiRequestError as exc:
            return twilio_error(exc.status, 20001, exc.message)
        ask = replace(
            ask, headers={**ask.headers, "Authorization": request.headers["Authorization"]}
        )
        results = await self._first_winner(fanout.reachable(self._seats()), ask)
        answer = fanout.settle(results)
        if answer is None:
            return twilio_error(503, 20503, fanout.unanswered(results))
        return _passed_on(answer)


@dataclass(frozen=True, slots=True)
class Ask:
    """One request the host sends to workers."""

    method: str
    path: str  # with its query, still percent-encoded
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 0.0  # 0: the API's own (ASK_TIMEOUT_S)


async def _with_body(ask: Ask, request: web.Request) -> Ask:
    """`ask` carrying the request's body (at most MAX_BODY: 413) and its content type."""
    body = await read_body(request)
    content_type = request.headers.get("Content-Type", "application/json")
    return replace(ask, body=body, headers={**ask.headers, "Content-Type": content_type})


def _worker_metrics(result: Result) -> list[Metric] | None:
    """A worker's families relabelled, or None when its scrape is an error."""
    if not isinstance(result, Answer) or result.status != 200:
        return None
    try:
        return host_metrics.relabelled(result.body.decode(), result.tag)
    except ValueError:  # UnicodeDecodeError included
        return None


def _passed_on(answer: Answer, *, tag: bool = False) -> web.Response:
    """A worker's answer as the host's (`tag`: a call's view gains `worker`)."""
    if tag and answer.content_type == "application/json":
        data = answer.json()
        if isinstance(data, dict):
            return json_response(answer.status, fanout.tagged(data, answer.tag))
    response = web.Response(status=answer.status, body=answer.body)
    response.headers["Content-Type"] = answer.content_type or "application/octet-stream"
    return response
