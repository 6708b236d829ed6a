"""The real entry point, as systemd runs it: a separate process, configured from the
environment, holding the events socket, and exiting 0 on SIGTERM without leaking the secret."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from bridge.tools.sim.asterisk import SimulatedAsterisk

# Fresh ports for the listeners: never the defaults, which a bridge on this machine may hold.
QUIET_LISTENERS = {
    "BRIDGE_AUDIOSOCKET_LISTEN": "127.0.0.1:0",
    "BRIDGE_WEBSOCKET_LISTEN": "127.0.0.1:0",
    "BRIDGE_HTTP_LISTEN": "127.0.0.1:0",
}


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
            **QUIET_LISTENERS,
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
            **QUIET_LISTENERS,
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


async def test_systemd_hears_ready_status_watchdog_and_stopping(tmp_path: Path) -> None:
    """Type=notify as systemd runs it: a datagram socket at $NOTIFY_SOCKET."""
    notify_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()

    async def next_message() -> str:
        return (await asyncio.wait_for(loop.sock_recv(sock, 4096), 20)).decode()

    async def until(prefix: str) -> str:
        while not (message := await next_message()).startswith(prefix):
            pass
        return message

    async with SimulatedAsterisk(password="pw") as sim:
        env = {
            **os.environ,
            "BRIDGE_ARI_URL": sim.base_url,
            "BRIDGE_ARI_USER": sim.user,
            "BRIDGE_ARI_PASSWORD": "pw",
            "BRIDGE_BOT_URL": "ws://127.0.0.1:9/ws",
            "BRIDGE_RTP_PORTS": "32200-32299",
            **QUIET_LISTENERS,
            "NOTIFY_SOCKET": notify_path,
            "WATCHDOG_USEC": "2000000",
            "WATCHDOG_PID": "",  # the watchdog is for whoever reads it: the service itself
        }
        proc = await start_service(env)
        try:
            assert await until("WATCHDOG=1") == "WATCHDOG=1"  # from the event loop, at once
            ready = await until("READY=1")
            assert ready == "READY=1\nSTATUS=0 calls active"
            assert sim.app_active  # READY only once the Stasis app is registered
            proc.send_signal(signal.SIGTERM)
            assert (await until("STOPPING=1")).startswith("STOPPING=1\nSTATUS=draining")
            await asyncio.wait_for(proc.communicate(), 20)
        finally:
            sock.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0
