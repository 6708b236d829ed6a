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

`--workers N --dispatch broadcast`: the bridge runs as a --workers supervisor (apps
`pipecat-bench-<slot>`, all on the relay's CPUs) and the generator offers every call with
StasisBroadcast; each block then says each worker's share of the calls, CPU and lost claims,
and the claim latency. `--dispatch stasis` with workers: each call to a random worker's app.
The naive relay is one process with one app: it runs in the plain mode only.

Every block also says where packets went (`losses`): kernel drops on the relay's and on the
generator's UDP sockets, the bridge's rx_late and bot_dropped. `--hog K` runs K busy loops
(one per CPU, round robin, at --hog-nice) during each run, to see the same under CPU
contention; `--stall MS/EVERY_S` stops the relay's processes (SIGSTOP) for MS ms about every
EVERY_S s during the window, which is what CPU steal does to a VM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from bridge.tools.bench import losses
from bridge.tools.bench.dispatch import shares, split_deviation
from bridge.tools.bench.procs import (
    Staller,
    child_preexec,
    cmdline,
    cpu_busy_seconds,
    cpu_seconds,
    cpu_split,
    cpu_steal_seconds,
    descendants,
    parse_stall,
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
STEAL_LIMIT = 0.01  # of a core: /proc/stat's steal on the relay's and the harness's CPUs
LATE_LIMIT_MS = 5.0  # generator tick lateness p99 above this: our input jitter is not 20 ms
TRANSPORTS = ("rtp", "audiosocket", "websocket")
RTP_ONLY = ("naive",)  # relays that cannot carry the other transports
DISPATCHES = ("stasis", "broadcast")
INSTANCE_ID = "bench"  # --workers: apps pipecat-bench-0, pipecat-bench-1, ...
HOG = "while True: pass"
SPLIT_LIMIT = 0.20  # of an even share: 2 workers each within 40-60 % of the calls
CLAIM_LIMIT_MS = 5.0


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
        self.cpus = cpus
        self.relay_cpu: int | None = cpus[0] if len(cpus) > 1 else None
        self.harness_cpu: int | None = cpus[1] if len(cpus) > 1 else None
        # --workers: the supervisor and its workers get every CPU but the harness's (on this
        # 2-core VM the same one CPU as the plain mode's relay).
        self.relay_cpus: set[int] | None = None
        if self.harness_cpu is not None:
            self.relay_cpus = {c for c in cpus if c != self.harness_cpu}
        if args.relay_cpus:  # e.g. every CPU, the harness's too: one worker per core
            self.relay_cpus = {int(c) for c in args.relay_cpus.split(",")}
        self.out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bridge-bench-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # ---- processes ------------------------------------------------------------------------

    def spawn(
        self, argv: list[str], cpu: int | set[int] | None, log: str, nice: int | None = None,
        **kw: Any,
    ) -> subprocess.Popen[bytes]:
        preexec = child_preexec(cpu, nice=self.args.nice if nice is None else nice)
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

    @property
    def plain(self) -> bool:
        """One bridge process, Stasis(): the mode the naive relay can be compared in."""
        return self.args.workers == 1 and self.args.dispatch == "stasis"

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
            "BRIDGE_HTTP_LISTEN": f"127.0.0.1:{ports['http_port']}" if self.args.http else "",
        })  # fmt: skip
        if self.args.workers > 1:
            env.update({"BRIDGE_WORKERS": str(self.args.workers),
                        "BRIDGE_INSTANCE_ID": INSTANCE_ID})  # fmt: skip
        if self.args.claim_max_delay_ms is not None:
            env["BRIDGE_CLAIM_MAX_DELAY_MS"] = str(self.args.claim_max_delay_ms)
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
                           transport=self.args.transport, dispatch=self.args.dispatch,
                           workers=self.args.workers if relay != "naive" else 1)
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
        if a.drain is not None:
            drain = a.drain
        self._start_hogs(tag)
        workers = a.workers if result.relay != "naive" else 1
        loadgen = self.spawn(
            [sys.executable, "-m", "bridge.tools.bench.loadgen", "--calls", str(result.calls),
             "--bot", result.bot, "--seconds", str(seconds), "--warmup", str(a.warmup),
             "--drain", str(drain), "--rate", str(a.rate), "--password", PASSWORD,
             "--transport", a.transport, "--out", str(npz), "--dispatch", a.dispatch,
             "--apps", str(workers),
             "--claim-max-delay-ms", str(150 if a.claim_max_delay_ms is None
                                         else a.claim_max_delay_ms)],
            self.harness_cpu, f"{tag}.loadgen.log", stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        lines = Lines(loadgen)
        ports = dict(lines.expect("ready", 60))
        ports["http_port"] = free_port_block(workers)
        argv, env = self.relay_argv(result.relay, ports)
        relay_cpu = self.relay_cpus if workers > 1 else self.relay_cpu
        relay = self.spawn(argv, relay_cpu, f"{tag}.relay.log", env=env,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        lines.expect("app_active", 30)
        time.sleep(0.5)
        tree = [relay.pid, *descendants(relay.pid)]
        apps = worker_apps(tree) if workers > 1 else {}
        http_ports = [ports["http_port"] + slot for slot in range(workers)]
        if result.relay == "naive" or not a.http:
            http_ports = []
        rss_idle = sum(status_kib(pid, "VmRSS") for pid in tree)
        harness = [loadgen.pid, int(ports["rtpgen_pid"])]
        assert loadgen.stdin is not None
        loadgen.stdin.write(b"go\n")
        loadgen.stdin.flush()
        result.calls_up = int(lines.expect("calls_up", a.setup_timeout + result.calls / a.rate))
        lines.expect("mark", 30)
        per0 = {pid: cpu_seconds(pid) for pid in tree}
        cpu0, h0, w0 = sum(per0.values()), sum(map(cpu_seconds, harness)), time.time()
        sys0 = sum(cpu_split(pid)[1] for pid in tree)
        busy0 = self._core_busy()
        loss0 = losses.take_sample(tree, harness, http_ports)
        profiler = self._profile(relay.pid, tag, seconds)
        staller = Staller(tree, *a.stall) if a.stall else None
        if staller is not None:
            staller.start()
        try:
            lines.expect("mark", seconds + 30)
        finally:
            if staller is not None:
                result.extra["stalls"] = staller.stop()
        per1 = {pid: cpu_seconds(pid) for pid in tree}
        cpu1, h1, w1 = sum(per1.values()), sum(map(cpu_seconds, harness)), time.time()
        sys1 = sum(cpu_split(pid)[1] for pid in tree)
        busy1 = self._core_busy()
        lines.expect("mark", 30)  # drained: every call still up, the sockets still open
        result.extra["losses"] = losses.between(loss0, losses.take_sample(tree, harness,
                                                                          http_ports))
        loadgen.stdin.write(b"hangup\n")
        loadgen.stdin.flush()
        done = lines.expect("done", 120)
        hwm = sum(status_kib(pid, "VmHWM") for pid in tree)
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
        if result.cpu_share > SATURATED * (len(self.relay_cpus or ()) if workers > 1 else 1):
            result.warnings.append(
                f"relay saturated its core ({result.cpu_share:.0%}): CPU per call-second is "
                "a floor, latency and loss show what it could not do"
            )
        result.harness_cpu_share = (h1 - h0) / (w1 - w0)
        if busy0 is not None and busy1 is not None:
            # What else ran on the relay's core (other people's tests, say): it steals cycles.
            foreign = (busy1[0] - busy0[0] - (cpu1 - cpu0)) / (w1 - w0)
            if workers > 1 and self.harness_cpu in (self.relay_cpus or ()):
                foreign -= result.harness_cpu_share  # --relay-cpus with the harness's CPU
            result.extra["foreign_share_relay_core"] = foreign
            result.extra["steal_share"] = (busy1[2] - busy0[2]) / (w1 - w0)
            if foreign > FOREIGN_LIMIT:
                result.warnings.append(
                    f"other processes used {foreign:.0%} of the relay's core during the window"
                )
            if result.extra["steal_share"] > STEAL_LIMIT:
                result.warnings.append(
                    f"the hypervisor stole {result.extra['steal_share']:.1%} of a core from the "
                    "relay's and the harness's CPUs during the window"
                )
        result.rss_per_call_kib = (hwm - rss_idle) / result.calls
        with np.load(npz) as records:
            for key, value in media_metrics(records, t0, t1).items():
                if hasattr(result, key):
                    setattr(result, key, value)
                else:
                    result.extra[key] = value
        result.extra.update({"rss_idle_kib": rss_idle, "hwm_kib": hwm, "summary": done})
        cpu_of = {pid: per1[pid] - per0[pid] for pid in tree}
        self._account(result, done, apps, cpu_of, w1 - w0)
        if workers > 1:
            result.extra["supervisor_cpu_s"] = cpu_of[relay.pid]
        self._self_check(result, done)

    def _account(self, result: RunResult, done: dict[str, Any], apps: dict[str, int],
                 cpu_of: dict[int, float], wall: float) -> None:  # fmt: skip
        """Where the packets went; per worker: calls, share, CPU."""
        found = result.extra["losses"]
        for key in ("relay_drops", "harness_drops", "rx_late", "bot_dropped"):
            setattr(result, key, found.get(key, -1))
        dispatch = done.get("dispatch", {})
        result.extra["dispatch"] = {k: v for k, v in dispatch.items() if k != "latencies_ms"}
        result.extra["claim_latencies_ms"] = dispatch.get("latencies_ms", [])
        calls_by_app: dict[str, int] = dispatch.get("calls_by_app", {})
        if result.workers > 1 or result.dispatch != "stasis":
            result.extra["split_deviation"] = split_deviation(calls_by_app)
            share = shares(calls_by_app)
            rows = []
            for app in sorted(calls_by_app):
                pid = apps.get(app)
                cpu = cpu_of.get(pid, math.nan) if pid is not None else math.nan
                if len(calls_by_app) == 1 and pid is None:  # one process: the relay itself
                    cpu = sum(cpu_of.values())
                n = calls_by_app[app]
                rows.append({"app": app, "pid": pid, "calls": n, "share": share[app],
                             "cpu_s": cpu, "cpu_share": cpu / wall,
                             "cpu_per_call_s": cpu / (n * result.seconds) if n else math.nan})
            result.extra["workers"] = rows

    def _start_hogs(self, tag: str) -> None:
        """--hog K: K busy loops, one per CPU round robin, at --hog-nice: contention for the
        relay's and the harness's cores (the generator, SCHED_FIFO, stays on time)."""
        for i in range(self.args.hog):
            cpu = self.cpus[i % len(self.cpus)]
            self.spawn([sys.executable, "-c", HOG], cpu, f"{tag}.hog.log", nice=self.args.hog_nice,
                       stdout=subprocess.DEVNULL)  # fmt: skip

    def _core_busy(self) -> tuple[float, float, float] | None:
        """CPU time of the relay's core(s) and the harness's, all uses; and the steal of
        both (already in the first two: the hypervisor ran someone else's VM)."""
        if self.relay_cpu is None or self.harness_cpu is None:
            return None
        # --workers: every CPU the supervisor's workers may run on.
        cpus = self.relay_cpus if self.args.workers > 1 and self.relay_cpus else {self.relay_cpu}
        return (sum(map(cpu_busy_seconds, cpus)), cpu_busy_seconds(self.harness_cpu),
                sum(map(cpu_steal_seconds, [*cpus, self.harness_cpu])))

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
        if self.args.workers > 1:
            argv.append("--subprocesses")  # the supervisor itself does nothing per packet
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


def free_port_block(count: int) -> int:
    """A port P such that P .. P+count-1 are free on 127.0.0.1 now: the bridge's HTTP
    listener (a --workers worker's: P + its slot), so the bench can read its /metrics."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise HarnessError(f"no {count} free ports in a row on 127.0.0.1")


def worker_apps(pids: list[int]) -> dict[str, int]:
    """app -> pid of a --workers supervisor's workers (each has its own `--app` flag)."""
    found: dict[str, int] = {}
    for pid in pids:
        argv = cmdline(pid)
        if "--app" in argv:
            at = len(argv) - 1 - argv[::-1].index("--app")  # the last one wins, as argparse
            if at + 1 < len(argv):
                found[argv[at + 1]] = pid
    return found


def _stall(text: str) -> tuple[float, float]:
    try:
        return parse_stall(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    parser.add_argument("--drain", type=float, default=None,
                        help="seconds between the window's end and the hang-up, for the last "
                             "echoes to come back (default 1, bursty bot 2.5)")
    parser.add_argument("--setup-timeout", type=float, default=60.0)
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness of the relay and loadgen (needs root; 0: leave as is)")
    parser.add_argument("--quick", action="store_true", help="N=50, 5 s, no search (~30 s)")
    parser.add_argument("--out-dir", help="records and logs (default: a temporary directory)")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--py-spy", action="store_true",
                        help="profile the relay with py-spy during each window")
    parser.add_argument("--workers", type=int, default=1,
                        help="run the bridge as a --workers N supervisor (N > 1)")
    parser.add_argument("--relay-cpus", default="",
                        help="--workers: the CPUs the supervisor and its workers may use, e.g. "
                             "0,1 (default: all but the harness's)")
    parser.add_argument("--dispatch", choices=DISPATCHES, default="stasis",
                        help="Stasis(app), or StasisBroadcast(500,^pipecat) with claims")
    parser.add_argument("--claim-max-delay-ms", type=int, default=None,
                        help="the bridge's --claim-max-delay-ms (default: its own, 150)")
    parser.add_argument("--hog", type=int, default=0,
                        help="busy-loop processes during each run, one per CPU round robin")
    parser.add_argument("--hog-nice", type=int, default=0, help="niceness of the --hog loops")
    parser.add_argument("--stall", type=_stall, default=None, metavar="MS/EVERY_S",
                        help="SIGSTOP the relay for MS ms about every EVERY_S s during the "
                             "window, as CPU steal pauses a VM (e.g. 100/1)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
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
    if not bench.plain:  # one process, one app: the naive relay has no workers, no claims
        relays = [r for r in relays if r not in RTP_ONLY]
    if not relays:
        print(f"bench: no relay here carries {args.transport} with --workers {args.workers} "
              f"--dispatch {args.dispatch}", file=sys.stderr)  # fmt: skip
        return 2
    ns = [int(n) for n in args.calls.split(",")]
    bots = args.bots.split(",")
    relay_cpus = bench.relay_cpu if args.workers == 1 else sorted(bench.relay_cpus or ())
    mode = "" if bench.plain else f", --workers {args.workers}, dispatch {args.dispatch}"
    print(f"bench: transport {args.transport}, relays {relays}, N {ns}, bots {bots}, "
          f"{args.seconds:.0f} s each{mode}; relay on "
          f"CPU {relay_cpus}, harness on CPU {bench.harness_cpu}; records in "
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
    why = None
    if absent:
        why = (f"{absent[0]} relay is RTP-only: no comparison on this transport"
               if args.transport != "rtp" else
               f"{absent[0]} relay is one process with one app: compared in the plain mode only")
    print(render(results, relays, absent=absent[0] if absent else None,
                 transport=args.transport, absent_why=why))
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
           transport: str = "rtp", absent_why: str | None = None) -> str:  # fmt: skip
    """`absent`: a relay asked for that cannot carry `transport` or this mode (its column:
    n/a); `absent_why` says which."""
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
            targets(results, relays, absent=absent, absent_why=absent_why)]
    return "\n".join(text)


def _find(results: list[RunResult], relay: str, n: int, bot: str) -> RunResult | None:
    match = [r for r in results if r.relay == relay and r.calls == n and r.bot == bot]
    return match[0] if match else None


def targets(results: list[RunResult], relays: list[str], absent: str | None = None,
            absent_why: str | None = None) -> str:  # fmt: skip
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
        detail = absent_why or f"{absent} relay is RTP-only: no comparison on this transport"
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
    lines += dispatch_targets(results, first, verdict)
    return "\n".join(lines)


def dispatch_targets(results: list[RunResult], first: str, verdict: Any) -> list[str]:
    """--workers N at N=200: the calls split within 20 % of even; claiming under 5 ms p99."""
    runs = [r for r in results if r.relay == first and r.calls == 200 and r.bot == "echo"
            and (r.workers > 1 or r.dispatch != "stasis")]  # fmt: skip
    if not runs:
        return []
    run = runs[0]
    lines = []
    deviation = run.extra.get("split_deviation", math.nan)
    if run.workers > 1:
        ok = None if math.isnan(deviation) else deviation <= SPLIT_LIMIT
        lines.append(f"  {verdict(ok)}  {run.workers} workers split N=200 within "
                     f"±{SPLIT_LIMIT:.0%}: the largest share is {deviation:.1%} off even")
    dispatch = run.extra.get("dispatch", {})
    if run.dispatch == "broadcast" and "latency_ms" in dispatch:
        raw, added = dispatch["latency_ms"]["p99"], dispatch["added_ms"]["p99"]
        wait = dispatch["policy_wait_ms"]["p99"]
        lines.append(f"  {verdict(raw < CLAIM_LIMIT_MS)}  claim latency under "
                     f"{CLAIM_LIMIT_MS:.0f} ms p99 at N=200: {raw:.1f} ms")
        lines.append(f"  {verdict(added < CLAIM_LIMIT_MS)}  ... less the claim policy's own "
                     f"wait (p99 {wait:.1f} ms): {added:.1f} ms p99")
    return lines


if __name__ == "__main__":
    sys.exit(main())
