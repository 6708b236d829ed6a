"""Transfer targets against the recordings: originate into the app (answer, busy, no answer),
create + dial, the synthetic congestion / unavailable cases, and tearing targets down.

Each test drives the simulator as the recorded client did and compares, per channel, the event
types with the recording's (recorded ids mapped to ours), plus the REST answers' key fields and
the recorded timing within a tolerance. Waits are on events or futures, never sleeps.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.recording import Recording, load_recording
from bridge.tools.sim.targets import LAB_TARGETS, TargetBehaviour
from tests.tools.sim.ari_client import (
    TIMEOUT,
    Ari,
    Bridged,
    assert_nothing_left,
    bridge_call,
    hang_up,
    per_channel,
    rtp_fields,
    shape,
)

CALLER_ID = "Lab Caller <5551000>"


def originate(ari: Ari, endpoint: str, cid: str, **extra: str) -> Any:
    params = {"endpoint": endpoint, "app": "pipecat", "appArgs": "transfer", "channelId": cid,
              "callerId": CALLER_ID, "timeout": "20", "formats": "ulaw", **extra}  # fmt: skip
    return ari.request("POST", "/ari/channels", **params)


def recorded_target(recording: Recording) -> str:
    for ex in recording.rest:
        dialled = ex.method == "POST" and ex.path in ("/ari/channels", "/ari/channels/create")
        if dialled and ex.role == "bridge":
            return str(ex.query["channelId"])
    raise LookupError(recording.name)


def assert_per_channel(events: list[dict[str, Any]], recording: Recording,
                       ids: dict[str, str]) -> None:  # fmt: skip
    """Event types per channel as recorded, for every recorded channel id in `ids`."""
    ours, theirs = per_channel(events), recording.per_channel_types()
    for recorded, mine in ids.items():
        assert ours.get(mine, []) == theirs[recorded], recorded


async def bridged_caller(sim: SimulatedAsterisk, ari: Ari, scenario: str) -> Bridged:
    # Far end 204 is silent: what the recordings got on its call is Asterisk's mix, not it.
    call = await sim.place_call(scenario, audio=b"")
    return await bridge_call(ari, call, f"em-{scenario[:12]}")


def call_ids(recording: Recording, bridged: Bridged) -> dict[str, str]:
    caller = recording.caller_ids()[0]
    em = recording.em_channel_id(caller)
    assert em is not None
    return {caller: bridged.call.caller_id, em: bridged.em["id"],
            f"bridge:{recording.bridge_id(caller)}": f"bridge:{bridged.bridge['id']}"}  # fmt: skip


async def test_an_answered_target_matches_the_recording(sim: SimulatedAsterisk, ari: Ari) -> None:
    recording = load_recording("transfer_originate_answer")
    events = await ari.connect()
    bridged = await bridged_caller(sim, ari, "transfer_originate_answer")
    loop = asyncio.get_running_loop()
    sent = loop.time()
    answer = await originate(ari, "Local/233@caller", "xfer-answer")
    theirs = next(ex for ex in recording.rest if ex.query.get("channelId") == "xfer-f19cc3bc194e")
    assert (answer.status, shape(answer.body)) == (200, shape(theirs.body))
    assert answer.body["state"] == "Down" and answer.body["id"] == "xfer-answer"
    assert answer.body["name"].startswith("Local/233@caller-") and answer.body["name"][-2:] == ";1"
    assert answer.body["dialplan"] == theirs.body["dialplan"]
    assert answer.body["caller"] == theirs.body["caller"]
    start = await events.wait_for("StasisStart", "xfer-answer")
    assert loop.time() - sent == pytest.approx(1.0, abs=0.15)  # 233 rings 1 s
    assert start["args"] == ["transfer"]
    assert start["channel"]["dialplan"] == {"context": "caller", "exten": "233", "priority": 1,
                                            "app_name": "Stasis",
                                            "app_data": "pipecat,transfer"}  # fmt: skip
    ringing = [e["dialstatus"] for e in events.parsed if e["type"] == "Dial"
               and e["peer"]["id"] == "xfer-answer"]  # fmt: skip
    assert ringing == ["", "RINGING", "ANSWER"]
    bridge_id = bridged.bridge["id"]
    added = await ari.request("POST", f"/ari/bridges/{bridge_id}/addChannel", channel="xfer-answer")
    assert added.status == 204
    entered = await events.wait_for("ChannelEnteredBridge", "xfer-answer")
    assert entered["bridge"]["technology"] == "simple_bridge"  # as recorded: before reconfiguring
    got = await ari.request("GET", f"/ari/bridges/{bridge_id}")
    assert got.body["technology"] == "softmix"
    assert got.body["channels"] == [bridged.call.caller_id, bridged.em["id"], "xfer-answer"]
    peers = {e["channel"]["id"]: e["value"] for e in events.parsed
             if e["type"] == "ChannelVarset" and e["variable"] == "BRIDGEPEER"}  # fmt: skip
    names = {cid: sim.channels[cid].name for cid in (bridged.call.caller_id, bridged.em["id"],
                                                      "xfer-answer")}  # fmt: skip
    assert peers["xfer-answer"] == f"{names[bridged.call.caller_id]},{names[bridged.em['id']]}"
    assert peers[bridged.call.caller_id] == f"{names['xfer-answer']},{names[bridged.em['id']]}"
    assert peers[bridged.em["id"]] == f"{names['xfer-answer']},{names[bridged.call.caller_id]}"
    # Softmix: a packet every 20 ms from the join on, although nobody talks (recorded: 141).
    packets = [await bridged.udp.recv() for _ in range(10)]
    fields = [rtp_fields(data) for _, data, _ in packets]
    assert {f[2] for f in fields} == {0} and {f[1] for f in fields} == {0}
    assert len({f[5] for f in fields}) == 1
    assert packets[-1][0] - packets[0][0] == pytest.approx(0.18, abs=0.06)
    payloads = [data[12:] for _, data, _ in packets]
    assert payloads[0] == b"\xff" * 160  # the first mixed frame is silence, as recorded
    assert any(set(p) != {0xFF} for p in payloads[1:])  # then 233's agent tone
    # 233 plays its 0.5 s agent tone, then Echo(): the recording waited past that.
    await events.wait_for("ChannelDialplan", "xfer-answer;2", dialplan_app="Echo")
    assert [(await ari.request("DELETE", "/ari/channels/xfer-answer")).status] == [204]
    await events.wait_for("ChannelDestroyed", "xfer-answer;2")
    answers = await hang_up(ari, bridged)
    assert [a.status for a in answers] == [204, 204, 204]
    await events.wait_for("BridgeDestroyed")
    destroyed = [(e["channel"]["id"], e["cause"], e["channel"]["dialplan"]["app_name"])
                 for e in events.parsed if e["type"] == "ChannelDestroyed"]  # fmt: skip
    assert destroyed[:2] == [("xfer-answer", 16, "AppDial2"), ("xfer-answer;2", 16, "")]
    ids = call_ids(recording, bridged)
    ids |= {"xfer-f19cc3bc194e": "xfer-answer", "xfer-f19cc3bc194e;2": "xfer-answer;2"}
    assert_per_channel(events.parsed, recording, ids)

    def far_half(events: list[dict[str, Any]], cid: str) -> list[tuple[Any, ...]]:
        return [(e["channel"]["state"], e["channel"]["dialplan"]["priority"],
                 e.get("dialplan_app", e.get("variable", e.get("cause", ""))))
                for e in events if e.get("channel", {}).get("id") == cid]  # fmt: skip

    recorded = [e.data for e in recording.events]
    assert far_half(events.parsed, "xfer-answer;2") == far_half(recorded, "xfer-f19cc3bc194e;2")
    assert (await ari.request("GET", "/ari/channels")).text == "[]"
    assert (await ari.request("GET", "/ari/bridges")).text == "[]"
    assert_nothing_left(sim)


Failed = tuple[Recording, Bridged, list[dict[str, Any]]]


async def failed_target(sim: SimulatedAsterisk, ari: Ari, scenario: str, endpoint: str,
                        **extra: str) -> Failed:  # fmt: skip
    """A bridged caller, a target that fails as `scenario` recorded, then the caller's teardown."""
    recording = load_recording(scenario)
    events = await ari.connect()
    bridged = await bridged_caller(sim, ari, scenario)
    answer = await originate(ari, endpoint, "xfer-t", **extra)
    assert (answer.status, answer.body["state"], answer.body["id"]) == (200, "Down", "xfer-t")
    await events.wait_for("ChannelDestroyed", "xfer-t")
    await events.wait_for("ChannelDestroyed", "xfer-t;2")
    gone = await ari.request("GET", "/ari/channels/xfer-t")
    assert (gone.status, gone.body) == (404, {"message": "Channel not found"})
    untouched = await ari.request("GET", f"/ari/bridges/{bridged.bridge['id']}")
    assert untouched.body["technology"] == "simple_bridge"
    assert untouched.body["channels"] == [bridged.call.caller_id, bridged.em["id"]]
    await hang_up(ari, bridged)
    await events.wait_for("BridgeDestroyed")
    target = recorded_target(recording)
    ids = call_ids(recording, bridged) | {target: "xfer-t", f"{target};2": "xfer-t;2"}
    assert_per_channel(events.parsed, recording, ids)
    recorded = [e.data for e in recording.events]
    theirs = [(kind, channel.replace(target, "xfer-t"), detail)
              for kind, channel, detail in target_events(recorded, target)]  # fmt: skip
    for half in ("xfer-t", "xfer-t;2"):  # dial statuses, states, causes, the far half's apps
        assert [e for e in target_events(events.parsed) if e[1] == half] == [
            e for e in theirs if e[1] == half
        ]
    assert_nothing_left(sim)
    return recording, bridged, events.parsed


def target_events(events: list[dict[str, Any]], cid: str = "xfer-t") -> list[tuple[Any, ...]]:
    """(type, channel, detail) of the target's events: dial status, state, cause."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        channel = (e.get("channel") or e.get("peer") or {}).get("id", "")
        if channel not in (cid, f"{cid};2"):
            continue
        detail = e.get(
            "dialstatus",
            e.get("cause", e.get("dialplan_app", e["channel"]["state"] if "channel" in e else "")),
        )
        out.append((e["type"], channel, detail))
    return out


async def test_a_busy_target_fails_as_recorded(sim: SimulatedAsterisk, ari: Ari) -> None:
    _, _, events = await failed_target(sim, ari, "transfer_originate_busy", "Local/207@caller")
    destroyed = [
        (e["channel"]["id"], e["cause"], e["cause_txt"])
        for e in events
        if e["type"] == "ChannelDestroyed" and e["channel"]["id"].startswith("xfer")
    ]
    assert destroyed == [("xfer-t", 0, "Unknown"), ("xfer-t;2", 17, "User busy")]
    dials = [(e["dialstatus"], e["dialstring"]) for e in events if e["type"] == "Dial"
             and e["peer"]["id"] == "xfer-t"]  # fmt: skip
    assert dials == [("", "207@caller"), ("BUSY", "207@caller")]
    assert not any(e["type"] == "StasisStart" and e["channel"]["id"] == "xfer-t" for e in events)


async def test_a_target_that_never_answers_ends_at_the_timeout(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    _, _, events = await failed_target(sim, ari, "transfer_originate_noanswer",
                                       "Local/208@caller", timeout="1")  # fmt: skip
    destroyed = [
        (e["channel"]["id"], e["cause"])
        for e in events
        if e["type"] == "ChannelDestroyed" and e["channel"]["id"].startswith("xfer")
    ]
    assert destroyed == [("xfer-t;2", 19), ("xfer-t", 19)]
    assert not any(e["type"] == "Dial" and e["dialstatus"] == "NOANSWER" for e in events)
    assert loop.time() - sent >= 1.0  # the recording: exactly the originate's timeout


@pytest.mark.parametrize(
    ("scenario", "endpoint", "target", "dials", "causes"),
    [
        ("synthetic_transfer_originate_congestion", "Local/210@caller",
         TargetBehaviour.congestion(), ["", "CONGESTION"], [("xfer-t", 0), ("xfer-t;2", 34)]),
        ("synthetic_transfer_originate_unavailable", "Local/nosuch@caller",
         None, [], [("xfer-t;2", 0), ("xfer-t", 0)]),
    ],
)  # fmt: skip
async def test_synthetic_congestion_and_unavailable(
    sim: SimulatedAsterisk, ari: Ari, scenario: str, endpoint: str,
    target: TargetBehaviour | None, dials: list[str], causes: list[tuple[str, int]],
) -> None:  # fmt: skip
    if target is not None:
        sim.targets[endpoint] = target
    _, _, events = await failed_target(sim, ari, scenario, endpoint)
    assert [e["dialstatus"] for e in events if e["type"] == "Dial"
            and e["peer"]["id"] == "xfer-t"] == dials  # fmt: skip
    assert [(e["channel"]["id"], e["cause"]) for e in events if e["type"] == "ChannelDestroyed"
            and e["channel"]["id"].startswith("xfer")] == causes  # fmt: skip


async def test_create_and_dial_a_busy_target(sim: SimulatedAsterisk, ari: Ari) -> None:
    recording = load_recording("transfer_create_dial_busy")
    events = await ari.connect()
    bridged = await bridged_caller(sim, ari, "transfer_create_dial_busy")
    loop = asyncio.get_running_loop()
    answers = {}
    for part in ("a", "b"):
        cid = f"xfer{part}-t"
        created = await ari.request("POST", "/ari/channels/create", endpoint="Local/207@caller",
                                    app="pipecat", appArgs="transfer", channelId=cid,
                                    formats="ulaw")  # fmt: skip
        theirs = next(ex for ex in recording.rest if ex.path == "/ari/channels/create")
        assert (created.status, shape(created.body)) == (200, shape(theirs.body))
        assert created.body["dialplan"] == {**theirs.body["dialplan"]}
        assert created.body["caller"] == {"name": "", "number": ""}
        start = await events.wait_for("StasisStart", cid)  # in Stasis at once, Down
        assert start["channel"]["state"] == "Down" and start["args"] == ["transfer"]
        dialled_at = loop.time()
        dial = await ari.request("POST", f"/ari/channels/{cid}/dial", timeout="1")
        assert dial.status == 204
        busy = await events.wait_for("Dial", cid, dialstatus="BUSY")
        assert busy["dialstring"] == ""  # from the dial bridge, unlike the first Dial
        still = await ari.request("GET", f"/ari/channels/{cid}")
        assert (still.status, still.body["state"]) == (200, "Down")  # BUSY leaves it up
        if part == "a":
            gone = await events.wait_for("ChannelDestroyed", cid)
            assert (gone["cause"], gone["cause_txt"]) == (19, "User alerting, no answer")
            assert loop.time() - dialled_at >= 1.0
        else:
            answers[part] = await ari.request("DELETE", f"/ari/channels/{cid}")
            gone = await events.wait_for("ChannelDestroyed", cid)
            assert gone["cause"] == 16
    assert answers["b"].status == 204
    untouched = await ari.request("GET", f"/ari/bridges/{bridged.bridge['id']}")
    assert untouched.body["channels"] == [bridged.call.caller_id, bridged.em["id"]]
    await hang_up(ari, bridged)
    await events.wait_for("BridgeDestroyed")
    ids = call_ids(recording, bridged) | {"xfera-0547dcada02e": "xfera-t",
                                          "xferb-700370050a64": "xferb-t"}  # fmt: skip
    assert_per_channel(events.parsed, recording, ids)
    assert not [e for e in events.parsed if ";2" in (e.get("channel") or {}).get("id", "")]
    assert_nothing_left(sim)


async def test_deleting_a_ringing_target(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    assert (await originate(ari, "Local/208@caller", "xfer-r")).status == 200
    await events.wait_for("Dial", "xfer-r", dialstatus="RINGING")
    assert (await ari.request("DELETE", "/ari/channels/xfer-r")).status == 204
    await events.wait_for("ChannelDestroyed", "xfer-r;2")
    assert target_events(events.parsed, "xfer-r")[-6:] == [
        ("ChannelHangupRequest", "xfer-r", 32),
        ("Dial", "xfer-r", "NOANSWER"),  # dial.c: the read fails, cause 16 -> NOANSWER
        ("ChannelHangupRequest", "xfer-r;2", 16),
        ("ChannelDestroyed", "xfer-r", 16),
        ("ChannelHangupRequest", "xfer-r;2", 16),
        ("ChannelDestroyed", "xfer-r;2", 16),
    ]
    assert_nothing_left(sim)


async def test_the_caller_hanging_up_while_the_target_rings(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    events = await ari.connect()
    call = await sim.place_call("transfer_originate_answer", audio=b"", hangup_after=0.1)
    bridged = await bridge_call(ari, call)
    assert (await originate(ari, "Local/208@caller", "xfer-r",
                            originator=call.caller_id, formats="")).status == 200  # fmt: skip
    assert await asyncio.wait_for(call.ended, TIMEOUT) == "caller"
    await events.wait_for("StasisEnd", call.caller_id)
    assert "xfer-r" in sim.channels  # the target rings on: nothing ties it to the caller
    for path in ("/ari/channels/xfer-r", f"/ari/channels/{bridged.em['id']}",
                 f"/ari/bridges/{bridged.bridge['id']}"):  # fmt: skip
        assert (await ari.request("DELETE", path)).status == 204
    await events.wait_for("ChannelDestroyed", "xfer-r;2")
    await events.wait_for("BridgeDestroyed")
    assert (await ari.request("GET", "/ari/channels")).text == "[]"
    assert (await ari.request("GET", "/ari/bridges")).text == "[]"
    assert_nothing_left(sim)


async def test_targets_are_a_knob(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    sim.targets["PJSIP/1001"] = TargetBehaviour.answer(after=0.2)
    answer = await originate(ari, "PJSIP/1001", "pcb-xf-1a2b-1")
    assert answer.status == 200 and answer.body["name"].startswith("PJSIP/1001-")
    start = await events.wait_for("StasisStart", "pcb-xf-1a2b-1")
    assert start["channel"]["state"] == "Up"
    assert [e["type"] for e in events.parsed] == [
        "Dial",
        "ChannelStateChange",
        "Dial",
        "ChannelStateChange",
        "Dial",
        "ChannelVarset",
        "StasisStart",
    ]  # one channel: no ;2 half for a technology other than Local
    sim.targets["Local/233@caller"] = replace(LAB_TARGETS["Local/233@caller"], after=0.05)
    assert (await originate(ari, "Local/233@caller", "xfer-fast")).status == 200
    await events.wait_for("StasisStart", "xfer-fast")
    for cid in ("pcb-xf-1a2b-1", "xfer-fast"):
        assert (await ari.request("DELETE", f"/ari/channels/{cid}", reason="normal")).status == 204
    await events.wait_for("ChannelDestroyed", "xfer-fast;2")
    assert_nothing_left(sim)


async def test_originate_refusals(sim: SimulatedAsterisk, ari: Ari) -> None:
    await ari.connect()
    unknown = await originate(ari, "Foo/x", "xfer-foo")
    assert (unknown.status, unknown.body) == (500, {"error": "Allocation failed"})
    both = await originate(ari, "Local/233@caller", "xfer-both", originator="nope")
    assert (both.status, both.body) == (
        400, {"message": "Originator and formats can't both be specified"})  # fmt: skip
    nobody = await originate(ari, "Local/233@caller", "xfer-o", originator="nope", formats="")
    assert (nobody.status, nobody.body) == (
        400, {"message": "Provided originator channel was not found"})  # fmt: skip
    codec = await originate(ari, "Local/233@caller", "xfer-c", formats="nosuch")
    assert (codec.status, codec.body) == (
        400, {"message": "Provided format (nosuch) was not found"})  # fmt: skip
    sim.targets["PJSIP/offline"] = TargetBehaviour.unavailable()
    offline = await originate(ari, "PJSIP/offline", "xfer-off")
    assert (offline.status, offline.body) == (500, {"error": "Allocation failed"})
    assert sim.channels == {}
