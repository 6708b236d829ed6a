"""Recording end to end: the real bridge records through the simulated Asterisk (bridge and
snoop recordings as recorded in bridge_record_mixed and snoop_record) while the real Pipecat
transfer bot speaks; the files hold who said what."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from bridge.call.view import CallView
from bridge.tools.demo.transfer_bot import PROMPTS, run_transfer_bot
from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.recorder import RecordingFault
from bridge.tools.sim.targets import tone
from tests.integration.conftest import Rig, bridge_running
from tests.integration.test_transfer import caller_hangs_up, greeted, nothing_left, press

CALLER_HZ = 1300.0  # what the caller says (a tone, so each side can be told apart)
BOT_HZ = float(PROMPTS["greeting"][0])  # the bot's greeting: 440 Hz


@contextlib.asynccontextmanager
async def recording_rig(**bridge: Any) -> AsyncIterator[tuple[Rig, list[CallView]]]:
    async with (
        SimulatedAsterisk(seed=5) as sim,
        run_transfer_bot(target="Local/233@caller", mode="blind") as bot,
        bridge_running(sim, bot, record_name="qa/{call_id}", transfer_allow=("Local/*",),
                       **bridge) as rig,  # type: ignore[arg-type]
    ):
        views: list[CallView] = []
        rig.controller.observers.append(lambda view, _change: views.append(view))
        yield rig, views


def level(samples: np.ndarray, hz: float) -> float:
    """How strong `hz` is in `samples` (8 kHz): the FFT's magnitude there, per sample."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    bins = np.fft.rfftfreq(len(samples), 1 / 8000)
    near = np.abs(bins - hz) < 15
    return float(spectrum[near].max() / len(samples))


async def call_and_hang_up(rig: Rig, seconds: float = 2.0) -> None:
    caller_audio = tone(CALLER_HZ, 6.0)
    call = await rig.sim.place_call("basic_ulaw", audio=caller_audio, hangup_after=30)
    stats = await greeted(rig, call)
    assert call.media is not None
    # Until the greeting has reached the caller, and the caller's tone the bot, for a while.
    frames = (PROMPTS["greeting"][1] // 20) + int(seconds * 50)
    await asyncio.wait_for(call.media.wait_received(lambda: len(call.rtp_received) >= frames), 10)
    del stats
    caller_hangs_up(rig.sim, call)
    await nothing_left(rig)


async def test_a_mixed_recording_named_by_the_call_holds_both_sides() -> None:
    async with recording_rig(record="mixed") as (rig, views):
        await call_and_hang_up(rig)
        final = views[-1]
        (name,) = rig.sim.stored_recordings
        assert name == f"qa/{final.id}"
        samples = rig.sim.stored_recordings[name].samples
        assert level(samples, CALLER_HZ) > 100  # the caller
        assert level(samples, BOT_HZ) > 50  # the bot's greeting (a tone absent: ~8)
        assert [dict(r) for r in final.recordings] == [
            {"name": name, "format": "wav", "track": "mixed", "state": "done",
             "file": f"{name}.wav"},
        ]  # fmt: skip
        assert rig.sim.live_recordings == {}


async def test_tracks_keep_the_caller_and_the_bot_apart() -> None:
    async with recording_rig(record="tracks") as (rig, views):
        await call_and_hang_up(rig)
        call_id = views[-1].id
        stored = rig.sim.stored_recordings
        assert sorted(stored) == [f"qa/{call_id}-bot", f"qa/{call_id}-caller"]
        caller, bot = stored[f"qa/{call_id}-caller"].samples, stored[f"qa/{call_id}-bot"].samples
        assert level(caller, CALLER_HZ) > 10 * level(caller, BOT_HZ)
        assert level(bot, BOT_HZ) > 10 * level(bot, CALLER_HZ)
        assert {r["track"]: r["state"] for r in views[-1].recordings} == {
            "caller": "done", "bot": "done"}  # fmt: skip
        assert not [c for c in rig.sim.channels if "-sn-" in c]  # the snoops are gone


async def test_a_failed_recording_never_ends_the_call() -> None:
    async with recording_rig(record="mixed") as (rig, views):
        rig.sim.recording_faults.append(RecordingFault.failed("No space left on device"))
        await call_and_hang_up(rig)
        final = views[-1]
        assert final.end_reason == "caller hung up"  # the call went on to its natural end
        (recording,) = final.recordings
        assert recording["state"] == "failed"
        assert recording["error"] == "No space left on device"


async def test_the_recording_goes_on_with_the_person_after_a_transfer() -> None:
    async with recording_rig(record="mixed") as (rig, views):
        call = await rig.sim.place_call("basic_ulaw", audio=tone(CALLER_HZ, 8.0), hangup_after=30)
        stats = await greeted(rig, call)
        press(rig.sim, call, "0")
        await asyncio.wait_for(rig.sim.wait_request(
            "POST", rf"^/ari/bridges/{call.bridge_id}/addChannel$", nth=2), 10)  # fmt: skip
        assert len(rig.sim.live_recordings) == 1  # still recording, the person bridged
        del stats
        caller_hangs_up(rig.sim, call)
        await nothing_left(rig)
        (stored,) = rig.sim.stored_recordings.values()
        # The lab's 233 plays a 1 kHz agent tone once it answers: it is in the file too.
        assert level(stored.samples, 1000.0) > 20
        assert views[-1].recordings[0]["state"] == "done"
