"""The real entry point, as systemd runs it: a separate process, configured from the
environment, holding the events socket, and exiting 0 on SIGTERM without leaking the secret."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from bridge.tools.sim.asterisk import SimulatedAsterisk


async def start_service(env: dict[str, str]) -> asyncio.subprocess.Process:
    """`pipecat-bridge run` as systemd starts it: configured by the environment alone."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.service.cli", "run",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


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
        proc = await start_service(env)
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


async def read_until(proc: asyncio.subprocess.Process, lines: list[bytes], text: str) -> None:
    """Collect the service's log lines until one contains `text`."""
    assert proc.stderr is not None
    while True:
        line = await proc.stderr.readline()
        assert line, f"the service exited before logging {text}"
        lines.append(line)
        if text.encode() in line:
            return


async def test_sigterm_drains_and_a_second_signal_stops_at_once() -> None:
    from bridge.tools.demo.echo_bot import run_echo_bot

    async with SimulatedAsterisk(password="pw") as sim, run_echo_bot() as bot:
        env = {
            **os.environ,
            "BRIDGE_ARI_URL": sim.base_url,
            "BRIDGE_ARI_USER": sim.user,
            "BRIDGE_ARI_PASSWORD": "pw",
            "BRIDGE_BOT_URL": bot.url,
            "BRIDGE_RTP_PORTS": "32100-32199",
            "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_DRAIN_TIMEOUT": "60",
        }
        proc = await start_service(env)
        lines: list[bytes] = []
        try:
            await asyncio.wait_for(sim.wait_app_active(), 20)
            call = await sim.place_call("basic_ulaw", hangup_after=60)
            await asyncio.wait_for(call.bridged, 10)
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(read_until(proc, lines, '"event": "drain_started"'), 10)
            # Draining: the call in progress goes on, a new caller is turned away.
            late = await sim.place_call("basic_ulaw")
            await asyncio.wait_for(late.ended, 10)
            assert late.hung_up_by == "app"
            assert not call.ended.done()
            assert proc.returncode is None
            proc.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0
        err = b"".join(lines) + err
        assert call.hung_up_by == "app"
        assert [c for c in sim.channels if c.startswith("pcb-")] == []
        assert sim.bridges == {}
        log = err.decode()
        assert '"action": "drain"' in log
        assert '"action": "stop now"' in log
        assert '"reason": "bridge draining"' in log
