"""Soak: 10,000 short calls through the simulated Asterisk and the real controller.

Each call lasts a few hundred milliseconds with audio both ways: the caller sends 200 ms of
µ-law from the bridged moment; a light scripted bot (a plain websockets server, not Pipecat,
which is too slow for 10k calls) echoes every media message. Half the calls end with the
caller hanging up (0.3 s after bridging), half with the bot closing its socket (0.2 s after it
opened), so both teardown paths run. Calls run `CONCURRENCY` at a time.

After a warm-up (connection pools, caches and lazily built tables reach their size), the
process's file descriptors, asyncio tasks, RSS and live objects are sampled; again after the
measured calls. Nothing may be left: no descriptors or tasks beyond the warm-up baseline (the
REST keep-alive pool between bridge and simulator may differ in size: it is counted apart and
bounded), nothing in the simulator (`leftovers()`), an empty controller registry and a full
RTP port pool, and memory flat within `MEMORY_BOUND_MB`.

    .venv/bin/pytest -m slow tests/integration/test_soak.py -s
    .venv/bin/python -m tests.integration.test_soak          # SOAK_CALLS=2000 to shorten
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from bridge.logs import configure_logging
from bridge.service.controller import Controller
from bridge.tools.sim.asterisk import SimulatedAsterisk
from tests.integration.conftest import settings_for

CALLS = int(os.environ.get("SOAK_CALLS", "10000"))
WARMUP = int(os.environ.get("SOAK_WARMUP", "200"))
CONCURRENCY = int(os.environ.get("SOAK_CONCURRENCY", "50"))
MEMORY_BOUND_MB = 20.0
CALLER_AUDIO = bytes(range(0x80, 0xFF)) * 12  # ~190 ms of µ-law, no negative zero (0x7f)
CALLER_HANGS_UP_AFTER = 0.3  # seconds after the bridged moment
BOT_TALKS_FOR = 0.2  # seconds the closing bot keeps its socket open
CALL_TIMEOUT = 15.0
REST_POOL_LIMIT = 64  # ari.rest.AriRestClient's connector limit


# -- the light bot ---------------------------------------------------------------------------


@dataclass(eq=False)
class LightBot:
    """Accepts, echoes Twilio `media` messages, and closes after a while on `/bot-hangs-up`."""

    url: str = ""
    port: int = 0
    connections: int = 0
    echoed: int = 0
    active: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.active += 1
        self.idle.clear()
        try:
            if ws.request is not None and ws.request.path.endswith("/bot-hangs-up"):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BOT_TALKS_FOR):  # the bot's own timing
                        await self._echo(ws)
                await ws.close(1000)
            else:
                await self._echo(ws)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()

    async def _echo(self, ws: ServerConnection) -> None:
        stream_sid = ""
        async for message in ws:
            data = json.loads(message)
            if data.get("event") == "start":
                stream_sid = data["streamSid"]
            elif data.get("event") == "media":
                payload = data["media"]["payload"]
                await ws.send(json.dumps({"event": "media", "streamSid": stream_sid,
                                          "media": {"payload": payload}}))  # fmt: skip
                self.echoed += 1


@contextlib.asynccontextmanager
async def light_bot() -> AsyncIterator[LightBot]:
    bot = LightBot()
    bot.idle.set()
    async with serve(bot.handler, "127.0.0.1", 0, compression=None) as server:
        bot.port = next(iter(server.sockets)).getsockname()[1]
        bot.url = f"ws://127.0.0.1:{bot.port}/ws"
        yield bot


# -- what the process holds ------------------------------------------------------------------


def _socket_ports() -> dict[str, tuple[str, int, int]]:
    """inode -> (protocol, local port, remote port) of every IPv4/IPv6 TCP and UDP socket."""
    out: dict[str, tuple[str, int, int]] = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/self/net") / proto
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            out[inode] = (proto.rstrip("6"), int(local.split(":")[1], 16),
                          int(remote.split(":")[1], 16))  # fmt: skip
    return out


def fd_census(ari_port: int, bot_port: int) -> Counter[str]:
    """Open descriptors by kind: udp, tcp-ari (REST pool and events socket, both ends),
    tcp-bot, tcp-other, and the rest by their link type (pipe, anon_inode, file...)."""
    sockets = _socket_ports()
    census: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, already closed
        if link.startswith("socket:["):
            found = sockets.get(link[8:-1])
            if found is None:
                census["socket-other"] += 1
            elif found[0] == "udp":
                census["udp"] += 1
            elif ari_port in found[1:]:
                census["tcp-ari"] += 1
            elif bot_port in found[1:]:
                census["tcp-bot"] += 1
            else:
                census["tcp-other"] += 1
        else:
            census[link.split(":")[0] if ":" in link else "file"] += 1
    return census


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Sample:
    fds: Counter[str]
    tasks: int
    http_connections: int  # simulator side of the keep-alive pool: one aiohttp task each
    rss_mb: float
    objects: Counter[str]

    @property
    def fds_total(self) -> int:
        return sum(self.fds.values())


async def sample(sim: SimulatedAsterisk, bot: LightBot) -> Sample:
    # Library-internal tasks (websockets close handshakes, aiohttp keep-alive handlers) end on
    # their own a little after the calls that used them: wait on the tasks themselves until
    # two readings agree with none of them ending in between (at most 50 ms per look).
    previous: tuple[int, int] | None = None
    for _ in range(40):
        gc.collect()
        reading = (
            len(asyncio.all_tasks()) - sim.http_connections,
            sum(fd_census(sim.port, bot.port).values()) - 2 * sim.http_connections,
        )
        if reading == previous:
            break
        previous = reading
        others = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.wait(others, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
    objects = Counter(type(o).__name__ for o in gc.get_objects())
    return Sample(fd_census(sim.port, bot.port), len(asyncio.all_tasks()), sim.http_connections,
                  rss_mb(), objects)  # fmt: skip


# -- the run ---------------------------------------------------------------------------------


@dataclass
class SoakReport:
    calls: int
    seconds: float
    outcomes: Counter[str]
    before: Sample
    after: Sample
    bot_connections: int
    bot_echoed: int
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        b, a = self.before, self.after
        grown = (a.objects - b.objects).most_common(8)
        lines = [
            f"soak: {self.calls} calls in {self.seconds:.1f} s = {self.calls / self.seconds:.1f}"
            f" calls/s, {CONCURRENCY} at a time (after {WARMUP} warm-up calls)",
            f"  outcomes (hung up by): {dict(self.outcomes)}",
            f"  bot: {self.bot_connections} connections, {self.bot_echoed} media echoed",
            f"  fds: {b.fds_total} -> {a.fds_total}   {dict(b.fds)} -> {dict(a.fds)}",
            f"  tasks: {b.tasks} -> {a.tasks}   (simulator HTTP connections "
            f"{b.http_connections} -> {a.http_connections})",
            f"  RSS: {b.rss_mb:.1f} MB -> {a.rss_mb:.1f} MB ({a.rss_mb - b.rss_mb:+.1f} MB)",
            f"  live objects: {sum(b.objects.values())} -> {sum(a.objects.values())};"
            f" grown most: {grown}",
        ]
        lines += [f"  PROBLEM: {p}" for p in self.problems] or ["  no leak found"]
        return "\n".join(lines)


async def run_calls(sim: SimulatedAsterisk, bot: LightBot, first: int, count: int,
                    outcomes: Counter[str]) -> None:  # fmt: skip
    indices = iter(range(first, first + count))

    async def one(index: int) -> str:
        bot_hangs_up = index % 2 == 1
        call = await sim.place_call(
            "basic_ulaw",
            args=[bot.url + ("/bot-hangs-up" if bot_hangs_up else "/echo")],
            audio=CALLER_AUDIO,
            audio_start=0.0,
            hangup_after=5.0 if bot_hangs_up else CALLER_HANGS_UP_AFTER,
        )
        ended_by = await asyncio.wait_for(call.ended, CALL_TIMEOUT)
        expected = "app" if bot_hangs_up else "caller"
        return ended_by if ended_by == expected else f"{ended_by} (expected {expected})"

    async def worker() -> None:
        for index in indices:  # one iterator shared by every worker
            try:
                outcomes[await one(index)] += 1
            except TimeoutError:
                outcomes["not ended in time"] += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def wait_quiet(controller: Controller, bot: LightBot) -> None:
    await asyncio.wait_for(controller.all_idle.wait(), 30)
    await asyncio.wait_for(bot.idle.wait(), 30)


def find_problems(report: SoakReport, sim: SimulatedAsterisk, controller: Controller) -> None:
    problems, b, a = report.problems, report.before, report.after
    total = WARMUP + report.calls
    if set(report.outcomes) - {"app", "caller"}:
        problems.append(f"calls that did not end as scripted: {dict(report.outcomes)}")
    if controller.calls or controller.registry.by_channel or controller.registry.by_bridge:
        problems.append(f"controller registry not empty: calls={list(controller.calls)} "
                        f"by_channel={list(controller.registry.by_channel)} "
                        f"by_bridge={list(controller.registry.by_bridge)}")  # fmt: skip
    if controller.ticker._members:
        problems.append(f"ticker still has {len(controller.ticker._members)} members")
    if controller.pool.in_use:
        problems.append(f"RTP port pool: {controller.pool.in_use} ports still in use")
    if controller.calls_total != total:
        problems.append(f"controller saw {controller.calls_total} calls, {total} placed")
    left = sim.leftovers()
    if left:
        problems.append(f"left in Asterisk: {left}")
    counts = sim.counts
    for made, gone in (("callers", "callers_gone"), ("media_channels", "media_channels_gone"),
                       ("bridges", "bridges_gone")):  # fmt: skip
        if not counts[made] == counts[gone] == total:
            problems.append(f"simulator {made}/{gone}: {counts[made]}/{counts[gone]} of {total}")
    fds_b = {k: v for k, v in b.fds.items() if k != "tcp-ari"}
    fds_a = {k: v for k, v in a.fds.items() if k != "tcp-ari"}
    if fds_a != fds_b:
        problems.append(f"file descriptors leaked: {fds_b} -> {fds_a}")
    # Both ends of each pooled REST connection and of the events socket, and the listener.
    if a.fds["tcp-ari"] > 2 * (REST_POOL_LIMIT + 1) + 1:
        problems.append(f"{a.fds['tcp-ari']} TCP descriptors to the ARI port: pool not bounded")
    if a.tasks - a.http_connections != b.tasks - b.http_connections:
        problems.append(f"asyncio tasks leaked: {b.tasks} -> {a.tasks} (HTTP connections "
                        f"{b.http_connections} -> {a.http_connections})")  # fmt: skip
    if a.rss_mb - b.rss_mb > MEMORY_BOUND_MB:
        problems.append(f"RSS grew {a.rss_mb - b.rss_mb:.1f} MB > {MEMORY_BOUND_MB} MB")


async def soak(calls: int = CALLS) -> SoakReport:
    loop = asyncio.get_running_loop()
    async with SimulatedAsterisk(seed=11, history=False) as sim, light_bot() as bot:
        # Ports of its own: the other integration tests (maybe running meanwhile) use 31000+.
        controller = Controller(settings_for(sim, bot.url, rtp_ports=(33000, 33199)))
        task = loop.create_task(controller.run())
        try:
            await asyncio.wait_for(controller.events.connected.wait(), 5)
            await asyncio.wait_for(sim.wait_app_active(), 5)
            warmup: Counter[str] = Counter()
            await run_calls(sim, bot, 0, WARMUP, warmup)
            await wait_quiet(controller, bot)
            before = await sample(sim, bot)
            outcomes: Counter[str] = Counter()
            start = loop.time()
            await run_calls(sim, bot, WARMUP, calls, outcomes)
            await wait_quiet(controller, bot)
            seconds = loop.time() - start
            after = await sample(sim, bot)
            report = SoakReport(calls, seconds, outcomes, before, after, bot.connections,
                                bot.echoed)  # fmt: skip
            if set(warmup) - {"app", "caller"}:
                report.problems.append(f"warm-up calls did not end as scripted: {dict(warmup)}")
            find_problems(report, sim, controller)
            return report
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_soak_10k_short_calls_leave_nothing_behind() -> None:
    report = await soak()
    print("\n" + report.text())
    assert report.problems == [], report.text()


def main() -> None:
    configure_logging("console", "warning")
    started = time.monotonic()
    report = asyncio.run(soak())
    print(report.text())
    print(f"  wall time with warm-up: {time.monotonic() - started:.1f} s")
    raise SystemExit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
