"""Calls arriving from the dialplan into the app, shaped like a recorded scenario's caller.

A caller is a Local channel pair: `;1` enters `Stasis()` (the caller the app sees), `;2` runs the
far end's dialplan (listed by GET /channels, never in Stasis). `place_call` is a call arriving
now, with its StasisStart; `add_waiting_caller` one that arrived before this app connection,
whose StasisStart nobody will see (the leftovers a start-up sweep must find).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bridge.tools.sim.core import SimChannel
from bridge.tools.sim.media import SimCall
from bridge.tools.sim.recording import CallerScript, load_recording
from bridge.tools.sim.resources import AsteriskResources
from bridge.tools.sim.targets import far_end_answered, far_exten
from bridge.tools.sim.templates import build_timeline, format_timestamp


class StasisAppNotActive(RuntimeError):
    """A call arrived while no events socket was connected for the app (facts §16)."""


class AsteriskCallers(AsteriskResources):
    """The dialplan side: callers that enter the app."""

    def __init__(self, *, fixtures_dir: Path, **core: Any) -> None:
        super().__init__(fixtures_dir=fixtures_dir, **core)
        self._fixtures_dir = fixtures_dir
        self._scripts: dict[str, CallerScript] = {}
        self._next_local = 0

    async def place_call(
        self,
        scenario: str = "basic_ulaw",
        *,
        args: list[str] | None = None,
        caller_number: str | None = None,
        caller_name: str | None = None,
        exten: str | None = None,
        audio: bytes | None = None,
        audio_start: float | None = None,
        hangup_after: float | None = None,
        echo: bool | None = None,
        audio_format: str = "ulaw",
        app: str | None = None,
    ) -> SimCall:
        """A call from the dialplan into Stasis (of `app`, default the simulator's): its
        StasisStart goes out now.

        `audio` replaces the recorded caller audio: µ-law, or 16 kHz big-endian signed linear
        with `audio_format="slin16"` (see `build_timeline`).

        Raises StasisAppNotActive when no events socket is connected for the app: the real
        `Stasis()` fails at once and no event is ever sent for that call (facts §16).
        """
        if not self.app_connected(app or self.app):
            raise StasisAppNotActive(f"Stasis app '{app or self.app}' not active")
        call, caller = self._new_caller(scenario, args, caller_number, caller_name, exten,
                                        audio, audio_start, hangup_after, echo,
                                        audio_format)  # fmt: skip
        self._enter_app(caller, app)
        self._emit("StasisStart", caller, args=call.args)
        return call

    async def add_waiting_caller(
        self,
        scenario: str = "basic_ulaw",
        *,
        args: list[str] | None = None,
        caller_number: str | None = None,
        caller_name: str | None = None,
        exten: str | None = None,
        audio: bytes | None = None,
        audio_start: float | None = None,
        hangup_after: float | None = None,
        echo: bool | None = None,
        app: str | None = None,
    ) -> SimCall:
        """A caller that entered the app (`app`, default the simulator's) before this bridge
        process connected.

        It is in Stasis (GET /channels, /applications/{app} `channel_ids`) but its
        StasisStart went to a previous app connection, or to nobody: no event now, none
        later. It waits in silence until the app answers, bridges, continues or hangs it up.
        """
        call, caller = self._new_caller(scenario, args, caller_number, caller_name, exten,
                                        audio, audio_start, hangup_after, echo)  # fmt: skip
        self._enter_app(caller, app)
        if app and app != self.app:
            self._other_apps.add(app)  # the app it entered was registered then
        else:
            self._app_registered = True
        return call

    def _enter_app(self, caller: SimChannel, app: str | None) -> None:
        """The caller is in Stasis of `app` rather than of the simulator's own."""
        if app and app != self.app:
            caller.app = app
            _stasis, sep, args = caller.dialplan[4].partition(",")
            caller.dialplan = (*caller.dialplan[:4], app + sep + args)

    def _new_caller(
        self,
        scenario: str,
        args: list[str] | None,
        caller_number: str | None,
        caller_name: str | None,
        exten: str | None,
        audio: bytes | None,
        audio_start: float | None,
        hangup_after: float | None,
        echo: bool | None,
        audio_format: str = "ulaw",
    ) -> tuple[SimCall, SimChannel]:
        """A caller (`Local/...;1`, in Stasis) and its far half (`;2`), shaped like `scenario`."""
        script = self._script(scenario)
        recorded = script.stasis_start.data["channel"]
        call_args = list(script.stasis_start.data["args"]) if args is None else list(args)
        ident = (
            recorded["caller"]["name"] if caller_name is None else caller_name,
            recorded["caller"]["number"] if caller_number is None else caller_number,
        )
        plan = recorded["dialplan"]
        local = f"{recorded['name'].rsplit('-', 1)[0]}-{self._next_local:08x}"  # Local/200@caller
        self._next_local += 1
        now = format_timestamp(time.time())
        caller = SimChannel(
            id=self._new_id(), name=f"{local};1", kind="caller", state="Up", caller=ident,
            connected=ident, creationtime=now, in_stasis=True,
            dialplan=(plan["context"], exten or plan["exten"], plan["priority"], "Stasis",
                      ",".join([self.app, *call_args])),
        )  # fmt: skip
        # The ;2 half runs the far end's dialplan; it is listed by GET /channels, never in Stasis.
        half = SimChannel(
            id=self._new_id(), name=f"{local};2", kind="local", state="Up", caller=("", ""),
            connected=ident, creationtime=now,
            dialplan=("caller", local.split("/")[1].split("@")[0], 2, "Playback", "demo-congrats"),
        )  # fmt: skip
        use_echo = script.echo if echo is None else echo
        timeline = build_timeline(
            script, self._rng, audio, audio_start, hangup_after, use_echo, audio_format
        )
        call = SimCall(self._running_loop(), scenario, caller.id, caller.name, call_args, use_echo,
                       timeline)  # fmt: skip
        caller.call = half.call = call
        self.channels[caller.id], self.channels[half.id] = caller, half
        self.calls.append(call)
        self.counts["callers"] += 1
        far_end_answered(far_exten(caller.name), self.system.variables)
        return call, caller

    def _script(self, scenario: str) -> CallerScript:
        if scenario not in self._scripts:
            recording = load_recording(scenario, self._fixtures_dir)
            self._scripts[scenario] = recording.caller_script()
        return self._scripts[scenario]
