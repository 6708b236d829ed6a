"""A real bridge between the simulated Asterisk and a real Pipecat echo bot, over loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bridge.service.config import Settings
from bridge.service.controller import Controller
from bridge.tools.demo.echo_bot import EchoBot, run_echo_bot
from bridge.tools.sim.asterisk import SimulatedAsterisk


@dataclass
class Rig:
    sim: SimulatedAsterisk
    bot: EchoBot
    controller: Controller
    task: asyncio.Task[None]

    async def wait_idle(self, within: float = 10.0) -> None:
        await asyncio.wait_for(self.controller.all_idle.wait(), within)


def settings_for(sim: SimulatedAsterisk, echo_bot_url: str, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "ari_url": sim.base_url,
        "ari_user": sim.user,
        "ari_password": sim.password,
        "app": sim.app,
        "bot_url": echo_bot_url,
        "rtp_host": "127.0.0.1",
        "rtp_ports": (31000, 31199),
        # Port 0: a fresh port per test, so a listener still closing never blocks the next.
        "audiosocket_listen": "127.0.0.1:0",
        "websocket_listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "log_level": "warning",
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_rig(
    hangup_after: float | None = None,
    *,
    bot_dialect: str = "twilio",
    bot_rate: int | None = None,
    **overrides: object,
) -> AsyncIterator[Rig]:
    """The bridge (Settings `overrides`) between a simulated Asterisk and a real Pipecat echo
    bot speaking `bot_dialect` at `bot_rate`."""
    echo_bot = run_echo_bot(hangup_after=hangup_after, dialect=bot_dialect, sample_rate=bot_rate)
    async with (
        SimulatedAsterisk(seed=7) as sim,
        echo_bot as bot,
        bridge_running(sim, bot, **overrides) as rig,
    ):
        yield rig


@contextlib.asynccontextmanager
async def bridge_running(
    sim: SimulatedAsterisk, bot: EchoBot, **overrides: object
) -> AsyncIterator[Rig]:
    """The service against `sim` (which may already hold calls, leftovers...), up once its
    start-up sweep is done; stopped at the end."""
    controller = Controller(settings_for(sim, bot.url, **overrides))
    task = asyncio.get_running_loop().create_task(controller.run())
    try:
        await asyncio.wait_for(controller.events.connected.wait(), 5)
        await asyncio.wait_for(sim.wait_app_active(), 5)
        # The start-up sweep reads what exists; calls placed after it see a quiet bridge.
        await asyncio.wait_for(controller.resynced.wait(), 5)
        yield Rig(sim, bot, controller, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with running_rig() as r:
        yield r
