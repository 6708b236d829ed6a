"""Transfer to a person, DTMF out and hang-up with a cause, end to end: the real bridge
between the simulated Asterisk (transfer targets as recorded in transfer_originate_*) and the
real Pipecat transfer bot, which sends its control frames through Pipecat's own serializers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

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
        bridge_running(sim, transfer_bot, transfer_allow=("Local/*",)) as rig,  # type: ignore[arg-type]
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
    await asyncio.wait_for(call.bridged, 5)
    stats: TransferCallStats = await asyncio.wait_for(rig.bot.stats.next_call(), 5)  # type: ignore[attr-defined]
    await asyncio.wait_for(stats.wait_prompts(1), 5)
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
        transfer = await asyncio.wait_for(stats.wait_control("transfer"), 5)
        assert transfer == {"event": "transfer", "target": ANSWERS, "mode": "blind"}
        originate = await asyncio.wait_for(
            rig.sim.wait_request("POST", r"^/ari/channels$"), 5)  # fmt: skip
        # Every frame of the greeting and of "putting you through" was played before the
        # target was dialled, and nothing of the bot after.
        frames = bot_audio(call)
        expected = (PROMPTS["greeting"][1] + PROMPTS["connecting"][1]) // 20
        assert len(frames) >= expected
        assert max(frames) <= originate.t
        assert originate.query["originator"] == call.caller_id
        assert originate.query["app"] == rig.sim.app and originate.query["appArgs"] == "transfer"
        # The bot leaves: it gets `stop`, its socket closes; the media channel goes.
        await asyncio.wait_for(stats.call.finished.wait(), 5)
        target_id = originate.query["channelId"]
        joined = await asyncio.wait_for(rig.sim.wait_request(
            "POST", rf"^/ari/bridges/{call.bridge_id}/addChannel$", nth=2), 5)  # fmt: skip
        assert joined.query["channel"] == target_id and joined.status == 204
        members = [c for c, ch in rig.sim.channels.items() if ch.bridge_id == call.bridge_id]
        assert sorted(members) == sorted([call.caller_id, target_id])
        (live,) = rig.controller.registry.calls.values()
        assert live.state is CallState.TRANSFERRED
        view = live.view()
        assert view.transfer == {"target": ANSWERS, "mode": "blind",
                                 "target_channel": target_id, "outcome": "answered"}  # fmt: skip
        # The caller hangs up: the target is hung up and the bridge deleted.
        caller_hangs_up(rig.sim, call)
        await nothing_left(rig)
        assert target_id not in rig.sim.channels
