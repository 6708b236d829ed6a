"""The simulated Asterisk against the recordings of the real one.

Pure parts (recording loader, templates, strict RTP, echo, timeline) are checked with recorded
data and no clock. The server is driven over real loopback sockets with a plain aiohttp client
and a websockets events client, doing what the recorded client did, and every answer, event
order and RTP header is compared with the recording.
"""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, datetime

import aiohttp
import pytest
import websockets

from bridge.tools.sim.asterisk import SimulatedAsterisk, StasisAppNotActive
from bridge.tools.sim.recording import Recording, load_recording
from bridge.tools.sim.templates import (
    STRICT_RTP_PROBATION,
    ULAW,
    EchoStream,
    StrictRtp,
    Templates,
    build_timeline,
    format_timestamp,
    rtp_header,
    rtp_stream,
)
from tests.tools.sim.ari_client import (
    TIMEOUT,
    Ari,
    assert_asterisk_headers,
    assert_nothing_left,
    bridge_call,
    hang_up,
    key_shape,
    per_channel,
    rtp_fields,
    shape,
)


@pytest.fixture(scope="module")
def basic() -> Recording:
    return load_recording("basic_ulaw")


# -- pure: recordings, templates, RTP behaviour -------------------------------------------


def test_recording_helpers_find_the_calls(basic: Recording) -> None:
    assert basic.caller_ids() == ["1795313560.0"]
    assert basic.em_channel_id("1795313560.0") == "1795313560.2"
    assert basic.bridge_id("1795313560.0") == "dce72379-b387-4cd6-b25a-96b494a821f7"
    assert basic.bridged_at("1795313560.0") == pytest.approx(0.088537)
    assert basic.first_inbound_rtp_at("1795313560.0") == pytest.approx(0.571442)
    assert basic.caller_hangup_offset("1795313560.0") is None
    assert not basic.is_echo("1795313560.0")
    hangup = load_recording("caller_hangup")
    assert hangup.caller_hangup_offset("1795313567.3") == pytest.approx(3.561710 - 0.076055)
    dtmf = load_recording("dtmf").dtmf("1795313574.6")
    assert [(d.digit, d.duration_ms) for d in dtmf] == [
        ("1", 100),
        ("2", 100),
        ("3", 100),
        ("#", 100),
    ]
    assert dtmf[0].offset == pytest.approx(1.786875 - 0.094127)
    assert load_recording("echo_roundtrip").caller_script().echo
    args = load_recording("app_args").caller_stasis_start().data["args"]
    assert args == ["ws://127.0.0.1:8765/custom"]


@pytest.mark.parametrize(
    "scenario", ["basic_ulaw", "caller_hangup", "dtmf", "concurrent", "errors"]
)
def test_per_channel_keying_matches_the_digest(scenario: str) -> None:
    recording = load_recording(scenario)
    ours = recording.per_channel_types()
    digest = {key.split(" ")[0]: value for key, value in recording.summary["per_channel"].items()}
    assert ours == digest


@pytest.mark.parametrize("scenario", ["basic_ulaw", "caller_hangup", "dtmf", "ws_reconnect"])
def test_templates_render_recorded_events_byte_exact(scenario: str) -> None:
    templates = Templates.from_recordings()
    for event in load_recording(scenario).events:
        kind = event.type
        if kind == "ChannelHangupRequest" and "soft" not in event.data:
            kind = "ChannelHangupRequest/far"
        assert list(event.data) == list(templates.events[kind])  # same keys, same order
        assert templates.event(kind, **event.data) == event.raw


def test_timestamps_use_asterisks_format() -> None:
    moment = datetime(2026, 11, 22, 2, 12, 40, 75_400, tzinfo=UTC).timestamp()
    assert format_timestamp(moment) == "2026-11-22T02:12:40.075+0000"


def test_rtp_stream_has_the_recorded_header_layout(basic: Recording) -> None:
    recorded = basic.inbound_rtp("1795313560.0")[:3]
    _, _, _, seq, _, ssrc = rtp_fields(recorded[0].data)
    payloads = b"".join(p.data[12:] for p in recorded)
    assert rtp_stream(ULAW, payloads, ssrc=ssrc, first_seq=seq) == [p.data for p in recorded]
    tail = rtp_stream(ULAW, bytes(182), ssrc=1, first_seq=65535)
    assert [len(p) for p in tail] == [172, 34]  # a short last packet, as Asterisk sends
    assert [rtp_fields(p)[3:5] for p in tail] == [(65535, 160), (0, 320)]


def test_echo_rewrites_like_the_recording() -> None:
    recording = load_recording("echo_roundtrip")
    ours = [p for p in recording.rtp if p.dir == "out"]
    theirs = [p for p in recording.rtp if p.dir == "in"]
    _, _, _, seq, _, ssrc = rtp_fields(theirs[0].data)
    echo = EchoStream(ssrc=ssrc, seq=seq)
    assert [echo.echo(p.data) for p in ours] == [p.data for p in theirs]


def test_echo_marks_a_talkspurt_after_a_gap() -> None:
    echo = EchoStream(ssrc=7, seq=1)
    first = echo.echo(
        rtp_header(marker=True, payload_type=0, seq=9, timestamp=800, ssrc=3) + bytes(160)
    )
    second = echo.echo(
        rtp_header(marker=False, payload_type=0, seq=10, timestamp=960, ssrc=3) + bytes(160)
    )
    jump = echo.echo(
        rtp_header(marker=False, payload_type=0, seq=11, timestamp=9600, ssrc=3) + bytes(160)
    )
    assert [rtp_fields(p)[1] for p in (first, second, jump) if p] == [0, 0, 1]
    assert echo.echo(b"\x00" * 20) is None


def test_strict_rtp_probation_and_lock() -> None:
    remote, other, third = ("127.0.0.1", 31000), ("127.0.0.1", 31500), ("127.0.0.1", 31600)
    # rtp_symmetric_probe: a source other than external_host loses its first 4 packets...
    strict = StrictRtp(remote, learn_until=5.0)
    assert [strict.accept(other, 0.1 * i) for i in range(6)] == [False] * STRICT_RTP_PROBATION + [
        True
    ] * 2
    # ... and then Asterisk is locked on it: external_host itself is dropped.
    assert not strict.accept(remote, 7.0)
    # echo_roundtrip: packets from external_host are accepted from the first one.
    strict = StrictRtp(remote, learn_until=5.0)
    assert strict.accept(remote, 0.0)
    assert not strict.accept(third, 0.1)
    # After the learning window nothing new is learnt: only external_host gets through.
    strict = StrictRtp(remote, learn_until=5.0)
    assert not strict.accept(other, 6.0)
    assert strict.accept(remote, 6.1)


def test_timeline_follows_the_recording() -> None:
    import random

    hangup = load_recording("caller_hangup").caller_script()
    items = build_timeline(hangup, random.Random(1))
    assert items == [(pytest.approx(3.485655), "hangup", None)]
    assert build_timeline(hangup, random.Random(1), hangup_after=0.5)[-1][:2] == (0.5, "hangup")
    audio = build_timeline(hangup, random.Random(1), audio=bytes(320), audio_start=0.1)
    assert [(round(t, 3), kind) for t, kind, _ in audio[:2]] == [(0.1, "rtp"), (0.12, "rtp")]
    echo = load_recording("echo_roundtrip").caller_script()
    assert build_timeline(echo, random.Random(1), echo=True) == []


# -- the server, driven like the recorded bridge ------------------------------------------


async def test_basic_ulaw_flow_matches_the_recording(
    sim: SimulatedAsterisk, ari: Ari, basic: Recording
) -> None:
    events = await ari.connect()
    call = await sim.place_call("basic_ulaw")
    bridged = await bridge_call(ari, call)
    cid, em_id, bridge_id = call.caller_id, bridged.em["id"], bridged.bridge["id"]
    assert re.fullmatch(r"\d{10}\.\d+", cid) and em_id != cid
    assert bridged.em["name"].startswith(f"UnicastRTP/127.0.0.1:{bridged.udp.port}-0x")
    assert bridged.asterisk_port % 2 == 0

    # Asterisk's RTP: from the announced port, recorded header stream, paced like recorded.
    received = [await bridged.udp.recv() for _ in range(10)]
    assert {addr for _, _, addr in received} == {("127.0.0.1", bridged.asterisk_port)}
    fields = [rtp_fields(data) for _, data, _ in received]
    assert all(len(data) == 172 for _, data, _ in received)
    assert [(v, m, pt) for v, m, pt, *_ in fields] == [(2, 0, 0)] * 10
    assert fields[0][4] == 160 and [f[4] - fields[0][4] for f in fields] == [
        160 * i for i in range(10)
    ]
    first_in = basic.first_inbound_rtp_at("1795313560.0")
    assert first_in is not None
    recorded_first = first_in - basic.bridged_at("1795313560.0")
    assert received[0][0] - call.bridged.result() == pytest.approx(recorded_first, abs=0.08)
    assert received[-1][0] - received[0][0] == pytest.approx(0.18, abs=0.06)

    # Our RTP, sent from external_host, reaches the sim bit-exact.
    ours = rtp_stream(ULAW, bytes(range(160)) * 3, ssrc=1234, first_seq=100)
    for packet in ours:
        bridged.udp.send(packet, bridged.asterisk_port)
    bridged.udp.send(ours[-1], bridged.asterisk_port)
    while len(call.rtp_received) < 4:
        await bridged.udp.recv()  # Asterisk's own 20 ms stream paces this loop
    assert [data for _, data, _ in call.rtp_received[:3]] == ours

    answers = bridged.answers + await hang_up(ari, bridged)
    await events.wait_for("BridgeDestroyed")
    await events.wait_for("ChannelDestroyed", em_id)
    answers += [await ari.request("GET", "/ari/channels"), await ari.request("GET", "/ari/bridges")]

    recorded = [ex for ex in basic.rest if ex.role != "trigger"]
    for ours_answer, theirs in zip(answers, recorded, strict=True):
        assert (ours_answer.status, ours_answer.reason) == (theirs.status, theirs.reason), (
            theirs.path
        )
        assert shape(ours_answer.body) == shape(theirs.body), theirs.path
        assert_asterisk_headers(ours_answer.headers, bool(theirs.body_text))
    assert answers[-2].text == "[]" and answers[-1].text == "[]"

    order = per_channel(events.parsed)
    expected = basic.per_channel_types()
    assert order[cid] == expected["1795313560.0"]
    assert order[em_id] == expected["1795313560.2"]
    assert order[f"bridge:{bridge_id}"] == expected["bridge:dce72379-b387-4cd6-b25a-96b494a821f7"]
    assert events.raw == sim.events_sent
    assert call.hung_up_by == "app" and await call.ended == "app"
    assert_nothing_left(sim)


async def test_event_json_keeps_recorded_keys_and_order(
    sim: SimulatedAsterisk, ari: Ari, basic: Recording
) -> None:
    events = await ari.connect()
    bridged = await bridge_call(ari, await sim.place_call("basic_ulaw"))
    await hang_up(ari, bridged)
    await events.wait_for("BridgeDestroyed")
    recorded = {
        (e.type, e.data.get("variable"), e.data.get("dialstatus")): e.data for e in basic.events
    }
    for event in events.parsed:
        theirs = recorded[(event["type"], event.get("variable"), event.get("dialstatus"))]
        assert key_shape(event) == key_shape(theirs), event["type"]


async def test_422_until_the_media_channel_is_in_stasis(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    sim.set_em_stasis_delay(0.3)
    call = await sim.place_call("basic_ulaw")
    await events.wait_for("StasisStart", call.caller_id)
    bridge = (await ari.request("POST", "/ari/bridges", type="mixing")).body
    em = (await ari.request("POST", "/ari/channels/externalMedia", app="pipecat",
                            external_host="127.0.0.1:31000", format="ulaw")).body  # fmt: skip
    path = f"/ari/bridges/{bridge['id']}/addChannel"
    early = await ari.request("POST", path, channel=f"{call.caller_id},{em['id']}")
    assert (early.status, early.reason, early.text) == (
        422,
        "Unprocessable Entity",
        '{"message":"Channel not in Stasis application"}',
    )
    assert events.find(lambda e: e["type"] == "ChannelEnteredBridge") is None  # all or nothing
    await events.wait_for("StasisStart", em["id"])
    assert (await ari.request("POST", path, channel=f"{call.caller_id},{em['id']}")).status == 204
    await asyncio.wait_for(call.bridged, TIMEOUT)


async def test_media_stasis_start_can_precede_the_rest_answer(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    events = await ari.connect()
    sim.set_em_stasis_delay(-0.05)
    params = {"app": "pipecat", "external_host": "127.0.0.1:31000", "format": "ulaw"}
    answer = await ari.request("POST", "/ari/channels/externalMedia", channelId="em-1", **params)
    assert answer.status == 200 and answer.body["state"] == "Down"
    seen = events.find(lambda e: e["type"] == "StasisStart")
    assert seen is not None and seen["channel"]["id"] == "em-1"  # before the answer came
    dialplan = {"context": "default", "exten": "s", "priority": 1}
    assert seen["channel"]["dialplan"] == {**dialplan, "app_name": "Stasis", "app_data": "pipecat"}
    assert seen["args"] == [] and seen["channel"]["caller"] == {"name": "", "number": ""}
    dup = await ari.request("POST", "/ari/channels/externalMedia", channelId="em-1", **params)
    assert (dup.status, dup.body) == (
        409,
        {"message": "Channel with given unique ID already exists"},
    )
    assert (await ari.request("DELETE", "/ari/channels/em-1")).status == 204
    await events.wait_for("ChannelDestroyed", "em-1")
    assert_nothing_left(sim)


async def test_caller_hangs_up_first_in_the_recorded_order(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    recording = load_recording("caller_hangup")
    events = await ari.connect()
    call = await sim.place_call("caller_hangup", hangup_after=0.2)
    bridged = await bridge_call(ari, call)
    assert await asyncio.wait_for(call.ended, TIMEOUT) == "caller"
    await events.wait_for("StasisEnd", call.caller_id)
    # Nothing is torn down for the app (facts §15).
    assert set(sim.channels) == {bridged.em["id"]} and set(sim.bridges) == {bridged.bridge["id"]}
    assert (await ari.request("DELETE", f"/ari/channels/{bridged.em['id']}")).status == 204
    assert (await ari.request("DELETE", f"/ari/bridges/{bridged.bridge['id']}")).status == 204
    await events.wait_for("ChannelDestroyed", bridged.em["id"])
    await events.wait_for("BridgeDestroyed")
    order, expected = per_channel(events.parsed), recording.per_channel_types()
    assert order[call.caller_id] == expected["1795313567.3"]
    assert order[bridged.em["id"]] == expected["1795313567.5"]
    hangup = events.find(lambda e: e["type"] == "ChannelHangupRequest")
    assert hangup is not None and hangup["cause"] == 16 and "soft" not in hangup
    assert call.rtp_sent == []  # the recorded far end produced no frames at all
    assert_nothing_left(sim)


async def test_dtmf_arrives_at_the_recorded_times(sim: SimulatedAsterisk, ari: Ari) -> None:
    recorded = load_recording("dtmf").dtmf("1795313574.6")
    events = await ari.connect()
    call = await sim.place_call("dtmf")
    bridged = await bridge_call(ari, call)
    last = await events.wait_for("ChannelDtmfReceived", call.caller_id, TIMEOUT + 3, digit="#")
    assert last["duration_ms"] == 100
    digits = [e for e in events.parsed if e["type"] == "ChannelDtmfReceived"]
    assert [e["digit"] for e in digits] == ["1", "2", "3", "#"] == call.dtmf_sent
    assert recorded[0].offset == pytest.approx(1.69, abs=0.01)
    assert call.rtp_sent == []  # DTMF never comes as RTP (facts §12)
    await hang_up(ari, bridged)
    await events.wait_for("BridgeDestroyed")


async def test_echo_and_strict_rtp_drop_a_second_source(sim: SimulatedAsterisk, ari: Ari) -> None:
    await ari.connect()
    call = await sim.place_call("echo_roundtrip")
    bridged = await bridge_call(ari, call)
    stream = rtp_stream(ULAW, bytes(range(256)) * 6, ssrc=99, first_seq=65534)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    bridged.udp.send(stream[0], bridged.asterisk_port)
    echoes = [await bridged.udp.recv()]
    assert echoes[0][0] - sent_at < 0.05  # real Asterisk: ~0.8 ms on loopback
    intruder = await ari.open_udp()
    for packet in stream[1:6]:
        intruder.send(packet, bridged.asterisk_port)
    for packet in stream[6:9]:
        bridged.udp.send(packet, bridged.asterisk_port)
        echoes.append(await bridged.udp.recv())
    assert [reason for *_, reason in call.rtp_dropped] == ["strict_rtp"] * 5
    assert len(call.rtp_received) == 4
    fields = [rtp_fields(data) for _, data, _ in echoes]
    assert [data[12:] for _, data, _ in echoes] == [p[12:] for p in stream[:1] + stream[6:9]]
    assert {f[5] for f in fields} != {99} and len({f[5] for f in fields}) == 1  # Asterisk's SSRC
    assert [f[4] for f in fields] == [160, 1120, 1280, 1440]  # our timestamps (whole ms)
    assert [f[1] for f in fields] == [0, 1, 0, 0]  # first 0; a 100 ms gap starts a talkspurt
    assert [(f[3] - fields[0][3]) % 65536 for f in fields] == [0, 1, 2, 3]
    assert intruder.packets.empty()  # Asterisk answers external_host only (facts §6)
    await hang_up(ari, bridged)


async def test_audio_parameter_rides_the_recorded_header_stream(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    await ari.connect()
    audio = bytes(range(200, 256)) * 6  # 336 bytes: two full packets and a short one
    call = await sim.place_call("basic_ulaw", audio=audio, audio_start=0.0)
    bridged = await bridge_call(ari, call)
    packets = [(await bridged.udp.recv())[1] for _ in range(3)]
    assert b"".join(p[12:] for p in packets) == audio
    assert [(*rtp_fields(p)[1:3], rtp_fields(p)[4]) for p in packets] == [
        (0, 0, 160),
        (0, 0, 320),
        (0, 0, 480),
    ]
    assert [len(p) for p in packets] == [172, 172, 28]
    await hang_up(ari, bridged)


async def test_calls_need_a_connected_events_socket(sim: SimulatedAsterisk, ari: Ari) -> None:
    with pytest.raises(StasisAppNotActive, match="Stasis app 'pipecat' not active"):
        await sim.place_call()
    events = await ari.connect()
    call = await sim.place_call("basic_ulaw")
    bridged = await bridge_call(ari, call)
    await bridged.udp.recv()
    await sim.drop_event_sockets()
    await asyncio.wait_for(events._reader, TIMEOUT)  # the app sees its socket die
    with pytest.raises(StasisAppNotActive):
        await sim.place_call()
    count = len(call.rtp_sent)
    await bridged.udp.recv()  # media keeps flowing (facts §16)
    assert len(call.rtp_sent) > count
    app = await ari.request("GET", "/ari/applications/pipecat")
    ws_reconnect = load_recording("ws_reconnect")
    theirs = next(ex for ex in ws_reconnect.rest if ex.path == "/ari/applications/pipecat")
    assert shape(app.body) == shape(theirs.body)
    assert app.body["channel_ids"] == [call.caller_id, bridged.em["id"]]
    assert app.body["bridge_ids"] == [bridged.bridge["id"]]
    ari.events = None
    again = await ari.connect()
    await hang_up(ari, bridged)
    first = await again.wait_for("ChannelHangupRequest")
    assert again.parsed[0] == first  # nothing replayed after reconnecting
    await again.wait_for("BridgeDestroyed")
    assert_nothing_left(sim)


async def test_continue_leaves_stasis_without_destroyed(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    call = await sim.place_call("basic_ulaw", args=["outbound", "lab"], exten="101")
    start = await events.wait_for("StasisStart", call.caller_id)
    assert start["args"] == ["outbound", "lab"]
    assert start["channel"]["dialplan"]["app_data"] == "pipecat,outbound,lab"
    assert start["channel"]["dialplan"]["exten"] == "101"
    assert (await ari.request("POST", f"/ari/channels/{call.caller_id}/continue")).status == 204
    assert await asyncio.wait_for(call.ended, TIMEOUT) == "app"
    await events.wait_for("StasisEnd", call.caller_id)
    assert [e["type"] for e in events.parsed] == ["StasisStart", "StasisEnd"]
    assert_nothing_left(sim)


async def test_app_args_come_from_the_recording(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    call = await sim.place_call("app_args")
    start = await events.wait_for("StasisStart", call.caller_id)
    assert start["args"] == ["ws://127.0.0.1:8765/custom"]
    assert start["channel"]["dialplan"]["app_data"] == "pipecat,ws://127.0.0.1:8765/custom"
    assert start["channel"]["name"].startswith("Local/200@caller-")


async def test_error_answers_replay_the_errors_recording(sim: SimulatedAsterisk, ari: Ari) -> None:
    recording = load_recording("errors")
    await ari.connect()
    ids: dict[str, str] = {}  # recorded id -> the sim's
    for theirs in sorted(recording.rest, key=lambda ex: ex.t_request):
        if theirs.role == "trigger":
            call = await sim.place_call("errors")
            ids[recording.caller_ids()[0]] = call.caller_id
            continue
        if "race" in (theirs.note or ""):
            continue  # 204 or 400 depending on timing (errors notes)

        def mapped(text: str) -> str:
            for recorded_id, ours in ids.items():
                text = text.replace(recorded_id, ours)
            return text

        query = {key: mapped(value) for key, value in theirs.query.items()}
        send = ari.anonymous if theirs.note == "no auth" else ari.request
        ours = await send(theirs.method, mapped(theirs.path), **query)
        assert (ours.status, ours.reason) == (theirs.status, theirs.reason), theirs.note
        assert_asterisk_headers(ours.headers, bool(theirs.body_text))
        if theirs.status == 200:
            assert shape(ours.body) == shape(theirs.body)
            if isinstance(theirs.body, dict):
                ids[theirs.body["id"]] = ours.body["id"]
        else:
            assert ours.text == mapped(theirs.body_text), theirs.note
        if theirs.status == 401:
            assert ours.headers["WWW-Authenticate"] == 'Basic realm="Asterisk REST Interface"'
    assert_nothing_left(sim)


async def test_addchannel_errors(sim: SimulatedAsterisk, ari: Ari) -> None:
    await ari.connect()
    bridge = (await ari.request("POST", "/ari/bridges", type="mixing")).body
    assert bridge["technology"] == "simple_bridge" and bridge["bridge_class"] == "stasis"
    missing = await ari.request("POST", "/ari/bridges/nope/addChannel", channel="x")
    assert (missing.status, missing.reason, missing.body) == (
        404,
        "Not found",
        {"message": "Bridge not found"},
    )
    unknown = await ari.request("POST", f"/ari/bridges/{bridge['id']}/addChannel", channel="x")
    assert (unknown.status, unknown.body) == (400, {"message": "Channel not found"})
    assert (await ari.request("DELETE", f"/ari/bridges/{bridge['id']}")).status == 204


async def test_meta_bodies_have_the_recorded_shape(sim: SimulatedAsterisk, ari: Ari) -> None:
    meta = load_recording("meta")
    await ari.connect()
    for path in (
        "/ari/asterisk/info",
        "/ari/asterisk/ping",
        "/ari/applications",
        "/ari/applications/pipecat",
    ):
        theirs = next(ex for ex in meta.rest if ex.path == path)
        ours = await ari.request("GET", path)
        assert (ours.status, shape(ours.body)) == (theirs.status, shape(theirs.body)), path
        if path != "/ari/asterisk/ping":
            assert ours.body == theirs.body, path  # no call: identical to the recording
    unknown = await ari.request("GET", "/ari/nothing/here")
    assert (unknown.status, unknown.body) == (404, {"message": "Resource not found"})


async def test_api_key_and_basic_auth(sim: SimulatedAsterisk, ari: Ari) -> None:
    ok = await ari.anonymous("GET", "/ari/channels", api_key="asterisk:asterisk")
    assert ok.status == 200
    wrong = await ari.anonymous("GET", "/ari/channels", api_key="asterisk:nope")
    assert (wrong.status, wrong.body) == (401, {"message": "Authentication required"})
    url = sim.events_url.replace("api_key=asterisk:asterisk", "api_key=asterisk:nope")
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url)
    assert refused.value.response.status_code == 401


async def test_fail_next_answers_once(sim: SimulatedAsterisk, ari: Ari) -> None:
    sim.fail_next("GET", r"^/ari/bridges$", 503, {"message": "boom"})
    failed = await ari.request("GET", "/ari/bridges")
    assert (failed.status, failed.body) == (503, {"message": "boom"})
    assert (await ari.request("GET", "/ari/bridges")).status == 200
    assert [(r.method, r.path, r.status) for r in sim.requests] == [
        ("GET", "/ari/bridges", 503),
        ("GET", "/ari/bridges", 200),
    ]


async def test_concurrent_calls_get_their_own_ports(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    calls = [await sim.place_call("basic_ulaw") for _ in range(5)]
    flows = await asyncio.gather(*(bridge_call(ari, c, f"em-{i:04x}") for i, c in enumerate(calls)))
    assert len({c.caller_id for c in calls}) == 5
    assert len({f.asterisk_port for f in flows}) == 5
    assert {f.em["id"] for f in flows} == {f"em-{i:04x}" for i in range(5)}
    for flow in flows:
        _, _, source = await flow.udp.recv()
        assert source[1] == flow.asterisk_port
    for flow in flows:
        await hang_up(ari, flow)
    for flow in flows:
        await events.wait_for("ChannelDestroyed", flow.em["id"])
    assert_nothing_left(sim)


async def test_stop_closes_everything() -> None:
    async with aiohttp.ClientSession() as session:
        sim = SimulatedAsterisk()
        await sim.start()
        client = Ari(sim, session)
        events = await client.connect()
        bridged = await bridge_call(client, await sim.place_call("basic_ulaw"))
        await bridged.udp.recv()
        assert sim.open_udp_sockets() == [("127.0.0.1", bridged.asterisk_port)]
        await sim.stop()
        assert sim.open_udp_sockets() == []
        await asyncio.wait_for(events._reader, TIMEOUT)  # the server closed the events socket
        await client.close()
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.request("GET", "/ari/channels")


async def test_module_runs_standalone() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.tools.sim", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 10.0)).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", line)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{line}/ari/asterisk/ping", params={"api_key": "asterisk:asterisk"}
            ) as resp,
        ):
            assert (await resp.json())["ping"] == "pong"
    finally:
        process.terminate()
        await process.wait()
