"""What a block of the bench's table says about dispatch and losses, from a made-up run."""

from __future__ import annotations

from bridge.tools.bench.report import RunResult, table, where_lines, workers_block

APPS = ["pipecat-bench-0", "pipecat-bench-1"]


def run_with_workers() -> RunResult:
    run = RunResult(relay="bridge", bot="echo", calls=200, workers=2, dispatch="broadcast",
                    seconds=20.0, relay_drops=0, harness_drops=0, rx_late=0, bot_dropped=0)
    run.extra.update({
        "workers": [
            {"app": APPS[0], "calls": 101, "share": 0.505, "cpu_per_call_s": 0.00484,
             "cpu_share": 0.49},
            {"app": APPS[1], "calls": 99, "share": 0.495, "cpu_per_call_s": 0.00491,
             "cpu_share": 0.49},
        ],
        "split_deviation": 0.01,
        "dispatch": {
            "apps": {APPS[0]: {"won": 101, "lost_409": 99, "lost_404": 0},
                     APPS[1]: {"won": 99, "lost_409": 101, "lost_404": 0}},
            "latency_ms": {"p50": 2.0, "p99": 4.5, "max": 6.0},
            "policy_wait_ms": {"p50": 0.0, "p99": 0.0},
            "added_ms": {"p50": 2.0, "p99": 4.5},
            "lost_claims": 200, "unclaimed": 0, "offered": 200,
        },
        "summary": {"setup_loop_lag_ms": {"p99": 3.0}},
        "losses": {"host_RcvbufErrors": 0, "host_BacklogDrops": 0, "rx_lost": 0,
                   "tx_overflow_bytes": 320, "skipped_frames": 3, "tx_silence": 1,
                   "queued_frames": 7, "relay_drops": 0, "harness_drops": 0, "rx_late": 0,
                   "bot_dropped": 0},
    })  # fmt: skip
    run.lost = 9
    return run


def test_workers_block() -> None:
    text = "\n".join(workers_block(run_with_workers()))
    assert "pipecat-bench-0   pipecat-bench-1" in text
    assert "50.5%" in text and "49.5%" in text
    assert "99 / 0" in text and "101 / 0" in text
    assert "4.84" in text and "4.91" in text
    assert "1.0% off an even one" in text
    assert "p50 2.0 ms, p99 4.5 ms, max 6.0 ms" in text
    assert "harness loop lag p99 3.0 ms" in text
    assert "lost claims 200 (409 or 404), unclaimed calls 0 of 200" in text


def test_no_block_in_the_plain_mode() -> None:
    assert workers_block(RunResult(relay="bridge", bot="echo", calls=50)) == []


def test_where_the_lost_packets_went() -> None:
    (line,) = where_lines(run_with_workers())
    assert "playout overflow 320 B" in line and "still queued at the hang-up 7 frames" in line
    assert "lost and in no counter 0" in line  # 9 lost = 2 overflowed frames + 7 queued


def test_counted_rows_say_dash_when_not_measured() -> None:
    bridge = run_with_workers()
    naive = RunResult(relay="naive", bot="echo", calls=200, relay_drops=81356, harness_drops=0)
    text = table([(bridge, naive)])
    row = next(line for line in text.splitlines() if line.startswith("reorder gave up"))
    assert row.split()[-2:] == ["0", "-"]
    row = next(line for line in text.splitlines() if line.startswith("relay sockets dropped"))
    assert row.split()[-2:] == ["0", "81356"]
