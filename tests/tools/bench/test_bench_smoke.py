"""The bench harness end to end at N=3 for 2 s, both relays: every number it prints exists
and is plausible. Not a performance assertion (that is `make bench`); ~11 s, so it stays in
the default suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(90)


def assert_sane(run: dict[str, Any]) -> None:
    name = run["relay"]
    assert run["calls_up"] == 3, (name, run["warnings"])
    assert run["sent"] >= 3 * 50, name  # 2 s of 20 ms packets on each of 3 calls, give or take
    assert run["lost"] == 0, name
    assert 0 < run["cpu_per_call_s"] < 0.5, name
    assert 0 < run["rtt_p50_ms"] <= run["rtt_p99_ms"] < 1000, name
    assert 0 <= run["gap_p50_ms"] <= run["gap_p99_ms"] <= run["gap_max_ms"] < 1000, name
    assert run["gaps_over_30ms"] >= 0, name
    assert 0 <= run["rss_per_call_kib"] < 64 * 1024, name
    assert run["extra"]["summary"]["leftovers"] == 0, name
    assert run["extra"]["rtpgen"]["ticks"] > 0, name


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.tools.bench", "--calls", "3", "--seconds", "2",
         "--warmup", "0.5", "--bots", "echo", "--relays", "bridge,naive", "--no-search",
         "--out-dir", str(tmp_path / "records"), "--json", str(out)],
        capture_output=True, text=True, timeout=80, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(out.read_text())
    assert [r["relay"] for r in runs] == ["bridge", "naive"]
    for run in runs:
        assert_sane(run)
    # The bridge paces: its median gap is the 20 ms clock, whatever the bot does.
    assert 18.0 <= runs[0]["gap_p50_ms"] <= 22.0
    assert "CPU s per call-second" in proc.stdout and "Targets" in proc.stdout


@pytest.mark.parametrize("transport", ["audiosocket", "websocket"])
def test_bench_smoke_other_transports(tmp_path: Path, transport: str) -> None:
    """The generator plays Asterisk's end of AudioSocket / chan_websocket; the naive relay is
    RTP-only, so it is left out and its column says n/a (~6 s each)."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.tools.bench", "--transport", transport, "--calls", "3",
         "--seconds", "2", "--warmup", "0.5", "--bots", "echo", "--relays", "bridge,naive",
         "--no-search", "--out-dir", str(tmp_path / "records"), "--json", str(out)],
        capture_output=True, text=True, timeout=80, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(out.read_text())
    assert [(r["relay"], r["transport"]) for r in runs] == [("bridge", transport)]
    assert_sane(runs[0])
    assert 18.0 <= runs[0]["gap_p50_ms"] <= 22.0
    assert runs[0]["extra"]["rtpgen"]["send_errors"] == 0
    assert f"transport {transport}" in proc.stdout and "n/a" in proc.stdout


@pytest.mark.slow
def test_bench_smoke_workers_broadcast(tmp_path: Path) -> None:
    """--workers 2 --dispatch broadcast end to end at N=3 (~10 s, in `-m slow` only): both
    workers' apps are offered every call, every call is claimed, the naive relay is left out."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.tools.bench", "--workers", "2", "--dispatch",
         "broadcast", "--calls", "3", "--seconds", "2", "--warmup", "0.5", "--bots", "echo",
         "--no-search", "--out-dir", str(tmp_path / "records"), "--json", str(out)],
        capture_output=True, text=True, timeout=80, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (run,) = json.loads(out.read_text())
    assert (run["relay"], run["workers"], run["dispatch"]) == ("bridge", 2, "broadcast")
    assert_sane(run)
    dispatch = run["extra"]["dispatch"]
    assert dispatch["offered"] == 3 and dispatch["unclaimed"] == 0
    assert sum(dispatch["calls_by_app"].values()) == 3
    assert sorted(dispatch["calls_by_app"]) == ["pipecat-bench-0", "pipecat-bench-1"]
    assert [w["app"] for w in run["extra"]["workers"]] == ["pipecat-bench-0", "pipecat-bench-1"]
    assert run["relay_drops"] == 0 and run["rx_late"] == 0 and run["bot_dropped"] == 0
    assert "claim latency" in proc.stdout and "per worker" in proc.stdout
