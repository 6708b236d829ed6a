"""Outbound calls and expected dialplan calls, end to end: the real service originates into
the simulated Asterisk (`POST /channels`, as recorded in outbound_originate and
transfer_originate_*), and a real Pipecat echo bot answers the calls that are answered."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from bridge.call.machine import CallState
from bridge.call.view import Direction
from bridge.service.outbound import ExpectedCall, OriginateError, OriginateRequest
from tests.integration.conftest import Rig, running_rig
from tests.integration.test_transports_ari import assert_nothing_left
from tests.integration.test_transports_dialplan import audiosocket_address


async def wait_ended(rig: Rig, call_id: str, within: float = 10.0) -> None:
    call = rig.controller.registry.get(call_id)
    if call is not None:
        await asyncio.wait_for(asyncio.shield(call.finished), within)
    await rig.wait_idle(within)


def assert_outcome(views: list, call_id: str, reason: str) -> None:
    (last,) = [v for v in views if v.id == call_id and v.state is CallState.ENDED][-1:]
    assert last.direction is Direction.OUTBOUND
    assert last.end_reason == reason
    assert last.ended_by is not None and last.ended_by.value == "caller"


async def test_an_answered_originate_reaches_the_bot_as_outbound() -> None:
    async with running_rig(hangup_after=1.0) as rig:
        views: list = []
        rig.controller.observers.append(lambda view, _change: views.append(view))
        request = OriginateRequest("Local/205@caller", caller_id="Pipecat Bot <5552000>",
                                   variables={"campaign": "spring", "lead": "42"})  # fmt: skip
        call_id = await rig.controller.originate(request)
        call = rig.controller.registry.get(call_id)
        assert call is not None
        view = call.view()
        assert view.direction is Direction.OUTBOUND and view.state is CallState.SETUP
        assert view.channel_id == f"pcb-out-{call_id}"
        (req,) = [r for r in rig.sim.requests if r.method == "POST" and r.path == "/ari/channels"]
        assert req.query["endpoint"] == "Local/205@caller"
        assert req.query["appArgs"] == f"outbound,{call_id}"
        assert req.query["channelId"] == f"pcb-out-{call_id}"
        assert json.loads(req.query["variables"]) == {"campaign": "spring", "lead": "42"}
        await wait_ended(rig, call_id)
        (bot_call,) = rig.bot.stats.calls
        params = bot_call.custom_parameters
        assert params["direction"] == "outbound", params
        assert params["campaign"] == "spring" and params["lead"] == "42", params
        assert any(v.id == call_id and v.state is CallState.UP for v in views)
        assert views[-1].direction is Direction.OUTBOUND
        assert views[-1].end_reason == "bot ended the call"
        assert_nothing_left(rig)


@pytest.mark.parametrize(("endpoint", "reason"), [
    ("Local/207@caller", "busy"),
    ("Local/999@caller", "unavailable"),
])  # fmt: skip
async def test_a_failed_ring_ends_the_call_with_its_cause(endpoint: str, reason: str) -> None:
    async with running_rig() as rig:
        views: list = []
        rig.controller.observers.append(lambda view, _change: views.append(view))
        call_id = await rig.controller.originate(OriginateRequest(endpoint))
        await wait_ended(rig, call_id)
        assert_outcome(views, call_id, reason)
        assert rig.bot.stats.calls == []
        assert_nothing_left(rig)


async def test_no_answer_ends_at_the_ring_timeout() -> None:
    async with running_rig() as rig:
        views: list = []
        rig.controller.observers.append(lambda view, _change: views.append(view))
        call_id = await rig.controller.originate(OriginateRequest("Local/208@caller", timeout=1))
        assert rig.controller.registry.get(call_id) is not None
        await wait_ended(rig, call_id, within=5)
        assert_outcome(views, call_id, "no_answer")
        assert_nothing_left(rig)


async def test_an_unknown_technology_is_refused_at_once() -> None:
    async with running_rig() as rig:
        with pytest.raises(OriginateError) as refused:
            await rig.controller.originate(OriginateRequest("Bogus/xyz"))
        assert refused.value.status == 400
        assert "Allocation failed" in refused.value.message
        assert rig.controller.calls == {}
        assert_nothing_left(rig)


async def test_originate_respects_max_calls_and_draining() -> None:
    async with running_rig(max_calls=1) as rig:
        call_id = await rig.controller.originate(OriginateRequest("Local/208@caller"))
        with pytest.raises(OriginateError) as full:
            await rig.controller.originate(OriginateRequest("Local/205@caller"))
        assert full.value.status == 503
        call = rig.controller.registry.get(call_id)
        assert call is not None
        await rig.controller.shutdown()  # hangs the ringing channel up
        assert not rig.sim.leftovers(), rig.sim.leftovers()


async def test_an_expected_audiosocket_call_gets_what_was_registered() -> None:
    async with running_rig(hangup_after=0.8) as rig:
        ident = str(uuid.uuid4())
        rig.controller.expect(ExpectedCall(ident, caller="+15551234", called="900",
                                           params={"order": "77"}))  # fmt: skip
        with pytest.raises(ValueError):
            rig.controller.expect(ExpectedCall(ident))
        call = await rig.sim.dial_audiosocket(audiosocket_address(rig), uuid=ident)
        await asyncio.wait_for(call.ended, 10)
        await rig.wait_idle()
        (bot_call,) = rig.bot.stats.calls
        params = bot_call.custom_parameters
        assert params["order"] == "77", params
        assert params["from_number"] == "+15551234" and params["to_number"] == "900", params
        again = await rig.sim.dial_audiosocket(audiosocket_address(rig), uuid=ident)
        await asyncio.wait_for(again.ended, 10)
        assert len(rig.bot.stats.calls) == 1  # a used uuid is refused
        assert_nothing_left(rig)
