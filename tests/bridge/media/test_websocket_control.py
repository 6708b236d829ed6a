"""chan_websocket control messages: the recordings, Asterisk's own formats, commands, fuzz."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import ParseError, WebSocketCommandError, WebSocketControlError
from bridge.media.websocket_control import (
    MAX_CONTROL_MESSAGE,
    MAX_TEXT_MESSAGE_LEN,
    BufferingCompleted,
    Command,
    ControlError,
    ControlEvent,
    DtmfEnd,
    MarkIds,
    MarkProcessed,
    MediaStart,
    MediaXoff,
    MediaXon,
    QueueDrained,
    Status,
    UnknownControl,
    encode_command,
    parse_control,
)
from tests.recordings import FIXTURES

PLAIN_CHANNEL = "1795313629.47"
JSON_CHANNEL = "1795313634.50"

# Every text message Asterisk sent in the two recordings, by scenario and seq.
RECORDED_EVENTS: dict[tuple[str, int], ControlEvent] = {
    ("chan_websocket", 2): MediaStart(
        connection_id="64a53336-a589-47e1-9153-d0ddc2e57bb6",
        channel="WebSocket/INCOMING/0x7f74a80090b0",
        channel_id=PLAIN_CHANNEL,
        format="ulaw",
        optimal_frame_size=160,
        ptime=20,
        channel_variables=None,
    ),
    ("chan_websocket", 227): MarkProcessed(name="lab-mark-1", channel_id=None),
    ("chan_websocket", 238): Status(
        queue_length=41,
        xon_level=800,
        xoff_level=900,
        queue_full=False,
        bulk_media=False,
        media_paused=False,
        channel_id=PLAIN_CHANNEL,
    ),
    ("chan_websocket", 258): MediaStart(
        connection_id="90f704d2-4173-4cba-97d2-8c4aabdae67b",
        channel="WebSocket/INCOMING/0x7f74a8012000",
        channel_id=JSON_CHANNEL,
        format="ulaw",
        optimal_frame_size=160,
        ptime=20,
        channel_variables={
            "MEDIA_WEBSOCKET_CONNECTION_ID": "90f704d2-4173-4cba-97d2-8c4aabdae67b",
            "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160",
        },
    ),
    ("chan_websocket", 483): MarkProcessed(name="lab-mark-1", channel_id=JSON_CHANNEL),
    ("chan_websocket", 495): Status(
        queue_length=40,
        xon_level=800,
        xoff_level=900,
        queue_full=False,
        bulk_media=False,
        media_paused=False,
        channel_id=JSON_CHANNEL,
    ),
    ("chan_websocket_client", 2): MediaStart(
        connection_id="lab_media",
        channel="WebSocket/lab_media/0x7f74b800ccf0",
        channel_id="1795313762.101",
        format="ulaw",
        optimal_frame_size=160,
        ptime=20,
        channel_variables=None,
    ),
}

# What the recorder sent: (command, fields, json).
RECORDED_COMMANDS: dict[int, tuple[Command, dict[str, str], bool]] = {
    224: (Command.MARK_MEDIA, {"correlation_id": "lab-mark-1"}, False),
    237: (Command.GET_STATUS, {}, False),
    255: (Command.FLUSH_MEDIA, {}, False),
    480: (Command.MARK_MEDIA, {"correlation_id": "lab-mark-1"}, True),
    494: (Command.GET_STATUS, {}, True),
    511: (Command.FLUSH_MEDIA, {}, True),
}


def text_messages(scenario: str, direction: str) -> list[dict[str, Any]]:
    path = FIXTURES / scenario / "media_ws.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if r["kind"] == direction and r.get("type") == "text"]


def assert_parse_error(text: str, message: str) -> None:
    with pytest.raises(WebSocketControlError) as excinfo:
        parse_control(text)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, ParseError)


EVENT_TYPES = (
    MediaStart,
    DtmfEnd,
    MediaXoff,
    MediaXon,
    QueueDrained,
    Status,
    BufferingCompleted,
    MarkProcessed,
    ControlError,
    UnknownControl,
)


def assert_parses_or_raises(text: str) -> None:
    """The fuzz invariant: a typed event or WebSocketControlError, nothing else."""
    try:
        event = parse_control(text)
    except WebSocketControlError:
        return
    assert isinstance(event, EVENT_TYPES)


def asterisk_reply(command_text: str, event: str, *, json_format: bool) -> str:
    """What chan_websocket.c answers to MARK_MEDIA / STOP_MEDIA_BUFFERING, built its way."""
    if json_format:
        command = json.loads(command_text)
        reply = {"event": event, "channel_id": JSON_CHANNEL}
        reply["correlation_id"] = command.get("correlation_id") or ""
        return json.dumps(reply, separators=(",", ":"), ensure_ascii=False)
    _, _, data = command_text.strip().partition(" ")
    return f"{event} {data}" if data else event


# The recordings.


def test_every_recorded_event_parses_to_its_value() -> None:
    seen = {}
    for scenario in ("chan_websocket", "chan_websocket_client"):
        for record in text_messages(scenario, "media_ws_in"):
            seen[(scenario, record["seq"])] = parse_control(record["text"])
    assert seen == RECORDED_EVENTS
    json_start = seen[("chan_websocket", 258)]
    assert isinstance(json_start, MediaStart)
    assert json_start.channel_variables is not None
    assert dict(json_start.channel_variables) == {
        "MEDIA_WEBSOCKET_CONNECTION_ID": "90f704d2-4173-4cba-97d2-8c4aabdae67b",
        "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160",
    }


def test_every_recorded_command_is_what_encode_command_builds() -> None:
    sent = {r["seq"]: r["text"] for r in text_messages("chan_websocket", "media_ws_out")}
    assert set(sent) == set(RECORDED_COMMANDS)
    for seq, (command, fields, json_format) in RECORDED_COMMANDS.items():
        encoded = encode_command(command, fields, json=json_format)
        if json_format:
            # The recorder used json.dumps' default spacing; we send the compact form.
            assert json.loads(encoded) == json.loads(sent[seq])
        else:
            assert encoded == sent[seq]


def test_recorded_mark_round_trips_through_asterisk() -> None:
    for json_format, seq in ((False, 227), (True, 483)):
        command = encode_command(
            Command.MARK_MEDIA, {"correlation_id": "lab-mark-1"}, json=json_format
        )
        reply = parse_control(
            asterisk_reply(command, "MEDIA_MARK_PROCESSED", json_format=json_format)
        )
        assert reply == RECORDED_EVENTS[("chan_websocket", seq)]


# Asterisk's formats, from the printf/ast_json_pack calls in chan_websocket.c.


@pytest.mark.parametrize(
    ("text", "event"),
    [
        ("MEDIA_XOFF", MediaXoff()),
        ("MEDIA_XON", MediaXon()),
        ("QUEUE_DRAINED", QueueDrained()),
        ('{"event":"MEDIA_XOFF","channel_id":"1.2"}', MediaXoff("1.2")),
        ('{"event":"MEDIA_XON","channel_id":"1.2"}', MediaXon("1.2")),
        ('{"event":"QUEUE_DRAINED","channel_id":"1.2"}', QueueDrained("1.2")),
        ("DTMF_END digit:5 channel_id:1.2", DtmfEnd("5", "1.2")),
        ("DTMF_END digit:#", DtmfEnd("#", None)),  # before 20.17 / 22.7
        ('{"event":"DTMF_END","channel_id":"1.2","digit":"D"}', DtmfEnd("D", "1.2")),
        ("MEDIA_MARK_PROCESSED", MarkProcessed("")),
        ("MEDIA_MARK_PROCESSED with spaces: too", MarkProcessed("with spaces: too")),
        (
            '{"event":"MEDIA_MARK_PROCESSED","channel_id":"1.2","correlation_id":""}',
            MarkProcessed("", "1.2"),
        ),
        ("MEDIA_BUFFERING_COMPLETED", BufferingCompleted("")),
        ("MEDIA_BUFFERING_COMPLETED b-1", BufferingCompleted("b-1")),
        (
            '{"event":"MEDIA_BUFFERING_COMPLETED","channel_id":"1.2","correlation_id":"b-1"}',
            BufferingCompleted("b-1", "1.2"),
        ),
        (
            "ERROR channel_id:1.2 error_text:MARK_MEDIA not supported in passthrough mode",
            ControlError("MARK_MEDIA not supported in passthrough mode", "1.2"),
        ),
        (
            "ERROR channel_id:1.2 error_text:SET_MEDIA_DIRECTION only supports JSON format.\n",
            ControlError("SET_MEDIA_DIRECTION only supports JSON format.", "1.2"),
        ),
        (
            '{"event":"ERROR","channel_id":"1.2","error_text":"Unable to parse JSON command"}',
            ControlError("Unable to parse JSON command", "1.2"),
        ),
        (
            "STATUS queue_length:0 xon_level:800 xoff_level:900 queue_full:true "
            "bulk_media:false media_paused:true",  # before 20.17 / 22.7: no channel_id
            Status(0, 800, 900, True, False, True, None),
        ),
        (
            '{"event":"STATUS","channel_id":"1.2","queue_length":1000,"xon_level":800,'
            '"xoff_level":900,"queue_full":true,"bulk_media":true,"media_paused":false}',
            Status(1000, 800, 900, True, True, False, "1.2"),
        ),
        (
            # 20.16 / 22.6: no channel_id.
            "MEDIA_START connection_id:abc channel:WebSocket/INCOMING/0x1 format:slin16 "
            "optimal_frame_size:640 ptime:20",
            MediaStart("abc", "WebSocket/INCOMING/0x1", None, "slin16", 640, 20, None),
        ),
        (
            '{"event":"MEDIA_START","connection_id":"lab_media","channel":"WebSocket/lab/0x2",'
            '"channel_id":"1.2","format":"ulaw","optimal_frame_size":160,"ptime":20,'
            '"channel_variables":{}}',
            MediaStart("lab_media", "WebSocket/lab/0x2", "1.2", "ulaw", 160, 20, {}),
        ),
        # Forward compatibility: a field Asterisk may add later is ignored.
        ("MEDIA_XON channel_id:1.2 future:yes", MediaXon("1.2")),
        ("  MEDIA_XON \r\n", MediaXon()),
    ],
)
def test_asterisk_formats(text: str, event: ControlEvent) -> None:
    assert parse_control(text) == event


@pytest.mark.parametrize(
    ("text", "event"),
    [
        (
            "SET_MEDIA_DIRECTION_DONE a:1 b:x:y",
            UnknownControl("SET_MEDIA_DIRECTION_DONE", {"a": "1", "b": "x:y"}),
        ),
        ("NEW_EVENT", UnknownControl("NEW_EVENT", {})),
        ("NEW_EVENT free text here", UnknownControl("NEW_EVENT", {"": "free text here"})),
        ("NEW_EVENT a:1 a:2", UnknownControl("NEW_EVENT", {"": "a:1 a:2"})),
        (
            '{"event":"NEW_EVENT","n":[1,2],"x":null}',
            UnknownControl("NEW_EVENT", {"n": [1, 2], "x": None}),
        ),
        ('{"event":"media_start"}', UnknownControl("media_start", {})),
    ],
)
def test_unknown_events_are_values(text: str, event: UnknownControl) -> None:
    parsed = parse_control(text)
    assert parsed == event
    assert isinstance(parsed, UnknownControl)
    assert dict(parsed.fields) == dict(event.fields)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "control message is empty"),
        (" \n\t", "control message is empty"),
        (
            "x" * (MAX_CONTROL_MESSAGE + 1),
            f"control message of 65537 characters exceeds the {MAX_CONTROL_MESSAGE} limit",
        ),
        ("{", "control message is not valid JSON"),
        ('{"event":"MEDIA_XON"} trailing', "control message is not valid JSON"),
        ("{" * 5000 + "}" * 5000, "control message is not valid JSON"),
        ('{"event":1}', 'JSON control message has no string "event"'),
        ('{"channel_id":"1"}', 'JSON control message has no string "event"'),
        ("media_start connection_id:x", "control message name 'media_start' is not an event name"),
        ('"MEDIA_XON"', "control message name '\"MEDIA_XON\"' is not an event name"),
        ("[1]", "control message name '[1]' is not an event name"),
        ("MEDIA_XON garbage", "MEDIA_XON field 'garbage' is not key:value"),
        ("MEDIA_XON :x", "MEDIA_XON field ':x' is not key:value"),
        ("DTMF_END digit:1 digit:2", "DTMF_END field 'digit:2' appears twice"),
        ("DTMF_END channel_id:1", "DTMF_END lacks digit"),
        ("DTMF_END digit:", "DTMF_END digit '' is not one of 0-9 * # A-D"),
        ("DTMF_END digit:55", "DTMF_END digit '55' is not one of 0-9 * # A-D"),
        ('{"event":"DTMF_END","digit":"e"}', "DTMF_END digit 'e' is not one of 0-9 * # A-D"),
        ('{"event":"DTMF_END","digit":5}', "DTMF_END digit is not a string"),
        (
            '{"event":"DTMF_END","digit":"5","channel_id":null}',
            "DTMF_END channel_id is not a string",
        ),
        (
            "MEDIA_START connection_id:a channel:b format:ulaw ptime:20",
            "MEDIA_START lacks optimal_frame_size",
        ),
        (
            "MEDIA_START connection_id:a channel:b format:ulaw optimal_frame_size:-1 ptime:20",
            "MEDIA_START optimal_frame_size is not a non-negative integer",
        ),
        (
            "MEDIA_START connection_id:a channel:b format:ulaw optimal_frame_size:160 ptime:٢٠",
            "MEDIA_START ptime is not a non-negative integer",
        ),
        (
            '{"event":"MEDIA_START","connection_id":"a","channel":"b","format":"ulaw",'
            '"optimal_frame_size":"160","ptime":20}',
            "MEDIA_START optimal_frame_size is not a non-negative integer",
        ),
        (
            '{"event":"MEDIA_START","connection_id":"a","channel":"b","format":"ulaw",'
            '"optimal_frame_size":160,"ptime":true}',
            "MEDIA_START ptime is not a non-negative integer",
        ),
        (
            '{"event":"MEDIA_START","connection_id":"a","channel":"b","format":"ulaw",'
            '"optimal_frame_size":160,"ptime":20,"channel_variables":{"A":1}}',
            "MEDIA_START channel_variables is not an object of strings",
        ),
        (
            "STATUS queue_length:1 xon_level:800 xoff_level:900 queue_full:yes bulk_media:false "
            "media_paused:false",
            "STATUS queue_full is not true or false",
        ),
        (
            '{"event":"STATUS","queue_length":1,"xon_level":800,"xoff_level":900,'
            '"queue_full":0,"bulk_media":false,"media_paused":false}',
            "STATUS queue_full is not a boolean",
        ),
        ("ERROR channel_id:1", "ERROR lacks error_text"),
        (
            '{"event":"MEDIA_MARK_PROCESSED","correlation_id":7}',
            "MEDIA_MARK_PROCESSED correlation_id is not a string",
        ),
    ],
)
def test_each_defect_has_its_message(text: str, message: str) -> None:
    assert_parse_error(text, message)


def test_size_limit_admits_a_long_media_start() -> None:
    variables = {f"VAR_{i}": "x" * 100 for i in range(500)}
    text = json.dumps(
        {
            "event": "MEDIA_START",
            "connection_id": "c",
            "channel": "WebSocket/lab/0x1",
            "channel_id": "1.2",
            "format": "slin16",
            "optimal_frame_size": 640,
            "ptime": 20,
            "channel_variables": variables,
        }
    )
    assert len(text) < MAX_CONTROL_MESSAGE
    event = parse_control(text)
    assert isinstance(event, MediaStart)
    assert event.channel_variables == variables


def test_events_are_frozen_and_hashable() -> None:
    event = parse_control(text_messages("chan_websocket", "media_ws_in")[3]["text"])
    assert isinstance(event, MediaStart)
    with pytest.raises(AttributeError):
        event.ptime = 40  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.channel_variables["X"] = "y"  # type: ignore[index]
    assert hash(event) == hash(event)


# Commands.

NO_FIELD_COMMANDS = [
    Command.ANSWER,
    Command.HANGUP,
    Command.START_MEDIA_BUFFERING,
    Command.FLUSH_MEDIA,
    Command.GET_STATUS,
    Command.REPORT_QUEUE_DRAINED,
    Command.PAUSE_MEDIA,
    Command.CONTINUE_MEDIA,
]


@pytest.mark.parametrize("command", NO_FIELD_COMMANDS)
def test_commands_without_fields(command: Command) -> None:
    assert encode_command(command, json=False) == command.value
    assert encode_command(command.value, {}, json=True) == f'{{"command":"{command.value}"}}'


def test_commands_with_fields() -> None:
    mark = {"correlation_id": "m1"}
    assert encode_command(Command.MARK_MEDIA, mark, json=False) == "MARK_MEDIA m1"
    assert encode_command("MARK_MEDIA", mark, json=True) == (
        '{"command":"MARK_MEDIA","correlation_id":"m1"}'
    )
    assert encode_command(Command.STOP_MEDIA_BUFFERING, json=False) == "STOP_MEDIA_BUFFERING"
    assert encode_command(Command.STOP_MEDIA_BUFFERING, mark, json=False) == (
        "STOP_MEDIA_BUFFERING m1"
    )
    assert encode_command(Command.SET_MEDIA_DIRECTION, {"direction": "out"}, json=True) == (
        '{"command":"SET_MEDIA_DIRECTION","direction":"out"}'
    )
    assert encode_command(Command.MARK_MEDIA, {"correlation_id": "né"}, json=True) == (
        '{"command":"MARK_MEDIA","correlation_id":"né"}'
    )


def test_length_limit_is_128_utf8_bytes() -> None:
    fits = "x" * (MAX_TEXT_MESSAGE_LEN - len("MARK_MEDIA "))
    assert len(encode_command(Command.MARK_MEDIA, {"correlation_id": fits}, json=False)) == 128
    with pytest.raises(WebSocketCommandError) as excinfo:
        encode_command(Command.MARK_MEDIA, {"correlation_id": fits + "x"}, json=False)
    assert str(excinfo.value) == "MARK_MEDIA is 129 bytes; Asterisk ignores text over 128"
    with pytest.raises(WebSocketCommandError, match="is 129 bytes"):
        encode_command(Command.MARK_MEDIA, {"correlation_id": fits[:-1] + "é"}, json=False)
    json_fits = "x" * (128 - len('{"command":"MARK_MEDIA","correlation_id":""}'))
    assert len(encode_command(Command.MARK_MEDIA, {"correlation_id": json_fits}, json=True)) == 128
    with pytest.raises(WebSocketCommandError, match="is 129 bytes"):
        encode_command(Command.MARK_MEDIA, {"correlation_id": json_fits + "x"}, json=True)


@pytest.mark.parametrize(
    ("name", "fields", "json_format", "message"),
    [
        ("SEND_DTMF", {}, False, "'SEND_DTMF' is not a chan_websocket command"),
        ("mark_media", {}, False, "'mark_media' is not a chan_websocket command"),
        (Command.MARK_MEDIA, {}, False, "MARK_MEDIA takes correlation_id, not []"),
        (Command.ANSWER, {"x": "1"}, True, "ANSWER takes no fields, not ['x']"),
        (
            Command.MARK_MEDIA,
            {"correlation_id": "a", "channel_id": "b"},
            False,
            "MARK_MEDIA takes correlation_id, not ['channel_id', 'correlation_id']",
        ),
        (
            Command.SET_MEDIA_DIRECTION,
            {"direction": "in"},
            False,
            "SET_MEDIA_DIRECTION exists only in JSON",
        ),
        (
            Command.SET_MEDIA_DIRECTION,
            {"direction": "sideways"},
            True,
            "SET_MEDIA_DIRECTION direction 'sideways' is not both, in or out",
        ),
        (
            Command.MARK_MEDIA,
            {"correlation_id": 7},
            False,
            "MARK_MEDIA correlation_id is not a string",
        ),
    ],
)
def test_command_misuse(name: Any, fields: Any, json_format: bool, message: str) -> None:
    with pytest.raises(WebSocketCommandError) as excinfo:
        encode_command(name, fields, json=json_format)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize("bad", ["", " m1", "m1 ", "m\x001", "m\n1", "m\x7f"])
@pytest.mark.parametrize("json_format", [False, True])
def test_correlation_ids_asterisk_would_alter(bad: str, json_format: bool) -> None:
    with pytest.raises(WebSocketCommandError, match="empty, has edge whitespace or control"):
        encode_command(Command.MARK_MEDIA, {"correlation_id": bad}, json=json_format)


# MarkIds.


def test_mark_ids_map_long_names_to_short_ids_and_back() -> None:
    marks = MarkIds()
    long_name = "bot-mark-" + "ü" * 200
    first, second = marks.issue(long_name), marks.issue("b")
    assert (first, second) == ("m1", "m2")
    assert len(marks) == 2
    reply = parse_control(
        asterisk_reply(
            encode_command(Command.MARK_MEDIA, {"correlation_id": first}, json=False),
            "MEDIA_MARK_PROCESSED",
            json_format=False,
        )
    )
    assert isinstance(reply, MarkProcessed)
    assert marks.processed(reply.name) == long_name
    assert marks.processed(first) is None
    assert marks.processed("not-ours") is None
    assert marks.flushed() == ["b"]
    assert len(marks) == 0
    assert marks.flushed() == []


def test_mark_ids_are_bounded_and_stay_short() -> None:
    marks = MarkIds(max_pending=3, prefix="k")
    ids = [marks.issue(f"name-{i}") for i in range(40)]
    assert len(set(ids)) == 40
    assert ids[8:10] == ["k9", "ka"]  # base 36
    assert ids[34:36] == ["kz", "k10"]
    assert len(marks) == 3
    assert marks.flushed() == ["name-37", "name-38", "name-39"]
    assert marks.processed(ids[0]) is None
    with pytest.raises(ValueError, match="at least 1"):
        MarkIds(max_pending=0)


def test_mark_ids_fit_a_command_for_ever() -> None:
    marks = MarkIds(max_pending=1)
    marks._issued = 2**63  # a call that issued a mark every nanosecond for 292 years
    mark_id = marks.issue("x")
    assert len(encode_command(Command.MARK_MEDIA, {"correlation_id": mark_id}, json=True)) < 128


# Fuzz.


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_control_error(text: str) -> None:
    assert_parses_or_raises(text)


EVENT_NAMES = [
    "MEDIA_START",
    "DTMF_END",
    "MEDIA_XOFF",
    "MEDIA_XON",
    "QUEUE_DRAINED",
    "STATUS",
    "MEDIA_BUFFERING_COMPLETED",
    "MEDIA_MARK_PROCESSED",
    "ERROR",
    "OTHER",
]
FIELD_NAMES = [
    "channel_id",
    "connection_id",
    "channel",
    "format",
    "optimal_frame_size",
    "ptime",
    "channel_variables",
    "digit",
    "queue_length",
    "xon_level",
    "xoff_level",
    "queue_full",
    "bulk_media",
    "media_paused",
    "correlation_id",
    "error_text",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.sampled_from(EVENT_NAMES),
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=10),
)
def test_any_json_event_parses_or_raises_control_error(name: str, fields: dict[str, Any]) -> None:
    assert_parses_or_raises(json.dumps({"event": name, **fields}))


@given(
    st.sampled_from(EVENT_NAMES),
    st.lists(
        st.tuples(st.sampled_from(FIELD_NAMES), st.text(max_size=6)).map(":".join)
        | st.text(max_size=6),
        max_size=8,
    ),
)
def test_any_plain_event_parses_or_raises_control_error(name: str, tokens: list[str]) -> None:
    assert_parses_or_raises(" ".join([name, *tokens]))


correlation_ids = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40
).filter(lambda s: s == s.strip())


@given(correlation_ids, st.booleans())
def test_mark_and_buffering_ids_round_trip_through_asterisk(
    mark_id: str, json_format: bool
) -> None:
    for command, event, cls in (
        (Command.MARK_MEDIA, "MEDIA_MARK_PROCESSED", MarkProcessed),
        (Command.STOP_MEDIA_BUFFERING, "MEDIA_BUFFERING_COMPLETED", BufferingCompleted),
    ):
        try:
            text = encode_command(command, {"correlation_id": mark_id}, json=json_format)
        except WebSocketCommandError as error:
            assert str(error).endswith("Asterisk ignores text over 128")
            continue
        reply = parse_control(asterisk_reply(text, event, json_format=json_format))
        assert reply == cls(mark_id, JSON_CHANNEL if json_format else None)
