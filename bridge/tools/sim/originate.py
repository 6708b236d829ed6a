"""Originate into the app (`POST /channels?endpoint=...&app=...`), as recorded on 23.4.1.

Recorded (`outbound_originate`, `transfer_originate_answer/_busy/_noanswer`, `errors`):
* 200 at once with the channel `Down`, `id` = the `channelId` given, name
  `Local/<exten>@<context>-NNNNNNNN;1`, dialplan `AppDial2 (Outgoing Line)`; its `;2` half gets
  `<channelId>;2`, and the app receives events for both halves;
* ringing: `Dial` (peer ;1, `dialstatus ""`, dialstring `<exten>@<context>`), `ChannelStateChange`
  ;1 `Ringing`, `Dial RINGING`; on answer: `ChannelStateChange` ;2 and ;1 `Up`, `Dial ANSWER`,
  `ChannelVarset STASISSTATUS ''`, then `StasisStart` for ;1 with the appArgs. No StasisStart
  before the answer;
* busy: `Dial ""`, ;2 `Busy`, `Dial BUSY`, `ChannelHangupRequest` ;2 cause 0, `ChannelDestroyed`
  ;1 cause 0 "Unknown", ;2 cause 17 "User busy"; no StasisStart;
* no answer: at the originate's `timeout` `ChannelHangupRequest` ;2 cause 19, `ChannelDestroyed`
  ;2 and ;1 cause 19 "User alerting, no answer"; no `Dial NOANSWER`;
* a nonexistent extension: `ChannelDestroyed` ;2 and ;1 with cause 0, nothing else;
* an unknown technology: 500 `{"error":"Allocation failed"}` (the lab has no pjproject, so
  `technologies` is {"Local"}; add "PJSIP" to dial SIP endpoints, with a `far_ends` entry);
* an originated channel stays subscribed: after its StasisEnd it gets `ChannelDestroyed`, ;2 too.

Not recorded, and so left out: `ChannelCallerId` and `ChannelDialplan` (no template; the bridge
ignores them). Not recorded, modelled like busy: congestion (`Dial CONGESTION`, ;2 cause 34).
Parameters in a JSON body (`{"variables": {...}}`) are merged into the query by the HTTP layer,
as ARI does; the variables are set on the ;1 channel.

Far ends: `far_ends[endpoint]`, else the lab's `[caller]` dialplan (`LAB_EXTENSIONS`), else a
nonexistent extension. An answered far end plays a recorded scenario like `place_call`'s.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

from bridge.tools.sim.core import SimChannel, SimLeftovers
from bridge.tools.sim.dialplan import AsteriskDialplan
from bridge.tools.sim.media import SimCall
from bridge.tools.sim.templates import Reply, build_timeline, error_reply, format_timestamp

ORIGINATED = ("caller", "", 1, "AppDial2", "(Outgoing Line)")


@dataclass(frozen=True, slots=True)
class FarEnd:
    """How an originated endpoint answers: `outcome` answer, busy, congestion, noanswer or
    unavailable (no such extension), after `ring` seconds of ringing (answer only)."""

    outcome: str = "answer"
    ring: float = 0.0
    scenario: str = "outbound_originate"  # the recorded far end it plays once bridged
    echo: bool | None = None
    hangup_after: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in ("answer", "busy", "congestion", "noanswer", "unavailable"):
            raise ValueError(f"unknown far-end outcome {self.outcome!r}")


# The lab's [caller] extensions (asterisk-conf/extensions.conf), as originate targets.
LAB_EXTENSIONS: dict[str, FarEnd] = {
    **{exten: FarEnd() for exten in ("200", "201", "202", "204", "206", "209", "230", "231",
                                      "232", "234")},
    "203": FarEnd(scenario="echo_roundtrip", echo=True),
    "205": FarEnd(scenario="echo_roundtrip", echo=True),
    "207": FarEnd("busy"),
    "208": FarEnd("noanswer"),
    "233": FarEnd(ring=1.0, scenario="echo_roundtrip", echo=True),
}  # fmt: skip

_CAUSE_TXT = {0: "Unknown", 16: "Normal Clearing", 17: "User busy",
              19: "User alerting, no answer", 34: "Circuit/channel congestion"}  # fmt: skip


class AsteriskOriginate(AsteriskDialplan):
    """`POST /channels` into the app: the channel rings, then answers or fails."""

    def __init__(self, **core: Any) -> None:
        super().__init__(**core)
        self.technologies: set[str] = {"Local"}
        self.far_ends: dict[str, FarEnd] = {}
        self._originated: dict[str, SimChannel] = {}  # ;1 id -> its ;2 half

    def far_end(self, endpoint: str) -> FarEnd:
        if endpoint in self.far_ends:
            return self.far_ends[endpoint]
        tech, _, resource = endpoint.partition("/")
        exten, _, context = resource.partition("@")
        if tech == "Local":
            found = LAB_EXTENSIONS.get(exten) if context == "caller" else None
            return found or FarEnd("unavailable")
        return FarEnd()

    async def _originate(self, q: dict[str, str]) -> Reply:
        endpoint = q.get("endpoint", "")
        if not endpoint:
            return error_reply(400, "Endpoint must be specified")
        if endpoint.partition("/")[0] not in self.technologies:
            return Reply(500, {"error": "Allocation failed"})
        if not q.get("app"):
            return error_reply(400, "Application or extension must be specified")
        cid = q.get("channelId") or self._new_id()
        if cid in self.channels:
            return error_reply(409, "Channel with given unique ID already exists")
        variables = json.loads(q["variables"]) if q.get("variables") else {}
        ch, half = self._new_originated(cid, endpoint, q, variables)
        far = self.far_end(endpoint)
        timeout = float(q.get("timeout") or 30)
        args = [a for a in q.get("appArgs", "").split(",") if a]
        return Reply(200, self._snapshot(ch),
                     after=lambda: self._dial(ch, half, far, timeout, q["app"], args))  # fmt: skip

    def _new_originated(self, cid: str, endpoint: str, q: dict[str, str],
                        variables: dict[str, str]) -> tuple[SimChannel, SimChannel]:  # fmt: skip
        exten, _, context = endpoint.partition("/")[2].partition("@")
        name, _, number = q.get("callerId", "").partition("<")
        ident = (name.strip(), number.rstrip(">").strip()) if number else ("", name.strip())
        local = f"{endpoint}-{self._next_local:08x}"
        self._next_local += 1
        now = format_timestamp(time.time())
        plan = (context or "default", exten, 1, "AppDial2", "(Outgoing Line)")
        ch = SimChannel(id=cid, name=f"{local};1", kind="caller", state="Down", caller=ident,
                        connected=ident, dialplan=plan, creationtime=now,
                        variables={str(k): str(v) for k, v in variables.items()},
                        dialstring=endpoint.partition("/")[2])  # fmt: skip
        half = SimChannel(id=f"{cid};2", name=f"{local};2", kind="local", state="Ring",
                          caller=ident, connected=ident, dialplan=(*plan[:3], "", ""),
                          creationtime=now)  # fmt: skip
        self.channels[ch.id], self.channels[half.id] = ch, half
        self._originated[ch.id] = half
        self.counts["originated"] += 1
        return ch, half

    def _dial(self, ch: SimChannel, half: SimChannel, far: FarEnd, timeout: float, app: str,
              args: list[str]) -> None:  # fmt: skip
        if self.channels.get(ch.id) is not ch:
            return  # hung up before the dial started
        self._emit("Dial", ch, key="peer", dialstatus="", dialstring=ch.dialstring)
        if far.outcome == "unavailable":
            self._destroy(ch, half, 0, 0)
        elif far.outcome in ("busy", "congestion"):
            half.state = "Busy"
            self._emit("ChannelStateChange", half)
            self._emit("Dial", ch, key="peer", dialstatus=far.outcome.upper(), dialstring="")
            self._emit("ChannelHangupRequest/far", half, cause=0)
            self._destroy(ch, half, 0, 17 if far.outcome == "busy" else 34)
        else:
            if far.outcome == "noanswer" or far.ring > 0:
                ch.state = "Ringing"
                self._emit("ChannelStateChange", ch)
                self._emit("Dial", ch, key="peer", dialstatus="RINGING", dialstring=ch.dialstring)
            if far.outcome == "noanswer" or far.ring >= timeout:
                later = self._running_loop().call_later(timeout, self._no_answer, ch, half)
            else:
                later = self._running_loop().call_later(far.ring, self._answered, ch, half, far,
                                                        app, args)  # fmt: skip
            ch.pending_start = later

    def _no_answer(self, ch: SimChannel, half: SimChannel) -> None:
        ch.pending_start = None
        self._emit("ChannelHangupRequest/far", half, cause=19)
        self._destroy(half, None, 19, 0)
        self._destroy(ch, None, 19, 0)

    def _answered(self, ch: SimChannel, half: SimChannel, far: FarEnd, app: str,
                  args: list[str]) -> None:  # fmt: skip
        ch.pending_start = None
        if self.channels.get(ch.id) is not ch:
            return
        script = self._script(far.scenario)
        echo = script.echo if far.echo is None else far.echo
        timeline = build_timeline(script, self._rng, None, None, far.hangup_after, echo, "ulaw")
        call = SimCall(self._running_loop(), far.scenario, ch.id, ch.name, args, echo, timeline)
        ch.call = half.call = call
        self.calls.append(call)
        half.state = ch.state = "Up"
        self._emit("ChannelStateChange", half)
        self._emit("ChannelStateChange", ch)
        self._emit("Dial", ch, key="peer", dialstatus="ANSWER", dialstring=ch.dialstring)
        ch.dialplan = (*ch.dialplan[:3], "Stasis", ",".join([app, *args]))
        ch.variables["STASISSTATUS"] = ""
        self._emit("ChannelVarset", ch, variable="STASISSTATUS", value="")
        ch.in_stasis = True
        self._emit("StasisStart", ch, args=args)

    def _destroy(self, ch: SimChannel, half: SimChannel | None, cause: int,
                 half_cause: int) -> None:  # fmt: skip
        """Gone, with the recorded ChannelDestroyed causes (;1 first, as recorded for busy)."""
        for one, why in ((ch, cause), (half, half_cause)):
            if one is None or self.channels.get(one.id) is not one:
                continue
            self._emit("ChannelDestroyed", one, cause=why, cause_txt=_CAUSE_TXT.get(why, ""))
            del self.channels[one.id]
            one.cancel_timers()
            if self._originated.pop(one.id, None) is not None:
                self.counts["originated_gone"] += 1

    def _hangup(self, ch: SimChannel, how: str) -> None:
        half = self._originated.get(ch.id)
        if half is None or self.channels.get(ch.id) is not ch:
            super()._hangup(ch, how)
            return
        if ch.call is None:  # still ringing: cancel the dial
            if how == "delete":
                self._emit("ChannelHangupRequest", ch)
            self._emit("Dial", ch, key="peer", dialstatus="CANCEL", dialstring=ch.dialstring)
            self._destroy(ch, half, 16, 16)
            return
        del self._originated[ch.id]
        self.counts["originated_gone"] += 1
        super()._hangup(ch, how)  # StasisEnd ...; both halves leave the channel list
        self._emit("ChannelDestroyed", ch, cause=16, cause_txt=_CAUSE_TXT[16])
        self._emit("ChannelDestroyed", half, cause=16, cause_txt=_CAUSE_TXT[16])

    def leftovers(self) -> SimLeftovers:
        """Also every originated channel still ringing: nobody but the app will end it."""
        found = super().leftovers()
        ringing = tuple(cid for cid in self._originated
                        if cid in self.channels and cid not in found.channels)  # fmt: skip
        return replace(found, channels=found.channels + ringing)

    def _forget_all(self) -> None:
        super()._forget_all()
        self._originated.clear()
