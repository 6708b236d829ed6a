"""The calls' read model as its readers see it: one view per change, never polled."""

from __future__ import annotations

import asyncio

from bridge.call.commands import EndedBy
from bridge.call.machine import CallState, StateChanged
from bridge.call.view import CallChange, CallView, Direction, Milestone
from tests.integration.conftest import running_rig


async def test_every_change_of_a_call_reaches_the_observers_with_a_fresh_view() -> None:
    seen: list[tuple[CallView, CallChange]] = []
    async with running_rig(hangup_after=1.0) as rig:
        ended = asyncio.get_running_loop().create_future()

        def observe(view: CallView, change: CallChange) -> None:
            seen.append((view, change))
            if isinstance(change, StateChanged) and change.new is CallState.ENDED:
                ended.set_result(view)

        rig.controller.observers.append(observe)
        call = await rig.sim.place_call("basic_ulaw", caller_number="5551000", exten="100")
        final: CallView = await asyncio.wait_for(ended, 10)
        await rig.wait_idle()
    changes = [c for _, c in seen]
    assert [c.name for c in changes if isinstance(c, Milestone)] == [
        "started",
        "answered",
        "bot_connected",
    ]
    states = [(c.old, c.new) for c in changes if isinstance(c, StateChanged)]
    assert states == [
        (CallState.SETUP, CallState.UP),
        (CallState.UP, CallState.DRAINING),
        (CallState.DRAINING, CallState.ENDING),
        (CallState.ENDING, CallState.ENDED),
    ]
    assert final.channel_id == call.caller_id
    assert (final.caller, final.called) == ("5551000", "100")
    assert (final.direction, final.transport, final.dialect) == (Direction.INBOUND, "rtp", "twilio")
    assert (final.ended_by, final.end_reason, final.fallback) == (EndedBy.BOT, "bot ended the call",
                                                                  False)  # fmt: skip
    assert final.answered_at is not None and final.bot_connected_at is not None
    assert final.ended_at is not None
    assert final.started_at <= final.answered_at <= final.bot_connected_at <= final.ended_at
    assert final.media["rx_packets"] > 0 and final.media["tx_packets"] > 0
    assert final.to_json()["state"] == "ended"
    assert final.talk_time is not None and 0.5 < final.talk_time < 5


async def test_a_caller_hanging_up_is_ended_by_the_caller() -> None:
    async with running_rig() as rig:
        views: list[CallView] = []
        rig.controller.observers.append(lambda view, _change: views.append(view))
        call = await rig.sim.place_call("caller_hangup")
        assert await asyncio.wait_for(call.ended, 10) == "caller"
        await rig.wait_idle()
    assert views[-1].state is CallState.ENDED
    assert views[-1].ended_by is EndedBy.CALLER
