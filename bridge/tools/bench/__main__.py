"""`python -m bridge.tools.bench [--calls 50,200,500] [--seconds 20] [--quick]`: print the table.

Each run is one relay (the bridge, or the naive relay) at one N with one bot (echo or
bursty): a fresh loadgen + rtpgen pinned to the harness CPU, a fresh relay pinned to the
other, /proc samples of the relay at the edges of the steady-state window, then the records
are turned into metrics (`report`). The bridge runs as `python -m bridge.service.cli run` configured
by BRIDGE_* variables, exactly as systemd runs it. After the fixed N, the largest N the
bridge carries (every call up, zero loss, gap p99 <= 22 ms, echo bot) is searched for.
Every child dies with this process (PR_SET_PDEATHSIG) and is stopped in `finally`.

`--transport audiosocket|websocket`: the same load over the bridge's other transports (the
generator plays Asterisk's end of the AudioSocket / chan_websocket connections, see
`loadgen`, `rtpgen`). The naive relay speaks RTP only: its column says n/a.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from bridge.tools.bench.procs import (
    child_preexec,
    cpu_busy_seconds,
    cpu_seconds,
    cpu_split,
    status_kib,
    stop,
    usable_cpus,
)
from bridge.tools.bench.report import RunResult, media_metrics, table

PASSWORD = "bench"
RTP_PORTS = "20000-29999"  # below the ephemeral range rtpgen's sockets come from
HARNESS_BUSY = 0.85  # of its core: above this the generator's numbers are suspect
SATURATED = 0.9  # of its core: the relay is falling behind, not idling between packets
FOREIGN_LIMIT = 0.05  # of the relay's core used by processes that are not the relay
LATE_LIMIT_MS = 5.0  # generator tick lateness p99 above this: our input jitter is not 20 ms
TRANSPORTS = ("rtp", "audiosocket", "websocket")
RTP_ONLY = ("naive",)  # relays that cannot carry the other transports


class HarnessError(RuntimeError):
    """A child died or did not say what it should have in time."""


class Lines:
    """JSON lines from a child's stdout, with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._proc = proc
        self._fd = proc.stdout.fileno()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)
        self._buf = b""

    def expect(self, key: str, timeout: float) -> Any:
        if os.environ.get("BENCH_TRACE"):
            print(f"\n    {time.monotonic():.2f} waiting {key}", file=sys.stderr, end="")
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict) and key in obj:
                    return obj[key]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HarnessError(f"loadgen did not report {key!r} within {timeout:.0f} s")
            if self._sel.select(remaining):
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise HarnessError(f"loadgen exited ({self._proc.wait()}) before {key!r}")
                self._buf += chunk


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[subprocess.Popen[bytes]] = []
        cpus = usable_cpus()
        self.relay_cpu: int | None = cpus[0] if len(cpus) > 1 else None
        self.harness_cpu: int | None = cpus[1] if len(cpus) > 1 else None
        self.out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bridge-bench-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # ---- processes ------------------------------------------------------------------------

    def spawn(
        self, argv: list[str], cpu: int | None, log: str, **kw: Any
    ) -> subprocess.Popen[bytes]:
        preexec = child_preexec(cpu, nice=self.args.nice)
        with open(self.out_dir / log, "ab") as err:
            proc = subprocess.Popen(argv, stderr=err, preexec_fn=preexec, **kw)
        self.children.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.children):  # the relay before the loadgen it talks to
            if proc.stdin is not None:
                proc.stdin.close()
            stop(proc, grace=2.0)
        self.children.clear()

    def relay_argv(self, relay: str, ports: dict[str, int]) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        ari = f"http://127.0.0.1:{ports['ari_port']}"
        bot = f"ws://127.0.0.1:{ports['bot_port']}/ws/{{call_id}}"
        if relay == "naive":
            argv = [sys.executable, "-m", "bridge.tools.bench.naive_relay", "--ari-url", ari,
                    "--password", PASSWORD, "--bot-url", bot]  # fmt: skip
            return argv, env
        env.update({
            "BRIDGE_ARI_URL": ari, "BRIDGE_ARI_USER": "asterisk", "BRIDGE_ARI_PASSWORD": PASSWORD,
            "BRIDGE_BOT_URL": bot, "BRIDGE_RTP_HOST": "127.0.0.1", "BRIDGE_RTP_PORTS": RTP_PORTS,
            "BRIDGE_LOG_LEVEL": "warning", "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_SETUP_TIMEOUT": "60", "BRIDGE_REST_TIMEOUT": "20",
            "BRIDGE_TRANSPORT": self.args.transport,
            "BRIDGE_AUDIOSOCKET_LISTEN": "127.0.0.1:0", "BRIDGE_WEBSOCKET_LISTEN": "127.0.0.1:0",
            "BRIDGE_HTTP_LISTEN": "127.0.0.1:0" if self.args.http else "",
        })  # fmt: skip
        if self.args.transport == "audiosocket":
            env["BRIDGE_FORMAT"] = "slin"
        if relay == "bridge+uvloop":
            runner = "bridge.tools.bench.run_bridge"
            return [sys.executable, "-m", runner, "--loop", "uvloop", "run"], env
        if env.get("BENCH_GC_LOG"):
            return [sys.executable, "-m", "bridge.tools.bench.run_bridge", "run"], env
        return [sys.executable, "-m", "bridge.service.cli", "run"], env

    # ---- one run --------------------------------------------------------------------------

    def run(self, relay: str, calls: int, bot: str, seconds: float) -> RunResult:
        tag = f"{relay}-{bot}-{calls}"
        if self.args.transport != "rtp":
            tag = f"{relay}-{self.args.transport}-{bot}-{calls}"
        print(f"  {tag:28} ...", end="", flush=True, file=sys.stderr)
        started = time.monotonic()
        result = RunResult(relay=relay, bot=bot, calls=calls, seconds=seconds,
                           transport=self.args.transport)
        try:
            self._run(result, tag, seconds)
        except HarnessError as exc:
            result.warnings.append(f"run failed: {exc}")
        finally:
            if os.environ.get("BENCH_TRACE"):
                print(f"\n    {time.monotonic():.2f} stopping", file=sys.stderr, end="")
            self.stop_all()
        status = "ok" if result.carried else "NOT carried"
        print(f" {time.monotonic() - started:5.1f} s  {status}", file=sys.stderr)
        return result

    def _run(self, result: RunResult, tag: str, seconds: float) -> None:
        a = self.args
        npz = self.out_dir / f"{tag}.npz"
        drain = 1.0 if result.bot == "echo" else 2.5
        loadgen = self.spawn(
            [sys.executable, "-m", "bridge.tools.bench.loadgen", "--calls", str(result.calls),
             "--bot", result.bot, "--seconds", str(seconds), "--warmup", str(a.warmup),
             "--drain", str(drain), "--rate", str(a.rate), "--password", PASSWORD,
             "--transport", a.transport, "--out", str(npz)],
            self.harness_cpu, f"{tag}.loadgen.log", stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        lines = Lines(loadgen)
        ports = lines.expect("ready", 60)
        argv, env = self.relay_argv(result.relay, ports)
        relay = self.spawn(argv, self.relay_cpu, f"{tag}.relay.log", env=env,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        lines.expect("app_active", 30)
        time.sleep(0.5)
        rss_idle = status_kib(relay.pid, "VmRSS")
        harness = [loadgen.pid, int(ports["rtpgen_pid"])]
        assert loadgen.stdin is not None
        loadgen.stdin.write(b"go\n")
        loadgen.stdin.flush()
        result.calls_up = int(lines.expect("calls_up", a.setup_timeout + result.calls / a.rate))
        lines.expect("mark", 30)
        cpu0, h0, w0 = cpu_seconds(relay.pid), sum(map(cpu_seconds, harness)), time.time()
        sys0 = cpu_split(relay.pid)[1]
        busy0 = self._core_busy()
        profiler = self._profile(relay.pid, tag, seconds)
        lines.expect("mark", seconds + 30)
        cpu1, h1, w1 = cpu_seconds(relay.pid), sum(map(cpu_seconds, harness)), time.time()
        sys1 = cpu_split(relay.pid)[1]
        busy1 = self._core_busy()
        done = lines.expect("done", 120)
        hwm = status_kib(relay.pid, "VmHWM")
        if relay.poll() is not None:
            result.warnings.append(f"relay exited with {relay.returncode} during the run")
        if profiler is not None:
            profiler.wait(seconds + 30)
        t0, t1 = done["window"]
        elapsed = t1 - t0
        result.seconds = elapsed
        if result.calls_up:
            result.cpu_per_call_s = (cpu1 - cpu0) / (result.calls_up * elapsed)
        result.cpu_share = (cpu1 - cpu0) / (w1 - w0)
        result.kernel_share = (sys1 - sys0) / (cpu1 - cpu0) if cpu1 > cpu0 else math.nan
        if result.cpu_share > SATURATED:
            result.warnings.append(
                f"relay saturated its core ({result.cpu_share:.0%}): CPU per call-second is "
                "a floor, latency and loss show what it could not do"
            )
        result.harness_cpu_share = (h1 - h0) / (w1 - w0)
        if busy0 is not None and busy1 is not None:
            # What else ran on the relay's core (other people's tests, say): it steals cycles.
            foreign = (busy1[0] - busy0[0] - (cpu1 - cpu0)) / (w1 - w0)
            result.extra["foreign_share_relay_core"] = foreign
            if foreign > FOREIGN_LIMIT:
                result.warnings.append(
                    f"other processes used {foreign:.0%} of the relay's core during the window"
                )
        result.rss_per_call_kib = (hwm - rss_idle) / result.calls
        with np.load(npz) as records:
            for key, value in media_metrics(records, t0, t1).items():
                if hasattr(result, key):
                    setattr(result, key, value)
                else:
                    result.extra[key] = value
        result.extra.update({"rss_idle_kib": rss_idle, "hwm_kib": hwm, "summary": done})
        self._self_check(result, done)

    def _core_busy(self) -> tuple[float, float] | None:
        if self.relay_cpu is None or self.harness_cpu is None:
            return None
        return cpu_busy_seconds(self.relay_cpu), cpu_busy_seconds(self.harness_cpu)

    def _profile(self, pid: int, tag: str, seconds: float) -> subprocess.Popen[bytes] | None:
        if not self.args.py_spy:
            return None
        out = self.out_dir / f"{tag}.pyspy.txt"
        beside = Path(sys.executable).parent / "py-spy"
        exe = str(beside) if beside.exists() else shutil.which("py-spy")
        if exe is None:
            print("warning: --py-spy: py-spy not installed (pip install py-spy)", file=sys.stderr)
            return None
        argv = [exe, "record", "-p", str(pid), "-d", str(max(int(seconds) - 1, 1)),
                "-r", "250", "--format", "raw", "-o", str(out), "--nonblocking"]  # fmt: skip
        return self.spawn(argv, self.harness_cpu, f"{tag}.pyspy.log", stdout=subprocess.DEVNULL)

    def _self_check(self, result: RunResult, done: dict[str, Any]) -> None:
        gen = done.get("rtpgen", {})
        warn = result.warnings.append
        if result.harness_cpu_share > HARNESS_BUSY:
            warn(f"harness used {result.harness_cpu_share:.0%} of its core: numbers suspect")
        if gen.get("late_p99_ms", 0.0) > LATE_LIMIT_MS or gen.get("resyncs", 0):
            warn(
                f"generator ticks late: p99 {gen.get('late_p99_ms', 0):.1f} ms, "
                f"max {gen.get('late_max_ms', 0):.1f} ms, {gen.get('resyncs', 0)} resyncs"
            )
        if gen.get("rx_overflow", 0):
            warn(f"generator sockets dropped {gen['rx_overflow']} packets (counted as loss)")
        if gen.get("send_errors", 0):
            warn(f"generator send errors: {gen['send_errors']}")
        if result.calls_up < result.calls:
            warn(f"only {result.calls_up} of {result.calls} calls came up")
        if not done.get("cleaned", True):
            warn(f"{done.get('leftovers')} channels/bridges left behind after hang-up")
        result.extra["rtpgen"] = gen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.bench", description=__doc__)
    parser.add_argument("--calls", default="50,200,500", help="comma-separated N")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady state per run")
    parser.add_argument("--bots", default="echo,bursty")
    parser.add_argument("--transport", choices=TRANSPORTS, default="rtp",
                        help="media between the fake Asterisk and the relay (naive: rtp only)")
    parser.add_argument("--http", action=argparse.BooleanOptionalAction, default=True,
                        help="the bridge's HTTP API and /metrics listener on (default) or off, "
                             "to show what it costs the media path")
    parser.add_argument("--relays", default="bridge,naive",
                        help="bridge, bridge+uvloop, naive; the first is the one under test")
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=True,
                        help="search the largest N the first relay carries")
    parser.add_argument("--search-step", type=int, default=200)
    parser.add_argument("--search-max", type=int, default=1400)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=100.0, help="calls placed per second")
    parser.add_argument("--setup-timeout", type=float, default=60.0)
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness of the relay and loadgen (needs root; 0: leave as is)")
    parser.add_argument("--quick", action="store_true", help="N=50, 5 s, no search (~30 s)")
    parser.add_argument("--out-dir", help="records and logs (default: a temporary directory)")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--py-spy", action="store_true",
                        help="profile the relay with py-spy during each window")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.seconds, args.search, args.warmup = "50", 5.0, False, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if bench.harness_cpu is not None:
        os.sched_setaffinity(0, {bench.harness_cpu})
    else:
        print("warning: one CPU only: relay and harness share it", file=sys.stderr)
    asked = args.relays.split(",")
    relays = [r for r in asked if args.transport == "rtp" or r not in RTP_ONLY]
    if not relays:
        print(f"bench: no relay here carries {args.transport}", file=sys.stderr)
        return 2
    ns = [int(n) for n in args.calls.split(",")]
    bots = args.bots.split(",")
    print(f"bench: transport {args.transport}, relays {relays}, N {ns}, bots {bots}, "
          f"{args.seconds:.0f} s each; relay on "
          f"CPU {bench.relay_cpu}, harness on CPU {bench.harness_cpu}; records in "
          f"{bench.out_dir}", file=sys.stderr)  # fmt: skip
    results: list[RunResult] = []
    try:
        for n in ns:
            for bot in bots:
                results += [bench.run(relay, n, bot, args.seconds) for relay in relays]
        if args.search:
            results += search(bench, relays, results)
    finally:
        bench.stop_all()
    absent = [r for r in asked if r not in relays]
    print(render(results, relays, absent=absent[0] if absent else None,
                 transport=args.transport))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1, default=str))
    return 0


def search(bench: Bench, relays: list[str], done: list[RunResult]) -> list[RunResult]:
    """Largest N the first relay carries with the echo bot, in steps of --search-step."""
    a, relay = bench.args, relays[0]
    tried = {r.calls: r for r in done if r.relay == relay and r.bot == "echo"}
    start = max(tried) if tried else 500
    step = a.search_step
    found: list[RunResult] = []
    if start in tried and tried[start].carried:
        n = start + step
        while n <= a.search_max:
            result = bench.run(relay, n, "echo", a.seconds)
            found.append(result)
            tried[n] = result
            if not result.carried or result.warnings:
                break
            n += step
    else:
        n = start - step // 2
        while n > 0:
            if n not in tried:
                tried[n] = bench.run(relay, n, "echo", a.seconds)
                found.append(tried[n])
            if tried[n].carried:
                break
            n -= step // 2
    carried = [n for n, r in tried.items() if r.carried]
    best = max(carried) if carried else None
    if best is not None and best not in {r.calls for r in done}:
        found += [bench.run(other, best, "echo", a.seconds) for other in relays[1:]]
    for r in found:
        r.extra["search"] = True
    bench.best = best  # type: ignore[attr-defined]
    return found


def render(results: list[RunResult], relays: list[str], *, absent: str | None = None,
           transport: str = "rtp") -> str:  # fmt: skip
    """`absent`: a relay asked for that cannot carry `transport` (its column: n/a)."""
    first, others = relays[0], relays[1:]
    pairs: list[tuple[RunResult, RunResult | None]] = []
    for r in results:
        if r.relay != first:
            continue
        match = [o for o in results if o.relay in others[:1] and o.calls == r.calls
                 and o.bot == r.bot]  # fmt: skip
        pairs.append((r, match[0] if match else None))
    carried = [r.calls for r in results if r.relay == first and r.carried and r.bot == "echo"]
    best = max(carried) if carried else None
    shown = best if best is not None else "none"
    largest = f"largest N {first} carried (echo bot, zero loss, gap p99 <= 22 ms): {shown}"
    text = [f"transport {transport}", table(pairs, absent=absent), "", largest, "",
            targets(results, relays, absent=absent)]
    return "\n".join(text)


def _find(results: list[RunResult], relay: str, n: int, bot: str) -> RunResult | None:
    match = [r for r in results if r.relay == relay and r.calls == n and r.bot == bot]
    return match[0] if match else None


def targets(results: list[RunResult], relays: list[str], absent: str | None = None) -> str:
    first = relays[0]
    naive = relays[1] if len(relays) > 1 else None
    lines = ["Targets"]

    def verdict(ok: bool | None) -> str:
        return "n/a " if ok is None else ("PASS" if ok else "FAIL")

    b200 = _find(results, first, 200, "echo")
    n200 = _find(results, naive, 200, "echo") if naive else None
    ok = None
    detail = "needs N=200 echo runs of both relays"
    if absent is not None:
        detail = f"{absent} relay is RTP-only: no comparison on this transport"
    if b200 and n200 and not math.isnan(b200.cpu_per_call_s) and n200.cpu_per_call_s > 0:
        ratio = b200.cpu_per_call_s / n200.cpu_per_call_s
        ok = ratio <= 0.25
        detail = f"{ratio:.2f} of the naive relay's (target <= 0.25)"
    lines.append(f"  {verdict(ok)}  CPU per call-second at N=200: {detail}")
    burst = _find(results, first, 200, "bursty")
    ok, detail = None, "needs an N=200 bursty run"
    if burst:
        ok = burst.gap_p99_ms <= 22.0 and burst.gaps_over_30ms == 0
        detail = f"gap p99 {burst.gap_p99_ms:.1f} ms, {burst.gaps_over_30ms} gaps > 30 ms"
    lines.append(f"  {verdict(ok)}  bursty bot pacing at N=200: {detail}")
    b500 = _find(results, first, 500, "echo")
    ok, detail = None, "needs an N=500 echo run"
    if b500:
        ok = b500.calls_up == 500 and b500.sent > 0 and b500.lost == 0
        detail = (f"{b500.calls_up}/500 up, {b500.lost} of {b500.sent} lost, "
                  f"{b500.cpu_share:.0%} of its core")  # fmt: skip
    lines.append(f"  {verdict(ok)}  N=500 on one core with zero loss: {detail}")
    mem = [r for r in results if r.relay == first and not math.isnan(r.rss_per_call_kib)]
    ok, detail = None, "no run"
    if mem:
        worst = max(mem, key=lambda r: r.rss_per_call_kib if r.calls >= 200 else 0)
        ok = worst.rss_per_call_kib < 1024
        detail = f"{worst.rss_per_call_kib:.0f} KiB per call at N={worst.calls}"
    lines.append(f"  {verdict(ok)}  memory under 1 MiB per call: {detail}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
