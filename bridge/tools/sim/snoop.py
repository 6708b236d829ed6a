"""Snoop channels: `POST /channels/{id}/snoop`, as recorded in snoop_record.

* 200 with the snoop channel: `Snoop/<spied id>-NNNNNNNN`, `Up`, `default/s/1`, no caller id; it
  exists from then on (a record on it answers 409 "Channel not in Stasis application", not 404)
  and enters the app with `args` from `appArgs` (`["snoop","in"]`,
  `app_data "pipecat,snoop,in"`); its StasisStart comes ~1 ms before **or** after the 200
  (`snoop_stasis_delay`: < 0 before, > 0 after; None, the default, picks ±1 ms with the
  simulator's seeded random, so both orders occur);
* a snoop is no bridge member: the bridge keeps its technology, and its members get their
  unchanged BRIDGEPEER again when a snoop attaches, and once more when the spied caller's
  audio starts;
* DELETE of a snoop: ChannelHangupRequest (32, soft), StasisEnd, no ChannelDestroyed;
* what its recording holds (bridge.tools.sim.recorder): `spy=in` what comes from the spied
  channel's far end, `spy=out` what the bridge sends to it, `both` the two.

From res/ari/resource_channels.c ari_channels_handle_snoop_channel (not recorded): a bad
`spy` / `whisper` or neither given, no `app`: 400; no such channel: 404 "Provided channel
was not found" ("Channel Not Found"); a `snoopId` already in use: 500 "Snoop channel could not
be created". A spied channel that goes away ends its snoops (res_stasis_snoop.c snoop_read
returns NULL): StasisEnd, with no ChannelHangupRequest. `whisper` is accepted, not simulated.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bridge.tools.sim.core import SimChannel
from bridge.tools.sim.recorder import AsteriskRecorder
from bridge.tools.sim.templates import Reply, error_reply, format_timestamp

DIRECTIONS = ("none", "both", "out", "in")


class AsteriskSnoop(AsteriskRecorder):
    def __init__(self, **core: Any) -> None:
        super().__init__(**core)
        # Seconds from the 200 to the snoop's StasisStart (< 0: before it); None: ±1 ms.
        self.snoop_stasis_delay: float | None = None
        self._next_snoop = 0

    async def _snoop(self, q: dict[str, str], cid: str, sid: str | None = None) -> Reply:
        spy, whisper = q.get("spy") or "none", q.get("whisper") or "none"
        if spy not in DIRECTIONS:
            return error_reply(400, "Invalid direction specified for spy")
        if whisper not in DIRECTIONS:
            return error_reply(400, "Invalid direction specified for whisper")
        if spy == "none" and whisper == "none":
            return error_reply(400, "Direction must be specified for at least spy or whisper")
        if not q.get("app"):
            return error_reply(400, "Application name is required")
        spied = self.channels.get(cid)
        if spied is None:
            return error_reply(404, "Provided channel was not found", "Channel Not Found")
        snoop_id = sid or q.get("snoopId") or self._new_id()
        if snoop_id in self.channels:
            return error_reply(500, "Snoop channel could not be created", "Internal error")
        snoop = SimChannel(
            id=snoop_id, name=f"Snoop/{cid}-{self._next_snoop:08x}", kind="snoop", state="Up",
            caller=("", ""), connected=("", ""), dialplan=("default", "s", 1, "", ""),
            creationtime=format_timestamp(time.time()), app=q["app"],
            args=[a for a in q.get("appArgs", "").split(",") if a], spied=cid, spy=spy,
        )  # fmt: skip
        self._next_snoop += 1
        self.channels[snoop.id] = snoop
        self.counts["snoops"] += 1
        delay = self.snoop_stasis_delay
        if delay is None:
            delay = self._rng.choice((-0.001, 0.001))
        if delay < 0:  # its StasisStart before the answer (snoop_record: spy=out)
            self._snoop_enters_stasis(snoop)
            await asyncio.sleep(-delay)
            return Reply(200, self._snapshot(snoop))

        def later() -> None:
            self._running_loop().call_later(delay, self._snoop_enters_stasis, snoop)

        return Reply(200, self._snapshot(snoop), after=later)

    def _snoop_enters_stasis(self, snoop: SimChannel) -> None:
        """snoop_stasis_thread(): Stasis(app,args) on the snoop channel."""
        if self.channels.get(snoop.id) is not snoop or snoop.in_stasis:
            return
        if not self.app_connected(snoop.app):
            self._forget_snoop(snoop)  # Stasis() fails: gone, nobody hears of it
            return
        spied = self.channels.get(snoop.spied or "")
        bridge = self.bridges.get(spied.bridge_id or "") if spied is not None else None
        if bridge is not None:  # the audiohook attaches: the bridge re-sends BRIDGEPEER
            self._set_bridge_peers(bridge)
            bridge.resend_peers = True
        snoop.dialplan = ("default", "s", 1, "Stasis", ",".join([snoop.app, *snoop.args]))
        snoop.in_stasis = True
        self._emit("StasisStart", snoop, args=list(snoop.args))

    def _far_end_rtp(self, ch: SimChannel, packet: bytes) -> None:
        bridge = self.bridges.get(ch.bridge_id or "")
        if bridge is not None and bridge.resend_peers:
            bridge.resend_peers = False  # once more when the spied caller's audio starts
            self._set_bridge_peers(bridge)
        super()._far_end_rtp(ch, packet)

    def _hangup(self, ch: SimChannel, how: str, cause: int = 16) -> None:
        if ch.kind == "snoop":
            if self.channels.get(ch.id) is ch:
                self._end_snoop(ch, requested=how == "delete")
            return
        spied_by = [s for s in self.channels.values() if s.kind == "snoop" and s.spied == ch.id]
        super()._hangup(ch, how, cause)
        if self.channels.get(ch.id) is ch:
            return  # still there (a media channel finishing its way into Stasis first)
        for snoop in spied_by:
            self._end_snoop(snoop, requested=False)

    def _end_snoop(self, snoop: SimChannel, *, requested: bool) -> None:
        """Hung up (DELETE: a HangupRequest first) or its spied channel gone: StasisEnd only."""
        if self.channels.get(snoop.id) is not snoop:
            return
        if requested:
            self._emit("ChannelHangupRequest", snoop)
        snoop.queued.clear()
        self._hanging_up(snoop)  # its recording is closed first
        if snoop.in_stasis:
            snoop.in_stasis = False
            self._emit("StasisEnd", snoop)
        self._forget_snoop(snoop)

    def _forget_snoop(self, snoop: SimChannel) -> None:
        if self.channels.get(snoop.id) is snoop:
            del self.channels[snoop.id]
            snoop.cancel_timers()
            self.counts["snoops_gone"] += 1
