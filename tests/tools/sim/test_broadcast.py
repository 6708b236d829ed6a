"""StasisBroadcast + POST /ari/events/claim in the simulator, against the recording
`broadcast_claim` (two apps pipecat-a / pipecat-b matching ^pipecat, an observer outside)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.broadcast import CLAIMED, NOT_BROADCAST
from bridge.tools.sim.recording import FIXTURES_DIR
from tests.tools.sim.ari_client import Ari, Events, assert_asterisk_headers, key_shape

RECORDING = FIXTURES_DIR / "broadcast_claim"


def recorded(kind: str, path: Path = RECORDING / "session.jsonl") -> list[dict[str, Any]]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["kind"] == kind]


def recorded_event(event_type: str) -> dict[str, Any]:
    return next(e["event"] for e in recorded("event") if e["event"]["type"] == event_type)


def recorded_claims() -> list[dict[str, Any]]:
    return [r for r in recorded("rest") if r["path"] == "/ari/events/claim"]


@pytest.fixture
async def apps(sim: SimulatedAsterisk) -> AsyncIterator[dict[str, Events]]:
    """Events sockets for pipecat-a, pipecat-b (match ^pipecat) and scaleprobe-obs."""
    opened: dict[str, Events] = {}
    for name in ("pipecat-a", "pipecat-b", "scaleprobe-obs"):
        url = sim.events_url.replace(f"app={sim.app}", f"app={name}")
        opened[name] = Events(await websockets.connect(url))
        await sim.wait_app_connected(name)
    yield opened
    for events in opened.values():
        await events.close()


async def claim(ari: Ari, channel_id: str | None, app: str) -> Any:
    params = {"application": app} | ({"channelId": channel_id} if channel_id else {})
    return await ari.request("POST", "/ari/events/claim", **params)


async def test_broadcast_to_matching_apps_first_claim_wins(
    sim: SimulatedAsterisk, ari: Ari, apps: dict[str, Events]
) -> None:
    offer = await sim.place_broadcast_call(timeout_ms=1000)
    assert sorted(offer.offered_to) == ["pipecat-a", "pipecat-b"]
    a = await apps["pipecat-a"].wait_for("CallBroadcast", offer.channel_id)
    b = await apps["pipecat-b"].wait_for("CallBroadcast", offer.channel_id)
    template = recorded_event("CallBroadcast")
    assert list(a) == list(template)  # the recorded keys, in the recorded order
    assert key_shape(a) == key_shape(template)
    assert (a["application"], b["application"]) == ("pipecat-a", "pipecat-b")
    assert a["caller"] == a["channel"]["caller"]["number"]
    assert a["called"] == a["channel"]["dialplan"]["exten"]
    assert a["channel"]["dialplan"]["app_name"] == "StasisBroadcast"
    assert a["channel"]["dialplan"]["app_data"] == "1000,^pipecat"
    won = await claim(ari, offer.channel_id, "pipecat-a")
    assert (won.status, won.text) == (204, "")
    assert_asterisk_headers(won.headers, has_body=False)
    start = await apps["pipecat-a"].wait_for("StasisStart", offer.channel_id)
    assert start["args"] == [] and start["application"] == "pipecat-a"
    lost = await claim(ari, offer.channel_id, "pipecat-b")
    assert (lost.status, lost.body) == (409, {"message": CLAIMED})
    again = await claim(ari, offer.channel_id, "pipecat-b")  # the winner's session runs
    assert again.status == 409
    listed = await ari.request("GET", "/ari/applications/pipecat-a")
    assert offer.channel_id in listed.body["channel_ids"]
    assert (offer.winner, offer.stasis_status) == ("pipecat-a", "SUCCESS")
    assert offer.claims == [("pipecat-a", 204), ("pipecat-b", 409), ("pipecat-b", 409)]
    assert apps["pipecat-b"].find(lambda e: e["type"] == "StasisStart") is None
    assert apps["scaleprobe-obs"].find(lambda e: e["type"] == "CallBroadcast") is None
    await ari.request("DELETE", f"/ari/channels/{offer.channel_id}")
    await apps["pipecat-a"].wait_for("StasisEnd", offer.channel_id)
    late = await claim(ari, offer.channel_id, "pipecat-b")
    assert (late.status, late.body) == (404, {"message": NOT_BROADCAST})
    assert (await claim(ari, "nosuch.1", "pipecat-b")).status == 404
    missing = await claim(ari, None, "pipecat-b")
    assert (missing.status, missing.body) == (400, {"message": "channelId parameter is required"})


def test_recorded_claim_answers_are_the_simulated_ones() -> None:
    statuses = [(r["who"], r["status"], r["body"]) for r in recorded_claims()][:6]
    assert statuses == [
        ("pipecat-a", 204, None),
        ("pipecat-b", 409, {"message": CLAIMED}),
        ("pipecat-b", 409, {"message": CLAIMED}),
        ("pipecat-b", 404, {"message": NOT_BROADCAST}),
        ("pipecat-b", 404, {"message": NOT_BROADCAST}),
        ("pipecat-b", 400, {"message": "channelId parameter is required"}),
    ]


async def test_timeout_goes_on_in_the_dialplan(
    sim: SimulatedAsterisk, ari: Ari, apps: dict[str, Events]
) -> None:
    offer = await sim.place_broadcast_call(timeout_ms=50)
    await apps["pipecat-a"].wait_for("CallBroadcast", offer.channel_id)
    await offer.done.wait()
    assert (offer.stasis_status, offer.winner) == ("TIMEOUT", None)
    assert (await claim(ari, offer.channel_id, "pipecat-a")).status == 404  # not 409
    assert await offer.call.ended == "dialplan"
    assert not sim.leftovers()
    types = [e["type"] for e in apps["pipecat-a"].parsed]
    assert types == ["CallBroadcast"]  # the app sees nothing else of that caller


async def test_args_split_at_colons_and_call_claimed_only_with_notify(
    sim: SimulatedAsterisk, ari: Ari, apps: dict[str, Events]
) -> None:
    quiet = await sim.place_broadcast_call(timeout_ms=1000, args="sales:priority-high")
    assert (await claim(ari, quiet.channel_id, "pipecat-b")).status == 204
    start = await apps["pipecat-b"].wait_for("StasisStart", quiet.channel_id)
    assert start["args"] == ["sales", "priority-high"]
    assert quiet.call.args == ["sales", "priority-high"]
    offer = await sim.place_broadcast_call(
        timeout_ms=1000, args="ws://127.0.0.1:8765/custom", notify_claimed=True
    )
    assert (await claim(ari, offer.channel_id, "pipecat-b")).status == 204
    start = await apps["pipecat-b"].wait_for("StasisStart", offer.channel_id)
    assert start["args"] == ["ws", "//127.0.0.1", "8765/custom"]  # as recorded
    assert start["channel"]["dialplan"]["app_data"] == (
        "1000,^pipecat,ws://127.0.0.1:8765/custom,yes"
    )
    for name in ("pipecat-a", "pipecat-b"):
        event = await apps[name].wait_for("CallClaimed", offer.channel_id)
        assert list(event) == list(recorded_event("CallClaimed"))
        assert (event["winner_app"], event["application"]) == ("pipecat-b", name)
    for events in apps.values():
        assert events.find(lambda e: e["type"] == "CallClaimed"
                           and e["channel"]["id"] == quiet.channel_id) is None  # fmt: skip
    b_events = apps["pipecat-b"].parsed
    b_types = [e["type"] for e in b_events if e["channel"]["id"] == offer.channel_id]
    assert b_types == ["CallBroadcast", "CallClaimed", "StasisStart"]  # the recorded order


async def test_claim_for_a_dead_app_wins_then_fails(
    sim: SimulatedAsterisk, ari: Ari, apps: dict[str, Events]
) -> None:
    offer = await sim.place_broadcast_call(timeout_ms=1000)
    assert (await claim(ari, offer.channel_id, "pipecat-ghost")).status == 204
    await offer.done.wait()
    assert (offer.stasis_status, offer.winner) == ("FAILED", "pipecat-ghost")
    assert (await claim(ari, offer.channel_id, "pipecat-a")).status == 404
    assert not sim.leftovers()


async def test_claim_by_an_app_outside_the_filter_wins(
    sim: SimulatedAsterisk, ari: Ari, apps: dict[str, Events]
) -> None:
    offer = await sim.place_broadcast_call(timeout_ms=1000)
    assert (await claim(ari, offer.channel_id, "scaleprobe-obs")).status == 204
    await apps["scaleprobe-obs"].wait_for("StasisStart", offer.channel_id)
    assert offer.stasis_status == "SUCCESS"


async def test_nobody_connected_is_a_timeout(sim: SimulatedAsterisk) -> None:
    offer = await sim.place_broadcast_call(timeout_ms=20)
    assert offer.offered_to == ()
    await offer.done.wait()
    assert offer.stasis_status == "TIMEOUT"


async def test_each_app_lists_its_own_channels(
    sim: SimulatedAsterisk, ari: Ari, apps: dict[str, Events]
) -> None:
    offer = await sim.place_broadcast_call(timeout_ms=1000)
    assert (await claim(ari, offer.channel_id, "pipecat-b")).status == 204
    await apps["pipecat-b"].wait_for("StasisStart", offer.channel_id)
    a = await ari.request("GET", "/ari/applications/pipecat-a")
    b = await ari.request("GET", "/ari/applications/pipecat-b")
    assert (a.body["channel_ids"], b.body["channel_ids"]) == ([], [offer.channel_id])
    names = [app["name"] for app in (await ari.request("GET", "/ari/applications")).body]
    assert sorted(names) == ["pipecat-a", "pipecat-b", "scaleprobe-obs"]


async def test_the_winner_drives_the_call_as_any_stasis_call(
    sim: SimulatedAsterisk, ari: Ari, apps: dict[str, Events]
) -> None:
    """Bridged with an ExternalMedia channel of pipecat-b: pipecat-b sees it all, a nothing."""
    offer = await sim.place_broadcast_call(timeout_ms=1000)
    assert (await claim(ari, offer.channel_id, "pipecat-b")).status == 204
    await apps["pipecat-b"].wait_for("StasisStart", offer.channel_id)
    udp = await ari.open_udp()
    em = await ari.request("POST", "/ari/channels/externalMedia", app="pipecat-b",
                           external_host=f"127.0.0.1:{udp.port}", format="ulaw",
                           channelId="em-1")  # fmt: skip
    assert em.status == 200
    await apps["pipecat-b"].wait_for("StasisStart", "em-1")
    assert (await ari.request("POST", "/ari/bridges", bridgeId="br-1")).status == 200
    added = await ari.request("POST", "/ari/bridges/br-1/addChannel",
                              channel=f"{offer.channel_id},em-1")  # fmt: skip
    assert added.status == 204
    await offer.call.bridged
    await udp.recv()  # the caller's RTP flows
    assert (await ari.request("DELETE", "/ari/bridges/br-1")).status == 204
    await apps["pipecat-b"].wait_for("BridgeDestroyed")
    for cid in ("em-1", offer.channel_id):
        await ari.request("DELETE", f"/ari/channels/{cid}")
        await apps["pipecat-b"].wait_for("StasisEnd", cid)
    seen_by_a = {e["type"] for e in apps["pipecat-a"].parsed}
    assert seen_by_a == {"CallBroadcast"}
    assert not sim.leftovers()
