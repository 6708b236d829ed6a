"""The service: one ARI events socket, one REST session, one ticker, the media listeners and
the registry of calls.

Routing rule: a StasisStart of a channel that is not ours and not an ExternalMedia channel is
a new caller; every other event goes to the call that owns its channel or bridge, or is
ignored. A connection to a media listener that no ARI call expects is a call from the
dialplan alone (`bridge.call.dialplan`). The registry lives here, on an instance, never in
module state. Without ARI credentials only dialplan calls are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import uuid
from typing import Any

from ari.events import AriEvent, BridgeDestroyed, PlaybackFinished, StasisStart, UnknownEvent
from ari.events_socket import AriEventsSocket, events_url
from ari.models import Bridge, Channel
from ari.rest import AriRestClient
from bridge.bot.dialects import create_dialect
from bridge.bot.dialects.base import BotDialect, CallInfo
from bridge.bot.url import option_from_args, resolve_bot
from bridge.call.commands import HangupRequested
from bridge.call.machine import CallIds, Fallback
from bridge.call.runner import Call, CallObserver
from bridge.call.view import CallChange, CallView
from bridge.errors import BridgeError, ConfigError
from bridge.logs import get_logger
from bridge.media.factory import TRANSPORTS, MediaFactory
from bridge.media.leg import MediaLeg
from bridge.media.ticker import Ticker
from bridge.service.config import Settings

log = get_logger("bridge")

# How long a caller found waiting in the app, unknown to us, may still turn out to be one
# whose StasisStart is just behind the listing on the events socket.
ORPHAN_GRACE = 1.0


class Controller:
    def __init__(self, settings: Settings, rest: AriRestClient | None = None) -> None:
        self.settings = settings
        self.rest = rest or AriRestClient(
            settings.ari_url, settings.ari_user, settings.ari_password,
            timeout=settings.rest_timeout,
        )
        self.ticker = Ticker()
        self.media = MediaFactory(
            settings,
            self.ticker,
            on_dialplan_audiosocket=self._dialplan_audiosocket_call,
            on_dialplan_websocket=self._dialplan_websocket_call,
        )
        self.pool = self.media.pool
        self.calls: dict[str, Call] = {}  # by call_id
        # Readers of the calls' read model (bridge.call.view), told of every change.
        self.observers: list[CallObserver] = []
        self._by_channel: dict[str, Call] = {}
        self._by_bridge: dict[str, Call] = {}
        # What the bot is told the call's rate is (exotel follows it): the format's.
        self._rate = 16000 if settings.format == "slin16" else 8000
        self.events = AriEventsSocket(
            events_url(settings.ari_url, settings.app, settings.ari_user, settings.ari_password),
            self.on_event,
            self._on_events_connected,
        )
        self.calls_total = 0
        self.calls_rejected = 0
        self.swept = 0  # leftovers of earlier runs deleted
        self._active: dict[str, str] = {}  # call id -> transport, of calls not rejected
        self.draining = False
        self._fallback = Fallback(
            settings.fallback,
            settings.fallback_context,
            settings.fallback_extension,
            settings.fallback_priority,
            settings.fallback_sound,
        )
        self._resync_task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.resyncs = 0
        self.resynced = asyncio.Event()
        self.listening = asyncio.Event()  # the media listeners are bound (run() started)
        self.all_idle = asyncio.Event()
        self.all_idle.set()

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; then end every call and release everything."""
        s = self.settings
        try:
            await self.media.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen for media: {exc.strerror or exc}") from None
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
            fallback=self._fallback.policy,
            max_calls=s.max_calls or None,
        )
        if _is_wildcard(s.rtp_host):
            log.warning(
                "rtp_host_wildcard",
                rtp_host=s.rtp_host,
                hint="RTP sockets listen on every interface; bind the Asterisk-facing address",
            )
        try:
            if s.ari_enabled:
                await self.rest.open()
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
        log.info("drain_started", calls=len(self._active), timeout_s=seconds)
        if self.calls:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.all_idle.wait(), seconds)
        log.info("drain_finished", calls_left=len(self._active))

    async def shutdown(self, grace: float = 5.0) -> None:
        self.draining = True
        if self._resync_task is not None:
            self._resync_task.cancel()
        for task in list(self._side_tasks):
            task.cancel()
        for call in list(self.calls.values()):
            call.feed(HangupRequested("bridge shutting down"))
        if self.calls:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.all_idle.wait(), grace)
        await self.media.close()
        await self.events.close()
        await self.rest.close()
        log.info(
            "bridge_stopped",
            calls_total=self.calls_total,
            calls_rejected=self.calls_rejected,
            calls_left=len(self.calls),
        )

    # ---- events -------------------------------------------------------------------------

    def on_event(self, event: AriEvent) -> None:
        if isinstance(event, UnknownEvent):
            return
        if (
            isinstance(event, StasisStart)
            and self._is_ours(event.channel.id)
            and event.channel.id not in self._by_channel
        ):
            # One of our ExternalMedia channels whose call is over: its creation answered
            # after we gave up on it (a slow Asterisk). Nobody will ever use it.
            log.warning("stray_media_channel", channel_id=event.channel.id)
            self._background(self.rest.hangup(event.channel.id), "stray channel hang-up")
            return
        if isinstance(event, StasisStart) and not self._is_ours(event.channel.id):
            if event.channel.is_media_channel:
                log.warning("foreign_media_channel", channel_id=event.channel.id,
                            name=event.channel.name)
            elif event.channel.id not in self._by_channel:
                self._new_call(event.channel, event.args)
            return
        call = self._route(event)
        if call is not None:
            call.feed(event)

    def _route(self, event: AriEvent) -> Call | None:
        if isinstance(event, BridgeDestroyed):
            return self._by_bridge.get(event.bridge.id)
        if isinstance(event, PlaybackFinished):
            channel_id = event.channel_id
            return self._by_channel.get(channel_id) if channel_id else None
        channel = getattr(event, "channel", None)
        return self._by_channel.get(channel.id) if channel is not None else None

    def _is_ours(self, channel_id: str) -> bool:
        return channel_id.startswith(self.settings.id_prefix)

    async def _on_events_connected(self) -> None:
        """Asterisk replays nothing after a reconnect (asterisk-facts §16): ask it what exists
        and reconcile. Run beside the event stream, not in front of it."""
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_task.cancel()
        self._resync_task = asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        try:
            await self._reconcile()
        except BridgeError as exc:
            log.warning("resync_failed", error=str(exc))
        except Exception:
            log.exception("resync_crashed")
        finally:
            self.resyncs += 1
            self.resynced.set()

    async def _reconcile(self) -> None:
        s = self.settings
        in_app, channels, bridges = await self._listing()
        channel_ids = {c.id for c in channels}
        bridge_ids = {b.id for b in bridges}
        # 1. Our calls: a caller gone while we were deaf ends its call; a call whose bridge or
        #    media channel is gone (Asterisk restarted) cannot carry audio any more.
        for call in list(self.calls.values()):
            if call.state not in ("setup", "up", "draining"):
                continue
            if call.ids.caller_id not in in_app:
                call.log.info("resync_caller_gone")
                call.feed(HangupRequested("caller left while events were down", caller_gone=True))
            elif call.state != "setup" and call.ids.call_id in self._active and (
                call.ids.bridge_id not in bridge_ids or call.ids.media_channel_id not in channel_ids
            ):
                call.log.warning("resync_media_path_gone")
                call.feed(HangupRequested("bridge or media channel gone", fallback=True))
        # 2. What an earlier run of this service left behind (crash, kill -9).
        #    Only what is provably this service's: our id prefix, and our app (in the bridge's
        #    name; the channel in our app), so a second process never sweeps the first's.
        for bridge in sorted(bridges, key=lambda b: b.id):
            if (
                bridge.id.startswith(f"{s.id_prefix}br-")
                and bridge.name.rpartition(":")[0] == s.app
                and bridge.id not in self._by_bridge
            ):
                await self._sweep("bridge", bridge.id, self.rest.delete_bridge)
        for channel in channels:
            if (
                channel.id.startswith(f"{s.id_prefix}em-")
                and channel.id in in_app
                and channel.id not in self._by_channel
            ):
                await self._sweep("channel", channel.id, self.rest.hangup)
        # 3. Callers waiting in the app that nobody serves: an earlier run took them and died.
        orphans = {c.id for c in channels if c.id in in_app and self._is_orphan(c)}
        if not orphans:
            return
        await asyncio.sleep(ORPHAN_GRACE)
        in_app, channels, _bridges = await self._listing()
        for channel in channels:
            if channel.id in in_app and channel.id in orphans and self._is_orphan(channel):
                log.warning("orphan_caller", channel_id=channel.id)
                self._new_call(channel, (), reject="left waiting by an earlier run")

    async def _listing(self) -> tuple[set[str], list[Channel], list[Bridge]]:
        app = await self.rest.application(self.settings.app)
        in_app = {c for c in app.get("channel_ids") or [] if isinstance(c, str)}
        return in_app, await self.rest.list_channels(), await self.rest.list_bridges()

    def _is_orphan(self, channel: Channel) -> bool:
        return (
            not self._is_ours(channel.id)
            and not channel.is_media_channel
            and channel.id not in self._by_channel
        )

    async def _sweep(self, kind: str, ident: str, delete: Any) -> None:
        try:
            await delete(ident)
        except BridgeError as exc:
            log.warning("sweep_failed", kind=kind, id=ident, error=str(exc))
            return
        self.swept += 1
        log.info("swept_leftover", kind=kind, id=ident)

    # ---- calls --------------------------------------------------------------------------

    def _admission(self, transport: str) -> str:
        """Why a new call on `transport` cannot be taken now, or "" if it can."""
        if self.draining:
            return "bridge draining"
        if self.settings.max_calls and len(self._active) >= self.settings.max_calls:
            return "max calls reached"
        return self.media.unavailable(transport, self._calls_on)

    def _calls_on(self, transport: str) -> int:
        return sum(1 for t in self._active.values() if t == transport)

    def _new_call(self, caller: Channel, args: tuple[str, ...], reject: str = "") -> None:
        s = self.settings
        transport = option_from_args(args, "transport") or s.transport
        reject = reject or self._admission(transport)
        call_id = uuid.uuid4().hex
        ids = CallIds(
            call_id=call_id,
            caller_id=caller.id,
            bridge_id=f"{s.id_prefix}br-{call_id}",
            media_channel_id=f"{s.id_prefix}em-{call_id}",
            bridge_name=f"{s.app}:{caller.id}",
        )
        values = {
            "call_id": call_id,
            "channel_id": caller.id,
            "caller": caller.caller_number,
            "called": caller.exten,
        }
        bot_url, dialect_name = resolve_bot(s.bot_url, s.dialect, args, values)
        info = CallInfo(call_id, caller.id, caller.caller_number, caller.exten)
        call_log = log.bind(call_id=call_id, channel_id=caller.id)
        dialect, reject = self._dialect_for(dialect_name, info, call_log, reject)
        if transport not in TRANSPORTS:
            call_log.error("bad_transport", transport=transport)
            transport = s.transport  # for the leg object only: the call is rejected
        call = self._call(
            ids=ids,
            caller=caller,
            bot_url=bot_url,
            rest=self.rest,
            leg_factory=lambda c: self.media.leg(transport, c, call_log),
            dialect=dialect,
            info=info,
            log=call_log,
            reject=reject,
            transport=transport,
        )
        self._register(call, transport, reject)
        if not reject:
            self._by_channel[ids.media_channel_id] = call
            self._by_bridge[ids.bridge_id] = call
        call.start()

    def _dialect_for(
        self, name: str, info: CallInfo, call_log: Any, reject: str
    ) -> tuple[BotDialect, str]:
        try:
            return create_dialect(name, info, self._rate), reject
        except ConfigError as exc:
            # A typo in the dialplan's arguments: speaking the wrong dialect would give the
            # caller silence, so the caller goes to the fallback, loudly.
            call_log.error("bad_dialect", error=str(exc))
            dialect = create_dialect(self.settings.dialect, info, self._rate)
            return dialect, reject or f"unknown dialect {name!r}"

    def _call(self, **kwargs: Any) -> Call:
        s = self.settings
        return Call(
            app=s.app,
            bot_connect_timeout=s.bot_connect_timeout,
            setup_timeout=s.setup_timeout,
            on_finished=self._call_finished,
            fallback=self._fallback,
            bot_options={
                "stall_timeout": s.bot_stall_timeout,
                "ca_file": s.bot_ca_file,
                "headers": s.bot_headers,
            },
            observers=(self._call_changed,),
            **kwargs,
        )

    def _call_changed(self, view: CallView, change: CallChange) -> None:
        """Every call's every change, with its new read model, to every reader of it (API
        history, metrics, webhooks, sd_notify status)."""
        for observer in self.observers:
            observer(view, change)

    def _register(self, call: Call, transport: str, reject: str) -> None:
        self.calls[call.ids.call_id] = call
        if call.ids.caller_id:
            self._by_channel[call.ids.caller_id] = call
        if reject:
            self.calls_rejected += 1
        else:
            self._active[call.ids.call_id] = transport
            self.calls_total += 1
        self.all_idle.clear()

    # ---- calls from the dialplan alone (no ARI) ---------------------------------------

    def _dialplan_audiosocket_call(self, uuid_: Any, leg: MediaLeg) -> Call | None:
        # AudioSocket carries nothing but the UUID: no caller number, no extension.
        return self._dialplan_call(leg, "audiosocket", channel_id="", values={}, params={
            "audiosocket_uuid": str(uuid_)})

    def _dialplan_websocket_call(
        self, leg: Any, params: dict[str, str], media_start: Any
    ) -> Call | None:
        values = {"caller": params.get("from", ""), "called": params.get("to", "")}
        return self._dialplan_call(leg, "websocket", channel_id=leg.channel_id or "",
                                   values=values, params=params)  # fmt: skip

    def _dialplan_call(
        self,
        leg: MediaLeg,
        transport: str,
        *,
        channel_id: str,
        values: dict[str, str],
        params: dict[str, str],
    ) -> Call | None:
        """The new call, or None when it was refused (its start ended it): the listener then
        closes the connection without a hang-up, so the dialplan goes on."""
        s = self.settings
        call_id = uuid.uuid4().hex
        call_log = log.bind(call_id=call_id, channel_id=channel_id or None, transport=transport)
        caller, called = values.get("caller", ""), values.get("called", "")
        bot_name = params.get("bot")
        template = dict(s.bot_map).get(bot_name, "") if bot_name else s.bot_url
        reject = "" if template else f"unknown bot {bot_name!r} (not in --bot-map)"
        if not reject and self.draining:
            reject = "bridge draining"
        elif not reject and s.max_calls and len(self._active) >= s.max_calls:
            reject = "max calls reached"
        url_values = {"call_id": call_id, "channel_id": channel_id, "caller": caller,
                      "called": called}  # fmt: skip
        bot_url, dialect_name = resolve_bot(template or s.bot_url, s.dialect,
                                            [f"dialect={params['dialect']}"]
                                            if params.get("dialect") else [], url_values)
        custom = {k: v for k, v in params.items() if k not in ("bot", "dialect")}
        info = CallInfo(call_id, channel_id, caller, called, custom)
        dialect, reject = self._dialect_for(dialect_name, info, call_log, reject)
        ids = CallIds(call_id=call_id, caller_id="", bridge_id="", media_channel_id="")
        call = self._call(ids=ids, caller=None, bot_url=bot_url, rest=None,
                          leg_factory=lambda _c: leg, dialect=dialect, info=info,
                          log=call_log, reject=reject, transport=transport)  # fmt: skip
        self._register(call, transport, reject)
        call.start()
        # A refused call is over already; the leg it never bound must not be served.
        return None if call.finished.done() else call

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
        self.calls.pop(call.ids.call_id, None)
        self._active.pop(call.ids.call_id, None)
        for channel_id in (call.ids.caller_id, call.ids.media_channel_id):
            if self._by_channel.get(channel_id) is call:
                del self._by_channel[channel_id]
        if self._by_bridge.get(call.ids.bridge_id) is call:
            del self._by_bridge[call.ids.bridge_id]
        if not self.calls:
            self.all_idle.set()


def _address(listener: Any) -> str | None:
    address = getattr(listener, "address", None)
    return f"{address[0]}:{address[1]}" if address else None


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
