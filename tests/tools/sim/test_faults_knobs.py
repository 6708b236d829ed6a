"""The simulator's fault knobs: REST errors and delays at any step, an Asterisk restart, the
leftovers of a crashed bridge (waiting callers, ExternalMedia channels, bridges), `continue`
and `play` on them, and the final-state API (`leftovers()`, `counts`).

Driven over real loopback sockets with the plain ARI client of `ari_client`; events are
checked with the bridge's own parser where the bridge reads them.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
import websockets

from ari.events import PlaybackFinished, parse_event
from bridge.tools.sim.asterisk import SimulatedAsterisk, StasisAppNotActive
from bridge.tools.sim.control import continue_target, playback_outcome
from bridge.tools.sim.templates import error_reply
from tests.tools.sim.ari_client import (
    TIMEOUT,
    Answer,
    Ari,
    Events,
    assert_asterisk_headers,
    bridge_call,
    hang_up,
)

EM_PARAMS = {"app": "pipecat", "external_host": "127.0.0.1:31000", "format": "ulaw"}


async def timed_request(ari: Ari, method: str, path: str, total: float, **params: str) -> Answer:
    """A request that gives up after `total` seconds, as the bridge's --rest-timeout does."""
    auth = aiohttp.encode_basic_auth(ari.sim.user, ari.sim.password)
    async with ari.session.request(
        method, ari.sim.base_url + path, params=params, headers={"Authorization": auth},
        timeout=aiohttp.ClientTimeout(total=total),
    ) as resp:  # fmt: skip
        return Answer(resp.status, resp.reason or "", resp.headers, await resp.text())


def types_of(events: Events, channel_id: str | None = None) -> list[str]:
    def about(event: dict[str, Any]) -> bool:
        if channel_id is None:
            return True
        target = event.get("playback", {}).get("target_uri")
        return event.get("channel", {}).get("id") == channel_id or target == f"channel:{channel_id}"

    return [e["type"] for e in events.parsed if about(e)]


async def wait_type(events: Events, event_type: str, nth: int = 1) -> dict[str, Any]:
    """The `nth` event of `event_type`, awaited (playback events have no `channel`)."""

    def found() -> dict[str, Any] | None:
        matching = [e for e in events.parsed if e["type"] == event_type]
        return matching[nth - 1] if len(matching) >= nth else None

    async def wait() -> dict[str, Any]:
        async with events._changed:
            await events._changed.wait_for(lambda: found() is not None)
        event = found()
        assert event is not None
        return event

    return await asyncio.wait_for(wait(), TIMEOUT)


# -- REST errors at any step ----------------------------------------------------------------


async def test_fail_next_fails_every_setup_and_teardown_step(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    events = await ari.connect()
    call = await sim.place_call("basic_ulaw")
    await events.wait_for("StasisStart", call.caller_id)
    cid = call.caller_id
    steps: list[tuple[str, str, dict[str, str]]] = [
        ("POST", f"/ari/channels/{cid}/answer", {}),
        ("POST", "/ari/bridges", {"type": "mixing", "bridgeId": "pcb-br-1"}),
        ("POST", "/ari/channels/externalMedia", {**EM_PARAMS, "channelId": "pcb-em-1"}),
        ("POST", "/ari/bridges/pcb-br-1/addChannel", {"channel": f"{cid},pcb-em-1"}),
        ("DELETE", f"/ari/channels/{cid}", {}),
        ("DELETE", "/ari/bridges/pcb-br-1", {}),
        ("GET", "/ari/applications/pipecat", {}),
    ]
    odd_answers: list[tuple[int, Any, str | None]] = [
        (500, {"message": "Internal Server Error"}, None),
        (503, "not json at all", "Service Unavailable"),
        (409, {"error": "Allocation failed"}, "Conflict"),
        (422, None, None),
    ]
    for index, (method, path, params) in enumerate(steps):
        status, body, reason = odd_answers[index % len(odd_answers)]
        sim.fail_next(method, "^" + path + "$", status, body, reason)
        before = (set(sim.channels), set(sim.bridges), len(sim.events_sent))
        failed = await ari.request(method, path, **params)
        assert (failed.status, failed.reason) == (status, reason or failed.reason), path
        assert failed.text == ("" if body is None else body if isinstance(body, str)
                               else json.dumps(body, separators=(",", ":")))  # fmt: skip
        assert_asterisk_headers(failed.headers, body is not None)
        # Refused: Asterisk did nothing at all.
        assert (set(sim.channels), set(sim.bridges), len(sim.events_sent)) == before, path
        done = await ari.request(method, path, **params)  # the fault was used up
        assert 200 <= done.status < 300, (path, done.status, done.text)
        await sim.wait_request(method, "^" + re.escape(path) + "$", nth=2)  # acted on
        if path.endswith("externalMedia"):
            await events.wait_for("StasisStart", "pcb-em-1")
    assert [r.status for r in sim.requests if r.path != "/ari/events"][::2] == [
        500, 503, 409, 422, 500, 503, 409
    ]  # fmt: skip


async def test_fail_next_any_method_several_times_and_performed(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    sim.fail_next("*", r"^/ari/bridges", 500, {"message": "boom"}, times=2)
    assert (await ari.request("GET", "/ari/bridges")).status == 500
    assert (await ari.request("POST", "/ari/bridges", bridgeId="a")).status == 500
    assert sim.bridges == {}
    created = await ari.request("POST", "/ari/bridges", bridgeId="a")
    assert created.status == 200
    # perform=True: Asterisk deletes the bridge, then answers an error all the same.
    sim.fail_next("DELETE", r"/ari/bridges/a$", 500, {"message": "Internal Server Error"},
                  perform=True)  # fmt: skip
    assert (await ari.request("DELETE", "/ari/bridges/a")).status == 500
    assert sim.bridges == {}
    assert sim.counts["bridges"] == sim.counts["bridges_gone"] == 1
    with pytest.raises(ValueError):
        sim.fail_next("GET", "x", 500, times=0)


# -- slow requests ----------------------------------------------------------------------------


async def test_a_delayed_request_times_out_at_the_client_and_is_still_performed(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    events = await ari.connect()
    sim.delay_next("POST", r"^/ari/bridges$", 0.3)
    with pytest.raises(TimeoutError):
        await timed_request(ari, "POST", "/ari/bridges", 0.05, bridgeId="pcb-br-late")
    assert sim.bridges == {}  # still sleeping on it
    late = await sim.wait_request("POST", r"^/ari/bridges$")
    assert late.status == 200 and "pcb-br-late" in sim.bridges  # a leftover for the app
    # DELETE of a channel: the hang-up happens after the delay, events and all.
    call = await sim.place_call("basic_ulaw")
    await events.wait_for("StasisStart", call.caller_id)
    sim.delay_next("DELETE", r"^/ari/channels/", 0.2)
    with pytest.raises(TimeoutError):
        await timed_request(ari, "DELETE", f"/ari/channels/{call.caller_id}", 0.05)
    assert await asyncio.wait_for(call.ended, TIMEOUT) == "app"
    await events.wait_for("StasisEnd", call.caller_id)


async def test_a_delayed_request_answers_late_when_the_client_waits(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    loop = asyncio.get_running_loop()
    sim.delay_next("GET", r"^/ari/asterisk/ping$", 0.2)
    start = loop.time()
    pong = await ari.request("GET", "/ari/asterisk/ping")
    assert pong.status == 200 and loop.time() - start >= 0.2
    assert (await ari.request("GET", "/ari/asterisk/ping")).status == 200  # used up


async def test_a_lost_request_is_never_answered_nor_performed(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    sim.delay_next("POST", r"^/ari/bridges$", 0.1, perform=False)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await ari.request("POST", "/ari/bridges", bridgeId="pcb-br-lost")
    lost = await sim.wait_request("POST", r"^/ari/bridges$")
    assert lost.status is None and lost.handled
    assert sim.bridges == {}
    assert (await ari.request("GET", "/ari/bridges")).text == "[]"


# -- restart ----------------------------------------------------------------------------------


async def test_crash_drops_everything_without_a_word_and_boot_comes_back_empty(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    events = await ari.connect()
    call = await sim.place_call("basic_ulaw")
    bridged = await bridge_call(ari, call)
    await bridged.udp.recv()  # media flowing
    port, seen = sim.port, len(events.parsed)
    sim.delay_next("POST", r"^/ari/bridges$", 10.0)
    slow = asyncio.create_task(ari.request("POST", "/ari/bridges", bridgeId="never"))
    await sim.wait_request("POST", r"^/ari/bridges$", nth=2, handled=False)

    await sim.crash()
    assert not sim.is_up
    await asyncio.wait_for(events._reader, TIMEOUT)
    assert events.ws.protocol.close_rcvd is None  # aborted: no close frame, like a process exit
    assert len(events.parsed) == seen  # nothing said on the way down
    with pytest.raises(aiohttp.ClientError):
        await slow  # the request in progress was never answered
    assert sim.channels == {} and sim.bridges == {} and sim.open_udp_sockets() == []
    assert await asyncio.wait_for(call.ended, TIMEOUT) == "restart"
    with pytest.raises(aiohttp.ClientConnectorError):  # refused while down
        await ari.request("GET", "/ari/asterisk/ping")
    with pytest.raises(StasisAppNotActive):
        await sim.place_call()

    await sim.boot()
    assert sim.is_up and sim.port == port
    assert (await ari.request("GET", "/ari/channels")).text == "[]"
    assert (await ari.request("GET", "/ari/bridges")).text == "[]"
    assert (await ari.request("GET", "/ari/applications")).text == "[]"  # app not known yet
    assert (await ari.request("GET", "/ari/applications/pipecat")).status == 404
    assert "never" not in sim.bridges  # the slow request died with the process
    ari.events = None
    again = await ari.connect()
    gone = await ari.request("DELETE", f"/ari/channels/{call.caller_id}")
    assert (gone.status, gone.body) == (404, {"message": "Channel not found"})
    fresh = await sim.place_call("basic_ulaw")
    first = await again.wait_for("StasisStart", fresh.caller_id)
    assert again.parsed[0] == first  # nothing replayed from before the restart
    assert fresh.caller_id != call.caller_id
    assert sim.counts["restarts"] == 1
    await ari.request("DELETE", f"/ari/channels/{fresh.caller_id}")
    await again.wait_for("StasisEnd", fresh.caller_id)
    assert not sim.leftovers()


async def test_restart_comes_back_on_the_same_port_after_the_outage(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    loop = asyncio.get_running_loop()
    port, start = sim.port, loop.time()
    await sim.restart(down_for=0.2)
    assert loop.time() - start >= 0.2
    assert sim.is_up and sim.port == port
    assert (await ari.request("GET", "/ari/asterisk/ping")).status == 200


# -- leftovers of a crashed bridge -------------------------------------------------------------


async def test_leftovers_are_listed_and_go_away_when_deleted(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    caller = await sim.add_waiting_caller("basic_ulaw", exten="123")
    em = await sim.add_leftover_external_media("pcb-em-old")
    bridge = sim.add_leftover_bridge("pcb-br-old", members=[caller.caller_id, em.id])
    assert bridge.technology == "simple_bridge"
    assert caller.bridged.done()  # its far end talks on to the dead external_host
    events = await ari.connect()

    channels = (await ari.request("GET", "/ari/channels")).body
    by_id = {c["id"]: c for c in channels}
    assert set(by_id) == set(sim.channels)  # the caller, its Local ;2 half, the UnicastRTP
    assert by_id["pcb-em-old"]["name"].startswith("UnicastRTP/127.0.0.1:9-0x")
    assert by_id["pcb-em-old"]["state"] == "Up"
    assert by_id[caller.caller_id]["dialplan"]["exten"] == "123"
    app = (await ari.request("GET", "/ari/applications/pipecat")).body
    assert app["channel_ids"] == [caller.caller_id, "pcb-em-old"]
    assert app["bridge_ids"] == ["pcb-br-old"]
    bridges = (await ari.request("GET", "/ari/bridges")).body
    assert [(b["id"], b["channels"]) for b in bridges] == [
        ("pcb-br-old", [caller.caller_id, "pcb-em-old"])
    ]
    assert events.parsed == []  # their StasisStarts went to a previous connection
    left = sim.leftovers()
    assert left and left.channels == (caller.caller_id, "pcb-em-old")
    assert left.bridges == ("pcb-br-old",) and len(left.udp_sockets) == 1

    assert (await ari.request("DELETE", "/ari/bridges/pcb-br-old")).status == 204
    await events.wait_for("BridgeDestroyed")
    assert (await ari.request("DELETE", "/ari/channels/pcb-em-old")).status == 204
    await events.wait_for("ChannelDestroyed", "pcb-em-old")
    assert types_of(events, "pcb-em-old") == [
        "ChannelVarset", "ChannelLeftBridge", "ChannelHangupRequest", "StasisEnd",
        "ChannelVarset", "ChannelDestroyed",
    ]  # fmt: skip
    assert sim.leftovers().channels == (caller.caller_id,)  # still stuck in Stasis
    assert (await ari.request("DELETE", f"/ari/channels/{caller.caller_id}")).status == 204
    await events.wait_for("StasisEnd", caller.caller_id)
    assert not sim.leftovers() and sim.channels == {}
    assert sim.counts["media_channels"] == sim.counts["media_channels_gone"] == 1


async def test_a_waiting_caller_is_in_the_app_before_anyone_connects(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    assert (await ari.request("GET", "/ari/applications")).text == "[]"
    call = await sim.add_waiting_caller()
    app = (await ari.request("GET", "/ari/applications/pipecat")).body
    assert app["channel_ids"] == [call.caller_id]
    with pytest.raises(StasisAppNotActive):
        await sim.place_call()  # new calls still need a connected app
    events = await ari.connect()
    bridged = await bridge_call(ari, call, seen_start=False)
    assert (await bridged.udp.recv())[1]  # the adopted caller's audio flows
    await hang_up(ari, bridged)
    await events.wait_for("BridgeDestroyed")
    assert not sim.leftovers()


# -- continue ---------------------------------------------------------------------------------


async def test_continue_sends_a_waiting_caller_to_the_dialplan(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    call = await sim.add_waiting_caller("basic_ulaw")
    events = await ari.connect()
    path = f"/ari/channels/{call.caller_id}/continue"
    answer = await ari.request("POST", path, context="humans", extension="100", priority="2")
    assert (answer.status, answer.text) == (204, "")
    end = await events.wait_for("StasisEnd", call.caller_id)
    assert end["channel"]["dialplan"]["app_name"] == "Stasis"  # no snapshot for the goto
    assert call.continued_to == ("humans", "100", 2)
    assert await call.ended == "app"
    assert types_of(events) == ["StasisEnd"]
    assert not sim.leftovers()
    gone = await ari.request("POST", path)
    assert (gone.status, gone.body) == (404, {"message": "Channel not found"})


async def test_continue_refuses_a_channel_outside_the_app(sim: SimulatedAsterisk, ari: Ari) -> None:
    call = await sim.add_waiting_caller()
    half = next(c for c in sim.channels if c != call.caller_id)  # the Local ;2, not in Stasis
    refused = await ari.request("POST", f"/ari/channels/{half}/continue")
    assert (refused.status, refused.reason, refused.body) == (
        409, "Conflict", {"message": "Channel not in Stasis application"}
    )  # fmt: skip
    label = await ari.request("POST", f"/ari/channels/{call.caller_id}/continue", label="nope")
    assert (label.status, label.body) == (404, {"message": "Requested label can not be found"})


@pytest.mark.parametrize(
    ("query", "target"),
    [
        ({}, ("pipecat-in", "100", 3)),  # neither context nor extension: the next priority
        ({"extension": "200"}, ("pipecat-in", "200", 1)),
        ({"context": "humans"}, ("humans", "s", 1)),
        ({"context": "humans", "priority": "5"}, ("humans", "s", 5)),
        ({"context": "humans", "priority": "x"}, ("humans", "s", 1)),  # atol("x") == 0
        ({"label": "7"}, ("pipecat-in", "100", 7)),
    ],
)
def test_continue_target_follows_asterisks_rules(
    query: dict[str, str], target: tuple[str, str, int]
) -> None:
    assert continue_target(("pipecat-in", "100", 2), query) == target


def test_continue_target_errors() -> None:
    where = ("pipecat-in", "100", 2)
    assert continue_target(where, {"label": "here"}) == error_reply(
        404, "Requested label can not be found"
    )
    assert continue_target(where, {"label": "0"}) == error_reply(
        400, "Requested priority is illegal"
    )


# -- play -------------------------------------------------------------------------------------


async def test_play_answers_201_and_reports_start_and_finish(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    sim.default_sound_seconds = 0.05
    events = await ari.connect()
    call = await sim.place_call("basic_ulaw")
    await events.wait_for("StasisStart", call.caller_id)
    loop = asyncio.get_running_loop()
    answer = await ari.request(
        "POST", f"/ari/channels/{call.caller_id}/play", media="sound:sorry", playbackId="pb-1"
    )
    sent_at = loop.time()
    assert (answer.status, answer.reason) == (201, "Created")
    assert answer.headers["Location"] == "/ari/playbacks/pb-1"
    assert_asterisk_headers(answer.headers, True)
    assert answer.text == (
        '{"id":"pb-1","media_uri":"sound:sorry",'
        f'"target_uri":"channel:{call.caller_id}","language":"en","state":"queued"}}'
    )
    started = await wait_type(events, "PlaybackStarted")
    finished = await wait_type(events, "PlaybackFinished")
    assert loop.time() - sent_at >= 0.04
    assert list(started) == ["type", "timestamp", "playback", "asterisk_id", "application"]
    assert started["playback"]["state"] == "playing"
    assert finished["playback"] == {**answer.body, "state": "done"}
    parsed = parse_event(json.dumps(finished))
    assert isinstance(parsed, PlaybackFinished)
    assert (parsed.playback_id, parsed.channel_id, parsed.state) == ("pb-1", call.caller_id, "done")
    # Without a playbackId Asterisk makes up a UUID.
    other = await ari.request("POST", f"/ari/channels/{call.caller_id}/play", media="sound:beep")
    assert other.status == 201 and len(other.body["id"]) == 36
    await wait_type(events, "PlaybackFinished", nth=2)
    assert sim.counts["playbacks"] == 2


async def test_play_of_a_missing_or_unplayable_media(sim: SimulatedAsterisk, ari: Ari) -> None:
    sim.sounds["sound:no-such-file"] = None
    events = await ari.connect()
    call = await sim.place_call("basic_ulaw")
    await events.wait_for("StasisStart", call.caller_id)
    path = f"/ari/channels/{call.caller_id}/play"
    assert (await ari.request("POST", path, media="sound:no-such-file")).status == 201
    failed = await wait_type(events, "PlaybackFinished")
    assert failed["playback"]["state"] == "failed"
    # An unknown scheme starts and never finishes (play_on_channel skips the final update).
    assert (await ari.request("POST", path, media="http://example/x.wav")).status == 201
    await wait_type(events, "PlaybackStarted", nth=2)
    assert (await ari.request("POST", path, media="sound:after", playbackId="p3")).status == 201
    third = await wait_type(events, "PlaybackFinished", nth=2)
    assert third["playback"]["id"] == "p3"  # the queue went on all the same


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({}, 500, "Failed to queue media for playback"),
        ({"media": "sound:x", "skipms": "-1"}, 400, "skipms cannot be negative"),
        ({"media": "sound:x", "offsetms": "-5"}, 400, "offsetms cannot be negative"),
    ],
)
async def test_play_argument_errors(
    sim: SimulatedAsterisk, ari: Ari, params: dict[str, str], status: int, message: str
) -> None:
    call = await sim.add_waiting_caller()
    answer = await ari.request("POST", f"/ari/channels/{call.caller_id}/play", **params)
    assert (answer.status, answer.body) == (status, {"message": message})
    missing = await ari.request("POST", "/ari/channels/nope/play", media="sound:x")
    assert (missing.status, missing.body) == (404, {"message": "Channel not found"})


async def test_continue_waits_for_the_playback(sim: SimulatedAsterisk, ari: Ari) -> None:
    sim.sounds["sound:sorry"] = 0.1
    call = await sim.add_waiting_caller()
    events = await ari.connect()
    cid = call.caller_id
    assert (await ari.request("POST", f"/ari/channels/{cid}/play", media="sound:sorry")).status \
        == 201  # fmt: skip
    assert (await ari.request("POST", f"/ari/channels/{cid}/continue", context="humans")).status \
        == 204  # fmt: skip
    assert not call.ended.done()  # still hearing "sorry"
    await events.wait_for("StasisEnd", cid)
    assert types_of(events, cid) == ["PlaybackStarted", "PlaybackFinished", "StasisEnd"]
    assert call.continued_to == ("humans", "s", 1)


async def test_a_hang_up_fails_the_playback_before_stasis_end(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    sim.sounds["sound:long"] = 30.0
    call = await sim.add_waiting_caller()
    events = await ari.connect()
    cid = call.caller_id
    await ari.request("POST", f"/ari/channels/{cid}/play", media="sound:long")
    await ari.request("POST", f"/ari/channels/{cid}/play", media="sound:never")  # queued
    await wait_type(events, "PlaybackStarted")
    assert (await ari.request("DELETE", f"/ari/channels/{cid}")).status == 204
    await events.wait_for("StasisEnd", cid)
    assert types_of(events, cid) == [
        "PlaybackStarted", "ChannelHangupRequest", "PlaybackFinished", "StasisEnd"
    ]  # fmt: skip
    finished = next(e for e in events.parsed if e["type"] == "PlaybackFinished")
    assert finished["playback"]["state"] == "failed"


def test_playback_outcome_rules() -> None:
    sounds: dict[str, float | None] = {"sound:a": 1.5, "sound:gone": None, "recording:gone": None}
    assert playback_outcome("sound:a", sounds, 0.2) == ("done", 1.5)
    assert playback_outcome("sound:b", sounds, 0.2) == ("done", 0.2)
    assert playback_outcome("sound:b", sounds, None) == ("failed", 0.0)
    assert playback_outcome("sound:gone", sounds, 0.2) == ("failed", 0.0)
    assert playback_outcome("recording:gone", sounds, 0.2) is None
    assert playback_outcome("number:12", sounds, 0.2) == ("done", 0.2)
    assert playback_outcome("number:twelve", sounds, 0.2) is None
    assert playback_outcome("file:///x", sounds, 0.2) is None


# -- final state and soak mode ----------------------------------------------------------------


async def test_counts_and_leftovers_after_a_clean_call(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    bridged = await bridge_call(ari, await sim.place_call("basic_ulaw"))
    assert sim.leftovers().bridges == (bridged.bridge["id"],)
    await hang_up(ari, bridged)
    await events.wait_for("ChannelDestroyed", bridged.em["id"])
    assert not sim.leftovers()
    assert dict(sim.counts) == {
        "callers": 1, "callers_gone": 1, "media_channels": 1, "media_channels_gone": 1,
        "bridges": 1, "bridges_gone": 1,
    }  # fmt: skip


async def test_without_history_nothing_grows_per_call() -> None:
    async with SimulatedAsterisk(seed=1, history=False) as sim, aiohttp.ClientSession() as session:
        ari = Ari(sim, session)
        events = await ari.connect()
        call = await sim.place_call("basic_ulaw", audio=bytes(range(160)) * 3, audio_start=0.0)
        bridged = await bridge_call(ari, call)
        await bridged.udp.recv()
        media = call.media
        assert media is not None and media.packets_out >= 1 and media.sent == []
        await hang_up(ari, bridged)
        await events.wait_for("ChannelDestroyed", bridged.em["id"])
        assert sim.requests == [] and sim.events_sent == [] and sim.calls == []
        assert await call.ended == "app"
        await ari.close()


async def test_an_events_socket_for_the_app_still_works_after_a_restart() -> None:
    async with SimulatedAsterisk(seed=2) as sim:
        await sim.restart(down_for=0.0)
        async with websockets.connect(sim.events_url) as ws:
            await sim.wait_app_active()
            call = await sim.place_call("basic_ulaw")
            start = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert (start["type"], start["channel"]["id"]) == ("StasisStart", call.caller_id)
        await sim.restart(down_for=0.0)
        assert sim.counts["restarts"] == 2 and sim.channels == {}
