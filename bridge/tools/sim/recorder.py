"""ARI recordings: `POST /bridges/{id}/record`, `POST /channels/{id}/record`, live and stored.

Recorded (bridge_record_mixed, snoop_record):
* record -> 201 `queued` with `Location: /ari/recordings/live/<URL-encoded name>`, then
  `RecordingStarted` (`recording`); a bridge gets a hidden `Recorder/ARI-NNNNNNNN;2` member
  (BRIDGEPEER events only) and so mixes: softmix, continuous RTP to the bot's leg;
* the same name while it records (or stored, with `ifExists=fail`) -> 409; a name with `..`
  -> 500 "Error parsing request"; an unknown format -> 422. Each 409 / 500 still adds and then
  removes a transient Recorder (BRIDGEPEER twice); the 422 comes before it;
* `POST /recordings/live/{name}/stop` -> 204, `RecordingFinished` (`done`, `duration` in whole
  seconds), the Recorder leaves; then `GET /recordings/live/{name}` 404, the stored list
  `[{"name","format"}]` (names keep their folder), `/stored/{name}/file` 200 `audio/wav`
  (8 kHz 16-bit mono, both sides of the call), `DELETE /recordings/stored/{name}` 204;
* a snoop's recording: what comes from the spied channel (`spy=in`) or goes to it (`out`).

From Asterisk 23.4.1's source (res/ari/resource_bridges.c ast_ari_bridges_record,
resource_channels.c ast_ari_channels_record, res/res_stasis_recording.c), not recorded:
* the checks in their order (`terminateOn invalid`, `ifExists invalid`: 400, after the Recorder
  joined; a channel: 404 / 409 first, 400 for negative maxima, 422 for the format);
* `record_file()` fails a channel recording of a bridged channel: 201, then `RecordingFailed`
  with `cause` "Cannot record channel while in bridge" (the LiveRecording has no `duration`);
* a full disk is no RecordingFailed: ast_play_and_record_full() cannot open the file (nothing
  is written, duration 0, nothing stored) or stops at its first failed write, and record_file()
  publishes `RecordingFinished` `done` either way (main/app.c __ast_play_and_record);
* the bridge destroyed, or its last other member gone (the Recorder is LONELY), ends the
  recording as a stop does; a recorded channel hung up ends its recording before its StasisEnd;
* `maxDurationSeconds` ends it (done); `DELETE /recordings/live/{name}` cancels it
  (`RecordingFinished` `canceled`, nothing stored).

Knobs: `sim.recording_faults.append(RecordingFault.failed(cause))` or
`RecordingFault.disk_full(after=seconds)` (the next recordings, in order);
`sim.stored_recordings` / `sim.live_recordings` (name -> recording), each stored one with its
file bytes (`data`) and audio (`samples`).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np

from bridge.tools.sim.audio import Samples, encode, resample
from bridge.tools.sim.bridgemedia import AsteriskBridgeMedia
from bridge.tools.sim.control import c_atol
from bridge.tools.sim.core import SimBridge, SimChannel
from bridge.tools.sim.mixing import RATE, Track, packet_samples, wav_bytes
from bridge.tools.sim.templates import KNOWN_FORMATS, Reply, error_reply

# File extensions the lab's format modules register (format_*.c `.exts` of 23.4.1).
FILE_FORMATS = frozenset({
    "g719", "g723", "g723sf", "g726-40", "g726-32", "g726-24", "g726-16", "g729", "gsm",
    "h263", "h264", "ilbc", "alaw", "al", "alw", "pcm", "ulaw", "ul", "mu", "ulw", "g722",
    "au", "siren14", "siren7", "sln", "slin", "raw", "sln12", "sln16", "sln24", "sln32",
    "sln44", "sln48", "sln96", "sln192", "vox", "wav16", "wav", "WAV", "wav49",
})  # fmt: skip
PARSE_ERROR = error_reply(500, "Error parsing request")
NOT_FOUND = error_reply(404, "Recording not found", "Not Found")
BRIDGED = "Cannot record channel while in bridge"


@dataclass(frozen=True, slots=True)
class RecordingFault:
    """How the next recording goes wrong (`sim.recording_faults`)."""

    cause: str | None = None  # RecordingFailed with this cause instead of RecordingStarted
    disk_full_after: float | None = None  # writes fail this long after the start

    @classmethod
    def failed(cls, cause: str = BRIDGED) -> RecordingFault:
        return cls(cause=cause)

    @classmethod
    def disk_full(cls, after: float = 0.0) -> RecordingFault:
        return cls(disk_full_after=after)


@dataclass(eq=False, slots=True)
class LiveRecording:
    name: str
    fmt: str
    target: str  # "bridge:<id>" | "channel:<id>"
    if_exists: str
    max_seconds: int
    state: str = "queued"
    started: float = 0.0  # loop.time() of RecordingStarted
    track: Track = field(default_factory=Track)
    recorder: str | None = None  # the hidden Recorder member of a bridge recording
    fault: RecordingFault | None = None
    writable_until: float = math.inf  # a full disk: nothing is written after this
    end: asyncio.TimerHandle | None = None

    @property
    def kind(self) -> str:
        return self.target.partition(":")[0]

    @property
    def target_id(self) -> str:
        return self.target.partition(":")[2]

    def values(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.fmt, "state": self.state,
                "target_uri": self.target}  # fmt: skip

    def add(self, now: float, samples: Samples) -> None:
        if self.state == "recording" and now < self.writable_until:
            self.track.add(now - self.started, samples)


@dataclass(frozen=True, slots=True)
class StoredRecording:
    name: str
    fmt: str
    samples: Samples  # 8 kHz int16, what was recorded
    data: bytes  # the file as GET /recordings/stored/{name}/file returns it

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


def file_bytes(samples: Samples, fmt: str) -> bytes:
    """The stored file in its format (the encodings the simulator can write; others empty)."""
    if fmt in ("wav", "WAV"):
        return wav_bytes(samples)
    if fmt == "wav16":
        return wav_bytes(resample(samples, RATE, 16000), 16000)
    if fmt in ("sln", "slin", "raw"):
        return samples.astype("<i2").tobytes()
    if fmt in ("ulaw", "ul", "mu", "pcm", "ulw"):
        return encode(samples, RATE, "ulaw")
    if fmt in ("alaw", "al", "alw"):
        return encode(samples, RATE, "alaw")
    return b""


def name_invalid(name: str) -> bool:
    """stasis_app_control_record(): no name (EINVAL), or a folder that would leave the
    recording directory (ast_safe_mkdir fails: both recorded as 500)."""
    return not name or ".." in name.split("/")[:-1] or name.split("/")[-1] == ".."


class AsteriskRecorder(AsteriskBridgeMedia):
    """Bridge and channel recordings, and the recordings resource."""

    def __init__(self, **core: Any) -> None:
        super().__init__(**core)
        self.live_recordings: dict[str, LiveRecording] = {}
        self.stored_recordings: dict[str, StoredRecording] = {}
        self.recording_faults: deque[RecordingFault] = deque()

    # -- starting ----------------------------------------------------------------------------

    def _record_options_error(self, q: dict[str, str]) -> Reply | None:
        """The option checks both record resources make once they have a target."""
        if (q.get("terminateOn") or "none").lower() not in ("none", "any", "*", "#"):
            return error_reply(400, "terminateOn invalid")
        if (q.get("ifExists") or "fail").lower() not in ("fail", "overwrite", "append"):
            return error_reply(400, "ifExists invalid")
        return None

    def _new_recording(self, q: dict[str, str], target: str) -> LiveRecording | Reply:
        """stasis_app_control_record(): the name's checks, then the recording, queued."""
        name = q.get("name", "")
        if name_invalid(name) or c_atol(q.get("maxDurationSeconds")) < 0:
            return PARSE_ERROR
        if_exists = (q.get("ifExists") or "fail").lower()
        if name in self.live_recordings or (if_exists == "fail" and name in self.stored_recordings):
            message = f"Recording '{name}' already exists and can not be overwritten"
            return error_reply(409, message)
        recording = LiveRecording(name, q.get("format", ""), target, if_exists,
                                  max(0, c_atol(q.get("maxDurationSeconds"))))  # fmt: skip
        if self.recording_faults:
            recording.fault = self.recording_faults.popleft()
        self.live_recordings[name] = recording
        return recording

    def _created(self, recording: LiveRecording, after: Any) -> Reply:
        location = f"/ari/recordings/live/{quote(recording.name, safe='!*()')}"
        return Reply(201, self._templates.recording(recording.values()), location=location,
                     after=after)  # fmt: skip

    async def _record_bridge(self, q: dict[str, str], bid: str) -> Reply:
        bridge = self.bridges.get(bid)
        if bridge is None:
            return error_reply(404, "Bridge not found", "Not found")
        if q.get("format") not in FILE_FORMATS:
            return error_reply(422, "specified format is unknown on this system")
        fmt = q.get("recorder_format")
        if fmt and fmt not in KNOWN_FORMATS:
            return error_reply(422, "specified recorder_format is unknown on this system")
        recorder = self._join_hidden(bridge, "Recorder/ARI")
        found = self._record_options_error(q) or self._new_recording(q, f"bridge:{bid}")
        if isinstance(found, Reply):
            # The Recorder is hung up as the handler returns (RAII): after the answer.
            found.after = lambda: self._leave_hidden(bridge, recorder)
            return found
        found.recorder = recorder
        return self._created(found, lambda: self._start_recording(found))

    async def _record_channel(self, q: dict[str, str], cid: str) -> Reply:
        for key, what in (("maxDurationSeconds", "max_duration_seconds"),
                          ("maxSilenceSeconds", "max_silence_seconds")):  # fmt: skip
            if c_atol(q.get(key)) < 0:
                return error_reply(400, f"{what} cannot be negative")
        ch = self._control(cid)
        if isinstance(ch, Reply):
            return ch
        refused = self._record_options_error(q)
        if refused is not None:
            return refused
        if q.get("format") not in FILE_FORMATS:
            return error_reply(422, "specified format is unknown on this system")
        found = self._new_recording(q, f"channel:{cid}")
        if isinstance(found, Reply):
            return found
        return self._created(found, lambda: self._when_idle(ch, lambda: self._record_on(ch, found)))

    def _record_on(self, ch: SimChannel, recording: LiveRecording) -> None:
        """record_file() on the channel's command queue."""
        if self.live_recordings.get(recording.name) is not recording:
            return
        if self.channels.get(ch.id) is not ch or not ch.in_stasis:
            del self.live_recordings[recording.name]
            return
        if ch.bridge_id is not None:
            self._fail_recording(recording, BRIDGED)
            return
        ch.recording = recording.name
        self._start_recording(recording)

    def _start_recording(self, recording: LiveRecording) -> None:
        if self.live_recordings.get(recording.name) is not recording:
            return
        fault = recording.fault
        if fault is not None and fault.cause is not None:
            self._fail_recording(recording, fault.cause)
            return
        now = self._running_loop().time()
        recording.state, recording.started = "recording", now
        self._emit_recording("RecordingStarted", recording)
        loop = self._running_loop()
        if fault is not None and fault.disk_full_after is not None:
            recording.writable_until = now + fault.disk_full_after
            if fault.disk_full_after == 0:  # the file never opened: done at once, nothing kept
                self._finish_recording(recording, "done")
                return
            recording.end = loop.call_later(fault.disk_full_after, self._finish_recording,
                                            recording, "done")  # fmt: skip
        elif recording.max_seconds:
            recording.end = loop.call_later(recording.max_seconds, self._finish_recording,
                                            recording, "done")  # fmt: skip

    def _fail_recording(self, recording: LiveRecording, cause: str) -> None:
        """recording_fail(): state `failed` with its cause; the recording is forgotten."""
        recording.state = "failed"
        self.live_recordings.pop(recording.name, None)
        self._emit_recording("RecordingFailed", recording, cause=cause)
        self._release(recording)

    # -- ending -----------------------------------------------------------------------------

    def _finish_recording(self, recording: LiveRecording, state: str) -> None:
        """The file is closed: RecordingFinished (done / canceled), stored unless canceled."""
        if self.live_recordings.get(recording.name) is not recording:
            return
        del self.live_recordings[recording.name]
        if recording.end is not None:
            recording.end.cancel()
        now = self._running_loop().time()
        seconds = max(0.0, min(now, recording.writable_until) - recording.started)
        written = recording.fault is None or recording.fault.disk_full_after != 0
        samples = recording.track.render(seconds if written else 0.0)
        recording.state = state
        self._emit_recording("RecordingFinished", recording, duration=len(samples) // RATE)
        if state == "done" and written:
            self._store(recording, samples)
        self._release(recording)

    def _store(self, recording: LiveRecording, samples: Samples) -> None:
        old = self.stored_recordings.get(recording.name)
        if recording.if_exists == "append" and old is not None:
            samples = np.concatenate([old.samples, samples])
        stored = StoredRecording(recording.name, recording.fmt, samples,
                                 file_bytes(samples, recording.fmt))  # fmt: skip
        self.stored_recordings[recording.name] = stored
        self.sounds[f"recording:{recording.name}"] = stored.seconds  # playable as recording:

    def _release(self, recording: LiveRecording) -> None:
        """The Recorder leaves its bridge; a channel's command queue moves on."""
        if recording.kind == "bridge":
            bridge = self.bridges.get(recording.target_id)
            if bridge is not None and recording.recorder is not None:
                self._leave_hidden(bridge, recording.recorder)
            return
        ch = self.channels.get(recording.target_id)
        if ch is not None and ch.recording == recording.name:
            ch.recording = None
            self._run_queued(ch)

    def _emit_recording(self, kind: str, recording: LiveRecording, **extra: Any) -> None:
        app = None
        if recording.kind == "bridge":
            bridge = self.bridges.get(recording.target_id)
            app = bridge.app if bridge is not None else None
        else:
            ch = self.channels.get(recording.target_id)
            app = ch.app if ch is not None else None
        self._emit(kind, app=app or None, recording={**recording.values(), **extra})

    def _end_recordings(self, *, bridge: SimBridge | None = None, ch: SimChannel | None = None
                        ) -> None:  # fmt: skip
        """The recorded bridge or channel is going: its recordings finish as a stop does."""
        target = f"bridge:{bridge.id}" if bridge is not None else f"channel:{ch.id if ch else ''}"
        for recording in [r for r in self.live_recordings.values() if r.target == target]:
            if recording.state == "recording":
                self._finish_recording(recording, "done")
            else:
                self.live_recordings.pop(recording.name, None)

    def _kick_hidden(self, bridge: SimBridge) -> None:
        self._end_recordings(bridge=bridge)
        super()._kick_hidden(bridge)

    def _hanging_up(self, ch: SimChannel) -> None:
        self._end_recordings(ch=ch)  # record_file() sees the hang-up: the file is closed
        super()._hanging_up(ch)

    # -- audio -------------------------------------------------------------------------------

    def _far_end_rtp(self, ch: SimChannel, packet: bytes) -> None:
        super()._far_end_rtp(ch, packet)
        if self.live_recordings:
            samples = packet_samples(packet)
            if samples is not None:
                self._audio_from(ch, samples)

    def _bot_audio(self, em: SimChannel, packet: bytes) -> None:
        super()._bot_audio(em, packet)
        if not self.live_recordings:
            return
        samples = packet_samples(packet)
        bridge = self.bridges.get(em.bridge_id or "")
        if samples is None or bridge is None:
            return
        now = self._running_loop().time()
        for recording in self._recordings_of(f"bridge:{bridge.id}"):
            recording.add(now, samples)
        for cid in bridge.channels:
            member = self.channels.get(cid)
            if member is None or member.kind != "caller":
                continue
            self._audio_to(member, samples)
            call = member.call
            if call is not None and call.echo and call.em_channel_id == em.id:
                self._audio_from(member, samples)  # Echo(): it comes straight back

    def _audio_from(self, ch: SimChannel, samples: Samples) -> None:
        """Audio from `ch`'s far end: its bridge's recordings, its own, snoops spying in."""
        now = self._running_loop().time()
        targets = [f"channel:{ch.id}"]
        if ch.bridge_id is not None:
            targets.append(f"bridge:{ch.bridge_id}")
        targets += [f"channel:{s.id}" for s in self._snoops_on(ch, ("in", "both"))]
        for target in targets:
            for recording in self._recordings_of(target):
                recording.add(now, samples)

    def _audio_to(self, ch: SimChannel, samples: Samples) -> None:
        """Audio the bridge sends towards `ch`: snoops spying out."""
        now = self._running_loop().time()
        for snoop in self._snoops_on(ch, ("out", "both")):
            for recording in self._recordings_of(f"channel:{snoop.id}"):
                recording.add(now, samples)

    def _snoops_on(self, ch: SimChannel, directions: tuple[str, ...]) -> list[SimChannel]:
        return [s for s in self.channels.values()
                if s.kind == "snoop" and s.spied == ch.id and s.spy in directions]  # fmt: skip

    def _recordings_of(self, target: str) -> list[LiveRecording]:
        return [r for r in self.live_recordings.values() if r.target == target]

    # -- /recordings ---------------------------------------------------------------------------

    async def _get_live(self, q: dict[str, str], name: str) -> Reply:
        recording = self.live_recordings.get(name)
        if recording is None:
            return NOT_FOUND
        return Reply(200, self._templates.recording(recording.values()))

    async def _stop_live(self, q: dict[str, str], name: str) -> Reply:
        return self._control_live(name, "done")

    async def _cancel_live(self, q: dict[str, str], name: str) -> Reply:
        return self._control_live(name, "canceled")

    def _control_live(self, name: str, state: str) -> Reply:
        """control_recording(): 404 unknown; 409 "Recording not in session" unless it records."""
        recording = self.live_recordings.get(name)
        if recording is None:
            return NOT_FOUND
        if recording.state != "recording":
            return error_reply(409, "Recording not in session")
        return Reply(204, after=lambda: self._finish_recording(recording, state))

    async def _list_stored(self, q: dict[str, str]) -> Reply:
        return Reply(200, [self._stored_body(r) for _, r in sorted(self.stored_recordings.items())])

    def _stored_body(self, recording: StoredRecording) -> dict[str, Any]:
        return {**self._templates.stored_recording, "name": recording.name,
                "format": recording.fmt}  # fmt: skip

    async def _get_stored(self, q: dict[str, str], name: str) -> Reply:
        recording = self.stored_recordings.get(name)
        return NOT_FOUND if recording is None else Reply(200, self._stored_body(recording))

    async def _get_stored_file(self, q: dict[str, str], name: str) -> Reply:
        recording = self.stored_recordings.get(name)
        if recording is None:
            return NOT_FOUND  # `..` names too: the escape attempt is only logged
        return Reply(200, recording.data, content_type=f"audio/{recording.fmt}")

    async def _delete_stored(self, q: dict[str, str], name: str) -> Reply:
        if self.stored_recordings.pop(name, None) is None:
            return NOT_FOUND
        self.sounds.pop(f"recording:{name}", None)
        return Reply(204)

    def _cancel_timers(self) -> None:
        for recording in self.live_recordings.values():
            if recording.end is not None:
                recording.end.cancel()
        super()._cancel_timers()

    def _forget_all(self) -> None:
        for recording in self.live_recordings.values():
            if recording.end is not None:
                recording.end.cancel()
        self.live_recordings.clear()  # what was stored is on disk: it stays
        super()._forget_all()
