"""Hang-up with a reason and DTMF towards the caller, against hangup_reason and dtmf_to_caller.

The far ends 231 and 230 leave what they saw in global variables (`BOT_HANGUPCAUSE`,
`BOT_DTMF`); the simulator keeps them too, on the call (`far_end_cause`, `dtmf_received`).
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.causes import HANGUP_REASONS, dial_status, hangup_cause
from bridge.tools.sim.control import dtmf_schedule
from bridge.tools.sim.recording import load_recording
from bridge.tools.sim.templates import Reply
from tests.tools.sim.ari_client import (
    TIMEOUT,
    Ari,
    assert_asterisk_headers,
    assert_nothing_left,
    bridge_call,
    per_channel,
)

# -- pure ---------------------------------------------------------------------------------


def test_hangup_reasons_map_as_resource_channels_does() -> None:
    assert HANGUP_REASONS == {
        "normal": 16, "busy": 17, "congestion": 34, "no_answer": 19, "timeout": 18,
        "rejected": 21, "unallocated": 1, "normal_unspecified": 31, "number_incomplete": 28,
        "codec_mismatch": 58, "interworking": 127, "failure": 38, "answered_elsewhere": 26,
    }  # fmt: skip
    # The 23.4.1 api-docs vocabulary, as hangup_reason/notes.md lists it, and nothing else.
    notes = (load_recording("hangup_reason").path / "notes.md").read_text()
    listed = notes.split("(23.4.1 api-docs):")[1].split(";")[0]
    assert set(HANGUP_REASONS) == {word.strip() for word in listed.replace("\n", " ").split(",")}
    assert hangup_cause({}) == 16
    assert hangup_cause({"reason_code": " 21x"}) == 21  # sscanf("%30d")
    refused = hangup_cause({"reason_code": "x"})
    assert isinstance(refused, Reply) and (refused.status, refused.reason) == (
        400,
        "Invalid Reason Code",
    )
    assert [dial_status(c) for c in (16, 17, 19, 34, 3, 20)] == [
        "NOANSWER", "BUSY", "NOANSWER", "CONGESTION", "CHANUNAVAIL", "CHANUNAVAIL",
    ]  # fmt: skip


def test_dtmf_schedule_is_dtmf_stream() -> None:
    ends, total = dtmf_schedule("123#", 0, 200, 150, 0)
    assert [(round(t, 3), d) for t, d in ends] == [
        (0.25, "1"), (0.6, "2"), (0.95, "3"), (1.3, "#"),
    ]  # fmt: skip
    assert total == pytest.approx(1.5)
    ends, _ = dtmf_schedule("1w2x", 50, 0, 20, 0)  # between 0 -> 100, duration >= 100
    assert [(round(t, 3), d) for t, d in ends] == [(0.25, "1"), (0.95, "2")]


def test_the_recorded_bot_dtmf_probes_follow_the_schedule() -> None:
    recording = load_recording("dtmf_to_caller")
    post = next(ex for ex in recording.rest if ex.path.endswith("/dtmf") and ex.status == 204)
    ends, _ = dtmf_schedule("123#", 0, 200, 150, 0)
    probes = [ex for ex in recording.rest if ex.query.get("variable") == "BOT_DTMF"]
    for probe in probes[1:]:
        elapsed = probe.t_request - post.t_response
        heard = "".join(digit for at, digit in ends if at <= elapsed)
        assert probe.body == {"value": heard}, elapsed


# -- hang-up with a reason ----------------------------------------------------------------


async def test_hangup_reasons_reach_the_far_end(sim: SimulatedAsterisk, ari: Ari) -> None:
    recording = load_recording("hangup_reason")
    events = await ari.connect()
    recorded_ids = recording.caller_ids()
    for index, reason in enumerate(({"reason": "busy"}, {"reason_code": "21"})):
        call = await sim.place_call("hangup_reason", audio=b"")
        bridged = await bridge_call(ari, call, f"em-reason-{index}")
        cid = call.caller_id
        before = await ari.request("GET", "/ari/asterisk/variable", variable="BOT_HANGUPCAUSE")
        assert before.body == {"value": ""}
        if index == 0:
            for bad in ({"reason": "bogus"}, {"reason": "busy", "reason_code": "21"}):
                ours = await ari.request("DELETE", f"/ari/channels/{cid}", **bad)
                theirs = next(ex for ex in recording.rest
                              if ex.method == "DELETE" and dict(ex.query) == bad)  # fmt: skip
                assert (ours.status, ours.reason, ours.text) == (
                    theirs.status,
                    theirs.reason,
                    theirs.body_text,
                )
                assert_asterisk_headers(ours.headers, True)
            assert cid in sim.channels and not call.ended.done()  # neither hung up
        assert (await ari.request("DELETE", f"/ari/channels/{cid}", **reason)).status == 204
        request = await events.wait_for("ChannelHangupRequest", cid)
        assert (request["cause"], request["soft"]) == (32, True)  # never the reason
        await events.wait_for("StasisEnd", cid)
        expected = {"busy": 17}.get(reason.get("reason", ""), 21)
        assert call.far_end_cause == expected
        after = await ari.request("GET", "/ari/asterisk/variable", variable="BOT_HANGUPCAUSE")
        assert after.body == {"value": str(expected)}
        for path in (f"/ari/channels/{bridged.em['id']}", f"/ari/bridges/{bridged.bridge['id']}"):
            assert (await ari.request("DELETE", path)).status == 204
        await events.bridge_destroyed(bridged.bridge["id"])
        ours, theirs = per_channel(events.parsed), recording.per_channel_types()
        assert ours[cid] == theirs[recorded_ids[index]]
        assert not any(e["type"] == "ChannelDestroyed" and e["channel"]["id"] == cid
                       for e in events.parsed)  # fmt: skip
    assert_nothing_left(sim)


async def test_a_reason_shows_in_the_media_channels_destroyed_cause(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    events = await ari.connect()
    bridged = await bridge_call(ari, await sim.place_call("basic_ulaw", audio=b""))
    em = bridged.em["id"]
    assert (await ari.request("DELETE", f"/ari/channels/{em}", reason="timeout")).status == 204
    destroyed = await events.wait_for("ChannelDestroyed", em)
    assert (destroyed["cause"], destroyed["cause_txt"]) == (18, "No user responding")
    nothing = await ari.request("DELETE", "/ari/channels/nope", reason="bogus")
    assert (nothing.status, nothing.body) == (404, {"message": "Channel not found"})


# -- DTMF to the caller -------------------------------------------------------------------


async def test_dtmf_reaches_the_far_end_as_recorded(sim: SimulatedAsterisk, ari: Ari) -> None:
    recording = load_recording("dtmf_to_caller")
    events = await ari.connect()
    call = await sim.place_call("dtmf_to_caller")
    bridged = await bridge_call(ari, call)
    cid = call.caller_id
    empty = await ari.request("GET", "/ari/asterisk/variable", variable="BOT_DTMF")
    assert empty.body == {"value": ""}
    for theirs in recording.rest:
        if theirs.path.endswith("/dtmf") and theirs.status != 204:
            path = theirs.path.replace("1796140240.1793", cid)
            ours = await ari.request("POST", path, **dict(theirs.query))
            assert (ours.status, ours.reason, ours.text) == (
                theirs.status,
                theirs.reason,
                theirs.body_text,
            )
    seen = len(events.parsed)
    loop = asyncio.get_running_loop()
    posted = loop.time()
    sent = await ari.request("POST", f"/ari/channels/{cid}/dtmf", dtmf="123#", between="200",
                             duration="150")  # fmt: skip
    assert sent.status == 204 and loop.time() - posted < 0.1  # at once, played afterwards
    digits = await asyncio.wait_for(call.wait_dtmf(4), TIMEOUT)
    assert [d for _, d in digits] == ["1", "2", "3", "#"]
    offsets = [t - posted for t, _ in digits]
    assert offsets == pytest.approx([0.25, 0.6, 0.95, 1.3], abs=0.06)
    value = await ari.request("GET", "/ari/asterisk/variable", variable="BOT_DTMF")
    assert value.body == {"value": "123#"}
    assert len(events.parsed) == seen  # no event for DTMF we send
    assert call.rtp_sent == []  # and nothing on the UnicastRTP leg
    still = await ari.request("GET", f"/ari/channels/{cid}")
    assert (still.status, still.body["state"]) == (200, "Up")
    assert call.dtmf_sent == []  # the caller's own digits: none
    for path in (f"/ari/channels/{cid}", f"/ari/channels/{bridged.em['id']}",
                 f"/ari/bridges/{bridged.bridge['id']}"):  # fmt: skip
        assert (await ari.request("DELETE", path)).status == 204
    await events.wait_for("BridgeDestroyed")
    assert per_channel(events.parsed)[cid] == recording.per_channel_types()["1796140240.1793"]
    assert_nothing_left(sim)


async def test_dtmf_waits_for_a_playback_and_needs_an_up_channel(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    events = await ari.connect()
    call = await sim.place_call("dtmf_to_caller")
    await events.wait_for("StasisStart", call.caller_id)
    sim.sounds["sound:short"] = 0.2
    path = f"/ari/channels/{call.caller_id}"
    assert (await ari.request("POST", f"{path}/play", media="sound:short")).status == 201
    assert (await ari.request("POST", f"{path}/dtmf", dtmf="5", duration="100")).status == 204
    finished = await events.wait_for("PlaybackFinished")
    (digit,) = await asyncio.wait_for(call.wait_dtmf(1), TIMEOUT)
    started = next(t for t, e in zip(sim.event_times, sim.events_sent, strict=True)
                   if '"PlaybackFinished"' in e)  # fmt: skip
    assert digit[1] == "5" and digit[0] - started == pytest.approx(0.2, abs=0.05)
    assert finished["playback"]["state"] == "done"
    outbound = await ari.request("POST", "/ari/channels", endpoint="Local/208@caller",
                                 app="pipecat", channelId="xfer-ringing")  # fmt: skip
    assert outbound.status == 200
    await events.wait_for("Dial", "xfer-ringing", dialstatus="RINGING")
    ringing = await ari.request("POST", "/ari/channels/xfer-ringing/dtmf", dtmf="1")
    assert (ringing.status, ringing.body) == (409, {"message": "Channel not in Stasis application"})
    assert (await ari.request("DELETE", "/ari/channels/xfer-ringing")).status == 204
    assert (await ari.request("DELETE", path)).status == 204
    await events.wait_for("ChannelDestroyed", "xfer-ringing;2")
    assert_nothing_left(sim)
