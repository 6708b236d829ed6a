"""What a bridge plays and mixes: softmix RTP, bridge playbacks (ring-back), music on hold.

Softmix (recorded: transfer_originate_answer, bridge_record_mixed). Once a bridge has three
members, or a hidden Recorder / Announcer makes it three, it mixes: every UnicastRTP member
gets a packet every 20 ms (`mixing.MixBuffer`, `RtpSender`), the sum of what the others sent
meanwhile, silence included; the far ends' packets are no longer relayed as they are, and an
Echo() far end reflects into the mix instead of straight back.

Not recorded, from Asterisk 23.4.1's source:
* `POST /bridges/{id}/play` (res/ari/resource_bridges.c ari_bridges_handle_play): an
  `Announcer/ARI-NNNNNNNN;2` channel joins the bridge as a hidden, LONELY member (BRIDGEPEER
  events, no ChannelEnteredBridge) the first time; later plays queue on it. 201 with the
  Playback (`target_uri bridge:<id>`) and `Location: /ari/playbacks/<id>`; PlaybackStarted /
  PlaybackFinished reach the app through the bridge's topic. When its command queue is done
  (bridge_channel_control_thread) the Announcer hangs up and leaves. A bridge that does not
  exist: 404; no media: ast_ari_response_alloc_failed (500 "Allocation failed").
* `tone:ring` plays until stopped (main/app.c ast_control_tone); `DELETE /playbacks/{id}`
  (res/ari/resource_playbacks.c, res/res_stasis_playback.c playback_stop): 204 and
  PlaybackFinished `done` (STOPPED is published as "done"); a queued one is canceled and
  finishes, without starting, when its turn comes; a number / digits playback cannot be
  stopped (500 "Could not stop playback"); an unknown or finished one: 404 "Playback not found".
  The Announcer kicked out (the last other member left) fails its playback: `failed`.
* `POST /bridges/{id}/moh` (ast_ari_bridges_start_moh, res_stasis.c
  stasis_app_bridge_moh_channel): 204, an `Announcer/ARI_MOH-NNNNNNNN;2` member the first time;
  `DELETE /bridges/{id}/moh`: 204, it leaves; nothing playing: 409 "Bridge isn't playing music".

What a caller hears of these is on its call: `SimCall.heard` (start / stop with the media) and
`SimCall.hearing` (what plays now), e.g. `["tone:ring"]` while a transfer target rings.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from bridge.tools.sim.control import SimPlayback, playback_outcome
from bridge.tools.sim.core import SimBridge, SimChannel
from bridge.tools.sim.mixing import (
    FRAME,
    MixBuffer,
    RtpSender,
    frame_payload,
    mix,
    packet_samples,
    ring_tone,
)
from bridge.tools.sim.originate import ALLOCATION_FAILED, AsteriskOriginate
from bridge.tools.sim.templates import KNOWN_FORMATS, RTP_SHAPES, ULAW, Reply, error_reply

ANNOUNCER = "announcer"  # the mix source of a bridge's playbacks


@dataclass(eq=False, slots=True)
class BridgeMedia:
    """One bridge's mixer and its hidden players."""

    buffer: MixBuffer = field(default_factory=MixBuffer)
    timer: asyncio.TimerHandle | None = None
    started: float = 0.0  # loop.time() of the first mixed frame
    frames: int = 0
    announcer: str | None = None  # the playback channel's name while it is in the bridge
    queue: deque[SimPlayback] = field(default_factory=deque)
    playing: SimPlayback | None = None
    playing_end: asyncio.TimerHandle | None = None
    tone_samples: int = 0  # how far into the ring cadence
    moh: str | None = None  # the music-on-hold channel's name
    moh_class: str = "default"

    def cancel(self) -> None:
        for handle in (self.timer, self.playing_end):
            if handle is not None:
                handle.cancel()
        self.timer = self.playing_end = None


class AsteriskBridgeMedia(AsteriskOriginate):
    """Softmix RTP, `/bridges/{id}/play`, `/bridges/{id}/moh`, `/playbacks/{id}`."""

    def __init__(self, **core: Any) -> None:
        super().__init__(**core)
        self._bridge_media: dict[str, BridgeMedia] = {}
        self._senders: dict[str, RtpSender] = {}  # per UnicastRTP channel, for its lifetime

    def _media_of(self, bridge: SimBridge) -> BridgeMedia:
        return self._bridge_media.setdefault(bridge.id, BridgeMedia())

    # -- hidden members ----------------------------------------------------------------------

    def _join_hidden(self, bridge: SimBridge, prefix: str) -> str:
        """A Recorder or Announcer channel pushed into the bridge (ast_unreal_channel_push_to
        _bridge): Local's name counter, its `;2` in the bridge; BRIDGEPEER events only."""
        name = f"{prefix}-{self._next_local:08x};2"
        self._next_local += 1
        bridge.hidden.add(name)
        bridge.order.append(name)
        self._reconfigure(bridge, joined=name)
        return name

    def _leave_hidden(self, bridge: SimBridge, name: str) -> None:
        if name in bridge.hidden and self.bridges.get(bridge.id) is bridge:
            bridge.hidden.discard(name)
            bridge.order.remove(name)
            self._reconfigure(bridge)

    # -- softmix ---------------------------------------------------------------------------------

    def _bridge_reconfigured(self, bridge: SimBridge) -> None:
        media = self._bridge_media.get(bridge.id)
        mixing = bridge.technology == "softmix" and self.bridges.get(bridge.id) is bridge
        if mixing and (media is None or media.timer is None):
            media = self._media_of(bridge)
            media.started, media.frames = self._running_loop().time(), 0
            self._mix_tick(bridge)
        elif not mixing and media is not None and media.timer is not None:
            media.timer.cancel()
            media.timer = None

    def _mix_tick(self, bridge: SimBridge) -> None:
        """One 20 ms frame to every UnicastRTP member: the others' audio, summed."""
        media = self._bridge_media.get(bridge.id)
        if media is None or self.bridges.get(bridge.id) is not bridge:
            return
        frame = media.buffer.take_frame()
        if media.playing is not None and media.playing.media.startswith("tone:ring"):
            frame[ANNOUNCER] = ring_tone(media.tone_samples)
            media.tone_samples += FRAME
        for cid in bridge.channels:
            member = self.channels.get(cid)
            if member is None or member.media is None:
                continue
            sender = self._senders.get(cid)
            if sender is None:
                shape = RTP_SHAPES.get(member.fmt, ULAW)
                sender = RtpSender(shape, self._rng.getrandbits(32), self._rng.getrandbits(16))
                self._senders[cid] = sender
            member.media.send(sender.packet(frame_payload(mix(frame, exclude=cid), member.fmt)))
        # Absolute deadlines from the first frame: a late tick catches up, never drifts.
        media.frames += 1
        deadline = media.started + 0.020 * media.frames
        media.timer = self._running_loop().call_at(deadline, self._mix_tick, bridge)

    def _mixing(self, ch: SimChannel) -> BridgeMedia | None:
        bridge = self.bridges.get(ch.bridge_id or "")
        if bridge is None or bridge.technology != "softmix":
            return None
        return self._media_of(bridge)

    def _far_end_rtp(self, ch: SimChannel, packet: bytes) -> None:
        media = self._mixing(ch)
        if media is None:
            super()._far_end_rtp(ch, packet)
            return
        samples = packet_samples(packet)
        if samples is not None:
            media.buffer.push(ch.id, samples)

    def _bot_audio(self, em: SimChannel, packet: bytes) -> None:
        super()._bot_audio(em, packet)
        media = self._mixing(em)
        samples = packet_samples(packet) if media is not None else None
        if media is None or samples is None:
            return
        media.buffer.push(em.id, samples)
        for cid in self.bridges[em.bridge_id or ""].channels:
            member = self.channels.get(cid)
            call = member.call if member is not None else None
            if call is not None and call.echo and call.em_channel_id == em.id:
                media.buffer.push(cid, samples)  # an Echo() far end says it back into the mix

    # -- bridge playbacks ------------------------------------------------------------------------

    async def _play_bridge(self, q: dict[str, str], bid: str, pid: str | None = None) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        fmt = q.get("announcer_format")
        if fmt and fmt not in KNOWN_FORMATS:
            return error_reply(422, "specified announcer_format is unknown on this system")
        if not q.get("media"):
            return ALLOCATION_FAILED
        media = self._media_of(bridge)
        language = q.get("lang") or str(self._templates.channel.get("language", "en"))
        playback = SimPlayback(id=pid or q.get("playbackId") or str(uuid4()), media=q["media"],
                               target=f"bridge:{bid}", language=language)  # fmt: skip
        self._playbacks[playback.id] = playback
        if media.announcer is None:
            media.announcer = self._join_hidden(bridge, "Announcer/ARI")
        media.queue.append(playback)
        return Reply(201, self._templates.playback(playback.values()),
                     location=f"/ari/playbacks/{playback.id}",
                     after=lambda: self._next_bridge_playback(bridge))  # fmt: skip

    def _next_bridge_playback(self, bridge: SimBridge) -> None:
        """The Announcer's command queue: one playback after the other, then it leaves."""
        media = self._bridge_media.get(bridge.id)
        if media is None or media.playing is not None or self.bridges.get(bridge.id) is not bridge:
            return
        while media.queue:
            playback = media.queue.popleft()
            if playback.canceled:
                playback.state = "done"
                self._playbacks.pop(playback.id, None)
                self._emit("PlaybackFinished", app=bridge.app or None, playback=playback.values())
                continue
            self._start_bridge_playback(bridge, media, playback)
            return
        if media.announcer is not None:
            announcer, media.announcer = media.announcer, None
            self._leave_hidden(bridge, announcer)

    def _start_bridge_playback(self, bridge: SimBridge, media: BridgeMedia,
                               playback: SimPlayback) -> None:  # fmt: skip
        self.counts["playbacks"] += 1
        playback.state = "playing"
        media.playing, media.tone_samples = playback, 0
        self._emit("PlaybackStarted", app=bridge.app or None, playback=playback.values())
        self._heard(bridge, "start", playback.media)
        outcome = playback_outcome(playback.media, self.sounds, self.default_sound_seconds)
        if outcome is None:
            return  # never finishes (control.py): the Announcer stays
        state, seconds = outcome
        if state == "failed":
            self._finish_bridge_playback(bridge, playback, state)
        elif seconds != float("inf"):
            media.playing_end = self._running_loop().call_later(
                seconds, self._finish_bridge_playback, bridge, playback, state
            )

    def _finish_bridge_playback(self, bridge: SimBridge, playback: SimPlayback, state: str
                                ) -> None:  # fmt: skip
        media = self._bridge_media.get(bridge.id)
        if media is None or media.playing is not playback:
            return
        if media.playing_end is not None:
            media.playing_end.cancel()
        media.playing, media.playing_end = None, None
        self._playbacks.pop(playback.id, None)
        playback.state = state
        self._emit("PlaybackFinished", app=bridge.app or None, playback=playback.values())
        self._heard(bridge, "stop", playback.media)
        self._next_bridge_playback(bridge)

    def _heard(self, bridge: SimBridge, change: str, what: str) -> None:
        """What the callers in the bridge hear starts or stops (SimCall.heard)."""
        now = self._running_loop().time()
        for cid in bridge.channels:
            member = self.channels.get(cid)
            if member is not None and member.kind == "caller" and member.call is not None:
                member.call.heard.append((now, change, what))

    # -- /playbacks/{id} -------------------------------------------------------------------------

    async def _get_playback(self, q: dict[str, str], pid: str) -> Reply:
        playback = self._playbacks.get(pid)
        if playback is None:
            return error_reply(404, "Playback not found", "Not Found")
        return Reply(200, self._templates.playback(playback.values()))

    async def _stop_playback(self, q: dict[str, str], pid: str) -> Reply:
        playback = self._playbacks.get(pid)
        if playback is None:
            return error_reply(404, "Playback not found", "Not Found")
        if playback.state == "queued":
            playback.canceled = True  # playback_cancel(): it finishes when its turn comes
            return Reply(204)
        if not playback.controllable:
            return error_reply(500, "Could not stop playback", "Internal Server Error")
        return Reply(204, after=lambda: self._stopped(playback))

    def _stopped(self, playback: SimPlayback) -> None:
        kind, _, target = playback.target.partition(":")
        if kind == "bridge" and target in self.bridges:
            self._finish_bridge_playback(self.bridges[target], playback, "done")
            return
        ch = self.channels.get(target)
        if ch is not None and ch.playback is playback:
            self._finish_playback(ch, playback, "done")

    # -- music on hold ---------------------------------------------------------------------------

    async def _bridge_moh_start(self, q: dict[str, str], bid: str) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        media = self._media_of(bridge)
        moh = f"moh:{q.get('mohClass') or 'default'}"
        if media.moh is None:
            media.moh = self._join_hidden(bridge, "Announcer/ARI_MOH")
        elif f"moh:{media.moh_class}" != moh:
            self._heard(bridge, "stop", f"moh:{media.moh_class}")  # ast_moh_start() again
        else:
            return Reply(204)
        media.moh_class = moh.partition(":")[2]
        self._heard(bridge, "start", moh)
        return Reply(204)

    async def _bridge_moh_stop(self, q: dict[str, str], bid: str) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        media = self._bridge_media.get(bid)
        if media is None or media.moh is None:
            return error_reply(409, "Bridge isn't playing music")
        return Reply(204, after=lambda: self._moh_gone(bridge))

    def _moh_gone(self, bridge: SimBridge) -> None:
        media = self._bridge_media.get(bridge.id)
        if media is None or media.moh is None:
            return
        name, media.moh = media.moh, None
        self._heard(bridge, "stop", f"moh:{media.moh_class}")
        self._leave_hidden(bridge, name)

    # -- the end of a bridge's players -----------------------------------------------------------

    def _kick_hidden(self, bridge: SimBridge) -> None:
        """The last other member left: the LONELY Announcers go; a playback fails (its
        channel hung up mid-stream: playback_final_update with hangup)."""
        media = self._bridge_media.get(bridge.id)
        if media is not None:
            if media.playing is not None:
                self._finish_bridge_playback(bridge, media.playing, "failed")
            for playback in media.queue:
                self._playbacks.pop(playback.id, None)
            media.queue.clear()
            media.announcer = None
            media.moh = None
        super()._kick_hidden(bridge)

    def _bridge_gone(self, bridge: SimBridge) -> None:
        """DELETE /bridges/{id}: its players are torn down with it."""
        super()._bridge_gone(bridge)
        media = self._bridge_media.pop(bridge.id, None)
        if media is not None:
            media.cancel()

    def _remove(self, ch: SimChannel, by: str) -> None:
        self._senders.pop(ch.id, None)
        super()._remove(ch, by)

    def _cancel_timers(self) -> None:
        for media in self._bridge_media.values():
            media.cancel()
        super()._cancel_timers()

    def _forget_all(self) -> None:
        for media in self._bridge_media.values():
            media.cancel()
        self._bridge_media.clear()
        self._senders.clear()
        super()._forget_all()
