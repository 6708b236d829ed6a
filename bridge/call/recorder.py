"""Recording a call through ARI: the recording half of the ARI call machine. Pure.

Files are written by Asterisk, under its own recording directory on the Asterisk host
(astspooldir/recording), named by `--record-name` (it may hold a folder, never "..").

    mixed   one file, `<name>.<fmt>`: a recorder in the call's bridge hears both sides.
            It stays through a transfer, since the bridge does (the caller and the person).
    tracks  two files: `<name>-caller` (what the caller says: a snoop spy=in on the caller's
            channel) and `<name>-bot` (what the caller hears: spy=out; after a transfer,
            the person). A snoop can be recorded only once its StasisStart is in (409
            before, recorded: snoop_record), so each track waits for both its REST answer
            and its event.

Every recording and snoop is a row of the call's table: stopped (and so finalised) by
teardown, before what it records goes. A recording that fails (a full disk: RecordingFailed)
is noted and never ends the call. Each start after a stop is a new segment, `<name>-2`...:
names are never reused (ifExists=fail).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from ari.events import RecordingEvent
from bridge.bot.control import RecordMode
from bridge.call.commands import (
    CommandFailed,
    CreateSnoop,
    HangupChannel,
    StartRecording,
    StopRecording,
)
from bridge.call.hooks import MachineHooks
from bridge.call.resources import Life, ResourceKind, Resources

K = ResourceKind

RECORD_FORMATS = ("wav", "gsm", "ulaw", "alaw", "sln", "sln16", "g722", "wav16")
DEFAULT_RECORD_NAME = "pipecat/{date}/{start}-{call_id}"
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def render_record_name(template: str, *, call_id: str, channel_id: str, at: float) -> str:
    """--record-name for one call: {call_id}, {channel_id}, {start} (UTC, 20261201T191800Z),
    {date} (UTC, 2026-12-01). ValueError if the result could leave Asterisk's recording
    directory or is not a plain path (Asterisk answers a ".." with a 500, not a 400)."""
    utc = time.gmtime(at)
    try:
        name = template.format(call_id=call_id, channel_id=channel_id,
                               start=time.strftime("%Y%m%dT%H%M%SZ", utc),
                               date=time.strftime("%Y-%m-%d", utc))  # fmt: skip
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"--record-name {template!r}: unknown placeholder {exc}") from None
    segments = name.split("/")
    if (
        not name
        or len(name) > 200
        or any(seg in ("", ".", "..") or not _NAME_CHARS.fullmatch(seg) for seg in segments)
    ):
        raise ValueError(
            f"--record-name {template!r} gives {name[:80]!r}: use folders and names of "
            "A-Z a-z 0-9 . _ - (no '..', no leading or doubled '/')"
        )
    return name


# snoop row -> (its recording's row, spy direction, file suffix)
_TRACKS = {
    K.SNOOP_IN: (K.TRACK_IN, "in", "-caller"),
    K.SNOOP_OUT: (K.TRACK_OUT, "out", "-bot"),
}


@dataclass(frozen=True, slots=True)
class RecordPlan:
    """`mode` none: record only when the bot asks (mixed, unless it says tracks)."""

    name: str  # the rendered --record-name: the file's name without extension
    mode: RecordMode = RecordMode.NONE
    fmt: str = "wav"
    keep_on_transfer: bool = True


@dataclass(slots=True)
class RecordingResult:
    """One file of the call's, as the end log line and the read model report it."""

    name: str
    fmt: str
    track: str  # mixed, caller, bot
    state: str = "starting"  # starting, recording, done, failed
    error: str = ""
    kind: ResourceKind = field(default=K.RECORDING, repr=False)

    def as_dict(self) -> dict[str, str]:
        # `file`: under Asterisk's recording directory (astspooldir/recording) on its host.
        out = {"name": self.name, "format": self.fmt, "track": self.track, "state": self.state,
               "file": f"{self.name}.{self.fmt}"}  # fmt: skip
        if self.error:
            out["error"] = self.error
        return out


class CallRecorder(MachineHooks):
    """Mixed into the ARI call machine, which provides these."""

    res: Resources
    record_plan: RecordPlan | None
    recordings: list[RecordingResult]
    _segments: int
    _snoop_ids: dict[ResourceKind, str]

    def _snoop_id(self, spy: str, segment: int) -> str:
        raise NotImplementedError

    # ---- starting, stopping -------------------------------------------------------------

    def _recording(self) -> bool:
        kinds = (K.RECORDING, K.TRACK_IN, K.TRACK_OUT, K.SNOOP_IN, K.SNOOP_OUT)
        return any(self.res.is_held(k) for k in kinds)

    def _start_recording(self, mode: RecordMode | None = None) -> None:
        plan = self.record_plan
        if plan is None or self._recording():
            return
        mode = mode or (plan.mode if plan.mode is not RecordMode.NONE else RecordMode.MIXED)
        self._segments += 1
        name = plan.name if self._segments == 1 else f"{plan.name}-{self._segments}"
        if mode is RecordMode.MIXED:
            self._record(K.RECORDING, "bridges", self._bridge_id, name, "mixed")
            return
        for snoop, (_track, spy, suffix) in _TRACKS.items():
            snoop_id = self._snoop_id(spy, self._segments)
            self._snoop_ids[snoop] = snoop_id
            self.res.creating(snoop, HangupChannel(snoop_id))
            self._emit(CreateSnoop(snoop_id, self._caller_id, spy))
            self.recordings.append(RecordingResult(name + suffix, plan.fmt,
                                                   "caller" if spy == "in" else "bot",
                                                   kind=_track))  # fmt: skip

    def _record(self, kind: ResourceKind, target: str, target_id: str, name: str,
                track: str) -> None:  # fmt: skip
        assert self.record_plan is not None
        fmt = self.record_plan.fmt
        self.res.creating(kind, StopRecording(name))
        self._emit(StartRecording(target, target_id, name, fmt))
        if track == "mixed":
            self.recordings.append(RecordingResult(name, fmt, track, kind=kind))

    def _stop_recording(self) -> None:
        for kind in (K.RECORDING, K.TRACK_IN, K.TRACK_OUT, K.SNOOP_IN, K.SNOOP_OUT):
            self._teardown(kind)

    # ---- answers and events -------------------------------------------------------------

    def _snoop_created(self, cmd: CreateSnoop) -> None:
        kind = self._snoop_kind(cmd.snoop_id)
        if kind is None:
            return
        delete = self.res.created(kind)
        if delete is not None:
            self._emit_teardown(delete)
        self._maybe_record_track(kind)

    def _snoop_in_app(self, channel_id: str) -> bool:
        kind = self._snoop_kind(channel_id)
        if kind is None:
            return False
        self.res[kind].in_app = True
        self._maybe_record_track(kind)
        return True

    def _snoop_leaving(self, channel_id: str) -> bool:
        kind = self._snoop_kind(channel_id)
        if kind is None:
            return False
        if self.res.life(kind) is Life.UP:
            self.res.gone(kind)  # somebody else hung it up: its recording ends with it
        return True

    def _maybe_record_track(self, snoop: ResourceKind) -> None:
        row = self.res[snoop]
        track, _spy, _suffix = _TRACKS[snoop]
        if row.life is not Life.UP or not row.in_app or self.res.life(track) is not Life.NONE:
            return
        result = self._result_of(track)
        if result is not None and result.state == "starting":
            self._record(track, "channels", self._snoop_ids[snoop], result.name, "track")

    def _recording_started(self, cmd: StartRecording) -> None:
        kind = self._kind_of(cmd.name)
        if kind is None:
            return
        delete = self.res.created(kind)
        if delete is not None:
            self._emit_teardown(delete)
        result = self._result_named(cmd.name)
        if result is not None and result.state == "starting":
            result.state = "recording"
            self._note("recording_started", name=cmd.name, format=cmd.fmt, track=result.track)

    def _recording_failed(self, failed: CommandFailed) -> None:
        """A refused start (a bad name, an unknown format: never the call's end)."""
        cmd = failed.command
        assert isinstance(cmd, StartRecording | CreateSnoop)
        if isinstance(cmd, CreateSnoop):
            kind = self._snoop_kind(cmd.snoop_id)
            if kind is not None:
                self.res.creation_failed(kind, answered=failed.status is not None)
                self._teardown(kind)
                self._fail(self._result_of(_TRACKS[kind][0]), f"snoop: {failed.error}")
            return
        kind = self._kind_of(cmd.name)
        if kind is not None:
            delete = self.res.creation_failed(kind, answered=failed.status is not None)
            if delete is not None:
                self._emit_teardown(delete)
        self._fail(self._result_named(cmd.name), failed.error)

    def _recording_stopped(self, cmd: StopRecording, failed: CommandFailed | None) -> None:
        result = self._result_named(cmd.name)
        if result is None or result.state == "failed":
            return
        if failed is None or failed.status == 404:  # 404: it had ended already
            result.state = "done" if result.state == "recording" else result.state
            if result.state == "done":
                self._note("recording_stopped", name=result.name, track=result.track)
        else:
            self._fail(result, f"stop: {failed.error}")

    def _on_recording_event(self, event: RecordingEvent) -> None:
        result = self._result_named(event.name)
        if result is None:
            return
        kind = result.kind
        if event.kind == "RecordingFailed":
            if self.res.life(kind) is Life.UP:
                self.res.gone(kind)
            self._fail(result, event.cause or "failed")
        elif event.kind == "RecordingFinished" and result.state in ("starting", "recording"):
            result.state = "done"
            if self.res.life(kind) is Life.UP:
                self.res.gone(kind)  # ended on its own (its bridge or snoop went)
        elif event.kind == "RecordingStarted" and result.state == "starting":
            result.state = "recording"

    def _fail(self, result: RecordingResult | None, error: str) -> None:
        if result is None or result.state == "failed":
            return
        result.state, result.error = "failed", error
        self._note("recording_failed", name=result.name, track=result.track, error=error)

    # ---- lookups ------------------------------------------------------------------------

    def _snoop_kind(self, channel_id: str) -> ResourceKind | None:
        for kind, ident in self._snoop_ids.items():
            if ident == channel_id and self.res.is_held(kind):
                return kind
        return None

    def _result_named(self, name: str) -> RecordingResult | None:
        for result in reversed(self.recordings):
            if result.name == name:
                return result
        return None

    def _result_of(self, kind: ResourceKind) -> RecordingResult | None:
        for result in reversed(self.recordings):
            if result.kind is kind:
                return result
        return None

    def _kind_of(self, name: str) -> ResourceKind | None:
        result = self._result_named(name)
        return result.kind if result is not None else None
