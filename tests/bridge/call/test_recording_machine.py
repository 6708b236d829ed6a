"""Recording, DTMF out and hang-up with a cause in the pure call machine."""

from __future__ import annotations

import json

import pytest

from ari.events import parse_event
from bridge.bot.control import (
    DtmfOut,
    HangupWithCause,
    RecordControl,
    RecordMode,
    TransferMode,
    TransferRequest,
)
from bridge.call.commands import (
    CommandFailed,
    CreateSnoop,
    DrainPlayout,
    HangupChannel,
    PlayoutDrained,
    SendDtmfToCaller,
    StartRecording,
    StopRecording,
)
from bridge.call.machine import CallState
from bridge.call.recorder import RecordPlan, render_record_name
from bridge.call.resources import ResourceKind
from tests.bridge.call.test_machine import Harness
from tests.bridge.call.test_transfer_machine import finish, types, up

BRIDGE = "pcb-br-c1"


def rec_event(kind: str, name: str, target_uri: str, **extra: object) -> object:
    recording = {"name": name, "format": "wav", "target_uri": target_uri, **extra}
    return parse_event(json.dumps({"type": kind, "recording": recording}))


def snoop_start(h: Harness, snoop_id: str) -> None:
    """A snoop's StasisStart, shaped as snoop_record's."""
    channel = {"id": snoop_id, "name": f"Snoop/{h.ids.caller_id}-00000001", "state": "Up",
               "caller": {"name": "", "number": ""}}  # fmt: skip
    raw = {"type": "StasisStart", "args": ["snoop", "in"], "channel": channel,
           "application": "pipecat"}  # fmt: skip
    h.machine.handle(parse_event(json.dumps(raw)), h.now)


def test_mixed_recording_starts_when_the_bot_is_connected_and_stops_at_hang_up() -> None:
    h = Harness("basic_ulaw", record=RecordPlan("calls/c1", RecordMode.MIXED))
    h.setup_to_up()
    (start,) = [c for c in h.take() if isinstance(c, StartRecording)]
    assert (start.target, start.target_id, start.name, start.fmt) == (
        "bridges", h.ids.bridge_id, "calls/c1", "wav")  # fmt: skip
    h.done(start)
    h.machine.handle(rec_event("RecordingStarted", "calls/c1", f"bridge:{h.ids.bridge_id}",
                               state="recording"), h.now)  # fmt: skip
    h.event('"type":"StasisEnd"')  # the caller hangs up
    out = finish(h)
    stop = next(c for c in out if isinstance(c, StopRecording))
    assert stop.name == "calls/c1"
    assert [r.as_dict() for r in h.machine.recordings] == [
        {"name": "calls/c1", "format": "wav", "track": "mixed", "state": "done",
         "file": "calls/c1.wav"},
    ]  # fmt: skip


def test_a_failed_recording_never_ends_the_call() -> None:
    h = Harness("basic_ulaw", record=RecordPlan("calls/c1", RecordMode.MIXED))
    h.setup_to_up()
    (start,) = [c for c in h.take() if isinstance(c, StartRecording)]
    h.done(start)
    h.machine.handle(rec_event("RecordingFailed", "calls/c1", f"bridge:{h.ids.bridge_id}",
                               state="failed", cause="disk full"), h.now)  # fmt: skip
    assert h.machine.state is CallState.UP
    assert h.machine.recordings[0].state == "failed"
    assert h.machine.recordings[0].error == "disk full"
    assert ResourceKind.RECORDING not in h.machine.res.held()
    # A refused start (a 500 for a bad name, a 422 for a format) neither.
    h2 = Harness("basic_ulaw", record=RecordPlan("calls/c2", RecordMode.MIXED))
    h2.setup_to_up()
    (start,) = [c for c in h2.take() if isinstance(c, StartRecording)]
    h2.machine.handle(CommandFailed(start, "Error parsing request", 500), h2.now)
    assert h2.machine.state is CallState.UP
    h2.event('"type":"StasisEnd"')
    out = finish(h2)
    assert StopRecording not in types(out)  # nothing was recording


def test_tracks_record_each_snoop_once_both_its_answer_and_its_stasis_start_are_in() -> None:
    h = Harness("basic_ulaw", record=RecordPlan("calls/c1", RecordMode.TRACKS))
    h.setup_to_up()
    snoops = [c for c in h.take() if isinstance(c, CreateSnoop)]
    assert [(s.spy, s.channel_id) for s in snoops] == [("in", h.ids.caller_id),
                                                      ("out", h.ids.caller_id)]  # fmt: skip
    snoop_in, snoop_out = snoops
    # in: the answer first, then the event (a record before it would get 409)
    h.done(snoop_in)
    assert h.take() == []
    snoop_start(h, snoop_in.snoop_id)
    (rec_in,) = h.take()
    assert isinstance(rec_in, StartRecording)
    assert (rec_in.target, rec_in.target_id, rec_in.name) == ("channels", snoop_in.snoop_id,
                                                             "calls/c1-caller")  # fmt: skip
    # out: the event first, then the answer
    snoop_start(h, snoop_out.snoop_id)
    assert h.take() == []
    h.done(snoop_out)
    (rec_out,) = h.take()
    assert isinstance(rec_out, StartRecording) and rec_out.name == "calls/c1-bot"
    h.done(rec_in)
    h.done(rec_out)
    h.event('"type":"StasisEnd"')
    out = finish(h)
    assert {c.name for c in out if isinstance(c, StopRecording)} == {"calls/c1-caller",
                                                                     "calls/c1-bot"}  # fmt: skip
    assert {c.channel_id for c in out if isinstance(c, HangupChannel)} >= {
        snoop_in.snoop_id, snoop_out.snoop_id}  # fmt: skip
    assert [r.state for r in h.machine.recordings] == ["done", "done"]


def test_the_bot_starts_and_stops_recording_and_each_start_is_a_new_file() -> None:
    h = Harness("basic_ulaw", record=RecordPlan("calls/c1"))  # mode none: on request
    h.setup_to_up()
    assert StartRecording not in types(h.take())
    h.machine.handle(RecordControl(True), h.now)
    (start,) = h.take()
    assert isinstance(start, StartRecording) and start.name == "calls/c1"
    h.done(start)
    h.machine.handle(RecordControl(False), h.now)
    (stop,) = h.take()
    assert isinstance(stop, StopRecording)
    h.done(stop)
    h.machine.handle(RecordControl(True), h.now)
    (again,) = h.take()
    assert isinstance(again, StartRecording) and again.name == "calls/c1-2"


def test_the_recording_survives_a_transfer_unless_configured_otherwise() -> None:
    for keep in (True, False):
        h = Harness("transfer_originate_answer",
                    record=RecordPlan("calls/c1", RecordMode.MIXED, keep_on_transfer=keep))
        h.setup_to_up()
        h.done(next(c for c in h.take() if isinstance(c, StartRecording)))
        h.machine.handle(TransferRequest("Local/233@caller", TransferMode.BLIND), h.now)
        (originate,) = h.take()
        h.done(originate)
        out = h.take()
        assert (StopRecording in types(out)) is (not keep)


def test_hangup_with_a_cause_plays_out_then_tells_the_far_end() -> None:
    h = up("basic_ulaw")
    h.machine.handle(HangupWithCause("busy"), h.now)
    assert types(h.take()) == [DrainPlayout]
    assert h.machine.state is CallState.DRAINING
    h.machine.handle(PlayoutDrained(), h.now)
    out = finish(h)
    (hangup,) = [c for c in out if isinstance(c, HangupChannel) and
                 c.channel_id == h.ids.caller_id]  # fmt: skip
    assert hangup.reason == "busy"
    assert "busy" in h.machine.end_reason


def test_dtmf_out_goes_to_the_caller_through_ari() -> None:
    h = up("basic_ulaw")
    h.machine.handle(DtmfOut("123#"), h.now)
    (send,) = h.take()
    assert isinstance(send, SendDtmfToCaller)
    assert (send.channel_id, send.digits) == (h.ids.caller_id, "123#")
    h.machine.handle(CommandFailed(send, "Channel not found", 404), h.now)
    assert h.machine.state is CallState.UP  # never the call's end


@pytest.mark.parametrize(
    ("template", "name"),
    [
        ("pipecat/{date}/{start}-{call_id}", "pipecat/1970-01-01/19700101T000000Z-c1"),
        ("{call_id}", "c1"),
        ("a/b.c/{channel_id}", "a/b.c/1.2"),
    ],
)
def test_record_names(template: str, name: str) -> None:
    assert render_record_name(template, call_id="c1", channel_id="1.2", at=0.0) == name


@pytest.mark.parametrize(
    "template", ["../x", "a/../../x", "/abs", "a//b", "a/", "{nope}", "a b", "{call_id}/.."]
)
def test_record_names_that_could_escape_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="record-name"):
        render_record_name(template, call_id="c1", channel_id="1.2", at=0.0)
