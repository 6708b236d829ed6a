"""Wrong ARI credentials: the service keeps running and retrying, is not ready, and says why."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from bridge.service.controller import Controller
from bridge.tools.sim.asterisk import SimulatedAsterisk
from tests.integration.conftest import settings_for


async def test_wrong_password_keeps_retrying_and_readyz_says_401() -> None:
    async with SimulatedAsterisk(seed=3) as sim:
        settings = settings_for(sim, "ws://127.0.0.1:9/ws", ari_password="wrong")
        controller = Controller(settings)
        task = asyncio.get_running_loop().create_task(controller.run())
        try:
            await asyncio.wait_for(controller.listening.wait(), 5)
            await asyncio.wait_for(controller.events.attempt_failed.wait(), 10)
            address = controller.http_api.address
            assert address is not None
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{address[0]}:{address[1]}/readyz") as response:
                    assert response.status == 503
                    body = await response.json()
                async with http.get(f"http://{address[0]}:{address[1]}/healthz") as response:
                    assert response.status == 200
            assert body["ready"] is False
            assert "refused the credentials (401)" in body["reason"]
            assert "wrong" not in body["reason"]
            assert not task.done()  # still running, still retrying
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
