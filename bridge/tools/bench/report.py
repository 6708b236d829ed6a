"""Metrics of one run from rtpgen's records and the orchestrator's /proc samples; the table.

Definitions (all over the steady-state window [t0, t1], after every call was set up):
- CPU per call-second: relay utime+stime in the window / (calls up x window seconds).
- RTT: arrival of a tagged payload back at its socket minus its send time (both epoch, the
  arrival from the kernel), for payloads sent in the window.
- Loss: payloads sent in the window that never came back, over those sent.
- Gaps: per call, intervals between consecutive packets the relay sent back (its silence
  included: that is pacing too), from the call's first echoed payload on, arrivals in the
  window. The p50/p99/max pool every call's gaps.
- Peak RSS per call: (VmHWM at the end - VmRSS idle before the first call) / N (with
  --workers, summed over the supervisor and its workers).
- Where packets went (`losses`), from the window's start to the end of the drain after it,
  while every call is up: datagrams the kernel dropped on the relay's own UDP sockets and on
  the generator's, the bridge's `rx_late` (caller packets its reorder window had given up on)
  and `bot_dropped` (messages its bot send queue had no room for); `-` where not available
  (the naive relay has no /metrics; --no-http).
- Dispatch (--workers, --dispatch broadcast; `dispatch`): each worker's share of the calls,
  claims lost (409, 404), the claim latency from the CallBroadcast out to the winning claim in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.tools.bench.losses import unexplained

GAP_LIMIT_S = 0.030


@dataclass(slots=True)
class RunResult:
    relay: str
    bot: str
    calls: int
    transport: str = "rtp"
    calls_up: int = 0
    seconds: float = 0.0
    cpu_per_call_s: float = math.nan
    cpu_share: float = math.nan  # of one core, in the window
    kernel_share: float = math.nan  # of the relay's CPU time: stime / (utime + stime)
    rtt_p50_ms: float = math.nan
    rtt_p99_ms: float = math.nan
    gap_p50_ms: float = math.nan
    gap_p99_ms: float = math.nan
    gap_max_ms: float = math.nan
    gaps_over_30ms: int = -1
    sent: int = 0
    lost: int = 0
    rss_per_call_kib: float = math.nan
    harness_cpu_share: float = math.nan
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    dispatch: str = "stasis"
    relay_drops: int = -1  # -1: not measured
    harness_drops: int = -1
    rx_late: int = -1
    bot_dropped: int = -1

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else math.nan

    @property
    def carried(self) -> bool:
        """Zero loss and gap p99 <= 22 ms with every call up: what "carries N" means here."""
        return (
            self.calls_up == self.calls
            and self.sent > 0
            and self.lost == 0
            and self.gap_p99_ms <= 22.0
        )


def media_metrics(records: Any, t0: float, t1: float) -> dict[str, Any]:
    """RTT, loss and gaps from an rtpgen .npz (or any mapping of its columns)."""
    tx_sock = records["tx_sock"].astype(np.int64)
    tx_counter = records["tx_counter"].astype(np.int64)
    tx_time = records["tx_time"]
    rx_sock = records["rx_sock"].astype(np.int64)
    rx_time = records["rx_time"]
    rx_counter = records["rx_counter"]
    rx_sent = records["rx_sent"]

    in_window = (tx_time >= t0) & (tx_time <= t1)
    sent_keys = (tx_sock[in_window] << 32) | tx_counter[in_window]
    tagged = rx_counter >= 0
    back_keys = np.unique((rx_sock[tagged] << 32) | rx_counter[tagged])
    returned = np.isin(sent_keys, back_keys)
    out: dict[str, Any] = {"sent": int(in_window.sum()), "lost": int((~returned).sum())}

    rtt = (rx_time - rx_sent)[tagged & (rx_sent >= t0) & (rx_sent <= t1)]
    out["rtt_p50_ms"], out["rtt_p99_ms"] = _percentiles(rtt * 1e3, 50, 99)
    out["duplicates"] = int(tagged.sum() - len(back_keys))

    # Gaps: from each call's first echoed payload on; silence counts as a sent packet.
    first_echo = np.full(int(rx_sock.max(initial=0)) + 1, np.inf)
    np.minimum.at(first_echo, rx_sock[tagged], rx_time[tagged])
    keep = (rx_time >= t0) & (rx_time <= t1) & (rx_time >= first_echo[rx_sock])
    socks, times = rx_sock[keep], rx_time[keep]
    order = np.lexsort((times, socks))
    socks, times = socks[order], times[order]
    same_call = socks[1:] == socks[:-1]
    gaps = np.diff(times)[same_call] * 1e3
    out["gap_p50_ms"], out["gap_p99_ms"] = _percentiles(gaps, 50, 99)
    out["gap_max_ms"] = float(gaps.max()) if len(gaps) else math.nan
    out["gaps_over_30ms"] = int((gaps > GAP_LIMIT_S * 1e3).sum())
    out["silence_share"] = float((~tagged[keep]).mean()) if keep.any() else math.nan
    return out


def _percentiles(values: Any, *qs: float) -> tuple[float, ...]:
    if len(values) == 0:
        return tuple(math.nan for _ in qs)
    return tuple(float(v) for v in np.percentile(values, qs))


# ---- the table ---------------------------------------------------------------------------

ROWS: tuple[tuple[str, str, str], ...] = (
    # label, attribute, format
    ("calls up", "calls_up", "d"),
    ("CPU s per call-second", "cpu_per_call_s", ".5f"),
    ("CPU share of its core", "cpu_share", ".0%"),
    ("  of which in kernel", "kernel_share", ".0%"),
    ("RTT p50 ms", "rtt_p50_ms", ".1f"),
    ("RTT p99 ms", "rtt_p99_ms", ".1f"),
    ("out gap p50 ms", "gap_p50_ms", ".1f"),
    ("out gap p99 ms", "gap_p99_ms", ".1f"),
    ("out gap max ms", "gap_max_ms", ".1f"),
    ("gaps > 30 ms", "gaps_over_30ms", "d"),
    ("loss", "loss", ".3%"),
    ("peak RSS per call KiB", "rss_per_call_kib", ".0f"),
    ("relay sockets dropped", "relay_drops", "d"),
    ("harness sockets dropped", "harness_drops", "d"),
    ("reorder gave up (rx_late)", "rx_late", "d"),
    ("bot messages dropped", "bot_dropped", "d"),
)
COUNTED_ROWS = {"relay_drops", "harness_drops", "rx_late", "bot_dropped"}  # -1: n/a
RATIO_ROWS = {"cpu_per_call_s", "rtt_p50_ms", "rtt_p99_ms", "gap_p99_ms", "gap_max_ms",
              "rss_per_call_kib"}  # fmt: skip


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt == "d" and value < 0:
        return "-"
    if fmt == "d":
        return str(int(value))
    return format(value, fmt)


def _ratio(a: Any, b: Any) -> str:
    try:
        if b == 0 or math.isnan(a) or math.isnan(b):
            return "-"
        return f"{a / b:.2f}"
    except TypeError:
        return "-"


def table(pairs: list[tuple[RunResult, RunResult | None]], absent: str | None = None) -> str:
    """One block per (N, bot): rows of metrics, columns bridge | naive | bridge/naive.
    `absent`: the name of a relay that cannot run this transport; its cells say n/a."""
    lines: list[str] = []
    for bridge, naive in pairs:
        title = f"N={bridge.calls}  {bridge.bot} bot  ({bridge.seconds:.0f} s steady state)"
        if bridge.transport != "rtp":
            title += f"  transport {bridge.transport}"
        if bridge.workers > 1 or bridge.dispatch != "stasis":
            title += f"  --workers {bridge.workers}  dispatch {bridge.dispatch}"
        other = naive.relay if naive is not None else (absent or "-")
        lines += ["", title, f"{'':26}{bridge.relay:>14}{other:>14}{'ratio':>10}"]
        for label, attr, fmt in ROWS:
            a = getattr(bridge, attr)
            b = getattr(naive, attr) if naive is not None else None
            ratio = _ratio(a, b) if attr in RATIO_ROWS and b is not None else ""
            cell_b = "n/a" if naive is None and absent else _cell(b, fmt)
            lines.append(f"{label:26}{_cell(a, fmt):>14}{cell_b:>14}{ratio:>10}")
        lines += where_lines(bridge)
        lines += workers_block(bridge)
        for run in (bridge, naive):
            if run is not None:
                lines += [f"  ! {run.relay}: {w}" for w in run.warnings]
    return "\n".join(lines)


def where_lines(run: RunResult) -> list[str]:
    """The rest of the loss accounting, one line: the host's UDP errors, the bridge's own."""
    losses = run.extra.get("losses")
    if not losses:
        return []
    parts = [f"host RcvbufErrors +{losses.get('host_RcvbufErrors', -1)}",
             f"backlog drops +{losses.get('host_BacklogDrops', -1)}"]
    if losses.get("rx_lost", -1) >= 0:
        parts += [f"bridge rx_lost {losses['rx_lost']}",
                  f"playout overflow {losses['tx_overflow_bytes']} B",
                  f"clock skipped {losses['skipped_frames']} frame times",
                  f"silence sent {losses['tx_silence']}",
                  f"still queued at the hang-up {losses['queued_frames']} frames"]  # fmt: skip
        left = unexplained(run.lost, losses)
        if run.lost and left is not None:
            parts.append(f"lost and in no counter {max(0, left)}")
    if "stalls" in run.extra:
        parts.insert(0, f"{run.extra['stalls']} stalls (--stall)")
    return [f"  window + drain, {run.relay}: " + ", ".join(parts)]


def workers_block(run: RunResult) -> list[str]:
    """Per worker: calls, share, claims lost, CPU; then the claim latency."""
    workers: list[dict[str, Any]] = run.extra.get("workers") or []
    dispatch: dict[str, Any] = run.extra.get("dispatch") or {}
    if run.workers <= 1 and run.dispatch == "stasis":
        return []
    apps = dispatch.get("apps", {})
    lines = ["", f"{'per worker':26}" + "".join(f"{w['app']:>18}" for w in workers)]
    rows: list[tuple[str, Any]] = [
        ("calls", lambda w: str(w["calls"])),
        ("share of the calls", lambda w: _cell(w["share"], ".1%")),
        ("claims lost 409 / 404", lambda w: "{lost_409} / {lost_404}".format(
            **apps.get(w["app"], {"lost_409": "-", "lost_404": "-"}))),
        ("CPU ms per call-second", lambda w: _cell(w["cpu_per_call_s"] * 1e3, ".2f")),
        ("CPU share of a core", lambda w: _cell(w["cpu_share"], ".0%")),
    ]  # fmt: skip
    for label, cell in rows:
        lines.append(f"{label:26}" + "".join(f"{cell(w):>18}" for w in workers))
    deviation = run.extra.get("split_deviation", math.nan)
    lines.append(f"  split: the largest share is {_cell(deviation, '.1%')} off an even one")
    if run.dispatch == "broadcast" and dispatch:
        lat, wait, added = (dispatch[k] for k in ("latency_ms", "policy_wait_ms", "added_ms"))
        lag = run.extra.get("summary", {}).get("setup_loop_lag_ms", {})
        lines += [
            f"  claim latency (CallBroadcast out -> winning claim in): p50 {lat['p50']:.1f} ms, "
            f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms",
            f"    of which the claim policy's wait on purpose: p50 {wait['p50']:.1f} ms, "
            f"p99 {wait['p99']:.1f} ms; the rest p50 {added['p50']:.1f} ms, "
            f"p99 {added['p99']:.1f} ms (harness loop lag p99 {lag.get('p99', math.nan):.1f} ms)",
            f"  lost claims {dispatch['lost_claims']} (409 or 404), unclaimed calls "
            f"{dispatch['unclaimed']} of {dispatch['offered']}",
        ]  # fmt: skip
    return lines
