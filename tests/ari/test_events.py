from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ari.events import (
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelHangupRequest,
    StasisStart,
    UnknownEvent,
    parse_event,
)
from bridge.errors import AriEventError
from tests.recordings import all_scenarios, raw_events


@pytest.mark.parametrize("scenario", all_scenarios())
def test_every_recorded_event_parses(scenario: str) -> None:
    for raw in raw_events(scenario):
        event = parse_event(raw)
        assert not isinstance(event, UnknownEvent) or event.type == json.loads(raw)["type"]


def test_caller_and_media_stasis_start_are_told_apart() -> None:
    starts = [e for e in map(parse_event, raw_events("basic_ulaw")) if isinstance(e, StasisStart)]
    caller, media = starts
    assert caller.channel.id == "1795313560.0"
    assert caller.channel.name == "Local/200@caller-00000000;1"
    assert not caller.channel.is_media_channel
    assert (caller.channel.context, caller.channel.exten) == ("pipecat-in", "100")
    assert caller.channel.caller_number == "5551000"
    assert caller.args == ()
    assert caller.application == "pipecat"
    assert media.channel.is_media_channel
    assert media.channel.name.startswith("UnicastRTP/127.0.0.1:31000-")
    assert (media.channel.context, media.channel.exten, media.channel.priority) == (
        "default",
        "s",
        1,
    )


def test_stasis_args_from_dialplan() -> None:
    starts = [e for e in map(parse_event, raw_events("app_args")) if isinstance(e, StasisStart)]
    assert starts[0].args == ("ws://127.0.0.1:8765/custom",)
    assert starts[1].args == ()


def test_hangup_causes_as_recorded() -> None:
    events = [parse_event(r) for r in raw_events("caller_hangup")]
    hangups = [e for e in events if isinstance(e, ChannelHangupRequest)]
    # The far end hung up first (cause 16, no soft), then our DELETE (32, soft).
    assert (hangups[0].cause, hangups[0].soft) == (16, False)
    assert (hangups[1].cause, hangups[1].soft) == (32, True)
    destroyed = [e for e in events if isinstance(e, ChannelDestroyed)]
    assert [d.cause_txt for d in destroyed] == ["Normal Clearing"]


def test_dtmf_digits_as_recorded() -> None:
    digits = [
        (e.digit, e.duration_ms)
        for e in map(parse_event, raw_events("dtmf"))
        if isinstance(e, ChannelDtmfReceived)
    ]
    assert digits == [("1", 100), ("2", 100), ("3", 100), ("#", 100)]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"x": 1}', "has no type"),
        ('{"type": "StasisStart"}', "channel is not a JSON object"),
        ('{"type": "StasisEnd", "channel": {"name": "x"}}', "channel has no id"),
        ('{"type": "ChannelDtmfReceived", "channel": {"id": "1"}, "digit": 5}', "digit"),
        ('{"type": "StasisStart", "channel": {"id": "1"}, "args": "x"}', "args"),
        (b"\xff\xfe", "not JSON"),
        ("x" * (1 << 20 + 1), "exceeds"),
    ],
)
def test_malformed_events_raise_with_reason(message: str | bytes, reason: str) -> None:
    with pytest.raises(AriEventError, match=reason):
        parse_event(message)


def test_unknown_type_is_kept_not_raised() -> None:
    event = parse_event('{"type": "ChannelTalkingStarted", "channel": {"id": "1"}}')
    assert isinstance(event, UnknownEvent)
    assert event.type == "ChannelTalkingStarted"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
event_types = st.sampled_from(
    ["StasisStart", "StasisEnd", "ChannelHangupRequest", "ChannelDestroyed",
     "ChannelDtmfReceived", "ChannelEnteredBridge", "ChannelLeftBridge", "BridgeDestroyed",
     "ChannelStateChange", "Dial"]
)


@given(st.text() | st.binary())
def test_arbitrary_input_parses_or_raises_ari_event_error(message: str | bytes) -> None:
    with contextlib.suppress(AriEventError):
        parse_event(message)


@given(event_types, st.dictionaries(st.sampled_from(
    ["channel", "bridge", "args", "digit", "cause", "soft", "application"]), json_values))
def test_arbitrary_event_shapes_parse_or_raise(event_type: str, body: dict) -> None:
    with contextlib.suppress(AriEventError):
        parse_event(json.dumps({"type": event_type, **body}))
