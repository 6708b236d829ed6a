"""The HTTP API (aiohttp): health, readiness, the calls' read models, hang-ups, /metrics.

    GET    /healthz                 200 {"status": "ok"} while the process runs (no token)
    GET    /readyz                  200 {"ready": true} | 503 {"ready": false, "reason": ...}
    GET    /calls                   200 [view, ...]: active calls, then recently finished ones
    GET    /calls/{id}              200 view | 404
    DELETE /calls/{id}              202 view (hung up now, ended_by api) | 404 | 409 ending/ended
    POST   /calls                   202 (outbound call placed; its answer comes later) | 4xx/5xx
    POST   /calls/expected          201 (expected dialplan call) | 501 likewise
    POST   /calls/{id}/transfer     202 view: as the bot's transfer message ({"target", "mode",
                                    "caller_id", "timeout"}), after its queued audio | 400 |
                                    404 | 409 (not up, or a dialplan call without ARI)
    GET    /metrics                 Prometheus text (the controller's BridgeMetrics) | 404
    POST   /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json   Status=completed
                                    Twilio-compatible hang-up, after the bot's audio played out

With a token (`--http-token-file`) every endpoint but /healthz and the Twilio one needs
`Authorization: Bearer <token>` (401 with `WWW-Authenticate: Bearer` otherwise); the Twilio
one needs HTTP Basic with `--twilio-account-sid` and its auth token, as Pipecat's
TwilioFrameSerializer(base_url=...) sends them. JSON in and out; errors are
`{"error": "..."}` (the Twilio endpoint answers in Twilio's error shape); bodies are capped at
64 KiB (413). Secrets are compared in constant time and never logged.

The API only reads the calls' read models (`Call.view()`, the observers' views of finished
calls kept in `CallHistory`) and only ends calls that are in the controller's registry, by
feeding them `HangupRequested` (or, for a transfer, the request the bot would send): it never
touches an Asterisk channel itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import importlib
import time
from collections.abc import Awaitable, Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from bridge.bot.control import parse_control
from bridge.bot.dialects.base import stable_sid
from bridge.call.commands import EndedBy, HangupRequested
from bridge.call.machine import CallState
from bridge.call.view import CallChange, CallView, Direction
from bridge.errors import BotProtocolError, ConfigError
from bridge.logs import get_logger
from bridge.media.factory import parse_listen
from bridge.ops.history import CallHistory
from bridge.ops.requests import (
    MAX_BODY,
    ApiRequestError,
    parse_into,
    parse_json_object,
    parse_twilio_update,
)

if TYPE_CHECKING:
    from bridge.call.runner import Call
    from bridge.service.config import Settings
    from bridge.service.controller import Controller

log = get_logger("bridge.ops.http_api")

TWILIO_PREFIX = "/2010-04-01/Accounts/"
TWILIO_CALL_PATH = TWILIO_PREFIX + "{account_sid}/Calls/{call_sid:[^/.]+}.json"
OPEN_PATHS = ("/healthz",)  # never behind the bearer token
ENDING = (CallState.ENDING, CallState.ENDED)
TRANSFER_FIELDS = frozenset({"target", "mode", "caller_id", "timeout"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def twilio_call_sid(call_id: str) -> str:
    """The `callSid` our Twilio dialect puts in its `start` message for this call
    (`bridge.bot.dialects.twilio.TwilioDialect.call_sid`)."""
    return stable_sid("CA", "call", call_id)


class HttpApi:
    def __init__(
        self,
        controller: Controller,
        *,
        history: CallHistory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Registers its observer at once, so every call that ends is kept in `history`;
        listens from `start()`. `clock` (monotonic seconds) times the history's expiry."""
        self._controller = controller
        self._settings = controller.settings
        self.history = history if history is not None else CallHistory()
        self._clock = clock
        self._token = controller.settings.http_token.encode()
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None  # once listening
        self.started = asyncio.Event()  # start() is done: listening, or off
        controller.observers.append(self._observe)

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on --http-listen ('' = off); ConfigError if it cannot be bound."""
        listen = parse_listen(self._settings.http_listen, "--http-listen")
        if listen is None:
            log.info("http_api_disabled")
            self.started.set()
            return
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, listen[0], listen[1])
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen for HTTP on {listen[0]}:{listen[1]}: "
                              f"{exc.strerror or exc}") from None  # fmt: skip
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.address = (str(host), int(port))
        log.info("http_api_listening", address=f"{host}:{port}", token=bool(self._token))
        self.started.set()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares(self._token))
        app.router.add_get("/healthz", self._healthz, allow_head=False)
        app.router.add_get("/readyz", self._readyz, allow_head=False)
        app.router.add_get("/calls", self._list_calls, allow_head=False)
        app.router.add_post("/calls", self._originate)
        app.router.add_post("/calls/expected", self._expect)
        app.router.add_get("/calls/{call_id}", self._get_call, allow_head=False)
        app.router.add_delete("/calls/{call_id}", self._hangup)
        app.router.add_post("/calls/{call_id}/transfer", self._transfer)
        app.router.add_get("/metrics", self._metrics, allow_head=False)
        app.router.add_post(TWILIO_CALL_PATH, self._twilio_update)
        return app

    # ---- the read model -----------------------------------------------------------------

    def _observe(self, view: CallView, _change: CallChange) -> None:
        self.history.add(view, self._clock())

    def _views(self) -> list[CallView]:
        active = [call.view() for call in self._controller.registry]
        ids = {view.id for view in active}
        finished = [v for v in self.history.views(self._clock()) if v.id not in ids]
        return active + finished

    def _view(self, call_id: str) -> CallView | None:
        call = self._controller.registry.get(call_id)
        if call is not None:
            return call.view()
        return self.history.get(call_id, self._clock())

    # ---- health -------------------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        return json_response(200, {"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        reason = self.not_ready_because()
        if reason:
            return json_response(503, {"ready": False, "reason": reason})
        return json_response(200, {"ready": True})

    def not_ready_because(self) -> str:
        """Why the service should not be sent calls now ("" when it should)."""
        controller = self._controller
        if controller.draining:
            return "draining"
        if not controller.listening.is_set():
            return "media listeners not bound yet"
        if self._settings.ari_enabled and not controller.events.connected.is_set():
            why = controller.events.last_error or "not connected yet"
            return f"ARI events socket not connected (Stasis app not registered): {why}"
        return ""

    async def _metrics(self, _request: web.Request) -> web.Response:
        metrics = getattr(self._controller, "metrics", None)
        if metrics is None:
            return error(404, "metrics are not available in this build")
        body, content_type = metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    # ---- calls --------------------------------------------------------------------------

    async def _list_calls(self, _request: web.Request) -> web.Response:
        return json_response(200, [view.to_json() for view in self._views()])

    async def _get_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        view = self._view(call_id)
        if view is None:
            return error(404, f"no call {call_id!r}")
        return json_response(200, view.to_json())

    async def _hangup(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        call = self._controller.registry.get(call_id)
        if call is None:
            if self.history.get(call_id, self._clock()) is not None:
                return error(409, f"call {call_id!r} has ended already")
            return error(404, f"no call {call_id!r}")
        view = call.view()
        if view.state in ENDING:
            return error(409, f"call {call_id!r} is {view.state.value} already")
        log.info("api_hangup", call_id=call_id, remote=request.remote)
        call.feed(HangupRequested("hung up through the API", by=EndedBy.API))
        return json_response(202, call.view().to_json())

    async def _transfer(self, request: web.Request) -> web.Response:
        """What the bot's transfer message does (bridge.bot.control), after the audio the bot
        queued has played: {"target", "mode", "caller_id", "timeout"}."""
        call_id = request.match_info["call_id"]
        body = parse_json_object(await read_body(request))
        unknown = sorted(set(body) - TRANSFER_FIELDS)
        if unknown:
            return error(400, f"unknown fields: {', '.join(unknown)}")
        try:
            transfer = parse_control({**body, "event": "transfer"})
        except BotProtocolError as exc:
            return error(400, str(exc))
        call = self._controller.registry.get(call_id)
        if call is None:
            return error(404, f"no call {call_id!r}")
        view = call.view()
        if not view.channel_id:
            return error(409, "a call from the dialplan alone cannot be transferred (no ARI)")
        if view.state not in (CallState.UP, CallState.BOT_AWAY):
            return error(409, f"call {call_id!r} is {view.state.value}: only a call that is "
                              "up (or whose bot is away) can be transferred")  # fmt: skip
        log.info("api_transfer", call_id=call_id, target=getattr(transfer, "target", ""),
                 remote=request.remote)  # fmt: skip
        call.request(transfer)
        return json_response(202, call.view().to_json())

    async def _originate(self, request: web.Request) -> web.Response:
        body = parse_json_object(await read_body(request))  # bad input: 4xx in any build
        outbound = _outbound_module()
        originate = getattr(self._controller, "originate", None)
        cls = getattr(outbound, "OriginateRequest", None)
        if outbound is None or originate is None or cls is None:
            return error(501, "outbound calls are not available in this build")
        originate_request = parse_into(cls, body)
        try:
            call_id = await originate(originate_request)
        except getattr(outbound, "OriginateError", ()) as exc:
            return error(int(exc.status), str(exc.message))
        log.info("api_originate", call_id=call_id, remote=request.remote)
        view = self._view(str(call_id))
        return json_response(202, view.to_json() if view is not None else {"id": call_id})

    async def _expect(self, request: web.Request) -> web.Response:
        body = parse_json_object(await read_body(request))
        outbound = _outbound_module()
        expect = getattr(self._controller, "expect", None)
        cls = getattr(outbound, "ExpectedCall", None)
        if outbound is None or expect is None or cls is None:
            return error(501, "expected calls are not available in this build")
        expected = parse_into(cls, body)
        try:
            expect(expected)
        except ValueError as exc:  # expected or used already, too many expected
            return error(409, str(exc))
        log.info("api_expect", uuid=getattr(expected, "uuid", ""), remote=request.remote)
        return json_response(201, {**_fields(expected), "ttl": self._settings.expect_ttl})

    # ---- the Twilio-compatible hang-up ----------------------------------------------------

    async def _twilio_update(self, request: web.Request) -> web.Response:
        account_sid = request.match_info["account_sid"]
        call_sid = request.match_info["call_sid"]
        if not twilio_authorised(request, self._settings):
            log.info("twilio_unauthorized", remote=request.remote, call_sid=call_sid)
            return twilio_error(
                401, 20003, "Authenticate", headers={"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        if account_sid != self._settings.twilio_account_sid:  # checked after the credentials
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        try:
            parse_twilio_update(await read_body(request))
        except ApiRequestError as exc:
            return twilio_error(exc.status, 20001, exc.message)
        call = self._call_by_sid(call_sid)
        view = call.view() if call is not None else None
        if call is None or view is None or view.state is CallState.ENDED:
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        if view.state is not CallState.ENDING:
            log.info("twilio_hangup", call_id=view.id, call_sid=call_sid, state=view.state.value)
            call.feed(HangupRequested("bot hung up (Twilio REST)", by=EndedBy.BOT, drain=True))
        return json_response(200, twilio_call(call.view(), account_sid, call_sid, request.path))

    def _call_by_sid(self, call_sid: str) -> Call | None:
        for call in self._controller.registry:
            if hmac.compare_digest(twilio_call_sid(call.ids.call_id), call_sid):
                return call
        return None


# ---- shared with the host API (bridge.ops.host_api) ------------------------------------


def middlewares(token: bytes) -> list[Middleware]:
    """Errors as JSON, then the bearer token (b"": none needed)."""
    return [errors_middleware, bearer_middleware(token)]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiRequestError as exc:
        return error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
        return error(exc.status, exc.reason, headers=headers)


def bearer_middleware(token: bytes) -> Middleware:
    """Every path but OPEN_PATHS and the Twilio one (its own Basic auth) needs the token."""

    @web.middleware
    async def bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not token or path in OPEN_PATHS or path.startswith(TWILIO_PREFIX):
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), token
        ):
            log.info("http_unauthorized", method=request.method, path=path,
                     remote=request.remote, had_credentials=bool(credentials))  # fmt: skip
            why = "missing bearer token" if not credentials else "wrong bearer token"
            return error(401, why, headers={"WWW-Authenticate": 'Bearer realm="pipecat-bridge"'})
        return await handler(request)

    return bearer


def twilio_authorised(request: web.Request, settings: Settings) -> bool:
    """HTTP Basic with --twilio-account-sid and its auth token (unconfigured: nobody)."""
    if not settings.twilio_account_sid or not settings.twilio_auth_token:
        return False
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, password = decoded.partition(b":")
    expected_user = settings.twilio_account_sid.encode()
    expected_password = settings.twilio_auth_token.encode()
    user_ok = hmac.compare_digest(user, expected_user)
    password_ok = hmac.compare_digest(password, expected_password)
    return bool(sep) and user_ok and password_ok


# ---- responses ----------------------------------------------------------------------------


def json_response(
    status: int, data: object, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


def error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(status, {"error": message}, headers=headers)


def twilio_error(
    status: int, code: int, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """Twilio's REST error shape; Pipecat reads `code` 20404 as 'the call has ended'."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return json_response(status, body, headers=headers)


def twilio_call(view: CallView, account_sid: str, call_sid: str, uri: str) -> dict[str, Any]:
    """A small Twilio Call resource for the hang-up's answer."""
    return {
        "sid": call_sid,
        "account_sid": account_sid,
        "status": "completed",
        "direction": "inbound" if view.direction is Direction.INBOUND else "outbound-api",
        "from": view.caller,
        "to": view.called,
        "api_version": "2010-04-01",
        "uri": uri,
    }


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiRequestError(413, f"body larger than {MAX_BODY} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiRequestError(413, f"body larger than {MAX_BODY} bytes") from None


def _outbound_module() -> ModuleType | None:
    """bridge.service.outbound, once it exists (outbound and expected calls)."""
    try:
        return importlib.import_module("bridge.service.outbound")
    except ImportError:
        return None


def _fields(value: object) -> dict[str, Any]:
    """A parsed request dataclass as JSON (its mappings as objects)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):  # type: ignore[arg-type]
        item = getattr(value, f.name)
        out[f.name] = dict(item) if isinstance(item, Mapping) else item
    return out
