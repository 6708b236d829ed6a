"""Start-up sweep and resync after every events-socket (re)connect.

Asterisk replays nothing after a reconnect (asterisk-facts §16), so the bridge asks it what
exists (`/applications/{app}`, `/channels`, `/bridges`) and reconciles, beside the event
stream rather than in front of it:

1. Our calls: a caller gone while we were deaf ends its call; a call whose bridge or media
   channel is gone (Asterisk restarted) cannot carry audio any more.
2. What an earlier run of this service left behind (crash, kill -9): only what is provably
   this service's — our id prefix, and our app (in the bridge's name; the channel in our
   app) — so a second process never sweeps the first's: bridges, ExternalMedia channels
   (`<prefix>em-`), answered outbound channels (`<prefix>out-`), transfer targets and
   snoops (`<prefix>xf-`, `<prefix>sn-`).
3. Callers waiting in the app that nobody serves (an earlier run took them and died) go once
   to --orphan-context (`bridge.service.orphans`), else get the fallback, after a grace and a
   second look, so a StasisStart still in flight on the events socket is not mistaken for an
   orphan.

Steps 2 and 3 are a sweep of one *scope* (`bridge.service.peers.Scope`: the apps and id
prefix a bridge creates): ours at every resync, and a dead peer's (`sweep_peer`, called by
`bridge.service.peering` once the peer's heartbeat is older than --peer-grace) with the same
rules: only what is provably that peer's, callers it left in its apps re-homed once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ari.models import Bridge, Channel
from ari.rest import AriRestClient
from bridge.call.commands import ChannelVanished, HangupRequested
from bridge.call.machine import CallState
from bridge.errors import BridgeError
from bridge.logs import get_logger
from bridge.service.config import Settings
from bridge.service.orphans import rehome
from bridge.service.peers import Scope
from bridge.service.registry import CallRegistry

# The calls a resync looks after: every one not ending already (a call whose bot is away
# still holds a caller, a bridge and a media channel).
WATCHED = (
    CallState.SETUP, CallState.UP, CallState.BOT_AWAY, CallState.TRANSFERRING,
    CallState.TRANSFERRED, CallState.DRAINING,
)  # fmt: skip

# The channels this service names (ExternalMedia, answered outbound calls, transfer targets,
# snoops): one in our app that no call of ours owns is a leftover of an earlier run.
OUR_CHANNELS = ("em", "out", "xf", "sn")

log = get_logger("bridge")

# How long a caller found waiting in the app, unknown to us, may still turn out to be one
# whose StasisStart is just behind the listing on the events socket.
ORPHAN_GRACE = 1.0


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        rest: AriRestClient,
        registry: CallRegistry,
        on_orphan: Callable[[Channel], None],
    ) -> None:
        self._settings = settings
        self._rest = rest
        self._registry = registry
        self._on_orphan = on_orphan
        self._task: asyncio.Task[None] | None = None
        self.swept = 0  # leftovers of earlier runs (and of dead peers) deleted
        self.scope = Scope(settings.app, settings.id_prefix)  # what we create
        self.resyncs = 0
        self.resynced = asyncio.Event()

    def start(self) -> None:
        """Reconcile now, in the background; a resync still running is replaced."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._resync())

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def is_ours(self, channel_id: str) -> bool:
        return channel_id.startswith(self._settings.id_prefix)

    def is_orphan(self, channel: Channel, scope: Scope | None = None) -> bool:
        """A caller nobody serves: not created by `scope` (default ours), not an ExternalMedia
        channel, no call of ours."""
        return (
            not (scope or self.scope).created(channel.id)
            and not channel.is_media_channel
            and channel.id not in self._registry.by_channel
        )

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

    async def sweep_peer(self, scope: Scope) -> tuple[int, int]:
        """A dead peer's leftovers (steps 2 and 3 for its scope): its bridges and channels
        deleted, its callers re-homed once; (leftovers deleted, orphans handled). No grace
        before the orphans: a peer dead for --peer-grace has no StasisStart in flight.
        Raises BridgeError if Asterisk cannot be asked what exists."""
        apps = await self._rest.applications()
        in_app = {c for app in apps if scope.owns_app(str(app.get("name", "")))
                  for c in app.get("channel_ids") or [] if isinstance(c, str)}  # fmt: skip
        channels, bridges = await self._rest.list_channels(), await self._rest.list_bridges()
        deleted = await self._sweep_leftovers(scope, in_app, channels, bridges)
        orphans = [c for c in channels if c.id in in_app and self.is_orphan(c, scope)]
        for channel in orphans:
            log.warning("orphan_caller", channel_id=channel.id, peer_app=scope.app)
            await self._orphaned(channel)
        return deleted, len(orphans)

    async def _reconcile(self) -> None:
        registry = self._registry
        in_app, channels, bridges = await self._listing()
        channel_ids = {c.id for c in channels}
        bridge_ids = {b.id for b in bridges}
        for call in registry:
            if call.state not in WATCHED or not call.ids.caller_id:
                continue  # ending already, or a call from the dialplan (not in ARI)
            if getattr(call.machine, "ringing", False):
                continue  # an outbound call still ringing: not in the app until answered
            # A transferred call has no media channel any more, by design.
            media_gone = call.ids.media_channel_id not in channel_ids and (
                call.state is not CallState.TRANSFERRED
            )
            if call.ids.caller_id not in in_app:
                call.log.info("resync_caller_gone")
                call.feed(HangupRequested("caller left while events were down", caller_gone=True))
            elif (
                call.state is not CallState.SETUP
                and call.ids.call_id in registry.active
                and (call.ids.bridge_id not in bridge_ids or media_gone)
            ):
                call.log.warning("resync_media_path_gone")
                call.feed(HangupRequested("bridge or media channel gone", fallback=True))
            else:
                owned: list[str] = getattr(call.machine, "owned_channels", list)()
                for channel_id in owned:  # a transfer target, a snoop: their ends were lost
                    if channel_id not in channel_ids:
                        call.log.info("resync_channel_gone", gone_channel=channel_id)
                        call.feed(ChannelVanished(channel_id))
        await self._sweep_leftovers(self.scope, in_app, channels, bridges)
        orphans = {c.id for c in channels if c.id in in_app and self.is_orphan(c)}
        if not orphans:
            return
        await asyncio.sleep(ORPHAN_GRACE)
        in_app, channels, _bridges = await self._listing()
        for channel in channels:
            if channel.id in in_app and channel.id in orphans and self.is_orphan(channel):
                log.warning("orphan_caller", channel_id=channel.id)
                await self._orphaned(channel)

    async def _sweep_leftovers(
        self, scope: Scope, in_app: set[str], channels: list[Channel], bridges: list[Bridge]
    ) -> int:
        """Delete what `scope` created and no call of ours holds: its bridges (our id prefix
        and our app in the name) and its channels in its apps. How many went."""
        registry, rest, before = self._registry, self._rest, self.swept
        for bridge in sorted(bridges, key=lambda b: b.id):
            if (
                scope.created(bridge.id, ("br",))
                and scope.owns_app(bridge.name.rpartition(":")[0])
                and bridge.id not in registry.by_bridge
            ):
                await self._sweep("bridge", bridge.id, rest.delete_bridge)
        for channel in channels:
            if (
                scope.created(channel.id, OUR_CHANNELS)
                and channel.id in in_app
                and channel.id not in registry.by_channel
            ):
                await self._sweep("channel", channel.id, rest.hangup)
        return self.swept - before

    async def _orphaned(self, channel: Channel) -> None:
        try:
            if await rehome(self._rest, self._settings, channel):
                return
        except BridgeError as exc:
            log.warning("orphan_rehome_failed", channel_id=channel.id, error=str(exc))
        self._on_orphan(channel)

    async def _listing(self) -> tuple[set[str], list[Channel], list[Bridge]]:
        app = await self._rest.application(self._settings.app)
        in_app = {c for c in app.get("channel_ids") or [] if isinstance(c, str)}
        return in_app, await self._rest.list_channels(), await self._rest.list_bridges()

    async def _sweep(self, kind: str, ident: str, delete: Any) -> None:
        try:
            await delete(ident)
        except BridgeError as exc:
            log.warning("sweep_failed", kind=kind, id=ident, error=str(exc))
            return
        self.swept += 1
        log.info("swept_leftover", kind=kind, id=ident)
