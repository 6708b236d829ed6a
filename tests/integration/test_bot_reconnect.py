"""A bot redeployed mid-call gets the call back: the real service between the simulated Asterisk
and a real Pipecat echo bot whose server is stopped mid-call (uvicorn closes its sessions with
1012) and started again on the same port. The caller's stream never pauses; a bot that stays
away sends the caller to the fallback within the window (+2 s); a normal close never re-dials."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from bridge.call.reconnect import FALLBACK_SLACK
from bridge.tools.demo.echo_bot import EchoBot, run_echo_bot
from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.media import SimCall
from tests.integration.conftest import Rig, bridge_running
from tests.integration.test_faults import ScriptedBot, media, scripted_bot, wait_start
from tests.integration.test_replay import assert_rtp_stream
from tests.integration.test_transports_ari import assert_nothing_left, bridge_frames, link_of

WINDOW = 3.0
MAX_GAP = 0.040
TRANSPORTS = [{"transport": "rtp"}, {"transport": "audiosocket", "format": "slin"}]
IDS = ["rtp", "audiosocket"]


@contextlib.asynccontextmanager
async def rig_with_bot(
    **overrides: object,
) -> AsyncIterator[tuple[Rig, EchoBot, Callable[[], Awaitable[None]]]]:
    """The rig with an echo bot the test may stop (the third value) and start again."""
    async with SimulatedAsterisk(seed=7) as sim:
        stack = contextlib.AsyncExitStack()
        bot = await stack.enter_async_context(run_echo_bot())
        try:
            async with bridge_running(sim, bot, **overrides) as rig:
                yield rig, bot, stack.aclose
        finally:
            await stack.aclose()


def bridge_times(rig: Rig, call: SimCall, transport: str) -> list[float]:
    """When Asterisk received each 20 ms frame the bridge sent the caller."""
    if transport == "rtp":
        return [t for t, _d, _s in call.rtp_received]
    return [t for t, _f in bridge_frames(link_of(rig, call))]


def max_gap(times: list[float], start: float, end: float) -> float:
    window = [t for t in times if start - 0.1 <= t <= end + 0.1]
    return max((b - a for a, b in itertools.pairwise(window)), default=1.0)


def only_call_view(rig: Rig) -> Any:
    (call,) = rig.controller.calls.values()
    return call


@pytest.mark.parametrize("settings", TRANSPORTS, ids=IDS)
async def test_a_redeployed_bot_gets_the_call_back(settings: dict[str, object]) -> None:
    loop = asyncio.get_running_loop()
    async with rig_with_bot(**settings) as (rig, first, stop_first):
        call = await rig.sim.place_call("basic_ulaw", hangup_after=4.0)
        await asyncio.wait_for(call.bridged, 5)
        session = await asyncio.wait_for(first.stats.next_call(), 5)
        await asyncio.wait_for(session.wait_audio(25), 5)  # 0.5 s of echo: a call in full flow
        bridge_call = only_call_view(rig)
        stopped_at = loop.time()
        # A redeploy: the server shuts down (its sessions get 1012) and comes back.
        await stop_first()
        await asyncio.wait_for(session.finished.wait(), 5)
        async with run_echo_bot(port=first.port) as second:
            resumed = await asyncio.wait_for(second.stats.next_call(), 5)
            back_at = loop.time()
            await asyncio.wait_for(call.ended, 10)
            await rig.wait_idle()
        view = bridge_call.view()

    assert call.hung_up_by == "caller"  # the call went on to its natural end
    assert resumed.custom_parameters["resumed"] == "true"
    assert resumed.custom_parameters["resume_count"] == "1"
    assert resumed.custom_parameters["call_id"] == session.custom_parameters["call_id"]
    assert resumed.call_sid == session.call_sid
    assert "resumed" not in session.custom_parameters
    assert resumed.audio_frames > 50  # the second session had the caller's audio
    gap = max_gap(bridge_times(rig, call, str(settings["transport"])), stopped_at, back_at)
    print(f"reconnect {settings['transport']}: bot back after {back_at - stopped_at:.3f} s, "
          f"max gap to the caller {gap * 1000:.1f} ms")
    assert gap <= MAX_GAP, f"the caller's stream paused {gap * 1000:.0f} ms"
    assert view.media["bot_reconnects"] == 1
    assert view.media["caller_frames_dropped"] > 0
    assert not view.fallback
    if settings["transport"] == "rtp":
        assert_rtp_stream(call)
    assert_nothing_left(rig)


@pytest.mark.parametrize("settings", TRANSPORTS, ids=IDS)
async def test_a_bot_that_never_comes_back_gets_the_fallback_within_the_window(
    settings: dict[str, object],
) -> None:
    loop = asyncio.get_running_loop()
    async with rig_with_bot(bot_reconnect_window=WINDOW, **settings) as (rig, bot, stop):
        call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
        await asyncio.wait_for(call.bridged, 5)
        await asyncio.wait_for(bot.stats.next_call(), 5)
        stopped_at = loop.time()
        await stop()
        await asyncio.wait_for(call.ended, WINDOW + 5)
        ended_in = loop.time() - stopped_at
        await rig.wait_idle()
    print(f"fallback {settings['transport']}: {ended_in:.3f} s after the drop")
    assert call.hung_up_by == "app"
    assert ended_in <= WINDOW + FALLBACK_SLACK
    assert_nothing_left(rig)


async def test_a_normal_close_ends_the_call_with_no_reconnect() -> None:
    async def script(ws: ServerConnection, bot: ScriptedBot) -> None:
        sid = await wait_start(bot, ws)
        await ws.send(media(sid, 0x55, 10))
        await ws.close(1000)

    async with scripted_bot(script) as bot, SimulatedAsterisk(seed=7) as sim:
        fake = EchoBot(bot.url, "127.0.0.1", 0, None)  # type: ignore[arg-type]
        async with bridge_running(sim, fake) as rig:
            call = await rig.sim.place_call("basic_ulaw", hangup_after=30)
            await asyncio.wait_for(call.ended, 10)
            await rig.wait_idle()
    assert call.hung_up_by == "app"
    assert sum(1 for m in bot.received if m.get("event") == "start") == 1  # never re-dialled
    assert_nothing_left(rig)


@pytest.mark.parametrize("hold", ["moh", "tone"])
async def test_hold_audio_while_the_bot_is_away(hold: str) -> None:
    sessions = itertools.count(1)

    async def script(ws: ServerConnection, bot: ScriptedBot) -> None:
        await wait_start(bot, ws)
        if next(sessions) == 1:
            for _ in range(15):  # 0.3 s of the call's media reaches it...
                await asyncio.wait_for(ws.recv(), 5)
            await ws.close(1011, "crash")  # ...then the first session crashes...
            return
        await ws.wait_closed()  # ...the resumed one stays

    async with scripted_bot(script) as bot, SimulatedAsterisk(seed=7) as sim:
        fake = EchoBot(bot.url, "127.0.0.1", 0, None)  # type: ignore[arg-type]
        async with bridge_running(sim, fake, bot_reconnect_hold=hold) as rig:
            call = await rig.sim.place_call("basic_ulaw", hangup_after=2.0)
            await asyncio.wait_for(call.ended, 10)
            await rig.wait_idle()
    starts = [m for m in bot.received if m.get("event") == "start"]
    assert len(starts) == 2
    assert starts[1]["start"]["customParameters"]["resumed"] == "true"  # type: ignore[index]
    moh = [(r.method, r.status) for r in rig.sim.requests if r.path.endswith("/moh")]
    if hold == "moh":
        assert moh == [("POST", 204), ("DELETE", 204)]
    else:
        assert moh == []
    assert_nothing_left(rig)
