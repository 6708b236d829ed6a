"""Transfer to a person, DTMF out and hang-up with a cause, end to end: the real bridge
between the simulated Asterisk (transfer targets as recorded in transfer_originate_*) and the
real Pipecat transfer bot, which sends its control frames through Pipecat's own serializers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bridge.call.machine import CallState
from bridge.tools.demo.transfer_bot import PROMPTS, TransferCallStats, run_transfer_bot
from bridge.tools.sim.asterisk import SimCall, SimulatedAsterisk
from bridge.tools.sim.targets import TargetBehaviour
from tests.integration.conftest import Rig, bridge_running
from tests.recordings import raw_events

ANSWERS = "Local/233@caller"  # answers (1 s in the lab; faster here), then Echo()
BUSY = "Local/207@caller"
NEVER = "Local/208@caller"  # rings until the originate's timeout
SILENCE = 0xFF  # µ-law silence, as the bridge fills its 20 ms stream


@contextlib.asynccontextmanager
async def transfer_rig(**bot: Any) -> AsyncIterator[Rig]:
    async with (
        SimulatedAsterisk(seed=11) as sim,
        run_transfer_bot(**bot) as transfer_bot,
        bridge_running(sim, transfer_bot, transfer_allow=("Local/*", "Foo/*", "*@agents")) as rig,  # type: ignore[arg-type]
    ):
        sim.targets[ANSWERS] = TargetBehaviour.answer(after=0.3)  # rings meanwhile
        yield rig


def press(sim: SimulatedAsterisk, call: SimCall, digit: str) -> None:
    """The caller presses a key: the recorded ChannelDtmfReceived, for this caller."""
    recorded = json.loads(next(r for r in raw_events("dtmf") if "ChannelDtmfReceived" in r))
    recorded["digit"] = digit
    recorded["channel"]["id"] = call.caller_id
    sim.send_raw_event(json.dumps(recorded))


async def greeted(rig: Rig, call: SimCall) -> TransferCallStats:
    await asyncio.wait_for(call.bridged, 10)
    stats: TransferCallStats = await asyncio.wait_for(rig.bot.stats.next_call(), 10)  # type: ignore[attr-defined]
    await asyncio.wait_for(stats.wait_prompts(1), 10)
    return stats


def caller_hangs_up(sim: SimulatedAsterisk, call: SimCall) -> None:
    sim._hangup(sim.channels[call.caller_id], "far")  # as a hang-up at the caller's end


def bot_audio(call: SimCall) -> list[float]:
    """When each frame of the bot's (non-silent) audio reached the caller."""
    return [t for t, data, _src in call.rtp_received if any(b != SILENCE for b in data[12:])]


def channels(sim: SimulatedAsterisk) -> list[str]:
    return sorted(sim.channels)


async def nothing_left(rig: Rig) -> None:
    await rig.wait_idle()
    ours = [c for c in rig.sim.channels if c.startswith("pcb-")]
    assert ours == [], f"channels left in Asterisk: {ours}"
    assert rig.sim.bridges == {}
    assert rig.controller.calls == {}


async def test_blind_transfer_plays_the_bots_last_words_then_bridges_the_target() -> None:
    async with transfer_rig(target=ANSWERS, mode="blind") as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        stats = await greeted(rig, call)
        press(rig.sim, call, "0")
        transfer = await asyncio.wait_for(stats.wait_control("transfer"), 10)
        assert transfer == {"event": "transfer", "target": ANSWERS, "mode": "blind"}
        originate = await asyncio.wait_for(
            rig.sim.wait_request("POST", r"^/ari/channels$"), 10)  # fmt: skip
        # Every frame of the greeting and of "putting you through" was played before the
        # target was dialled, and nothing of the bot after.
        frames = bot_audio(call)
        expected = (PROMPTS["greeting"][1] + PROMPTS["connecting"][1]) // 20
        assert len(frames) >= expected
        assert max(frames) <= originate.t
        assert originate.query["originator"] == call.caller_id
        assert originate.query["app"] == rig.sim.app and originate.query["appArgs"] == "transfer"
        # The bot leaves: it gets `stop`, its socket closes; the media channel goes.
        await asyncio.wait_for(stats.call.finished.wait(), 10)
        target_id = originate.query["channelId"]
        joined = await asyncio.wait_for(rig.sim.wait_request(
            "POST", rf"^/ari/bridges/{call.bridge_id}/addChannel$", nth=2), 10)  # fmt: skip
        assert joined.query["channel"] == target_id and joined.status == 204
        members = [c for c, ch in rig.sim.channels.items() if ch.bridge_id == call.bridge_id]
        assert sorted(members) == sorted([call.caller_id, target_id])
        (live,) = rig.controller.registry.calls.values()
        assert live.state is CallState.TRANSFERRED
        # It holds no bot, no port and no place under --max-calls any more.
        assert rig.controller.registry.busy() == 0
        assert rig.controller.registry.calls_on("rtp") == 0
        assert rig.controller.pool.in_use == 0
        view = live.view()
        assert view.transfer == {"target": ANSWERS, "mode": "blind",
                                 "target_channel": target_id, "outcome": "answered"}  # fmt: skip
        # The caller hangs up: the target is hung up and the bridge deleted.
        caller_hangs_up(rig.sim, call)
        await nothing_left(rig)
        assert target_id not in rig.sim.channels


@pytest.mark.parametrize(
    ("target", "cause"),
    [(BUSY, "busy"), (NEVER, "no_answer"), ("Local/999@caller", "unavailable"),
     ("Foo/bar", "unavailable")],
)  # fmt: skip
async def test_attended_transfer_failing_tells_the_bot_which_keeps_the_caller(
    target: str, cause: str
) -> None:
    async with transfer_rig(target=target, mode="attended", transfer_timeout=1) as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        stats = await greeted(rig, call)
        press(rig.sim, call, "0")
        failed = await asyncio.wait_for(stats.wait_reply("transfer_failed"), 10)
        assert failed == {"event": "transfer_failed", "target": target, "cause": cause}
        # The bot keeps talking to the caller: its "sorry" reaches the caller's ear.
        await asyncio.wait_for(stats.wait_prompts(3), 10)
        before = len(bot_audio(call))
        assert call.media is not None
        sorry = PROMPTS["sorry"][1] // 20
        await asyncio.wait_for(call.media.wait_received(
            lambda: len(bot_audio(call)) >= before + sorry), 10)  # fmt: skip
        (live,) = rig.controller.registry.calls.values()
        assert live.state is CallState.UP
        assert not call.ended.done()
        assert not stats.call.finished.is_set()
        # Nothing of the target is left in Asterisk.
        assert [c for c in rig.sim.channels if "-xf-" in c] == []
        caller_hangs_up(rig.sim, call)
        await nothing_left(rig)


async def test_attended_transfer_answered_reports_ringing_and_answered() -> None:
    async with transfer_rig(target=ANSWERS, mode="attended") as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        stats = await greeted(rig, call)
        press(rig.sim, call, "0")
        ringing = await asyncio.wait_for(stats.wait_reply("transfer_ringing"), 10)
        assert ringing == {"event": "transfer_ringing", "target": ANSWERS}
        assert not stats.call.finished.is_set()  # the bot stays while the target rings
        answered = await asyncio.wait_for(stats.wait_reply("transfer_answered"), 10)
        assert answered == {"event": "transfer_answered", "target": ANSWERS}
        await asyncio.wait_for(stats.call.finished.wait(), 10)  # then the bot leaves
        originate = await rig.sim.wait_request("POST", r"^/ari/channels$")
        target_id = originate.query["channelId"]
        await asyncio.wait_for(rig.sim.wait_request(
            "POST", rf"^/ari/bridges/{call.bridge_id}/addChannel$", nth=2), 10)  # fmt: skip
        assert rig.sim.channels[target_id].bridge_id == call.bridge_id
        assert not [c for c in rig.sim.channels if c.startswith("pcb-em-")]  # media gone
        # The person hangs up first: the caller is hung up, nothing is left.
        rig.sim._hangup(rig.sim.channels[target_id], "far")
        await asyncio.wait_for(call.ended, 10)
        await nothing_left(rig)


async def test_caller_hanging_up_while_the_target_rings_leaves_nothing() -> None:
    async with transfer_rig(target=NEVER, mode="attended", transfer_timeout=20) as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        stats = await greeted(rig, call)
        press(rig.sim, call, "0")
        await asyncio.wait_for(stats.wait_reply("transfer_ringing"), 10)
        originate = await rig.sim.wait_request("POST", r"^/ari/channels$")
        target_id = originate.query["channelId"]
        assert target_id in rig.sim.channels
        caller_hangs_up(rig.sim, call)
        await nothing_left(rig)
        assert target_id not in rig.sim.channels
        assert not [c for c in rig.sim.channels if c.endswith(";2")]


async def test_the_bots_dtmf_reaches_the_callers_far_end() -> None:
    async with transfer_rig() as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        stats = await greeted(rig, call)
        press(rig.sim, call, "9")
        await asyncio.wait_for(stats.wait_control("dtmf"), 10)
        await asyncio.wait_for(call.wait_dtmf(4), 10)
        assert call.digits_received == "123#"
        sent = await rig.sim.wait_request("POST", rf"^/ari/channels/{call.caller_id}/dtmf$")
        assert sent.query["dtmf"] == "123#"
        caller_hangs_up(rig.sim, call)
        await nothing_left(rig)


async def test_a_hang_up_with_cause_busy_reaches_the_far_end_as_17() -> None:
    async with transfer_rig(hangup_cause="busy") as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        stats = await greeted(rig, call)
        press(rig.sim, call, "#")
        await asyncio.wait_for(stats.wait_control("hangup"), 10)
        await asyncio.wait_for(call.ended, 10)
        assert call.far_end_cause == 17
        hangup = await rig.sim.wait_request("DELETE", rf"^/ari/channels/{call.caller_id}$")
        assert hangup.query == {"reason": "busy"}
        await nothing_left(rig)


async def test_the_api_transfers_like_the_bot_and_a_location_continues_the_caller() -> None:
    async with transfer_rig() as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        stats = await greeted(rig, call)
        (live,) = rig.controller.registry.calls.values()
        host, port = rig.controller.http_api.address
        url = f"http://{host}:{port}/calls/{live.ids.call_id}/transfer"
        async with aiohttp.ClientSession() as session, session.post(
            url, json={"target": "206@agents"}
        ) as resp:
            assert resp.status == 202
        cont = await asyncio.wait_for(rig.sim.wait_request(
            "POST", rf"^/ari/channels/{call.caller_id}/continue$"), 10)  # fmt: skip
        assert cont.status == 204
        assert call.continued_to == ("agents", "206", 1)
        await asyncio.wait_for(stats.call.finished.wait(), 10)  # the bot got `stop`
        await nothing_left(rig)
