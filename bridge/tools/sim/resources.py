"""The ARI REST resources of SimulatedAsterisk, and the leftovers of a crashed app.

Each resource is a `_name(query, **path_params)` coroutine answering a `Reply`; it changes the
state in `bridge.tools.sim.core` the way Asterisk 23.4.1 does, with the recorded answers. The
answers to `play` and `continue`, which no recording has, follow Asterisk's source
(`bridge.tools.sim.control`).

`add_leftover_external_media` / `add_leftover_bridge` build, without an event, what a bridge
process leaves behind when it dies mid-call: Asterisk keeps such channels in the app and such
bridges until somebody deletes them (facts §15-16).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import uuid4

from bridge.tools.sim.causes import hangup_cause
from bridge.tools.sim.control import (
    SimPlayback,
    c_atol,
    continue_target,
    dtmf_schedule,
    play_request_error,
    state_invalid,
)
from bridge.tools.sim.core import (
    ASTERISK_ID,
    CHANNELVARS,
    DIALLED,
    SimBridge,
    SimChannel,
)
from bridge.tools.sim.external import ExternalTransports
from bridge.tools.sim.media import open_media
from bridge.tools.sim.targets import far_end_digit, far_exten
from bridge.tools.sim.templates import (
    BRIDGE_TYPES,
    INTERNAL_ERROR,
    Reply,
    error_reply,
    format_timestamp,
    reshape,
    validate_external_media,
)


class AsteriskResources(ExternalTransports):
    """Asterisk's ARI resources over the core state (no HTTP here)."""

    # -- leftovers of a previous app process ---------------------------------------------

    @contextlib.contextmanager
    def _silently(self) -> Iterator[None]:
        """State set up as if it had happened before anybody listened: no event goes out."""
        self._muted = True
        try:
            yield
        finally:
            self._muted = False

    async def add_leftover_external_media(
        self, channel_id: str, *, external_host: str = "127.0.0.1:9", fmt: str = "ulaw"
    ) -> SimChannel:
        """An ExternalMedia channel a previous bridge process created, then crashed.

        It is Up and in the app, listed by GET /channels and /applications/{app}, with its RTP
        socket open towards an `external_host` nobody listens on any more.
        """
        if channel_id in self.channels:
            raise ValueError(f"channel {channel_id} already exists")
        ch = await self._new_media_channel(channel_id, external_host, fmt)
        ch.state, ch.in_stasis = "Up", True
        ch.dialplan = ("default", "s", 1, "Stasis", self.app)
        ch.variables["STASISSTATUS"] = ""
        self._add_media_channel(ch)
        self._app_registered = True  # the app this channel is in was registered before
        return ch

    def add_leftover_bridge(
        self, bridge_id: str, *, members: Sequence[str] = (), name: str = "",
        bridge_type: str = "mixing",
    ) -> SimBridge:  # fmt: skip
        """A bridge a previous bridge process created (with `members` in it), then crashed.

        A caller and an ExternalMedia channel in it are bridged: the caller's far end plays on
        towards the dead `external_host`, as a real caller keeps talking.
        """
        if bridge_id in self.bridges:
            raise ValueError(f"bridge {bridge_id} already exists")
        bridge = SimBridge(bridge_id, name, bridge_type, format_timestamp(time.time()))
        self.bridges[bridge_id] = bridge
        self.counts["bridges"] += 1
        with self._silently():
            for cid in members:
                self._enter_bridge(self.channels[cid], bridge)
            self._check_bridged(bridge)
        self._app_registered = True
        return bridge

    # -- channels ------------------------------------------------------------------------

    def _control(self, cid: str) -> SimChannel | Reply:
        """A channel the app controls, or Asterisk's answer (resource_channels find_control)."""
        ch = self.channels.get(cid)
        if ch is None:
            return error_reply(404, "Channel not found")
        return ch if ch.in_stasis else error_reply(409, "Channel not in Stasis application")

    async def _answer(self, q: dict[str, str], cid: str) -> Reply:
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        if ch.state != "Up":
            ch.state = "Up"
            self._emit("ChannelStateChange", ch)
        return Reply(204)  # also when already Up (facts §3)

    async def _continue(self, q: dict[str, str], cid: str) -> Reply:
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        refused = state_invalid(ch.state)
        if refused is not None:
            return refused
        target = continue_target(ch.dialplan[:3], q)
        if isinstance(target, Reply):
            return target
        # Queued behind the channel's playbacks, as Asterisk's command queue runs it.
        return Reply(204, after=lambda: self._when_idle(
            ch, lambda: self._continue_in_dialplan(ch, target)))  # fmt: skip

    async def _play_media(self, q: dict[str, str], cid: str) -> Reply:
        """POST /channels/{id}/play: 201 with the queued Playback and its Location.

        One media URI per request (the first `media`); PlaybackStarted when the channel's
        command queue gets to it, PlaybackFinished when it ends (see `bridge.tools.sim.control`).
        """
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        refused = state_invalid(ch.state) or play_request_error(q)
        if refused is not None:
            return refused
        language = q.get("lang") or str(self._templates.channel.get("language", "en"))
        playback = SimPlayback(id=q.get("playbackId") or str(uuid4()), media=q["media"],
                               target=f"channel:{cid}", language=language)  # fmt: skip
        self._playbacks[playback.id] = playback
        return Reply(
            201,
            self._templates.playback(playback.values()),
            location=f"/ari/playbacks/{playback.id}",
            after=lambda: self._when_idle(ch, lambda: self._start_playback(ch, playback)),
        )

    async def _start_moh(self, q: dict[str, str], cid: str) -> Reply:
        """POST /channels/{id}/moh (ast_ari_channels_start_moh): 404 "Channel not found",
        409 "Channel not in Stasis application", 412 for a channel not up yet; else 204, the
        music (`mohClass`, else the channel's default class) queued on its command queue."""
        return self._moh_command(cid, q.get("mohClass") or "default")

    async def _stop_moh(self, q: dict[str, str], cid: str) -> Reply:
        """DELETE /channels/{id}/moh: the same answers; 204 also when nothing was playing."""
        return self._moh_command(cid, None)

    def _moh_command(self, cid: str, moh_class: str | None) -> Reply:
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        refused = state_invalid(ch.state)
        if refused is not None:
            return refused
        return Reply(204, after=lambda: self._when_idle(ch, lambda: self._set_moh(ch, moh_class)))

    def _set_moh(self, ch: SimChannel, moh_class: str | None) -> None:
        if ch.moh != moh_class and ch.call is not None:  # what the caller hears changes
            now = self._running_loop().time()
            if ch.moh is not None:
                ch.call.heard.append((now, "stop", f"moh:{ch.moh}"))
            if moh_class is not None:
                ch.call.heard.append((now, "start", f"moh:{moh_class}"))
        ch.moh = moh_class

    async def _delete_channel(self, q: dict[str, str], cid: str) -> Reply:
        """DELETE /channels/{id}[?reason=|reason_code=] (ast_ari_channels_hangup): any channel,
        in Stasis or not; the cause reaches the far end, never the app's HangupRequest."""
        ch = self.channels.get(cid)
        if ch is None:
            return error_reply(404, "Channel not found")
        cause = hangup_cause(q)
        if isinstance(cause, Reply):
            return cause  # nothing is hung up
        if ch.kind == "local":  # hanging up the far half is the far end hanging up
            owner = self._owner_of(ch)
            if owner is None:
                return Reply(204)
            return Reply(204, after=lambda: self._hangup(owner, "far", cause))
        return Reply(204, after=lambda: self._hangup(ch, "delete", cause))

    def _owner_of(self, half: SimChannel) -> SimChannel | None:
        """The ;1 of a Local channel's far half."""
        return next((c for c in self.channels.values()
                     if c.kind == "caller" and c.call is not None and c.call is half.call),
                    None)  # fmt: skip

    async def _send_dtmf(self, q: dict[str, str], cid: str) -> Reply:
        """POST /channels/{id}/dtmf (ast_ari_channels_send_dtmf): 204 at once, the digits
        played afterwards on the channel's command queue (no event: dtmf_to_caller)."""
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        refused = state_invalid(ch.state)
        if refused is not None:
            return refused
        if not q.get("dtmf"):
            return error_reply(400, "DTMF is required")
        return Reply(204, after=lambda: self._when_idle(ch, lambda: self._play_dtmf(ch, q)))

    def _play_dtmf(self, ch: SimChannel, q: dict[str, str]) -> None:
        """app_control_dtmf(): each digit reaches the far end as its DTMF end, on the
        schedule `dtmf_schedule` gives; the queue waits until the stream and `after` are done."""
        if self.channels.get(ch.id) is not ch:
            return
        loop = self._running_loop()
        digits, total = dtmf_schedule(q.get("dtmf", ""), c_atol(q.get("before")),
                                      c_atol(q.get("between")), c_atol(q.get("duration")),
                                      c_atol(q.get("after")))  # fmt: skip
        for at, digit in digits:
            loop.call_later(at, self._far_end_digit, ch, digit)

        def done() -> None:
            ch.dtmf_end = None
            self._run_queued(ch)

        ch.dtmf_end = loop.call_later(total, done)

    def _far_end_digit(self, ch: SimChannel, digit: str) -> None:
        """A digit the app sent reaches the channel's far end (a Local channel's ;2 half)."""
        if self.channels.get(ch.id) is not ch or ch.call is None:
            return
        ch.call.received_digit(self._running_loop().time(), digit)
        far_end_digit(far_exten(ch.name), digit, self.system.variables)

    async def _get_channel(self, q: dict[str, str], cid: str) -> Reply:
        ch = self.channels.get(cid)
        return Reply(200, self._snapshot(ch)) if ch else error_reply(404, "Channel not found")

    async def _list_channels(self, q: dict[str, str]) -> Reply:
        # Newest first, as the recorded GET /channels listed them (ws_reconnect).
        return Reply(200, [self._snapshot(ch) for ch in reversed(self.channels.values())])

    async def _set_variable(self, q: dict[str, str], cid: str) -> Reply:
        """POST /channels/{id}/variable (channels.json, 23.4.1): 400 without `variable`, 404
        for no such channel, 409 for one not in Stasis; else 204 and a ChannelVarset."""
        name = q.get("variable")
        if not name:
            return error_reply(400, "Variable name is required")
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        ch.variables[name] = q.get("value", "")
        self._emit("ChannelVarset", ch, variable=name, value=ch.variables[name])
        return Reply(204)

    async def _get_variable(self, q: dict[str, str], cid: str) -> Reply:
        name = q.get("variable")
        if not name:
            return error_reply(400, "Variable name is required")
        ch = self.channels.get(cid)
        if ch is None:
            return error_reply(404, "Provided channel was not found", "Channel Not Found")
        if name not in ch.variables:
            return error_reply(404, "Provided variable was not found", "Variable Not Found")
        return Reply(200, {"value": ch.variables[name]})

    # -- ExternalMedia -------------------------------------------------------------------

    async def _new_media_channel(self, channel_id: str, external_host: str, fmt: str
                                 ) -> SimChannel:  # fmt: skip
        """A UnicastRTP channel with its RTP socket bound, Down, not yet in any list."""
        host, _, port = external_host.rpartition(":")
        media = await open_media(self._running_loop(), (host, int(port)), fmt,
                                 self._rtp_ports, self._rng, keep=self._history)  # fmt: skip
        ch = SimChannel(
            id=channel_id,
            name=f"UnicastRTP/{external_host}-0x7f74{self._rng.getrandbits(28) << 4:08x}",
            kind="media", state="Down", caller=("", ""), connected=("", ""), dialplan=DIALLED,
            creationtime=format_timestamp(time.time()), media=media,
            dialstring=f"{external_host}/c({fmt})",
            variables={"UNICASTRTP_LOCAL_ADDRESS": media.local[0],
                       "UNICASTRTP_LOCAL_PORT": str(media.local[1])},
        )  # fmt: skip
        media.on_audio = lambda packet: self._bot_audio(ch, packet)  # mixing, recordings
        return ch

    def _add_media_channel(self, ch: SimChannel) -> None:
        assert ch.media is not None
        self.channels[ch.id] = ch
        self._medias.append(ch.media)
        self.counts["media_channels"] += 1

    async def _external_media(self, q: dict[str, str]) -> Reply:
        invalid = validate_external_media(q, self.websocket_clients)
        if invalid is not None:
            return invalid
        if q.get("channelId") in self.channels:
            return error_reply(409, "Channel with given unique ID already exists")
        if q.get("encapsulation") == "audiosocket":
            return await self._external_audiosocket(q)
        if q.get("transport") == "websocket":
            return await self._external_websocket(q)
        try:
            ch = await self._new_media_channel(
                q.get("channelId") or self._new_id(), q["external_host"], q["format"]
            )
        except OSError:
            return error_reply(500, INTERNAL_ERROR)
        body = self._templates.em_channel_body({
            **self._snapshot_values(ch),
            "channelvars": {k: ch.variables[k] for k in CHANNELVARS},
        })  # fmt: skip
        if not self.app_connected(q["app"]):
            # Stasis() fails for it at once: the 200 names a channel that is already gone and
            # no event ever comes (errors: app=nosuchapp, then DELETE -> 404).
            assert ch.media is not None
            ch.media.close()
            return Reply(200, body)
        ch.app = q["app"]
        self._add_media_channel(ch)
        delay = self._em_stasis_delay
        if delay < 0:  # StasisStart before the REST answer (facts §1: 3 of 5 under load)
            self._media_enters_stasis(ch)
            await asyncio.sleep(-delay)
            return Reply(200, body)
        return Reply(200, body, after=lambda: self._schedule_stasis_start(ch, delay))

    # -- bridges -------------------------------------------------------------------------

    async def _create_bridge(self, q: dict[str, str]) -> Reply:
        types = (q.get("type") or "mixing").split(",")
        bridge_id = q.get("bridgeId") or ""
        if any(kind not in BRIDGE_TYPES for kind in types):
            shown = bridge_id or "(null)"  # sic: the recorded answer to type=bogus
            message = f"Unable to create bridge. Possible duplicate bridge id '{shown}'"
            return error_reply(500, message, "Internal Error")
        if bridge_id in self.bridges:
            return error_reply(409, f"Bridge with id '{bridge_id}' already exists")
        bridge = SimBridge(bridge_id or str(uuid4()), q.get("name", ""), types[0],
                           format_timestamp(time.time()))  # fmt: skip
        self.bridges[bridge.id] = bridge
        self.counts["bridges"] += 1
        return Reply(200, self._bridge_snapshot(bridge))

    async def _get_bridge(self, q: dict[str, str], bid: str) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        return Reply(200, self._bridge_snapshot(bridge))

    async def _list_bridges(self, q: dict[str, str]) -> Reply:
        return Reply(200, [self._bridge_snapshot(b) for b in self.bridges.values()])

    async def _add_channel(self, q: dict[str, str], bid: str) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        ids = [cid for cid in q.get("channel", "").split(",") if cid]
        if not ids:
            return error_reply(400, "Missing parameter channel")
        for cid in ids:
            ch = self.channels.get(cid)
            if ch is None:
                return error_reply(400, "Channel not found")
            if not ch.in_stasis:  # facts §1b; body and reason from res/ari/resource_bridges.c
                return error_reply(422, "Channel not in Stasis application")
        for cid in ids:
            self._enter_bridge(self.channels[cid], bridge)
        return Reply(204, after=lambda: self._check_bridged(bridge))

    async def _remove_channel(self, q: dict[str, str], bid: str) -> Reply:
        """POST /bridges/{id}/removeChannel (ast_ari_bridges_remove_channel): the same
        checks as addChannel, then 422 "Channel not in this bridge"; 204, it leaves."""
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        ids = [cid for cid in q.get("channel", "").split(",") if cid]
        if not ids:
            return error_reply(400, "Missing parameter channel")
        for cid in ids:
            ch = self.channels.get(cid)
            if ch is None:
                return error_reply(400, "Channel not found")
            if not ch.in_stasis:
                return error_reply(422, "Channel not in Stasis application")
            if ch.bridge_id != bid:
                return error_reply(422, "Channel not in this bridge")
        for cid in ids:
            self._leave_bridge(self.channels[cid])
        return Reply(204)

    def _check_bridged(self, bridge: SimBridge) -> None:
        members = [self.channels[cid] for cid in bridge.channels if cid in self.channels]
        medias = [m for m in members if m.kind == "media"]
        for member in members:
            call = member.call
            if member.kind == "caller" and call is not None and medias and not call.bridged.done():
                self._on_bridged(call, medias[0], bridge)

    async def _delete_bridge(self, q: dict[str, str], bid: str) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        for cid in list(bridge.channels):
            self._leave_bridge(self.channels[cid])
        self._bridge_gone(bridge)
        del self.bridges[bid]
        self.counts["bridges_gone"] += 1
        self._emit("BridgeDestroyed", app=bridge.app or None,
                   bridge=self._bridge_snapshot(bridge))  # fmt: skip
        return Reply(204)

    # -- applications, asterisk ------------------------------------------------------------

    def _application(self, name: str) -> dict[str, Any]:
        """An app's channels and bridges (a dead app's too: Asterisk shows no liveness)."""
        return reshape(self._templates.application, {
            "name": name,
            "channel_ids": [ch.id for ch in self.channels.values()
                            if ch.in_stasis and (ch.app or self.app) == name],
            "bridge_ids": [b.id for b in self.bridges.values() if (b.app or self.app) == name],
        })  # fmt: skip

    def _registered_apps(self) -> list[str]:
        return [self.app] * self._app_registered + sorted(self._other_apps - {self.app})

    async def _list_applications(self, q: dict[str, str]) -> Reply:
        return Reply(200, [self._application(name) for name in self._registered_apps()])

    async def _get_application(self, q: dict[str, str], app: str) -> Reply:
        if app not in self._registered_apps():
            return error_reply(404, "Application not found")
        return Reply(200, self._application(app))

    async def _ping(self, q: dict[str, str]) -> Reply:
        values = {"timestamp": format_timestamp(time.time()), "asterisk_id": ASTERISK_ID}
        return Reply(200, reshape(self._templates.ping, values))
