"""Originate into the app (`POST /channels?endpoint=...&app=...`), as recorded on 23.4.1.

Recorded (`outbound_originate`, `transfer_originate_answer/_busy/_noanswer`, `errors`):
* 200 at once with the channel `Down`, `id` = the `channelId` given, name
  `Local/<exten>@<context>-NNNNNNNN;1`, dialplan `AppDial2 (Outgoing Line)`; its `;2` half gets
  `<channelId>;2` (or `otherChannelId`), and the app receives events for both halves:
  `ChannelCallerId` / `ChannelConnectedLine` (;2) when a caller id crossed over, `Dial ""`,
  the far half's dialplan as `ChannelDialplan` events (`targets`);
* ringing: `ChannelStateChange` ;1 `Ringing`, `Dial RINGING`; on answer: `ChannelDialplan`
  Answer, `ChannelStateChange` ;2 and ;1 `Up`, `Dial ANSWER`, `ChannelVarset STASISSTATUS ''`,
  then `StasisStart` for ;1 with the appArgs. No StasisStart before the answer;
* busy: ;2 `Busy`, `Dial BUSY`, `ChannelHangupRequest` ;2 cause 0, `ChannelDestroyed` ;1 cause
  0 "Unknown", `ChannelHangupRequest` ;2 16 soft, `ChannelDestroyed` ;2 cause 17; congestion the
  same with `Dial CONGESTION` and cause 34 (synthetic, `bridge.tools.sim.targets`);
* no answer: at the originate's `timeout` ;2 `ChannelHangupRequest` 19, then 16 soft,
  `ChannelDestroyed` ;2 and ;1 cause 19; no `Dial NOANSWER`;
* a nonexistent extension: `ChannelDestroyed` ;2 and ;1 with cause 0, no `Dial` at all;
* an unknown technology: 500 `{"error":"Allocation failed"}` (ast_dial_prerun() fails in
  ari_channels_handle_originate_with_id(): ast_request() finds no such technology), nothing else;
* deleting an answered target: HangupRequest (32, soft), [BRIDGEPEER, ChannelLeftBridge],
  StasisEnd, STASISSTATUS SUCCESS, ;2 HangupRequest 16 then 16 soft, ChannelDestroyed ;1 and ;2.
  An originated channel stays subscribed after its StasisEnd; its dialplan reads AppDial2 again.

From the source (res/ari/resource_channels.c, main/dial.c), not recorded:
* `originator` is the requesting channel: the target's connected line is copied from the
  originator's caller (begin_dial_prerun); with `formats` as well: 400 "Originator and formats
  can't both be specified"; an unknown originator: 400; an unknown format: 400;
* a DELETE of a ringing target wakes dial.c's monitor_dial(): its read fails, so it publishes
  `Dial` with ast_hangup_cause_to_dial_status() of the cause set (16: NOANSWER), then hangs up;
* JSON `variables` are set on ;1 and copied to ;2 by ast_unreal_call_setup(), a ChannelVarset
  each.

`/channels/create` + `/channels/{id}/dial` (recorded in transfer_create_dial_busy): the created
channel enters Stasis at once (Down); the app gets no events of its `;2`; `Dial` statuses after
the first come from the dial bridge with an empty `dialstring`; BUSY leaves it up until the
dial's `timeout`, which hangs it up with cause 19 (control.c bridge_timeout / hangup_channel);
without a timeout nothing ends it (notes.md: Busy(10) returning would, after 10 s, by the
source; not simulated).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.tools.sim.causes import BUSY, CONGESTION, NO_ANSWER, NORMAL, cause_txt, dial_status
from bridge.tools.sim.control import c_atol
from bridge.tools.sim.core import SimChannel, SimLeftovers
from bridge.tools.sim.dialplan import AsteriskDialplan
from bridge.tools.sim.media import SimCall
from bridge.tools.sim.targets import (
    LAB_TARGETS,
    Outcome,
    TargetBehaviour,
    far_end_answered,
    far_exten,
    target_key,
)
from bridge.tools.sim.templates import (
    KNOWN_FORMATS,
    Reply,
    build_timeline,
    error_reply,
    format_timestamp,
)

ORIGINATED = ("AppDial2", "(Outgoing Line)")
MAX_PUBLIC_UNIQUEID = 149  # include/asterisk/channel.h
ALLOCATION_FAILED = Reply(500, {"error": "Allocation failed"})  # ast_ari_response_alloc_failed


@dataclass(eq=False, slots=True)
class Dialled:
    """A channel the app originated or created: its far half, its target, its timers."""

    channel: SimChannel
    half: SimChannel | None  # Local's ;2 (None for another technology)
    target: TargetBehaviour
    dialstring: str  # what `Dial` names: `233@caller`, `1001` ...
    created: bool  # /channels/create: no ;2 events, `Dial` from the dial bridge
    app: str = ""
    args: list[str] = field(default_factory=list)
    step: int = 0  # priorities the far half has run
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    @property
    def local(self) -> bool:
        return self.half is not None

    def cancel(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class AsteriskOriginate(AsteriskDialplan):
    """`POST /channels`, `/channels/create`, `/channels/{id}/dial`: channels the app dials."""

    def __init__(self, **core: Any) -> None:
        super().__init__(**core)
        self.technologies: set[str] = {"Local"}
        # Endpoint -> how it answers (targets.TargetBehaviour); the lab's [caller] by default.
        self.targets: dict[str, TargetBehaviour] = dict(LAB_TARGETS)
        self._dialled: dict[str, Dialled] = {}  # by ;1 id, until both halves are destroyed

    def target(self, endpoint: str) -> TargetBehaviour | None:
        """How `endpoint` answers; None: its technology is unknown (500 Allocation failed)."""
        key = target_key(endpoint)
        tech = key.partition("/")[0]
        if key in self.targets:
            found = self.targets[key]
            unreachable = found.outcome is Outcome.UNAVAILABLE and tech != "Local"
            return None if unreachable else found  # ast_request() fails: no route
        if tech == "Local":
            return TargetBehaviour.unavailable()  # no such extension
        known = tech in self.technologies or any(k.startswith(f"{tech}/") for k in self.targets)
        return TargetBehaviour.answer() if known else None

    # -- requests ----------------------------------------------------------------------------

    def _dial_request_error(self, q: dict[str, str], originate: bool) -> Reply | None:
        """The checks ari_channels_handle_originate_with_id() / ast_ari_channels_create() make
        before anything exists, in their order."""
        ids = (q.get("channelId", ""), q.get("otherChannelId", ""))
        if originate and any(len(i) > MAX_PUBLIC_UNIQUEID for i in ids):
            return error_reply(400, f"Uniqueid length exceeds maximum of {MAX_PUBLIC_UNIQUEID}")
        endpoint = q.get("endpoint", "")
        both = q.get("originator") and q.get("formats")
        checks = [(both, "Originator and formats can't both be specified"),
                  (not endpoint, "Endpoint must be specified")]  # fmt: skip
        if originate:
            checks.reverse()
        tech, _, resource = endpoint.partition("/")
        checks.append((not tech or not resource, "Invalid endpoint specified"))
        if originate:
            checks.append((not q.get("app"), "Application or extension must be specified"))
            checks.append((q.get("originator") and self._by_name(q["originator"]) is None,
                           "Provided originator channel was not found"))  # fmt: skip
        for failed, message in checks:
            if failed:
                return error_reply(400, message)
        if not q.get("originator"):
            for name in [f.strip() for f in q.get("formats", "").split(",") if f.strip()]:
                if name not in KNOWN_FORMATS:
                    return error_reply(400, f"Provided format ({name}) was not found")
        if self.target(endpoint) is None:
            return ALLOCATION_FAILED
        if q.get("channelId") in self.channels:
            return error_reply(409, "Channel with given unique ID already exists")
        return None

    async def _originate(self, q: dict[str, str], cid: str | None = None) -> Reply:
        if cid is not None:  # POST /channels/{channelId}
            q = {**q, "channelId": cid}
        refused = self._dial_request_error(q, originate=True)
        if refused is not None:
            return refused
        dial = self._new_dialled(q, created=False)
        ch = dial.channel
        if q.get("callerId"):
            ch.caller = ch.connected = parse_caller_id(q["callerId"])
        elif q.get("originator"):
            originator = self._by_name(q["originator"])
            assert originator is not None
            ch.connected = originator.caller  # begin_dial_prerun() copies the requester's caller
        return Reply(200, self._snapshot(ch), after=lambda: self._start_dial(dial, q))

    async def _create(self, q: dict[str, str]) -> Reply:
        refused = self._dial_request_error(q, originate=False)
        if refused is not None:
            return refused
        dial = self._new_dialled(q, created=True)
        ch = dial.channel
        ch.dialplan = (*ch.dialplan[:3], "", "")
        return Reply(200, self._snapshot(ch), after=lambda: self._created_enters_stasis(dial))

    async def _dial_created(self, q: dict[str, str], cid: str) -> Reply:
        """POST /channels/{id}/dial (ast_ari_channels_dial)."""
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        if ch.state not in ("Down", "Reserved"):
            return error_reply(409, "Channel is not in the 'Down' state")
        dial = self._dialled.get(cid)
        if dial is None or not dial.created:
            return error_reply(409, "Dialing a channel not created by ARI")
        timeout = max(0, c_atol(q.get("timeout")))
        return Reply(204, after=lambda: self._when_idle(ch, lambda: self._run_dial(dial, timeout)))

    def _by_name(self, name: str) -> SimChannel | None:
        """ast_channel_get_by_name(): a channel by its unique id or by its name."""
        found = self.channels.get(name)
        return found or next((c for c in self.channels.values() if c.name == name), None)

    def _new_dialled(self, q: dict[str, str], created: bool) -> Dialled:
        endpoint = q["endpoint"]
        target = self.target(endpoint)
        assert target is not None
        key = target_key(endpoint)
        tech, _, resource = key.partition("/")
        cid = q.get("channelId") or self._new_id()
        local = f"{key}-{self._next_local:08x}"
        self._next_local += 1
        now = format_timestamp(time.time())
        exten, _, context = resource.partition("@")
        plan = (context or "default", exten, 1, *ORIGINATED) if tech == "Local" else (
            "default", "s", 1, *ORIGINATED)  # fmt: skip
        variables = {str(k): str(v) for k, v in json.loads(q.get("variables") or "{}").items()}
        ch = SimChannel(id=cid, name=f"{local};1" if tech == "Local" else local, kind="caller",
                        state="Down", caller=("", ""), connected=("", ""), dialplan=plan,
                        creationtime=now, variables=variables, dialstring=resource,
                        app=q.get("app", ""))  # fmt: skip
        half = None
        if tech == "Local":
            other = q.get("otherChannelId") or (f"{cid};2" if q.get("channelId") else "")
            half = SimChannel(id=other or self._new_id(), name=f"{local};2", kind="local",
                              state="Ring", caller=("", ""), connected=("", ""),
                              dialplan=(*plan[:3], "", ""), creationtime=now,
                              app=q.get("app", ""))  # fmt: skip
            self.channels[half.id] = half
        self.channels[ch.id] = ch
        args = [a for a in q.get("appArgs", "").split(",") if a]
        dial = Dialled(ch, half, target, resource, created, q.get("app", ""), args)
        self._dialled[ch.id] = dial
        self.counts["originated"] += 1
        return dial

    # -- the dial ------------------------------------------------------------------------------

    def _alive(self, dial: Dialled) -> bool:
        return self._dialled.get(dial.channel.id) is dial

    def _later(self, dial: Dialled, seconds: float, action: Any, *args: Any) -> None:
        dial.timers.append(self._running_loop().call_later(seconds, action, *args))

    def _start_dial(self, dial: Dialled, q: dict[str, str]) -> None:
        """The originate's dial thread: the far half is set up and called (ast_call)."""
        ch, half = dial.channel, dial.half
        if not self._alive(dial):
            return  # hung up before the dial started
        if half is not None:
            # ast_unreal_call_setup(): variables, then caller id and connected line cross over.
            for name, value in ch.variables.items():
                half.variables[name] = value
                self._emit("ChannelVarset", half, variable=name, value=value)
            half.caller, half.connected = ch.connected, ch.caller
            if half.caller != ("", ""):
                self._emit(
                    "ChannelCallerId",
                    half,
                    caller_presentation=0,
                    caller_presentation_txt="Presentation Allowed, Not Screened",
                )
            if half.connected != ("", ""):
                self._emit("ChannelConnectedLine", half)
        if dial.target.outcome is Outcome.UNAVAILABLE:
            self._destroy_pair(dial, 0, 0, half_first=True)  # local_call() failed: no Dial
            return
        self._emit("Dial", ch, key="peer", dialstatus="", dialstring=dial.dialstring)
        self._ring(dial, dialstring=dial.dialstring)
        timeout = c_atol(q.get("timeout") or "30")
        if timeout != -1:  # -1: no timeout at all
            self._later(dial, timeout if timeout > 0 else 30, self._ring_timeout, dial)

    def _ring(self, dial: Dialled, dialstring: str) -> None:
        """The far end's dialplan until its outcome, which comes `after` seconds later."""
        target, ch = dial.target, dial.channel
        for step in target.before:
            self._far_step(dial, step.app, step.data)
            if step.app == "Ringing" and dial.local:
                ch.state = "Ringing"
                self._emit("ChannelStateChange", ch)
        if target.ringing and not dial.local:
            ch.state = "Ringing"
            self._emit("ChannelStateChange", ch)
        if target.ringing:
            self._emit("Dial", ch, key="peer", dialstatus="RINGING", dialstring=dialstring)
        if target.outcome is not Outcome.NO_ANSWER:
            self._later(dial, target.after, self._outcome, dial)

    def _far_step(self, dial: Dialled, app: str, data: str) -> None:
        """The far half moves on to its next priority (a ChannelDialplan event)."""
        half = dial.half
        dial.step += 1
        if half is None or dial.created:
            return
        half.dialplan = (*half.dialplan[:2], dial.step, app, data)
        self._emit("ChannelDialplan", half, dialplan_app=app, dialplan_app_data=data)

    def _outcome(self, dial: Dialled) -> None:
        if not self._alive(dial):
            return
        outcome, ch, half = dial.target.outcome, dial.channel, dial.half
        step = dial.target.outcome_step
        if step is not None:
            self._far_step(dial, step.app, step.data)
        dialstring = "" if dial.created else dial.dialstring
        if outcome is Outcome.ANSWER:
            self._answered(dial, dialstring)
            return
        status = "BUSY" if outcome is Outcome.BUSY else "CONGESTION"
        if half is not None and not dial.created:
            half.state = "Busy"  # Busy() and Congestion() alike (indicate_congestion)
            self._emit("ChannelStateChange", half)
        self._emit("Dial", ch, key="peer", dialstatus=status, dialstring=dialstring)
        if dial.created:
            return  # the dial bridge keeps it: only the dial's timeout or a DELETE ends it
        far_cause = BUSY if outcome is Outcome.BUSY else CONGESTION
        if half is not None:  # dial.c hangs ;1 up with no cause; ;2 keeps its own
            self._emit("ChannelHangupRequest/far", half, cause=0)
            self._destroy_pair(dial, 0, far_cause, soft_half=True)
        else:
            self._destroy_pair(dial, far_cause, 0)

    def _answered(self, dial: Dialled, dialstring: str) -> None:
        ch, half, target = dial.channel, dial.half, dial.target
        script = self._script(target.scenario)
        echo = script.echo if target.echo is None else target.echo
        timeline = build_timeline(script, self._rng, target.audio, 0.0 if target.audio else None,
                                  target.hangup_after, echo, "ulaw")  # fmt: skip
        call = SimCall(self._running_loop(), target.scenario, ch.id, ch.name, dial.args, echo,
                       timeline)  # fmt: skip
        ch.call = call
        if half is not None:
            half.call = call
        self.calls.append(call)
        far_end_answered(far_exten(ch.name), self.system.variables)
        if half is not None:
            half.state = "Up"
            if not dial.created:
                self._emit("ChannelStateChange", half)
        ch.state = "Up"
        self._emit("ChannelStateChange", ch)
        self._emit("Dial", ch, key="peer", dialstatus="ANSWER", dialstring=dialstring)
        if not dial.created:
            self._enter_stasis(dial)
        delay = 0.0
        for step in target.then:
            delay += step.delay
            self._later(dial, delay, self._then_step, dial, step.app, step.data, step.status)

    def _then_step(self, dial: Dialled, app: str, data: str, status: tuple[str, str] | None
                   ) -> None:  # fmt: skip
        half = dial.half
        if not self._alive(dial) or half is None or dial.created:
            return
        if status is not None:
            half.variables[status[0]] = status[1]
            self._emit("ChannelVarset", half, variable=status[0], value=status[1])
        self._far_step(dial, app, data)

    def _enter_stasis(self, dial: Dialled) -> None:
        ch = dial.channel
        if not self.app_connected(dial.app or self.app):
            self._destroy_pair(dial, NORMAL, NORMAL)  # Stasis() fails: nobody sees it
            return
        ch.dialplan = (*ch.dialplan[:3], "Stasis", ",".join([dial.app or self.app, *dial.args]))
        ch.variables["STASISSTATUS"] = ""
        self._emit("ChannelVarset", ch, variable="STASISSTATUS", value="")
        ch.in_stasis = True
        self._emit("StasisStart", ch, args=list(dial.args))

    def _ring_timeout(self, dial: Dialled) -> None:
        """handle_timeout_trip(): the dialled channel is hung up with cause 19, no Dial."""
        if not self._alive(dial) or dial.channel.in_stasis:
            return
        half = dial.half
        if half is not None:
            self._emit("ChannelHangupRequest/far", half, cause=NO_ANSWER)
            self._emit("ChannelHangupRequest", half, cause=NORMAL)
        self._destroy_pair(dial, NO_ANSWER, NO_ANSWER, half_first=True)

    # -- created channels ------------------------------------------------------------------------

    def _created_enters_stasis(self, dial: Dialled) -> None:
        """ari_channel_thread(): Stasis() at once, Down (ChannelDialplan, STASISSTATUS, Start)."""
        ch = dial.channel
        if not self._alive(dial):
            return
        if not self.app_connected(dial.app or self.app):
            self._forget_dialled(dial)  # Stasis() fails: gone, and nobody hears of it
            return
        data = ",".join([dial.app or self.app, *dial.args])
        ch.dialplan = (*ch.dialplan[:3], "Stasis", data)
        self._emit("ChannelDialplan", ch, dialplan_app="Stasis", dialplan_app_data=data)
        ch.variables["STASISSTATUS"] = ""
        self._emit("ChannelVarset", ch, variable="STASISSTATUS", value="")
        ch.in_stasis = True
        self._emit("StasisStart", ch, args=list(dial.args))

    def _run_dial(self, dial: Dialled, timeout: int) -> None:
        """app_control_dial(): ast_call() and `Dial ""`, a timeout datastore if asked."""
        ch = dial.channel
        if not self._alive(dial):
            return
        if dial.target.outcome is Outcome.UNAVAILABLE:
            # ast_call() fails: ast_softhangup_nolock() publishes no HangupRequest.
            self._hangup(ch, "failed", 0)
            return
        self._emit("Dial", ch, key="peer", dialstatus="", dialstring=dial.dialstring)
        self._ring(dial, dialstring="")
        if timeout:
            self._later(dial, timeout, self._dial_timeout, dial)

    def _dial_timeout(self, dial: Dialled) -> None:
        """bridge_timeout() / hangup_channel(): not answered: hung up with cause 19."""
        ch = dial.channel
        if self._alive(dial) and ch.state != "Up":
            self._hangup(ch, "delete", NO_ANSWER)

    # -- hang-up and teardown ----------------------------------------------------------------

    def _hangup(self, ch: SimChannel, how: str, cause: int = NORMAL) -> None:
        dial = self._dialled.get(ch.id)
        if dial is None or dial.channel is not ch or self.channels.get(ch.id) is not ch:
            super()._hangup(ch, how, cause)
            return
        if not ch.in_stasis:  # still ringing: monitor_dial()'s read fails
            if how == "delete":
                self._emit("ChannelHangupRequest", ch)
            self._emit("Dial", ch, key="peer", dialstatus=dial_status(cause),
                       dialstring=dial.dialstring)  # fmt: skip
            self._teardown(dial, cause, how)
            return
        if how != "failed":
            super()._hangup(ch, how, cause)  # HangupRequest, leaves the bridge, StasisEnd
        else:  # ast_call() failed: a soft hang-up that publishes no HangupRequest
            self._hanging_up(ch)
            self._leave_bridge(ch)
            ch.in_stasis = False
            self._emit("StasisEnd", ch)
        ch.variables["STASISSTATUS"] = "SUCCESS"
        self._emit("ChannelVarset", ch, variable="STASISSTATUS", value="SUCCESS")
        # After Stasis() the channel is back in what it ran before: AppDial2, or nothing.
        ch.dialplan = (*ch.dialplan[:3], *(("", "") if dial.created else ORIGINATED))
        self._teardown(dial, cause, how)

    def _teardown(self, dial: Dialled, cause: int, how: str) -> None:
        """Both halves destroyed, in the recorded order (;1 first, the far half hung up)."""
        half = dial.half
        if dial.created or half is None:
            self._destroy_pair(dial, cause, cause)
        elif how == "far":  # the far half hung up first
            self._destroy_pair(dial, cause, cause, half_first=True)
        else:
            self._emit("ChannelHangupRequest/far", half, cause=cause)
            self._destroy_pair(dial, cause, cause, soft_half=True)

    def _destroy_pair(self, dial: Dialled, cause: int, half_cause: int, *,
                      half_first: bool = False, soft_half: bool = False) -> None:  # fmt: skip
        """ChannelDestroyed for ;1 and ;2 (for a created channel only ;1: ;2 is not the app's)."""
        ch, half = dial.channel, dial.half
        pair: list[tuple[SimChannel, int]] = [(ch, cause)]
        if half is not None and not dial.created:
            pair.append((half, half_cause))
        if half_first:
            pair.reverse()
        for one, why in pair:
            if one is half and soft_half:
                self._emit("ChannelHangupRequest", half, cause=NORMAL)
            if one is half:
                one.dialplan = (*one.dialplan[:3], "", "")  # the far half's pbx has ended
            self._emit("ChannelDestroyed", one, cause=why, cause_txt=cause_txt(why))
        self._forget_dialled(dial)

    def _forget_dialled(self, dial: Dialled) -> None:
        dial.cancel()
        for one in (dial.channel, dial.half):
            if one is not None and self.channels.get(one.id) is one:
                del self.channels[one.id]
                one.cancel_timers()
        if self._dialled.pop(dial.channel.id, None) is not None:
            self.counts["originated_gone"] += 1
        call = dial.channel.call
        if call is not None:
            call.finish("app")
            if not self._history and call in self.calls:
                self.calls.remove(call)

    def _owner_of(self, half: SimChannel) -> SimChannel | None:
        found = [d.channel for d in self._dialled.values() if d.half is half]
        return found[0] if found else super()._owner_of(half)

    def leftovers(self) -> SimLeftovers:
        """Also every dialled channel still ringing: nobody but the app will end it."""
        found = super().leftovers()
        ringing = tuple(cid for cid in self._dialled
                        if cid in self.channels and cid not in found.channels)  # fmt: skip
        return replace(found, channels=found.channels + ringing)

    def _cancel_timers(self) -> None:
        for dial in self._dialled.values():
            dial.cancel()
        super()._cancel_timers()

    def _forget_all(self) -> None:
        for dial in self._dialled.values():
            dial.cancel()
        self._dialled.clear()
        super()._forget_all()


def parse_caller_id(text: str) -> tuple[str, str]:
    """ast_callerid_parse() for `Name <number>` or a bare number: (name, number)."""
    name, _, number = text.partition("<")
    if number:
        return name.strip().strip('"'), number.rstrip(">").strip()
    return ("", name.strip())
