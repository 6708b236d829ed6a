"""Setup failures, admission control and drain through the real service, the simulated
Asterisk and a real Pipecat echo bot: whatever fails, nothing is left behind and the caller
is handed to the fallback rather than left in silence."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection

from bridge.tools.sim.media import SimCall
from tests.integration.conftest import Rig, running_rig
from tests.integration.test_faults import ScriptedBot, media, scripted_bot, wait_start
from tests.integration.test_replay import assert_nothing_left

CONTINUE = {"fallback": "continue", "fallback_context": "humans", "fallback_extension": "100"}


def continued(rig: Rig, call: SimCall) -> bool:
    """The bridge handed this caller to the dialplan fallback."""
    return any(
        r.method == "POST"
        and r.path == f"/ari/channels/{call.caller_id}/continue"
        and r.query == {"context": "humans", "extension": "100", "priority": "1"}
        and r.status == 204
        for r in rig.sim.requests
    )


async def end_of(rig: Rig, call: SimCall) -> None:
    await asyncio.wait_for(call.ended, 10)
    await asyncio.wait_for(rig.wait_idle(), 10)


# (method, path regex, status, body) of the failure injected at each setup step. Bodies are
# the recorded ones where the recordings have them (asterisk-facts §17).
SETUP_FAILURES = [
    ("POST", r"/answer$", 500, {"message": "Internal Server Error"}),
    ("POST", r"^/ari/bridges$", 500, {"message": "Possible duplicate bridge id"}),
    ("POST", r"/externalMedia$", 500, {"message": "Internal Server Error"}),
    ("POST", r"/addChannel$", 400, {"message": "Channel not found"}),
]


@pytest.mark.parametrize(("method", "path", "status", "body"), SETUP_FAILURES)
async def test_a_failed_setup_step_rolls_back_and_continues_the_caller(
    method: str, path: str, status: int, body: object
) -> None:
    async with running_rig(**CONTINUE) as rig:
        rig.sim.fail_next(method, path, status, body)
        call = await rig.sim.place_call("basic_ulaw")
        await end_of(rig, call)
        assert continued(rig, call)
        assert_nothing_left(rig)


@pytest.mark.parametrize(("method", "path", "status", "body"), SETUP_FAILURES[1:])
async def test_a_failed_setup_step_hangs_up_by_default(
    method: str, path: str, status: int, body: object
) -> None:
    async with running_rig() as rig:
        rig.sim.fail_next(method, path, status, body)
        call = await rig.sim.place_call("basic_ulaw")
        await end_of(rig, call)
        assert call.hung_up_by == "app"
        assert not continued(rig, call)
        assert_nothing_left(rig)


async def test_an_unreachable_bot_sends_the_caller_to_the_fallback() -> None:
    async with running_rig(
        bot_url="ws://127.0.0.1:9/ws", bot_connect_timeout=0.5, **CONTINUE
    ) as rig:
        call = await rig.sim.place_call("basic_ulaw")
        await end_of(rig, call)
        assert continued(rig, call)
        assert_nothing_left(rig)


async def test_beyond_max_calls_a_caller_gets_the_fallback_at_once() -> None:
    async with running_rig(max_calls=1, **CONTINUE) as rig:
        first = await rig.sim.place_call("basic_ulaw", hangup_after=1.5)
        await asyncio.wait_for(first.bridged, 5)
        second = await rig.sim.place_call("basic_ulaw")
        await asyncio.wait_for(second.ended, 5)
        assert continued(rig, second)
        assert not first.ended.done()
        # Nothing was created for the rejected caller: not even an answer.
        assert not any(
            r.path.startswith(f"/ari/channels/{second.caller_id}/answer") for r in rig.sim.requests
        )
        assert rig.controller.calls_rejected == 1
        await end_of(rig, first)
        assert first.hung_up_by == "caller"
        assert_nothing_left(rig)


async def test_a_full_rtp_port_range_is_a_limit_too() -> None:
    async with running_rig(rtp_ports=(39990, 39991)) as rig:  # one even port
        first = await rig.sim.place_call("basic_ulaw", hangup_after=1.0)
        await asyncio.wait_for(first.bridged, 5)
        second = await rig.sim.place_call("basic_ulaw")
        await asyncio.wait_for(second.ended, 5)
        assert second.hung_up_by == "app"
        await end_of(rig, first)
        assert_nothing_left(rig)


async def test_drain_lets_calls_finish_and_turns_new_callers_away() -> None:
    async with running_rig(**CONTINUE) as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=1.0)
        await asyncio.wait_for(call.bridged, 5)
        drain = asyncio.create_task(rig.controller.drain(10.0))
        late = await rig.sim.place_call("basic_ulaw")
        await asyncio.wait_for(late.ended, 5)
        assert continued(rig, late)
        assert not drain.done()
        await asyncio.wait_for(drain, 5)
        assert call.hung_up_by == "caller"  # it went on to its natural end
        assert_nothing_left(rig)


async def test_drain_timeout_then_shutdown_hangs_up_the_rest() -> None:
    async with running_rig() as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30.0)
        await asyncio.wait_for(call.bridged, 5)
        await rig.controller.drain(0.2)
        assert not call.ended.done()
        await rig.controller.shutdown()
        await asyncio.wait_for(call.ended, 5)
        assert call.hung_up_by == "app"
        assert_nothing_left(rig)


@pytest.mark.parametrize("path", [r"^/ari/bridges$", r"/externalMedia$"])
async def test_a_creation_slower_than_the_rest_timeout_is_still_cleaned_up(path: str) -> None:
    async with running_rig(rest_timeout=0.3) as rig:
        # Asterisk performs it after the bridge gave up waiting (asterisk-facts: nothing is
        # torn down for you).
        rig.sim.delay_next("POST", path, 0.6, perform=True)
        call = await rig.sim.place_call("basic_ulaw")
        await end_of(rig, call)
        # The creation lands after the call ended; the bridge then deletes it again.
        delete = r"^/ari/bridges/pcb-br-" if "bridges" in path else r"^/ari/channels/pcb-em-"
        await asyncio.wait_for(rig.sim.wait_request("DELETE", delete, nth=2), 5)
        assert not rig.sim.leftovers(), rig.sim.leftovers()
        assert_nothing_left(rig)


async def test_a_bot_closing_1011_mid_call_sends_the_caller_to_the_fallback() -> None:
    async def script(ws: ServerConnection, bot: ScriptedBot) -> None:
        sid = await wait_start(bot, ws)
        await ws.send(media(sid, 0x55, 10))  # 200 ms of speech, then a crash
        await ws.close(1011, "internal error")

    async with scripted_bot(script) as bot, running_rig(bot_url=bot.url, **CONTINUE) as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        await end_of(rig, call)
        assert continued(rig, call)
        assert rig.controller.calls_total == 1
        assert_nothing_left(rig)


async def test_a_bot_sending_a_huge_message_is_cut_off_and_the_caller_continues() -> None:
    async def script(ws: ServerConnection, bot: ScriptedBot) -> None:
        sid = await wait_start(bot, ws)
        await ws.send(media(sid, 0x55, 8000))  # 160 s of audio in one 1.7 MB message
        await ws.wait_closed()

    async with scripted_bot(script) as bot, running_rig(bot_url=bot.url, **CONTINUE) as rig:
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        await end_of(rig, call)
        assert continued(rig, call)
        assert_nothing_left(rig)
