"""Outbound calls (the bridge dials out) and expected dialplan calls (two-phase set-up).

Outbound, theory of operation. `originate()` admits the call (--max-calls, draining: 503),
then `POST /channels` into our app with a pre-assigned channel id `<prefix>out-<call id>`
(ours by prefix: the start-up sweep hangs up such channels a dead run left in the app, and the
StasisStart of one whose call is over is hung up as a stray) and appArgs `outbound,<call id>`.
Asterisk answers 200 at once with the channel Down, or refuses the endpoint (an unknown
technology: 500 "Allocation failed"; a bad request: 400): `OriginateError`, nothing created.
From the 200 on the call exists (registry and read model: SETUP, direction outbound) and its
channel rings; events for it that came before the 200 are held and replayed after.

While it rings this module reads its events (a lab 23.4.1 with Local channels, recorded in
`outbound_originate` and `transfer_originate_*`):

    StasisStart of the channel      -> answered: the call sets up as an inbound one does
    Dial dialstatus BUSY/NOANSWER/  -> the call ends with that outcome, ended by the callee;
      CONGESTION/CHANUNAVAIL           the channel is hung up (404 if Asterisk was first)
    ChannelHangupRequest/Destroyed  -> ends with the outcome of the last dialstatus, else of
                                       the cause (19: no answer; 0 after BUSY: busy)

Only the `Dial` event says busy (the channel itself dies with cause 0); a ring timeout has no
NOANSWER `Dial`, only cause 19. The call machine's ring guard (timeout + --setup-timeout)
ends a call whose events were lost.

Expected calls: `expect()` registers a UUID with a caller, called number, bot and parameters
for --expect-ttl seconds; the dialplan AudioSocket connection with that UUID (or a dialplan
chan_websocket one whose `v()` parameters carry `uuid=`) gets them. An expectation not used
in time is forgotten (a later connection with its UUID is an ordinary dialplan call); a
second connection with a UUID already used is refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ari.events import AriEvent, ChannelDestroyed, ChannelHangupRequest, Dial, StasisStart
from ari.rest import AriRestClient
from bridge.bot.dialects import DIALECT_NAMES
from bridge.call.commands import EndedBy, HangupRequested
from bridge.errors import AriHttpError, AriUnavailableError, BridgeError
from bridge.logs import get_logger
from bridge.service.config import Settings

if TYPE_CHECKING:
    from bridge.call.runner import Call
    from bridge.media.leg import MediaLeg
    from bridge.service.calls import CallFactory
    from bridge.service.registry import CallRegistry

log = get_logger("bridge")

MAX_VARIABLES = 64
MAX_TEXT = 256  # an endpoint, caller id, variable name or value
MAX_EXPECTED = 10_000  # expectations (and used UUIDs) remembered at once

# app_dial's DIALSTATUS values that end a ring; ANSWER, RINGING, "" and PROGRESS do not.
DIAL_FAILURES: Mapping[str, str] = MappingProxyType({
    "BUSY": "busy",
    "NOANSWER": "no_answer",
    "CONGESTION": "congestion",
    "CHANUNAVAIL": "unavailable",
    "CANCEL": "cancelled",
})  # fmt: skip

# Q.850 causes of a channel that died ringing. 0 ("Unknown"): a nonexistent Local/ extension.
CAUSE_OUTCOMES: Mapping[int, str] = MappingProxyType({
    0: "unavailable",
    1: "unavailable",  # unallocated number
    3: "unavailable",  # no route to destination
    17: "busy",
    18: "no_answer",  # no user responding
    19: "no_answer",  # user alerting, no answer
    20: "unavailable",  # subscriber absent
    21: "rejected",
    27: "unavailable",  # destination out of order
    34: "congestion",
    38: "congestion",  # network out of order
    42: "congestion",  # switching equipment congestion
})  # fmt: skip


def dial_outcome(dialstatus: str, cause: int) -> str:
    """Why a ringing outbound call ended: the `Dial` event's status first, then the cause."""
    if dialstatus in DIAL_FAILURES:
        return DIAL_FAILURES[dialstatus]
    return CAUSE_OUTCOMES.get(cause, "failed")


def _frozen(mapping: Mapping[str, str], what: str) -> Mapping[str, str]:
    items = dict(mapping)
    if len(items) > MAX_VARIABLES:
        raise ValueError(f"{what}: at most {MAX_VARIABLES} entries")
    for key, value in items.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"{what}: names and values must be strings")
        if not key or len(key) > MAX_TEXT or len(value) > MAX_TEXT:
            raise ValueError(f"{what}: empty or over-long entry {key[:40]!r}")
    return MappingProxyType(items)


def _check_bot_url(url: str) -> None:
    if url and not url.startswith(("ws://", "wss://")):
        raise ValueError(f"bot_url must be ws:// or wss://, not {url[:40]!r}")


@dataclass(frozen=True, slots=True)
class OriginateRequest:
    """One call to dial out. `variables` are set on the originated channel and passed to the
    bot in its start parameters (with `direction: outbound`)."""

    endpoint: str  # technology/resource: "PJSIP/1001", "Local/205@caller"
    caller_id: str = ""  # "Name <number>" or a number
    bot_url: str = ""  # ws:// or wss://; "" for the --bot-url template
    dialect: str = ""  # "" for --dialect
    variables: Mapping[str, str] = field(default_factory=dict)
    timeout: int = 30  # seconds of ringing
    webhook_url: str = ""

    def __post_init__(self) -> None:
        tech, sep, resource = self.endpoint.partition("/")
        if not sep or not tech or not resource or len(self.endpoint) > MAX_TEXT:
            raise ValueError(f"endpoint must be technology/resource, not {self.endpoint[:40]!r}")
        if any(c in self.endpoint for c in " ,&\r\n"):
            raise ValueError("endpoint must not contain spaces, commas or '&'")
        if len(self.caller_id) > MAX_TEXT or any(c in self.caller_id for c in "\r\n"):
            raise ValueError("caller_id too long or not one line")
        _check_bot_url(self.bot_url)
        if self.dialect and self.dialect not in DIALECT_NAMES:
            raise ValueError(f"unknown dialect {self.dialect!r}; known: {', '.join(DIALECT_NAMES)}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int):
            raise ValueError("timeout must be a whole number of seconds")
        if not 1 <= self.timeout <= 600:
            raise ValueError("timeout must be 1..600 seconds")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be http:// or https://")
        object.__setattr__(self, "variables", _frozen(self.variables, "variables"))

    @property
    def called(self) -> str:
        return self.endpoint.partition("/")[2]


class OriginateError(BridgeError):
    """An originate that was not placed: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class OutboundLeg:
    """What an originated call carries that its channel does not say (`CallFactory`)."""

    call_id: str
    caller: str
    called: str
    custom: Mapping[str, str]
    ring_timeout: float


def canonical_uuid(text: str) -> str:
    """A UUID in its canonical form (AudioSocket's), any other text as it is."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class ExpectedCall:
    """A dialplan call announced before it connects: its UUID and what it should get."""

    uuid: str
    caller: str = ""
    called: str = ""
    bot: str = ""  # a --bot-map name
    bot_url: str = ""  # ws:// or wss://; wins over `bot`
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.uuid or len(self.uuid) > 128:
            raise ValueError("uuid must be 1..128 characters")
        for name in ("caller", "called", "bot"):
            if len(getattr(self, name)) > MAX_TEXT:
                raise ValueError(f"{name} too long")
        _check_bot_url(self.bot_url)
        object.__setattr__(self, "uuid", canonical_uuid(self.uuid))
        object.__setattr__(self, "params", _frozen(self.params, "params"))


class ExpectedCalls:
    """The expectation registry: pure, `now` passed in (monotonic seconds)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._waiting: dict[str, tuple[float, ExpectedCall]] = {}  # uuid -> (deadline, call)
        self._used: dict[str, float] = {}  # uuid -> until when a reuse is refused

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, expected: ExpectedCall, now: float) -> None:
        """ValueError if that UUID is expected already, or was used, or too many wait."""
        self.expire(now)
        if expected.uuid in self._waiting or expected.uuid in self._used:
            raise ValueError(f"call {expected.uuid} is already expected or used")
        if len(self._waiting) >= MAX_EXPECTED:
            raise ValueError(f"too many expected calls (at most {MAX_EXPECTED})")
        self._waiting[expected.uuid] = (now + self.ttl, expected)

    def claim(self, uuid_: str, now: float) -> ExpectedCall | None:
        """What was registered for this connection's UUID (now used), or None for a UUID
        nobody expects (an ordinary dialplan call); ValueError for one used already."""
        self.expire(now)
        key = canonical_uuid(uuid_)
        if key in self._used:
            raise ValueError(f"call {key} was used already")
        entry = self._waiting.pop(key, None)
        if entry is None:
            return None
        if len(self._used) >= MAX_EXPECTED:
            self._used.pop(next(iter(self._used)))
        self._used[key] = now + max(self.ttl, 3600.0)
        return entry[1]

    def expire(self, now: float) -> None:
        for key in [k for k, (deadline, _) in self._waiting.items() if deadline <= now]:
            del self._waiting[key]
            log.info("expected_call_expired", uuid=key)
        for key in [k for k, until in self._used.items() if until <= now]:
            del self._used[key]


@dataclass(slots=True)
class _Ringing:
    call: Call
    dialstatus: str = ""


def _channel_of(event: AriEvent) -> str | None:
    if isinstance(event, Dial):
        return event.peer.id
    channel = getattr(event, "channel", None)
    return channel.id if channel is not None else None


class OutboundCalls:
    """The adapter: originates, watches ringing channels, claims expected calls."""

    def __init__(
        self,
        settings: Settings,
        *,
        rest: AriRestClient,
        registry: CallRegistry,
        factory: CallFactory,
        admission: Callable[[str], str],
        route: Callable[[AriEvent], None],
        background: Callable[[Awaitable[None], str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._rest = rest
        self._registry = registry
        self._factory = factory
        self._admission = admission
        self._route = route
        self._background = background
        self._clock = clock
        self.expected = ExpectedCalls(settings.expect_ttl)
        self._in_flight: dict[str, list[AriEvent]] = {}  # channel id -> events held
        self._ringing: dict[str, _Ringing] = {}  # channel id -> its call

    # ---- originate ----------------------------------------------------------------------

    async def originate(self, request: OriginateRequest) -> str:
        s = self._settings
        if not s.ari_enabled:
            raise OriginateError(503, "no ARI connection configured: cannot dial out")
        reason = self._admission(s.transport) or self._over_limit()
        if reason:
            raise OriginateError(503, reason)
        call_id = uuid.uuid4().hex
        channel_id = f"{s.id_prefix}out-{call_id}"
        call_log = log.bind(call_id=call_id, channel_id=channel_id)
        custom = {"direction": "outbound", **request.variables}
        self._in_flight[channel_id] = []
        try:
            channel = await self._rest.originate(
                endpoint=request.endpoint, app=s.app, app_args=f"outbound,{call_id}",
                channel_id=channel_id, caller_id=request.caller_id, ring_timeout=request.timeout,
                variables=request.variables,
            )  # fmt: skip
        except AriHttpError as exc:
            call_log.warning("originate_refused", endpoint=request.endpoint,
                             status=exc.status, error=exc.message)  # fmt: skip
            status = _status_for(exc.status, exc.message)
            raise OriginateError(status, f"Asterisk: {exc.message}") from None
        except AriUnavailableError as exc:
            # Asterisk may have dialled all the same: the id is ours, hang it up (404 is fine).
            call_log.warning("originate_unanswered", error=str(exc))
            self._background(self._rest.hangup(channel_id), "unanswered originate hang-up")
            raise OriginateError(502, f"Asterisk did not answer: {exc}") from None
        finally:
            held = self._in_flight.pop(channel_id)
        number = _number(request.caller_id)
        leg = OutboundLeg(call_id, number, request.called, custom, float(request.timeout))
        args = [a for a in ("outbound", call_id, request.bot_url,
                            request.dialect and f"dialect={request.dialect}",
                            request.webhook_url and f"webhook_url={request.webhook_url}") if a]
        call = self._factory.ari_call(replace(channel, caller_number=number), args,
                                        outbound=leg)  # fmt: skip
        if not call.finished.done():
            self._ringing[channel_id] = _Ringing(call)
            call.finished.add_done_callback(lambda _: self._ringing.pop(channel_id, None))
        call_log.info("originated", endpoint=request.endpoint, timeout_s=request.timeout)
        for event in held:
            self._route(event)
        return call_id

    def _over_limit(self) -> str:
        """Originates still waiting for Asterisk's answer hold a place too."""
        max_calls = self._settings.max_calls
        if max_calls and self._registry.busy() + len(self._in_flight) >= max_calls:
            return "max calls reached"
        return ""

    @property
    def ringing(self) -> int:
        return len(self._ringing)

    def intercept(self, event: AriEvent) -> bool:
        """Take an event about a channel that is still being originated or ringing; True if
        it was taken (the controller then routes it no further)."""
        channel_id = _channel_of(event)
        if channel_id is None:
            return False
        held = self._in_flight.get(channel_id)
        if held is not None:
            held.append(event)
            return True
        ring = self._ringing.get(channel_id)
        if ring is None:
            return False
        if isinstance(event, StasisStart):
            del self._ringing[channel_id]  # answered: the call sets up from here
            return False
        if isinstance(event, Dial):
            ring.dialstatus = event.dialstatus or ring.dialstatus
            if event.dialstatus in DIAL_FAILURES:
                self._ring_failed(channel_id, dial_outcome(event.dialstatus, -1), gone=False)
            return True
        if isinstance(event, ChannelHangupRequest | ChannelDestroyed):
            self._ring_failed(channel_id, dial_outcome(ring.dialstatus, event.cause), gone=True)
            return True
        return False

    def _ring_failed(self, channel_id: str, outcome: str, *, gone: bool) -> None:
        ring = self._ringing.pop(channel_id)
        ring.call.log.info("outbound_not_answered", outcome=outcome)
        # `gone`: Asterisk is destroying it; otherwise hang it up ourselves (after a BUSY a
        # created-and-dialled channel would stay up until the dial timeout).
        ring.call.feed(HangupRequested(outcome, caller_gone=gone, by=EndedBy.CALLER))

    # ---- expected dialplan calls ----------------------------------------------------------

    def expect(self, expected: ExpectedCall) -> None:
        self.expected.add(expected, self._clock())
        log.info("call_expected", uuid=expected.uuid, ttl_s=self.expected.ttl)

    def audiosocket_call(self, uuid_: Any, leg: MediaLeg) -> Call | None:
        refused, expected = self._claim(str(uuid_))
        if refused:
            return None
        return self._factory.dialplan_audiosocket_call(uuid_, leg, expected)

    def websocket_call(self, leg: Any, params: dict[str, str], start: Any) -> Call | None:
        refused, expected = self._claim(params.get("uuid", ""))
        if refused:
            return None
        return self._factory.dialplan_websocket_call(leg, params, start, expected)

    def _claim(self, uuid_: str) -> tuple[bool, ExpectedCall | None]:
        """(refused: its UUID was used already, the expectation or None)."""
        if not uuid_:
            return False, None
        try:
            return False, self.expected.claim(uuid_, self._clock())
        except ValueError as exc:
            log.warning("expected_call_refused", uuid=uuid_, reason=str(exc))
            return True, None


def _status_for(asterisk_status: int, message: str) -> int:
    """The HTTP status for an originate Asterisk refused: its 4xx are the request's fault;
    its 500 "Allocation failed" is an endpoint it cannot dial (unknown technology); any other
    failure is Asterisk's (502)."""
    if 400 <= asterisk_status < 500:
        return 409 if asterisk_status == 409 else 400
    return 400 if "Allocation failed" in message else 502


def _number(caller_id: str) -> str:
    """The number of a caller id `Name <number>`, or the caller id itself."""
    name, sep, rest = caller_id.partition("<")
    return rest.rstrip().rstrip(">").strip() if sep else name.strip()
