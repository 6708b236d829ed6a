"""The later lab recordings (transfer, hang-up reasons, DTMF out, recording, snoop) as the loader
reads them: which StasisStarts are callers, and the per-channel keying the digests use."""

from __future__ import annotations

import pytest

from bridge.tools.sim.recording import load_recording
from bridge.tools.sim.templates import Templates

LATER = [
    "transfer_originate_answer",
    "transfer_originate_busy",
    "transfer_originate_noanswer",
    "transfer_create_dial_busy",
    "hangup_reason",
    "dtmf_to_caller",
    "bridge_record_mixed",
    "snoop_record",
]


@pytest.mark.parametrize(
    ("scenario", "callers"),
    [
        ("transfer_originate_answer", ["1796140189.1765"]),
        ("transfer_create_dial_busy", ["1796140223.1780"]),
        ("snoop_record", ["1796140325.1812"]),
        ("hangup_reason", ["1796140233.1787", "1796140235.1790"]),
        ("outbound_originate", ["1795313596.15"]),  # an originated caller stays a caller
        ("concurrent", ["1795313604.19", "1795313604.25", "1795313604.18", "1795313604.23",
                        "1795313604.21"]),
    ],
)  # fmt: skip
def test_targets_snoops_and_halves_are_not_callers(scenario: str, callers: list[str]) -> None:
    assert load_recording(scenario).caller_ids() == callers


@pytest.mark.parametrize("scenario", LATER)
def test_per_channel_keying_matches_the_digest(scenario: str) -> None:
    recording = load_recording(scenario)
    digest = {key.split(" ")[0]: value for key, value in recording.summary["per_channel"].items()}
    assert recording.per_channel_types() == digest


def test_the_caller_script_of_a_snooped_call_is_the_caller() -> None:
    script = load_recording("snoop_record").caller_script()
    assert script.caller_id == "1796140325.1812"
    assert script.stasis_start.channel_name.startswith("Local/205@caller-")
    assert script.inbound_rtp  # the beep, then the echo of the recorded 1300 Hz


def _target_free(scenario: str, exten: str) -> list[tuple[str, str]]:
    """The recording's frames that are not about the transfer target, `exten` put back to 207."""
    out = []
    for event in load_recording(scenario).events:
        channel = event.data.get("channel") or event.data.get("peer") or {}
        if not str(channel.get("id", "")).startswith("xfer"):
            out.append((event.type, event.raw.replace(f"Local/{exten}@", "Local/207@")))
    return out


@pytest.mark.parametrize(("scenario", "exten"), [
    ("synthetic_transfer_originate_congestion", "210"),
    ("synthetic_transfer_originate_unavailable", "nosuch"),
])  # fmt: skip
def test_synthetic_fixtures_change_only_the_target(scenario: str, exten: str) -> None:
    """Derived from transfer_originate_busy (their notes.md): the caller's side is the recording."""
    assert _target_free(scenario, exten) == _target_free("transfer_originate_busy", "207")
    busy, synthetic = load_recording("transfer_originate_busy"), load_recording(scenario)
    assert [(ex.method, ex.status) for ex in synthetic.rest] == [
        (ex.method, ex.status) for ex in busy.rest
    ]
    assert synthetic.caller_ids() == busy.caller_ids()


@pytest.mark.parametrize("scenario", LATER)
def test_templates_render_the_later_recordings_byte_exact(scenario: str) -> None:
    """Every event the simulator emits for these flows comes from a recorded template whose
    keys and order are the recording's: rendering the recorded values gives its raw frame."""
    templates = Templates.from_recordings()
    for event in load_recording(scenario).events:
        kind = event.type
        if kind == "ChannelHangupRequest" and "soft" not in event.data:
            kind = "ChannelHangupRequest/far"
        assert list(event.data) == list(templates.events[kind]), (scenario, kind)
        assert templates.event(kind, **event.data) == event.raw


def test_recording_failed_is_recording_finished_with_a_cause() -> None:
    failed = Templates.from_recordings().events["RecordingFailed"]
    assert list(failed) == ["type", "timestamp", "recording", "asterisk_id", "application"]
    assert list(failed["recording"]) == ["name", "format", "state", "target_uri", "cause"]
