"""The real entry point, as systemd runs it: a separate process, configured from the
environment, holding the events socket, and exiting 0 on SIGTERM without leaking the secret."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from bridge.sim.asterisk import SimulatedAsterisk


async def test_service_runs_from_environment_and_stops_on_sigterm() -> None:
    async with SimulatedAsterisk(password="s3cret-pw") as sim:
        env = {
            **os.environ,
            "BRIDGE_ARI_URL": sim.base_url + "/ari",
            "BRIDGE_ARI_USER": sim.user,
            "BRIDGE_ARI_PASSWORD": "s3cret-pw",
            "BRIDGE_BOT_URL": "ws://127.0.0.1:9/ws",
            "BRIDGE_RTP_PORTS": "32000-32099",
            "BRIDGE_LOG_FORMAT": "json",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "run",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await asyncio.wait_for(sim.wait_app_active(), 20)
            proc.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0
        log = err.decode()
        assert '"event": "ari_events_connected"' in log
        assert '"event": "bridge_stopped"' in log
        assert "s3cret-pw" not in log
