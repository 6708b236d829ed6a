"""`pipecat-bridge run --workers 2` as systemd runs it: a supervisor and two worker processes
against the simulated Asterisk. The supervisor's one HTTP API answers for both workers
(/metrics labelled by worker, /calls with the worker of each call). A worker killed with
SIGKILL comes back under the same app name and sweeps what it left; SIGHUP replaces both
workers with a new generation while the supervisor stays up; SIGTERM stops everything with
exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bridge.service.peers import REGISTRY
from bridge.tools.demo.echo_bot import run_echo_bot
from bridge.tools.sim.asterisk import SimulatedAsterisk
from tests.test_service_process import QUIET_LISTENERS

HEARTBEAT = "PIPECAT_BRIDGE_HB_PIPECAT_T"


class Log:
    """The supervisor's stderr, which its workers share: JSON lines, read as they come (all
    the time, so no worker ever blocks on a full pipe)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        self._stream = proc.stderr
        self.lines: list[dict[str, Any]] = []
        self.pids: set[int] = set()  # every worker started
        self.eof = False
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while raw := await self._stream.readline():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                self.lines.append(line)
                if line.get("event") == "worker_started":
                    self.pids.add(int(line["pid"]))
                async with self._changed:
                    self._changed.notify_all()
        self.eof = True
        async with self._changed:
            self._changed.notify_all()

    async def until(self, event: str, *, seen: bool = False, **fields: object) -> dict[str, Any]:
        """The next line of `event` with `fields` from now on (`seen`: or one read already)."""
        start = 0 if seen else len(self.lines)

        def found() -> dict[str, Any] | None:
            for line in self.lines[start:]:
                if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                    return line
            assert not self.eof, f"the service exited before logging {event} {fields}"
            return None

        async with self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        line = found()
        assert line is not None
        return line

    async def rest(self) -> None:
        await self._reader

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]


def ours(sim: SimulatedAsterisk, prefix: str) -> list[str]:
    return [i for i in (*sim.channels, *sim.bridges) if i.startswith(prefix)]


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def metric_workers(session: aiohttp.ClientSession, base: str, name: str) -> set[str]:
    """The `worker` labels of the host's `name` series."""
    status, text = await get(session, base + "/metrics")
    assert status == 200
    return {
        s.labels["worker"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_two_workers_restart_reload_and_stop(tmp_path: Path) -> None:
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.setblocking(False)
    told: list[str] = []  # what systemd would hear from the supervisor
    loop = asyncio.get_running_loop()
    loop.add_reader(notify.fileno(), lambda: told.append(notify.recv(4096).decode()))
    async with SimulatedAsterisk(password="pw", seed=5) as sim, run_echo_bot() as bot:
        env = {
            **os.environ,
            "BRIDGE_ARI_URL": sim.base_url,
            "BRIDGE_ARI_USER": sim.user,
            "BRIDGE_ARI_PASSWORD": "pw",
            "BRIDGE_BOT_URL": bot.url,
            "BRIDGE_RTP_PORTS": "32400-32799",
            **QUIET_LISTENERS,
            "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_WORKERS": "2",
            "BRIDGE_INSTANCE_ID": "t",
            "BRIDGE_ORPHAN_CONTEXT": "pipecat-in",
            "BRIDGE_ORPHAN_EXTENSION": "broadcast",
            "BRIDGE_DRAIN_TIMEOUT": "5",
            "NOTIFY_SOCKET": notify_path,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.service.cli", "run",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        log = Log(proc)
        session = aiohttp.ClientSession()
        try:
            await asyncio.wait_for(log.until("service_ready", workers=2), 30)
            assert sim.connected_apps() == ["pipecat-t-0", "pipecat-t-1"]
            # The host's one HTTP API, on the port the supervisor bound (--http-listen :0).
            listening = await log.until("host_api_listening", seen=True)
            base = f"http://{listening['address']}"
            status, ready = await get(session, base + "/readyz")
            assert status == 200 and [w["worker"] for w in ready["workers"]] == ["0", "1"]
            rtp_ports = "pipecat_bridge_rtp_ports"
            assert await metric_workers(session, base, rtp_ports) == {"0", "1"}
            # One heartbeat for the host, written by both workers, listed once.
            while len(log.events("heartbeat_started")) < 2:
                await asyncio.wait_for(log.until("heartbeat_started"), 10)
            await asyncio.wait_for(log.until("peer_registered", seen=True), 10)
            assert sim.system.variables[HEARTBEAT].endswith(" pipecat-t-{tag} pcb-t-{tag}- t")
            assert sim.system.variables[REGISTRY] == HEARTBEAT
            first = {line["worker"]: line["pid"] for line in log.events("worker_started")}

            # A call on worker 0, then worker 0 dies mid-call.
            call = await sim.place_call("basic_ulaw", app="pipecat-t-0", hangup_after=60)
            await asyncio.wait_for(call.bridged, 10)
            assert len(ours(sim, "pcb-t-0-")) == 2  # its bridge and its media channel
            status, views = await get(session, base + "/calls")
            assert status == 200 and [v["worker"] for v in views] == ["0"]
            status, view = await get(session, f"{base}/calls/{views[0]['id']}")
            assert status == 200 and (view["worker"], view["state"]) == ("0", "up")
            os.kill(first["0"], signal.SIGKILL)
            exited = await asyncio.wait_for(log.until("worker_exited", worker="0"), 10)
            assert exited["returncode"] == -signal.SIGKILL and exited["restart_in_s"] == 1
            again = await asyncio.wait_for(log.until("worker_ready", worker="0"), 30)
            assert again["app"] == "pipecat-t-0" and again["pid"] != first["0"]
            # Its successor swept the bridge and media channel and sent the caller on once.
            await asyncio.wait_for(call.ended, 15)
            assert call.continued_to == ("pipecat-in", "broadcast", 1)
            assert ours(sim, "pcb-t-0-") == []
            assert proc.returncode is None

            # systemctl reload: both slots replaced by generation 1, one at a time.
            proc.send_signal(signal.SIGHUP)
            await asyncio.wait_for(log.until("reload_finished"), 60)
            assert [e["new"] for e in log.events("worker_replaced")] == [
                "pipecat-t-0g1", "pipecat-t-1g1",
            ]  # fmt: skip
            for tag in ("0", "1"):
                stopped = log.until("worker_stopped", seen=True, worker=tag, returncode=0)
                await asyncio.wait_for(stopped, 20)
            assert sim.connected_apps() == ["pipecat-t-0g1", "pipecat-t-1g1"]
            assert await metric_workers(session, base, rtp_ports) == {"0g1", "1g1"}
            assert proc.returncode is None

            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(log.rest(), 30)
            await asyncio.wait_for(proc.wait(), 10)
        finally:
            await session.close()
            for line in log.lines:  # shown when the test fails
                print({k: v for k, v in line.items() if k not in ("level", "timestamp")})
            for pid in log.pids:  # first: they hold the stderr pipe proc.wait() waits for
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        loop.remove_reader(notify.fileno())
        notify.close()
        assert proc.returncode == 0
        kinds = [m.split("\n")[0].split("=")[0] for m in told if not m.startswith("STATUS=")]
        assert kinds == ["READY", "RELOADING", "READY", "STOPPING"]
        assert "READY=1\nSTATUS=2/2 workers ready, 0 calls active" in told
        stopped = {e["worker"]: e["returncode"] for e in log.events("worker_stopped")}
        assert stopped == {"0": 0, "1": 0, "0g1": 0, "1g1": 0}
        assert log.events("supervisor_stopped")
        assert sim.connected_apps() == []
        assert not [i for i in (*sim.channels, *sim.bridges) if i.startswith("pcb-")]
        # Stopped cleanly: the host left the registry, no peer will sweep it.
        assert HEARTBEAT not in sim.system.variables and sim.system.variables[REGISTRY] == ""
