"""The pure halves of the other transports against the recordings and Asterisk's source.

chan_websocket's core (`WsMediaCore`) renders exactly the recorded MEDIA_START / STATUS /
MEDIA_MARK_PROCESSED texts and follows chan_websocket.c's queue rules; the AudioSocket parser
reads the recorded TCP streams back frame by frame; the audio conversion gives the recorded
frame sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.tools.sim.audio import CODECS, ULAW_TO_LINEAR, encode, rtp_to_format, through_ulaw
from bridge.tools.sim.audiosocket import AudioSocketParser, Kind, encode_frame, is_uuid, verdict
from bridge.tools.sim.chan_websocket import WsMediaCore
from bridge.tools.sim.recording import FIXTURES_DIR, load_recording
from bridge.tools.sim.templates import validate_external_media


def rows(scenario: str, name: str) -> list[dict[str, Any]]:
    path = Path(FIXTURES_DIR) / scenario / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def texts(scenario: str, kind: str) -> list[str]:
    return [r["text"] for r in rows(scenario, "media_ws.jsonl")
            if r["kind"] == kind and r.get("type") == "text"]  # fmt: skip


def recorded_core(json_control: bool, **overrides: Any) -> WsMediaCore:
    """A core with the ids of the recorded chan_websocket call (plain: call 1, JSON: call 2)."""
    if json_control:
        cid, name, chan = ("90f704d2-4173-4cba-97d2-8c4aabdae67b",
                           "WebSocket/INCOMING/0x7f74a8012000", "1795313634.50")  # fmt: skip
    else:
        cid, name, chan = ("64a53336-a589-47e1-9153-d0ddc2e57bb6",
                           "WebSocket/INCOMING/0x7f74a80090b0", "1795313629.47")  # fmt: skip
    variables = {"MEDIA_WEBSOCKET_CONNECTION_ID": cid, "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160"}
    fields: dict[str, Any] = dict(connection_id=cid, channel_name=name, channel_id=chan,
                                  fmt="ulaw", json_control=json_control,
                                  channel_variables=variables)  # fmt: skip
    fields.update(overrides)
    return WsMediaCore(**fields)


# -- chan_websocket: events byte for byte ----------------------------------------------------


@pytest.mark.parametrize("json_control", [False, True])
def test_media_start_is_the_recorded_text(json_control: bool) -> None:
    recorded = texts("chan_websocket", "media_ws_in")
    starts = [t for t in recorded if "MEDIA_START" in t]
    assert recorded_core(json_control).media_start() == starts[int(json_control)]


def test_client_mode_media_start_is_the_recorded_text() -> None:
    core = WsMediaCore(connection_id="lab_media", channel_name="WebSocket/lab_media/0x7f74b800ccf0",
                       channel_id="1795313762.101", fmt="ulaw")  # fmt: skip
    assert core.media_start() == texts("chan_websocket_client", "media_ws_in")[0]


@pytest.mark.parametrize("json_control", [False, True])
def test_status_and_mark_are_the_recorded_texts(json_control: bool) -> None:
    recorded = texts("chan_websocket", "media_ws_in")
    status = [t for t in recorded if "STATUS" in t and "MARK" not in t][int(json_control)]
    core = recorded_core(json_control)
    core.queue_length = json.loads(status)["queue_length"] if json_control else 41
    assert core.status() == status
    mark = [t for t in recorded if "MARK_PROCESSED" in t][int(json_control)]
    command = texts("chan_websocket", "media_ws_out")[3 if json_control else 0]
    assert "MARK_MEDIA" in command
    core.queue_length = 0
    core.receive_text(command.encode())
    assert core.tick() is None and core.take_outbox() == [mark]


@pytest.mark.parametrize(
    ("json_control", "expected"),
    [
        (False, "DTMF_END digit:5 channel_id:1795313629.47"),
        (True, '{"event":"DTMF_END","channel_id":"1795313634.50","digit":"5"}'),
    ],
)
def test_dtmf_end_forms_from_the_source(json_control: bool, expected: str) -> None:
    core = recorded_core(json_control)
    core.dtmf_end("5")
    assert core.take_outbox() == [expected]


def test_optimal_frame_sizes_as_chan_websocket_computes_them() -> None:
    sizes = {fmt: CODECS[fmt].optimal_frame_size for fmt in ("ulaw", "alaw", "slin", "slin16",
                                                             "slin48", "g722", "opus")}  # fmt: skip
    assert sizes == {"ulaw": 160, "alaw": 160, "slin": 320, "slin16": 640, "slin48": 1920,
                     "g722": 160, "opus": 0}  # fmt: skip
    assert CODECS["opus"].passthrough and not CODECS["ulaw"].passthrough


# -- chan_websocket: the queue ---------------------------------------------------------------


def test_xoff_at_900_xon_below_800_and_nothing_past_1000() -> None:
    core = recorded_core(False)
    core.receive_binary(b"\xff" * 160 * 899)
    assert core.take_outbox() == []
    core.receive_binary(b"\xff" * 160)
    assert core.take_outbox() == ["MEDIA_XOFF"] and core.queue_full
    core.receive_binary(b"\xff" * 160 * 100)  # 1000 queued now
    core.receive_binary(b"\xff" * 160)  # ignored: the queue is at its maximum
    assert core.queue_length == 1000
    outbox = []
    for _ in range(201):  # 1000 -> 799: the XON is checked before the frame is taken
        assert core.tick() is not None
        outbox += core.take_outbox()
    assert outbox == [] and core.queue_length == 799
    core.tick()
    assert core.take_outbox() == ["MEDIA_XON"] and not core.queue_full


def test_mark_is_processed_once_the_audio_before_it_has_played() -> None:
    core = recorded_core(False)
    core.receive_binary(b"\x01" * 160 * 3)
    core.receive_text(b"MARK_MEDIA m1")
    core.receive_binary(b"\x02" * 160)
    played = [core.tick() for _ in range(3)]
    assert played == [b"\x01" * 160] * 3 and core.take_outbox() == []
    assert core.tick() == b"\x02" * 160  # the mark goes out in the same slot, before it
    assert core.take_outbox() == ["MEDIA_MARK_PROCESSED m1"]


def test_flush_drops_audio_and_marks_and_reports_nothing() -> None:
    core = recorded_core(True)
    core.receive_binary(b"\x01" * 160 * 5)
    core.receive_text(b'{"command": "MARK_MEDIA", "correlation_id": "m"}')
    core.receive_text(b'{"command": "FLUSH_MEDIA"}')
    assert core.queue_length == 0 and core.tick() is None and core.take_outbox() == []


def test_a_remainder_is_dropped_unless_buffering() -> None:
    core = recorded_core(False)
    core.receive_binary(b"\x01" * 250)
    assert core.queue_length == 1 and core.leftover == b""
    core.receive_text(b"START_MEDIA_BUFFERING")
    core.receive_binary(b"\x02" * 250)
    core.receive_binary(b"\x03" * 70)
    assert core.queue_length == 3  # 160 + (90 + 70)
    core.receive_binary(b"\x04" * 10)
    core.receive_text(b"STOP_MEDIA_BUFFERING b1")
    assert [core.tick() for _ in range(4)][-1] == b"\x04" * 10  # the short leftover frame
    core.tick()
    assert core.take_outbox() == ["MEDIA_BUFFERING_COMPLETED b1"]


def test_commands_longer_than_128_bytes_are_ignored() -> None:
    core = recorded_core(False)
    core.receive_text(b"MARK_MEDIA " + b"x" * 118)  # 129 bytes
    core.receive_text(b"GET_STATUS" + b" " * 119)
    assert core.take_outbox() == [] and not core.queue


def test_hangup_pause_drained_and_json_errors() -> None:
    core = recorded_core(True)
    core.receive_text(b"not json")
    assert core.take_outbox() == [
        '{"event":"ERROR","channel_id":"1795313634.50","error_text":"Unable to parse JSON command"}'
    ]
    core.receive_text(b'{"command": "PAUSE_MEDIA"}')
    core.receive_binary(b"\x01" * 160)
    assert core.tick() is None and core.paused
    core.receive_text(b'{"command": "CONTINUE_MEDIA"}')
    core.receive_text(b'{"command": "REPORT_QUEUE_DRAINED"}')
    assert core.tick() == b"\x01" * 160 and core.tick() is None
    assert core.take_outbox() == ['{"event":"QUEUE_DRAINED","channel_id":"1795313634.50"}']
    core.receive_text(b'{"command": "HANGUP"}')
    assert core.hangup_requested
    plain = recorded_core(False)
    plain.receive_text(b"SET_MEDIA_DIRECTION")
    assert plain.take_outbox() == [
        "ERROR channel_id:1795313629.47 error_text:SET_MEDIA_DIRECTION only supports JSON format.\n"
    ]


# -- AudioSocket -----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["audiosocket", "audiosocket_dialplan"])
def test_parser_reads_the_recorded_streams_back(scenario: str) -> None:
    records = rows(scenario, "audiosocket.jsonl")
    for direction in ("as_in", "as_out"):
        frames = [r for r in records if r["kind"] == direction]
        stream = b"".join(bytes.fromhex(r["data_hex"]) for r in frames)
        parser, parsed = AudioSocketParser(), []
        for start in range(0, len(stream), 77):  # TCP may cut anywhere
            parsed += parser.feed(stream[start : start + 77])
        assert [(k, len(p)) for k, p in parsed] == [(r["kind_byte"], r["len"]) for r in frames]
        assert b"".join(encode_frame(k, p) for k, p in parsed) == stream


def test_recorded_uuid_frame_and_what_asterisk_accepts() -> None:
    first = next(r for r in rows("audiosocket", "audiosocket.jsonl") if r["kind"] == "as_in")
    assert first["data_hex"] == "010010" + "310fef72-91eb-4f7c-afc0-10cc3f359062".replace("-", "")
    assert is_uuid("310fef72-91eb-4f7c-afc0-10cc3f359062") and not is_uuid("not-a-uuid")
    assert verdict(Kind.SLIN16, b"\0\0") == "audio" and verdict(Kind.SLIN192, b"\0") == "audio"
    assert verdict(Kind.HANGUP, b"") == "hangup"
    for kind, payload in ((Kind.UUID, b"x" * 16), (Kind.DTMF, b"1"), (Kind.ERROR, b"\x01"),
                          (Kind.SLIN, b""), (0x42, b"\0\0")):  # fmt: skip
        assert verdict(kind, payload) == "violation"


# -- audio -----------------------------------------------------------------------------------


def test_far_end_packets_become_the_recorded_frame_sizes() -> None:
    script = load_recording("basic_ulaw").caller_script()
    packet = script.inbound_rtp[0][1]
    assert len(rtp_to_format(packet, "slin")) == 320  # audiosocket: 0x10/320
    assert len(rtp_to_format(packet, "slin16")) == 640  # audiosocket: 0x12/640
    assert rtp_to_format(packet, "ulaw") == packet[12:]  # chan_websocket ulaw: as is
    short = packet[:12] + packet[12:34]  # the recorded 22-byte end of a beep
    assert len(rtp_to_format(short, "slin")) == 44 and len(rtp_to_format(short, "slin16")) == 88


def test_echo_through_the_ulaw_leg_quantises_like_g711() -> None:
    values = ULAW_TO_LINEAR[[0x80, 0x90, 0x10]]
    exact = encode(values, 8000, "slin")
    assert through_ulaw(exact, "slin") == exact  # G.711 values survive a round trip
    assert through_ulaw(encode(values + 3, 8000, "slin"), "slin") == exact


# -- externalMedia checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ({"encapsulation": "audiosocket", "transport": "tcp"}, 400, "data can not be empty"),
        ({"encapsulation": "audiosocket"}, 400,
         "transport must be 'tcp' for audiosocket encapsulation"),
        ({"transport": "websocket", "encapsulation": "rtp"}, 400,
         "encapsulation must be 'none' for websocket transport"),
        ({"transport": "websocket", "encapsulation": "none", "external_host": "nosuch"}, 400,
         "external_host must be a valid websocket_client connection id."),
        ({"transport": "websocket", "encapsulation": "none", "connection_type": "server",
          "external_host": "", "direction": "sideways"}, 400, "Invalid direction specified"),
    ],
)  # fmt: skip
def test_external_media_checks_for_the_other_transports(
    query: dict[str, str], status: int, message: str
) -> None:
    full = {"app": "pipecat", "external_host": "127.0.0.1:9092", "format": "slin", **query}
    reply = validate_external_media(full, websocket_clients=("lab_media",))
    assert reply is not None and (reply.status, reply.body) == (status, {"message": message})
    fine = {**full, "data": "310fef72-91eb-4f7c-afc0-10cc3f359062", "transport": "tcp"}
    if query.get("encapsulation") == "audiosocket":
        assert validate_external_media(fine) is None
