"""Fixtures of the simulated-Asterisk tests: a fresh simulator and a plain ARI client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bridge.tools.sim.asterisk import SimulatedAsterisk
from tests.tools.sim.ari_client import Ari


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedAsterisk]:
    async with SimulatedAsterisk(seed=20261122) as simulated:
        yield simulated


@pytest.fixture
async def ari(sim: SimulatedAsterisk) -> AsyncIterator[Ari]:
    async with aiohttp.ClientSession() as session:
        client = Ari(sim, session)
        yield client
        await client.close()
