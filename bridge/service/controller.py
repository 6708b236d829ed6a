"""The service: one ARI events socket, one REST session, one ticker, the media listeners and
the registry of calls.

Routing rule: a CallBroadcast (StasisBroadcast() offering a caller to every matching app) is
claimed, after a delay that grows with the load, when this process can take the call
(`bridge.service.claim`); a won claim brings the caller's ordinary StasisStart. A StasisStart
of a channel that is not ours and not an ExternalMedia channel is a new caller; every other
event goes to the call that owns its channel or bridge, or is ignored. A connection to a
media listener that no ARI call expects is a call from the dialplan alone
(`bridge.call.dialplan`). The registry lives here, on an instance, never in module state.
Without ARI credentials only dialplan calls are served. With --peer-grace the service keeps
a heartbeat in Asterisk and sweeps dead peers' leftovers (`bridge.service.peering`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any

from ari.events import AriEvent, CallBroadcast, CallClaimed, StasisStart, UnknownEvent
from ari.events_socket import AriEventsSocket, events_url
from ari.models import Channel
from ari.rest import AriRestClient
from bridge.bot.url import option_from_args
from bridge.call.commands import HangupRequested
from bridge.call.runner import Call, CallObserver
from bridge.call.view import CallChange, CallView
from bridge.errors import BridgeError, ConfigError
from bridge.logs import get_logger
from bridge.media.factory import MediaFactory
from bridge.media.ticker import Ticker
from bridge.ops.http_api import HttpApi
from bridge.ops.lifecycle import webhooks_from_settings
from bridge.ops.metrics import BridgeMetrics
from bridge.service.calls import CallFactory
from bridge.service.claim import ClaimPolicy, broadcast_args
from bridge.service.config import Settings
from bridge.service.outbound import ExpectedCall, OriginateRequest, OutboundCalls
from bridge.service.peering import Peering
from bridge.service.peers import Scope
from bridge.service.reconcile import Reconciler
from bridge.service.registry import CallRegistry, admission
from bridge.service.workers import default_instance_id

log = get_logger("bridge")

# How long a won claim holds a call slot while its StasisStart is on the way.
CLAIM_HOLD = 5.0


class Controller:
    def __init__(
        self,
        settings: Settings,
        rest: AriRestClient | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock`: the wall clock of the heartbeats (tests move it by hand)."""
        self.settings = settings
        self.rest = rest or AriRestClient(
            settings.ari_url, settings.ari_user, settings.ari_password,
            timeout=settings.rest_timeout,
        )
        self.ticker = Ticker()
        self.registry = CallRegistry()
        # Readers of the calls' read model (bridge.call.view), told of every change.
        self.observers: list[CallObserver] = []
        self.metrics = BridgeMetrics(self)  # GET /metrics; reads the rest at a scrape
        self.observers.append(self.metrics.observe)
        self.draining = False
        self.media = MediaFactory(
            settings,
            self.ticker,
            on_dialplan_audiosocket=lambda uuid_, leg: self.outbound.audiosocket_call(uuid_, leg),
            on_dialplan_websocket=lambda leg, params, start: (
                self.outbound.websocket_call(leg, params, start)
            ),
        )
        self.pool = self.media.pool
        self.factory = CallFactory(
            settings,
            rest=self.rest,
            media=self.media,
            registry=self.registry,
            admission=self._admission,
            observers=(self._call_changed,),
            on_finished=self._call_finished,
        )
        # Outbound calls and expected dialplan calls (bridge.service.outbound).
        self.outbound = OutboundCalls(
            settings, rest=self.rest, registry=self.registry, factory=self.factory,
            admission=self._admission, route=self.on_event, background=self._background,
        )  # fmt: skip
        self.reconciler = Reconciler(settings, self.rest, self.registry, self._orphan)
        self.peering = self._peering(clock)
        self.webhooks = webhooks_from_settings(settings)
        self.observers.append(self.webhooks)
        self.events = AriEventsSocket(
            events_url(settings.ari_url, settings.app, settings.ari_user, settings.ari_password),
            self.on_event,
            self._on_events_connected,
        )
        self._side_tasks: set[asyncio.Task[None]] = set()
        # Broadcast calls (StasisBroadcast): one claim task per offered channel.
        self.claim_policy = ClaimPolicy(settings.claim_max_delay_ms / 1000)
        self._claims: dict[str, asyncio.Task[None]] = {}
        self.claims_won = 0
        # Claims in flight or won whose StasisStart has not come yet: they count towards
        # --max-calls, or a process one call short of full could win two offers at once.
        self._claimed: set[str] = set()
        self.claims_lost = 0  # 409 (another process was first) or 404 (too late)
        self.listening = asyncio.Event()  # the media listeners are bound (run() started)
        self.http_api = HttpApi(self)  # --http-listen, from run(); keeps ended calls' views

    # What tests and the operations surface read; the registry and reconciler own them.
    @property
    def calls(self) -> dict[str, Call]:
        return self.registry.calls

    @property
    def all_idle(self) -> asyncio.Event:
        return self.registry.all_idle

    @property
    def calls_total(self) -> int:
        return self.registry.total

    @property
    def calls_rejected(self) -> int:
        return self.registry.rejected

    @property
    def resynced(self) -> asyncio.Event:
        return self.reconciler.resynced

    @property
    def resyncs(self) -> int:
        return self.reconciler.resyncs

    @property
    def swept(self) -> int:
        return self.reconciler.swept

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; then end every call and release everything."""
        s = self.settings
        try:
            await self.media.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen for media: {exc.strerror or exc}") from None
        await self.webhooks.sender.start()
        self.listening.set()
        log.info(
            "bridge_starting",
            ari_url=s.ari_url if s.ari_enabled else None,
            app=s.app,
            bot_url=s.bot_url,
            transport=s.transport,
            rtp=f"{s.rtp_host}:{s.rtp_ports[0]}-{s.rtp_ports[1]}",
            audiosocket_listen=_address(self.media.audiosocket),
            websocket_listen=_address(self.media.websocket),
            format=s.format,
            dialect=s.dialect,
            fallback=self.factory.fallback.policy,
            max_calls=s.max_calls or None,
        )
        if _is_wildcard(s.rtp_host):
            log.warning(
                "rtp_host_wildcard",
                rtp_host=s.rtp_host,
                hint="RTP sockets listen on every interface; bind the Asterisk-facing address",
            )
        try:
            await self.http_api.start()
            if s.ari_enabled:
                await self.rest.open()
                if self.peering is not None:
                    self.peering.start()
                await self.events.run()
            else:
                log.info("ari_disabled", reason="no ARI password: dialplan calls only")
                await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.shutdown())

    async def drain(self, seconds: float) -> None:
        """Stop taking calls (new callers get the fallback); let the calls in progress go on
        for up to `seconds`. The caller of drain() then stops the service."""
        self.draining = True
        log.info("drain_started", calls=len(self.registry.active), timeout_s=seconds)
        if self.calls:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.all_idle.wait(), seconds)
        log.info("drain_finished", calls_left=len(self.registry.active))

    async def shutdown(self, grace: float = 5.0) -> None:
        self.draining = True
        self.reconciler.cancel()
        for task in [*self._side_tasks, *self._claims.values()]:
            task.cancel()
        for call in self.registry:
            call.feed(HangupRequested("bridge shutting down"))
        if self.calls:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.all_idle.wait(), grace)
        await self.media.close()
        # What is not delivered by now stays in the spool for the next start.
        await self.webhooks.sender.close(grace=1.0)
        await self.http_api.close()
        await self.events.close()
        await self._leave_peers()
        await self.rest.close()
        log.info(
            "bridge_stopped",
            calls_total=self.calls_total,
            calls_rejected=self.calls_rejected,
            calls_left=len(self.calls),
        )

    # ---- events -------------------------------------------------------------------------

    async def originate(self, request: OriginateRequest) -> str:
        """Dial out; the call's id once Asterisk accepted it (OriginateError if not)."""
        return await self.outbound.originate(request)

    def expect(self, expected: ExpectedCall) -> None:
        """Register a dialplan call to come (ValueError if its uuid is expected or used)."""
        self.outbound.expect(expected)

    def on_event(self, event: AriEvent) -> None:
        if isinstance(event, CallBroadcast):
            self._offered(event)
            return
        if isinstance(event, CallClaimed):
            log.debug("call_claimed", channel_id=event.channel.id, winner_app=event.winner_app)
            return
        if isinstance(event, UnknownEvent) or self.outbound.intercept(event):
            return
        if isinstance(event, StasisStart):
            self._stasis_start(event)
            return
        call = self.registry.route(event)
        if call is not None:
            call.feed(event)

    def _stasis_start(self, event: StasisStart) -> None:
        channel = event.channel
        if self.reconciler.is_ours(channel.id):
            call = self.registry.by_channel.get(channel.id)
            if call is not None:
                call.feed(event)  # our ExternalMedia channel entering the app
                return
            # One of our ExternalMedia channels whose call is over: its creation answered
            # after we gave up on it (a slow Asterisk). Nobody will ever use it.
            log.warning("stray_media_channel", channel_id=channel.id)
            self._background(self.rest.hangup(channel.id), "stray channel hang-up")
        elif channel.is_media_channel:
            log.warning("foreign_media_channel", channel_id=channel.id, name=channel.name)
        elif channel.id not in self.registry.by_channel:
            self._claimed.discard(channel.id)  # a won claim becomes this call
            self.factory.ari_call(channel, event.args)

    # ---- broadcast calls -------------------------------------------------------------------

    def _offered(self, event: CallBroadcast) -> None:
        """A caller offered to us: claim it after the policy's delay, if we can take it."""
        channel = event.channel
        if event.application and event.application != self.settings.app:
            log.debug("broadcast_for_other_app", app=event.application, channel_id=channel.id)
            return
        loop = asyncio.get_running_loop()
        at = self._claim_time(channel, loop.time())
        if at is None:
            log.debug("broadcast_declined", channel_id=channel.id)
            return
        old = self._claims.pop(channel.id, None)
        if old is not None:
            old.cancel()  # a new broadcast (after a continue): only this one can be won
        task = loop.create_task(self._claim(channel, at))
        self._claims[channel.id] = task
        task.add_done_callback(lambda t: self._claims.pop(channel.id, None) if
                               self._claims.get(channel.id) is t else None)  # fmt: skip

    def _claim_time(self, channel: Channel, now: float) -> float | None:
        """When to claim `channel` (loop time), or None: this process cannot take it now."""
        args = broadcast_args(channel.app_data)
        transport = option_from_args(args, "transport") or self.settings.transport
        active = self.registry.busy() + len(self._claimed - {channel.id})
        max_calls = self.settings.max_calls
        full = "max calls reached (with claims won)" if max_calls and active >= max_calls else ""
        return self.claim_policy.claim_at(
            now,
            refused=self._admission(transport) or full,
            healthy=self.events.connected.is_set(),
            active=active,
            max_calls=self.settings.max_calls,
            app_data=channel.app_data,
        )

    async def _claim(self, channel: Channel, at: float) -> None:
        loop = asyncio.get_running_loop()
        if at > loop.time():
            await asyncio.sleep(at - loop.time())
        # Checked again right before claiming, with no await in between: full or draining
        # meanwhile, or another offer of the same moment took the last slot.
        if self._claim_time(channel, loop.time()) is None:
            log.debug("broadcast_declined", channel_id=channel.id, why="full by now")
            return
        self._claimed.add(channel.id)
        try:
            won = await self.rest.claim(channel.id, self.settings.app)
        except BridgeError as exc:
            self._claimed.discard(channel.id)
            log.info("claim_failed", channel_id=channel.id, error=str(exc))
            return
        if won:
            self.claims_won += 1
            log.debug("claim_won", channel_id=channel.id)
            # Its StasisStart follows at once; if it never does (the caller hung up), the
            # slot is free again after a while.
            loop.call_later(CLAIM_HOLD, self._claimed.discard, channel.id)
        else:
            self._claimed.discard(channel.id)
            self.claims_lost += 1

    def _peering(self, clock: Callable[[], float]) -> Peering | None:
        s = self.settings
        if not (s.peer_grace and s.ari_enabled):
            return None
        app, _, prefix = s.peer_scope.partition(" ")  # a worker: its host's (config checked it)
        return Peering(
            self.rest,
            self.reconciler if s.peer_sweep else None,
            scope=Scope(app, prefix) if s.peer_scope else self.reconciler.scope,
            instance=s.instance_id or default_instance_id(socket.gethostname()),
            grace=s.peer_grace,
            interval=s.heartbeat_interval,
            clock=clock,
            may_sweep=lambda: not self.draining,
        )

    async def _leave_peers(self) -> None:
        """The heartbeat stops last, once every call is over. All cleaned up: leave the
        registry, no peer has anything to sweep. Calls left (Asterisk would not answer):
        stay listed, so after --peer-grace a live peer sweeps what they hold."""
        if self.peering is None:
            return
        await self.peering.stop(within=self.settings.rest_timeout)
        if self.calls:
            log.warning("peer_not_left", calls_left=len(self.calls),
                        hint="a peer sweeps what they hold after --peer-grace")  # fmt: skip
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.peering.leave(), 2 * self.settings.rest_timeout)

    async def _on_events_connected(self) -> None:
        self.reconciler.start()

    def _orphan(self, channel: Channel) -> None:
        self.factory.ari_call(channel, (), reject="left waiting by an earlier run")

    # ---- calls --------------------------------------------------------------------------

    def _admission(self, transport: str | None) -> str:
        """Why a new call cannot be taken now ("" if it can); `transport` None for a call
        whose media Asterisk brought itself (nothing of ours to run out of)."""
        return admission(
            draining=self.draining,
            max_calls=self.settings.max_calls,
            registry=self.registry,
            transport_unavailable=self.media.unavailable if transport else _always,
            transport=transport or "",
        )

    def _call_changed(self, view: CallView, change: CallChange) -> None:
        """Every call's every change, with its new read model, to every reader of it (API
        history, metrics, webhooks, sd_notify status)."""
        for observer in self.observers:
            observer(view, change)

    def _background(self, coro: Any, what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except BridgeError as exc:
                log.info("background_request_failed", what=what, error=str(exc))

        task = asyncio.get_running_loop().create_task(run())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _late_bridge_delete(self, bridge_id: str) -> None:
        # Long enough for a request that outlived --rest-timeout to have been performed.
        await asyncio.sleep(2 * self.settings.rest_timeout + 1)
        await self.rest.delete_bridge(bridge_id)
        log.info("late_bridge_deleted", bridge_id=bridge_id)

    def _call_finished(self, call: Call) -> None:
        if call.machine.bridge_unsure:
            self._background(self._late_bridge_delete(call.ids.bridge_id), "late bridge delete")
        self.registry.remove(call)


def _always(_transport: str, _calls: Any) -> str:
    return ""


def _address(listener: Any) -> str | None:
    address = getattr(listener, "address", None)
    return f"{address[0]}:{address[1]}" if address else None


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
