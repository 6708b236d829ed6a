"""What SimulatedAsterisk is: channel and bridge state, its transitions, and the events emitted.

`AsteriskCore` holds the channels, bridges and calls. Each change of that state emits the
recorded events in the recorded per-channel order, rendered from the recorded templates. The ARI
resources that make the changes are in `bridge.tools.sim.resources`; this module knows nothing of
HTTP: `bridge.tools.sim.asterisk.SimulatedAsterisk` says, through `_event_queues()`, which events
sockets are connected for the app. With none, the app is not active and an event is dropped,
never replayed later (facts §16).

Besides the recordings: a channel's playbacks and its `continue` run one after the other, as
Asterisk's per-channel Stasis command queue runs them (`bridge.tools.sim.control`); a restart
forgets everything at once, without an event (facts §16: nothing is replayed).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.tools.sim import links
from bridge.tools.sim.causes import NORMAL, cause_txt
from bridge.tools.sim.control import SimPlayback, Target, playback_outcome
from bridge.tools.sim.media import EmMedia, SimCall
from bridge.tools.sim.recording import TimedDtmf
from bridge.tools.sim.state import (
    SimBridge,
    SimChannel,
    SimLeftovers,
    bridge_peer_values,
    bridge_technology,
)
from bridge.tools.sim.system import SimSystem
from bridge.tools.sim.targets import far_end_hung_up, far_exten
from bridge.tools.sim.templates import EchoStream, Templates, format_timestamp

ASTERISK_ID = "02:fc:00:00:00:01"
# A UnicastRTP channel's dialplan while it is being dialled and after it left Stasis.
DIALLED = ("default", "s", 1, "AppDial2", "(Outgoing Line)")
CHANNELVARS = ("UNICASTRTP_LOCAL_PORT", "UNICASTRTP_LOCAL_ADDRESS")  # recorded order


class AsteriskCore(ABC):
    """Channels, bridges and calls; the transitions that change them; the events emitted.

    `counts` tallies what happened, for tests to assert on: "callers" / "callers_gone",
    "media_channels" / "media_channels_gone", "bridges" / "bridges_gone", "playbacks",
    "restarts". With `history=False` nothing grows with the number of calls (no request or
    event log, no per-packet lists, ended calls dropped from `calls`): for soak runs.
    """

    def __init__(
        self,
        *,
        app: str,
        em_stasis_delay: float,
        rtp_ports: tuple[int, int],
        seed: int | None,
        fixtures_dir: Path,
        history: bool = True,
    ) -> None:
        self.app = app
        self._em_stasis_delay = em_stasis_delay
        self._rtp_ports = rtp_ports
        self._rng = random.Random(seed)
        self._templates = Templates.from_recordings(fixtures_dir)
        # /asterisk/info, modules, global variables; the version and modules knobs.
        self.system = SimSystem(fixtures_dir)
        self._history = history
        self.events_sent: list[str] = []
        self.event_times: list[float] = []  # loop.time() of each entry of events_sent
        self.channels: dict[str, SimChannel] = {}
        self.bridges: dict[str, SimBridge] = {}
        self.calls: list[SimCall] = []
        self.counts: Counter[str] = Counter()
        # Media URI -> seconds it plays, None: no such file. Others last default_sound_seconds.
        self.sounds: dict[str, float | None] = {}
        self.default_sound_seconds: float | None = 0.2
        self._playbacks: dict[str, SimPlayback] = {}  # queued or playing, channel or bridge
        self._medias: list[EmMedia] = []
        self._links: list[links.MediaLink] = []  # every AudioSocket / media WebSocket opened
        self._app_registered = False  # Asterisk keeps the app listed after its socket went away
        self._other_apps: set[str] = set()  # other app names registered (several processes)
        self._muted = False  # setting up what happened before anybody listened
        self._next_unique = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @abstractmethod
    def _event_queues(self, app: str | None = None) -> list[asyncio.Queue[str]]:
        """The queues of the events sockets connected for `app` (default: the simulator's
        `app`), in connection order."""

    @property
    def app_active(self) -> bool:
        return bool(self._event_queues())

    def app_connected(self, name: str) -> bool:
        """An events socket is connected for app `name` (any app, not only `app`)."""
        return bool(self._event_queues(name))

    # -- calls -----------------------------------------------------------------------------

    def _on_bridged(self, call: SimCall, em: SimChannel, bridge: SimBridge) -> None:
        loop = self._running_loop()
        call.em_channel_id, call.bridge_id, call.media = em.id, bridge.id, em.media
        if call.echo and em.media is not None:
            ssrc, seq = self._rng.getrandbits(32), self._rng.getrandbits(16)
            call.echo_stream = EchoStream(ssrc=ssrc, seq=seq)
            self._update_echo(bridge)
        if em.link is not None:
            links.set_echo(em.link, em.fmt, call.echo)
        call.start(loop.time(), self._play)

    def _play(self, call: SimCall, kind: str, payload: Any) -> None:
        """One timed step of the far end (called by the call's deadline timer)."""
        caller = self.channels.get(call.caller_id)
        if caller is None:
            return
        em = self.channels.get(call.em_channel_id or "")
        relayed = em is not None and caller.bridge_id == em.bridge_id  # both still members
        if kind == "rtp":
            self._far_end_rtp(caller, payload)
        elif kind == "dtmf" and isinstance(payload, TimedDtmf):
            self._emit("ChannelDtmfReceived", caller, digit=payload.digit,
                       duration_ms=payload.duration_ms)  # fmt: skip
            call.dtmf_sent.append(payload.digit)
            if em is not None and relayed and em.link is not None:
                links.dtmf(em.link, payload.digit)  # the bridge passes DTMF frames to the peer
        elif kind == "hangup":
            self._hangup(caller, "far")

    def _far_end_rtp(self, ch: SimChannel, packet: bytes) -> None:
        """One packet from `ch`'s far end (a caller's or an answered target's): a simple_bridge
        relays it to the UnicastRTP member it shares the bridge with, as Asterisk does."""
        call = ch.call
        em = self.channels.get(call.em_channel_id or "") if call is not None else None
        if em is None or ch.bridge_id is None or ch.bridge_id != em.bridge_id:
            return
        if em.media is not None:
            em.media.send(packet)
        elif em.link is not None:
            links.play(em.link, em.fmt, packet)

    def _bot_audio(self, em: SimChannel, packet: bytes) -> None:  # noqa: B027 (a hook)
        """One packet the app sent on a UnicastRTP channel and Asterisk accepted (a hook for
        mixing and recording; the echo of a simple_bridge is the media socket's own)."""

    # -- events ----------------------------------------------------------------------------

    def _emit(self, kind: str, ch: SimChannel | None = None, *, key: str = "channel",
              app: str | None = None, **values: Any) -> None:  # fmt: skip
        """To the app `app`, else the one `ch` is in, else the simulator's `app`."""
        app = app or (ch.app if ch is not None else "") or self.app
        queues = self._event_queues(app)
        if not queues or self._muted:
            return  # app inactive: Asterisk drops the event and never replays it (facts §16)
        if ch is not None:
            values[key] = self._snapshot(ch)
        raw = self._templates.event(
            kind, timestamp=format_timestamp(time.time()), asterisk_id=ASTERISK_ID,
            application=app, **values,
        )  # fmt: skip
        if self._history:
            self.events_sent.append(raw)
            self.event_times.append(self._running_loop().time())
        for queue in queues:
            queue.put_nowait(raw)

    def _snapshot_values(self, ch: SimChannel) -> dict[str, Any]:
        context, exten, priority, app_name, app_data = ch.dialplan
        return {
            "id": ch.id, "name": ch.name, "state": ch.state,
            "caller": {"name": ch.caller[0], "number": ch.caller[1]},
            "connected": {"name": ch.connected[0], "number": ch.connected[1]},
            "dialplan": {"context": context, "exten": exten, "priority": priority,
                         "app_name": app_name, "app_data": app_data},
            "creationtime": ch.creationtime,
        }  # fmt: skip

    def _snapshot(self, ch: SimChannel) -> dict[str, Any]:
        return self._templates.channel_snapshot(self._snapshot_values(ch))

    def _bridge_snapshot(self, bridge: SimBridge) -> dict[str, Any]:
        return self._templates.bridge_snapshot({
            "id": bridge.id, "technology": bridge.technology, "bridge_type": bridge.bridge_type,
            "name": bridge.name, "channels": list(bridge.channels),
            "creationtime": bridge.creationtime,
        })  # fmt: skip

    # -- state transitions -----------------------------------------------------------------

    def _media_enters_stasis(self, ch: SimChannel) -> None:
        """The UnicastRTP channel is dialled, answers and enters the app (recorded order)."""
        ch.pending_start = None
        if ch.in_stasis or self.channels.get(ch.id) is not ch:
            return
        self._media_dialled(ch)
        self._media_answered(ch)

    def _media_dialled(self, ch: SimChannel) -> None:
        self._emit("Dial", ch, key="peer", dialstatus="", dialstring=ch.dialstring)

    def _media_answered(self, ch: SimChannel) -> None:
        """The dialled ExternalMedia channel answers and enters Stasis (recorded order)."""
        if ch.in_stasis or self.channels.get(ch.id) is not ch:
            return
        if not self.app_connected(ch.app or self.app):  # Stasis() fails: gone, no event (§16)
            self._remove(ch, "app")
            return
        ch.state = "Up"
        self._emit("ChannelStateChange", ch)
        self._emit("Dial", ch, key="peer", dialstatus="ANSWER", dialstring=ch.dialstring)
        ch.dialplan = ("default", "s", 1, "Stasis", ",".join([ch.app or self.app, *ch.args]))
        ch.variables["STASISSTATUS"] = ""
        self._emit("ChannelVarset", ch, variable="STASISSTATUS", value="")
        ch.in_stasis = True
        self._emit("StasisStart", ch, args=list(ch.args))

    def _enter_bridge(self, ch: SimChannel, bridge: SimBridge) -> None:
        if ch.bridge_id == bridge.id:
            return
        self._leave_bridge(ch)  # addChannel moves a channel out of its old bridge (errors)
        bridge.app = bridge.app or ch.app
        bridge.channels.append(ch.id)
        bridge.order.append(ch.id)
        ch.bridge_id = bridge.id
        # The snapshot still names the old technology: the bridge reconfigures after the join.
        self._emit("ChannelEnteredBridge", ch, bridge=self._bridge_snapshot(bridge))
        self._reconfigure(bridge, joined=ch.id)
        if len(bridge.order) != 2 or bridge.hidden:
            return
        first = self.channels[bridge.order[0]]
        ch.connected, first.connected = first.caller, ch.caller
        self._emit("ChannelConnectedLine", ch)  # the newcomer first: 4 of 5 recordings
        self._emit("ChannelConnectedLine", first)

    def _leave_bridge(self, ch: SimChannel) -> None:
        bridge = self.bridges.get(ch.bridge_id or "")
        ch.bridge_id = None
        if bridge is None:
            return
        bridge.channels.remove(ch.id)
        bridge.order.remove(ch.id)
        if ch.has_peer:
            ch.has_peer, ch.variables["BRIDGEPEER"] = False, ""
            self._emit("ChannelVarset", ch, variable="BRIDGEPEER", value="")
        self._emit("ChannelLeftBridge", ch, bridge=self._bridge_snapshot(bridge))
        if ch.media is not None:
            ch.media.echo = None  # the far end no longer hears the bridge
        for member in (ch, *(self.channels[m] for m in bridge.channels)):
            if member.link is not None:
                links.set_echo(member.link, member.fmt, False)
        self._reconfigure(bridge)
        if bridge.hidden and not bridge.channels:
            # Recorders and Announcers are LONELY members: the last other member leaving kicks
            # them out too (bridge_channel_dissolve_check).
            self._kick_hidden(bridge)

    def _reconfigure(self, bridge: SimBridge, joined: str | None = None) -> None:
        """bridge_reconfigured(): the technology for the member count, then BRIDGEPEER.

        Changing technology moves the members already in to the end of Asterisk's list, after
        the one that just joined (smart_bridge_operation): a third member (or a Recorder)
        heads the BRIDGEPEER lists, as recorded; a fourth joining softmix goes last.
        """
        technology = bridge_technology(bridge.bridge_type, len(bridge.order))
        if technology != bridge.technology and joined is not None:
            bridge.order.remove(joined)
            bridge.order.insert(0, joined)
        bridge.technology = technology
        self._set_bridge_peers(bridge)
        self._update_echo(bridge)
        self._bridge_reconfigured(bridge)

    def _set_bridge_peers(self, bridge: SimBridge) -> None:
        """set_bridge_peer_vars(): every member again, even when nothing changed (snoop_record)."""
        if len(bridge.order) < 2:
            return
        names = [key if key in bridge.hidden else self.channels[key].name for key in bridge.order]
        for key, value in zip(bridge.order, bridge_peer_values(names), strict=True):
            member = self.channels.get(key)
            if member is not None:  # hidden members are not the app's: no event for them
                member.has_peer, member.variables["BRIDGEPEER"] = True, value
                self._emit("ChannelVarset", member, variable="BRIDGEPEER", value=value)

    def _update_echo(self, bridge: SimBridge) -> None:
        """An Echo() far end reflects the bot's RTP only through a simple_bridge of exactly its
        caller and one UnicastRTP channel; softmix sends its own stream (bridgemedia)."""
        members = [self.channels[key] for key in bridge.channels]
        pair = len(bridge.order) == 2 and not bridge.hidden
        for member in members:
            if member.media is None:
                continue
            echoing = [m.call.echo_stream for m in members
                       if m.call is not None and m.call.em_channel_id == member.id
                       and m.call.echo_stream is not None]  # fmt: skip
            member.media.echo = echoing[0] if pair and echoing else None

    def _bridge_reconfigured(self, bridge: SimBridge) -> None:  # noqa: B027 (a hook)
        """A hook: the bridge's technology or members changed (bridgemedia mixes)."""

    def _bridge_gone(self, bridge: SimBridge) -> None:
        """The bridge is being destroyed, its visible members gone: the hidden ones go too."""
        if bridge.hidden:
            self._kick_hidden(bridge)

    def _kick_hidden(self, bridge: SimBridge) -> None:
        """Only hidden members are left, and they go (bridgemedia finishes what they did)."""
        bridge.hidden.clear()
        bridge.order = [key for key in bridge.order if key in bridge.channels]

    def _hangup(self, ch: SimChannel, how: str, cause: int = NORMAL) -> None:
        """`how`: "delete" (our DELETE), "far" (the far end hung up), "continue" (left Stasis),
        "link" (an AudioSocket / WebSocket media channel whose connection ended it).
        `cause`: the hang-up cause a DELETE set (`reason`, `reason_code`); the app's own
        events never show it, but the far end and ChannelDestroyed do (hangup_reason)."""
        if self.channels.get(ch.id) is not ch:
            return
        if ch.transport == "websocket" and ch.state == "Down":
            self._cancel_dial(ch, how)
            return
        if ch.kind == "media" and not ch.in_stasis:
            # Asterisk finishes bringing the channel into Stasis first (errors: DELETE right
            # after the externalMedia answer still got Dial ... StasisStart, then the hang-up).
            if ch.pending_start is not None:
                ch.pending_start.cancel()
            self._media_enters_stasis(ch)
            if self.channels.get(ch.id) is not ch:
                return  # it never made it into the app
        if how == "delete":
            self._emit("ChannelHangupRequest", ch)
        elif how == "far" or (how == "link" and ch.transport == "websocket"):
            # chan_websocket queues the hang-up with cause 16 (the real event also carries
            # tech_cause, which the recorded template has no key for). AudioSocket's read just
            # returns NULL: the channel goes without a ChannelHangupRequest.
            self._emit("ChannelHangupRequest/far", ch)
        ch.queued.clear()  # Stasis commands still waiting die with the channel's Stasis
        self._hanging_up(ch)
        self._leave_bridge(ch)
        if ch.in_stasis:
            ch.in_stasis = False
            self._emit("StasisEnd", ch)
            if ch.kind == "media":
                self._emit("ChannelVarset", ch, variable="STASISSTATUS", value="SUCCESS")
        if ch.kind == "media":
            # Only the channel the app originated stays subscribed after StasisEnd (§14).
            ch.dialplan = DIALLED
            self._emit("ChannelDestroyed", ch, cause=cause, cause_txt=cause_txt(cause))
        elif ch.kind == "caller" and ch.call is not None and how == "delete":
            self._far_end_hung_up(ch, cause)
        self._remove(ch, "caller" if how == "far" else "app")

    def _far_end_hung_up(self, ch: SimChannel, cause: int) -> None:
        """The caller's far half sees our hang-up with `cause` (its ;2 half's HANGUPCAUSE)."""
        if ch.call is not None:
            ch.call.far_end_cause = cause
        far_end_hung_up(far_exten(ch.name), cause, self.system.variables)

    def _hanging_up(self, ch: SimChannel) -> None:
        """The running Stasis command sees the hang-up, before the channel leaves its bridge."""
        if ch.playback is not None:
            # The stream stops with an error on a hung-up channel: play_on_channel's final
            # update makes that "failed" (res != 0 with the channel hung up), before StasisEnd.
            self._finish_playback(ch, ch.playback, "failed")

    def _cancel_dial(self, ch: SimChannel, how: str) -> None:
        """A WebSocket channel hung up while still being dialled (no socket yet).

        Not recorded: the dial is cancelled (app_dial's CANCEL) and the originated channel is
        destroyed; it never entered Stasis, so no StasisEnd.
        """
        if how == "delete":
            self._emit("ChannelHangupRequest", ch)
        self._emit("Dial", ch, key="peer", dialstatus="CANCEL", dialstring=ch.dialstring)
        self._emit("ChannelDestroyed", ch)
        self._remove(ch, "app")

    def _remove(self, ch: SimChannel, by: str) -> None:
        del self.channels[ch.id]
        ch.cancel_timers()
        if ch.link is not None:
            ch.link.close()  # Asterisk hangs up: the TCP socket closes / WebSocket 1000
        if ch.media is not None:
            ch.media.close()
            self._medias.remove(ch.media)
        self.counts["media_channels_gone" if ch.kind == "media" else "callers_gone"] += 1
        call = ch.call
        if ch.kind != "media" and call is not None:
            halves = [c for c in self.channels.values() if c.call is call and c.kind != "media"]
            for other in halves:  # the two halves of a Local channel go together
                del self.channels[other.id]
            call.finish(by)
            if not self._history:
                self.calls.remove(call)

    def _continue_in_dialplan(self, ch: SimChannel, target: Target) -> None:
        """The channel leaves Stasis for `target` in the dialplan.

        What it does there is not simulated: for the app it is gone after its StasisEnd (a
        caller from the dialplan gets no ChannelDestroyed, §14). Its snapshot keeps the Stasis
        dialplan: ast_explicit_goto() publishes no new snapshot before StasisEnd is sent.
        """
        if self.channels.get(ch.id) is not ch or not ch.in_stasis:
            return
        if ch.call is not None and ch.kind == "caller":
            ch.call.continued_to = target
        self._hangup(ch, "continue")

    # -- the per-channel Stasis command queue: playbacks, continue ----------------------

    def _when_idle(self, ch: SimChannel, command: Callable[[], None]) -> None:
        """Run `command` once the channel's earlier Stasis commands (playbacks) are done."""
        if not ch.busy and not ch.queued:
            command()
        else:
            ch.queued.append(command)

    def _run_queued(self, ch: SimChannel) -> None:
        while not ch.busy and ch.queued and self.channels.get(ch.id) is ch:
            ch.queued.popleft()()

    def _start_playback(self, ch: SimChannel, playback: SimPlayback) -> None:
        if self.channels.get(ch.id) is not ch or not ch.in_stasis:
            self._playbacks.pop(playback.id, None)
            return  # the queue died with the channel: the playback never started
        if playback.canceled:  # playback_first_update(): canceled, published as "done"
            self._playbacks.pop(playback.id, None)
            playback.state = "done"
            self._emit("PlaybackFinished", app=ch.app or None, playback=playback.values())
            return
        self.counts["playbacks"] += 1
        playback.state = "playing"
        self._emit("PlaybackStarted", app=ch.app or None, playback=playback.values())
        if ch.call is not None:
            ch.call.heard.append((self._running_loop().time(), "start", playback.media))
        outcome = playback_outcome(playback.media, self.sounds, self.default_sound_seconds)
        if outcome is None:
            return  # no final update in play_on_channel: no PlaybackFinished (control.py)
        state, seconds = outcome
        ch.playback = playback
        if state == "failed":
            self._finish_playback(ch, playback, state)
        elif not math.isinf(seconds):  # a tone plays until DELETE /playbacks/{id}
            ch.playback_end = self._running_loop().call_later(
                seconds, self._finish_playback, ch, playback, state
            )

    def _finish_playback(self, ch: SimChannel, playback: SimPlayback, state: str) -> None:
        if ch.playback_end is not None:
            ch.playback_end.cancel()
            ch.playback_end = None
        if ch.playback is playback:
            ch.playback = None
        self._playbacks.pop(playback.id, None)
        playback.state = state
        self._emit("PlaybackFinished", app=ch.app or None, playback=playback.values())
        if ch.call is not None:
            ch.call.heard.append((self._running_loop().time(), "stop", playback.media))
        self._run_queued(ch)

    # -- the whole state ---------------------------------------------------------------

    def open_udp_sockets(self) -> list[tuple[str, int]]:
        return [media.local for media in self._medias if media.is_open]

    def leftovers(self) -> SimLeftovers:
        """Whatever an app should have cleaned up and is still there.

        Every ExternalMedia channel, every caller still in the app (a caller the app neither
        hung up nor continued sits in Stasis in silence: facts §15), every bridge, every open
        RTP socket. An app that cleaned up after its calls leaves this empty (falsy).
        """
        channels = [ch.id for ch in self.channels.values() if ch.kind == "media" or ch.in_stasis]
        return SimLeftovers(
            tuple(channels),
            tuple(self.bridges),
            tuple(self.open_udp_sockets()),
            tuple(self.open_media_connections()),
            tuple(self._dialplan_open()),
        )

    def open_media_connections(self) -> list[str]:
        """Labels of the AudioSocket / media WebSocket connections neither side has ended
        (one Asterisk has closed may take a moment more to finish its TCP close)."""
        return [link.label for link in self._links if link.end_reason is None]

    def _dialplan_open(self) -> list[str]:
        return []  # dialplan calls (bridge.tools.sim.dialplan) report theirs

    def _cancel_timers(self) -> None:
        for call in self.calls:
            call.cancel_timer()
        for ch in self.channels.values():
            ch.cancel_timers()

    def _forget_all(self) -> None:
        """The Asterisk process is gone: every channel, bridge and RTP socket with it.

        No event: nobody is connected to see one, and nothing is replayed after (§16). The
        calls' far ends are gone too (`hung_up_by == "restart"`). Channel ids keep counting:
        a restarted Asterisk's uniqueids start from a later epoch second, never reusing one.
        """
        self._cancel_timers()
        for call in self.calls:
            call.finish("restart")
        for media in self._medias:
            media.close()
        for link in self._links:
            link.abort()
        self.channels.clear()
        self.bridges.clear()
        self._playbacks.clear()
        self._medias.clear()
        if not self._history:
            self.calls.clear()
        self._app_registered = False  # a new process knows no app until one connects
        self._other_apps.clear()
        self.counts["restarts"] += 1

    # -- helpers ---------------------------------------------------------------------------

    def _new_id(self) -> str:
        """Asterisk's uniqueid: `<epoch seconds at creation>.<running counter>`."""
        self._next_unique += 1
        return f"{int(time.time())}.{self._next_unique - 1}"

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("SimulatedAsterisk is not started")
        return self._loop
