"""The service: one ARI events socket, one REST session, one ticker, and the registry of calls.

Routing rule: a StasisStart of a channel that is not ours and not an ExternalMedia channel is
a new caller; every other event goes to the call that owns its channel or bridge, or is
ignored. The registry lives here, on an instance, never in module state.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from ari.events import AriEvent, BridgeDestroyed, StasisStart, UnknownEvent
from ari.events_socket import AriEventsSocket, events_url
from ari.rest import AriRestClient
from bridge.bot_url import resolve_bot_url
from bridge.call import Call
from bridge.call_machine import CallIds
from bridge.commands import HangupRequested
from bridge.config import Settings
from bridge.dialects.base import CallInfo
from bridge.dialects.twilio import TwilioDialect
from bridge.errors import BridgeError
from bridge.logs import get_logger
from bridge.ports import PortPool
from bridge.rtp_leg import RtpLeg
from bridge.ticker import Ticker
from rtp.formats import format_by_name

log = get_logger("bridge")


class Controller:
    def __init__(self, settings: Settings, rest: AriRestClient | None = None) -> None:
        self.settings = settings
        self.rest = rest or AriRestClient(
            settings.ari_url, settings.ari_user, settings.ari_password,
            timeout=settings.rest_timeout,
        )
        self.ticker = Ticker()
        self.pool = PortPool(*settings.rtp_ports)
        self.calls: dict[str, Call] = {}  # by call_id
        self._by_channel: dict[str, Call] = {}
        self._by_bridge: dict[str, Call] = {}
        self._format = format_by_name(settings.format)
        self.events = AriEventsSocket(
            events_url(settings.ari_url, settings.app, settings.ari_user, settings.ari_password),
            self.on_event,
            self._on_events_connected,
        )
        self.calls_total = 0
        self.all_idle = asyncio.Event()
        self.all_idle.set()

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; then end every call and release everything."""
        await self.rest.open()
        log.info(
            "bridge_starting",
            ari_url=self.settings.ari_url,
            app=self.settings.app,
            bot_url=self.settings.bot_url,
            rtp=f"{self.settings.rtp_host}:{self.settings.rtp_ports[0]}-"
            f"{self.settings.rtp_ports[1]}",
            format=self.settings.format,
        )
        try:
            await self.events.run()
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.shutdown())

    async def shutdown(self, grace: float = 5.0) -> None:
        for call in list(self.calls.values()):
            call.feed(HangupRequested("bridge shutting down"))
        if self.calls:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.all_idle.wait(), grace)
        await self.events.close()
        await self.rest.close()
        log.info("bridge_stopped", calls_total=self.calls_total, calls_left=len(self.calls))

    # ---- events -------------------------------------------------------------------------

    def on_event(self, event: AriEvent) -> None:
        if isinstance(event, UnknownEvent):
            return
        if isinstance(event, StasisStart) and not self._is_ours(event.channel.id):
            if event.channel.is_media_channel:
                log.warning("foreign_media_channel", channel_id=event.channel.id,
                            name=event.channel.name)
            elif event.channel.id not in self._by_channel:
                self._new_call(event)
            return
        call = self._route(event)
        if call is not None:
            call.feed(event)

    def _route(self, event: AriEvent) -> Call | None:
        if isinstance(event, BridgeDestroyed):
            return self._by_bridge.get(event.bridge.id)
        channel = getattr(event, "channel", None)
        return self._by_channel.get(channel.id) if channel is not None else None

    def _is_ours(self, channel_id: str) -> bool:
        return channel_id.startswith(self.settings.id_prefix)

    async def _on_events_connected(self) -> None:
        """Nothing is replayed after a reconnect: end the calls whose caller left meanwhile."""
        if not self.calls:
            return
        try:
            app = await self.rest.application(self.settings.app)
        except BridgeError as exc:
            log.warning("resync_failed", error=str(exc))
            return
        present = set(app.get("channel_ids") or [])
        for call in list(self.calls.values()):
            if call.ids.caller_id not in present and call.state in ("setup", "up", "draining"):
                call.log.info("resync_caller_gone")
                call.feed(HangupRequested("caller left while events were down", caller_gone=True))

    # ---- calls --------------------------------------------------------------------------

    def _new_call(self, event: StasisStart) -> None:
        s = self.settings
        caller = event.channel
        call_id = uuid.uuid4().hex
        ids = CallIds(
            call_id=call_id,
            caller_id=caller.id,
            bridge_id=f"{s.id_prefix}br-{call_id}",
            media_channel_id=f"{s.id_prefix}em-{call_id}",
        )
        values = {
            "call_id": call_id,
            "channel_id": caller.id,
            "caller": caller.caller_number,
            "called": caller.exten,
        }
        bot_url = resolve_bot_url(s.bot_url, event.args, values)
        info = CallInfo(call_id, caller.id, caller.caller_number, caller.exten)
        call_log = log.bind(call_id=call_id, channel_id=caller.id)
        call = Call(
            ids=ids,
            caller=caller,
            bot_url=bot_url,
            app=s.app,
            audio_format=self._format.name,
            rest=self.rest,
            leg_factory=lambda c: self._make_leg(c, call_log),
            dialect=TwilioDialect(info),
            info=info,
            bot_connect_timeout=s.bot_connect_timeout,
            setup_timeout=s.setup_timeout,
            on_finished=self._call_finished,
            log=call_log,
        )
        self.calls[call_id] = call
        self._by_channel[ids.caller_id] = call
        self._by_channel[ids.media_channel_id] = call
        self._by_bridge[ids.bridge_id] = call
        self.calls_total += 1
        self.all_idle.clear()
        call.start()

    def _make_leg(self, call: Call, call_log: Any) -> RtpLeg:
        s = self.settings
        return RtpLeg(
            events=call,
            host=s.rtp_host,
            pool=self.pool,
            ticker=self.ticker,
            audio_format=self._format,
            asterisk_host=s.ari_host,
            max_queue_ms=s.max_queue_ms,
            silence_fill=s.silence_fill,
            log=call_log,
        )

    def _call_finished(self, call: Call) -> None:
        self.calls.pop(call.ids.call_id, None)
        for channel_id in (call.ids.caller_id, call.ids.media_channel_id):
            if self._by_channel.get(channel_id) is call:
                del self._by_channel[channel_id]
        if self._by_bridge.get(call.ids.bridge_id) is call:
            del self._by_bridge[call.ids.bridge_id]
        if not self.calls:
            self.all_idle.set()
