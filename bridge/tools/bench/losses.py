"""Where a caller's packet can vanish on its way round, counted at the edges of a run's window.

    rtpgen --UDP--> [kernel: relay socket full?] relay [reorder window: too late?]
        --bot WebSocket--> [relay's send queue to the bot full?] echo bot --> relay
        [playout queue full?] --UDP--> [kernel: harness socket full?] rtpgen

Each bracket has its counter: the kernel's per-socket `drops` column of /proc/net/udp (the
relay's sockets and the harness's apart, told by the socket inodes under /proc/<pid>/fd),
the host's `Udp: RcvbufErrors` in /proc/net/snmp (every socket of the host, ours or not), the
per-CPU input backlog's drops in /proc/net/softnet_stat (loopback datagrams wait there for
the softirq that hands them to the socket: at most net.core.netdev_max_backlog), and
the bridge's own `/metrics` counters (`rx_late`, `rx_lost`, `bot_dropped`, the playout
queue's overflow, the clock's skipped frame times). A `Sample` is one reading of all of them;
`delta(before, after)` is what happened in between. The parsers are pure; `sample_udp`,
`socket_inodes` and `scrape` read /proc and HTTP.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# The bridge's counters that say where a packet went, by their Prometheus names (summed over
# labels), and the short names the bench reports them under.
BRIDGE_COUNTERS = {
    "pipecat_bridge_media_rx_late_total": "rx_late",
    "pipecat_bridge_media_rx_lost_total": "rx_lost",
    "pipecat_bridge_media_rx_packets_total": "rx_packets",
    "pipecat_bridge_media_tx_packets_total": "tx_packets",
    # Silence sent while the bot had nothing queued: with a caller and an echo bot that talk
    # all the time, each run of these is a dry-out after which the playout reserve is held
    # again, so the echo comes back that much later for the rest of the call.
    "pipecat_bridge_media_tx_silence_total": "tx_silence",
    "pipecat_bridge_bot_messages_dropped_total": "bot_dropped",
    "pipecat_bridge_bot_messages_sent_total": "bot_sent",
    "pipecat_bridge_media_tx_overflow_bytes_total": "tx_overflow_bytes",
    "pipecat_bridge_pacing_skipped_frames_total": "skipped_frames",
}
# A gauge, read at the second sample: bot audio queued and not played yet, over all calls. At
# the drain's end it is what has not come back yet (delayed, not lost) when the callers hang up.
QUEUED_GAUGE = "pipecat_bridge_playout_queue_seconds"
FRAME_S = 0.020
SNMP_KEYS = ("RcvbufErrors", "SndbufErrors", "InErrors", "NoPorts", "BacklogDrops")


@dataclass(frozen=True, slots=True)
class UdpSocket:
    inode: int
    port: int
    rx_queue: int  # bytes waiting to be read
    drops: int  # datagrams the kernel dropped on this socket since it was created


def parse_udp_table(text: str) -> dict[int, UdpSocket]:
    """/proc/net/udp or udp6 -> sockets by inode. Lines that do not parse are skipped."""
    out: dict[int, UdpSocket] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13 or ":" not in fields[1] or ":" not in fields[4]:
            continue
        try:
            port = int(fields[1].rsplit(":", 1)[1], 16)
            rx_queue = int(fields[4].split(":", 1)[1], 16)
            inode, drops = int(fields[9]), int(fields[12])
        except ValueError:
            continue
        if inode:  # 0: a socket being torn down, owned by nobody
            out[inode] = UdpSocket(inode, port, rx_queue, drops)
    return out


def parse_snmp(text: str, protocol: str = "Udp") -> dict[str, int]:
    """/proc/net/snmp: the `Udp:` header line and its values line, as a mapping."""
    rows = [line.split() for line in text.splitlines() if line.startswith(protocol + ":")]
    if len(rows) < 2:
        return {}
    names, values = rows[0][1:], rows[1][1:]
    return {name: int(value) for name, value in zip(names, values, strict=False)}


def parse_softnet(text: str) -> tuple[int, int]:
    """/proc/net/softnet_stat -> (packets processed, packets dropped with the backlog full),
    summed over CPUs (one line each, hex columns)."""
    processed = dropped = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            with contextlib.suppress(ValueError):
                processed, dropped = processed + int(fields[0], 16), dropped + int(fields[1], 16)
    return processed, dropped


def parse_counters(text: str, names: Iterable[str]) -> dict[str, float]:
    """Prometheus text -> the named metrics, each summed over its label sets."""
    wanted = set(names)
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0]
        if name in wanted:
            with contextlib.suppress(ValueError):
                out[name] += float(value)
    return out


def parse_fd_link(link: str) -> int | None:
    """`socket:[12345]` (a readlink of /proc/<pid>/fd/N) -> 12345; anything else None."""
    if link.startswith("socket:[") and link.endswith("]"):
        with contextlib.suppress(ValueError):
            return int(link[8:-1])
    return None


@dataclass(frozen=True, slots=True)
class Drops:
    relay: int  # on the relay's UDP sockets (its RTP)
    harness: int  # on the generator's sockets (the caller's ears)
    relay_sockets: int
    harness_sockets: int


def drops_between(
    before: Mapping[int, UdpSocket],
    after: Mapping[int, UdpSocket],
    relay: set[int],
    harness: set[int],
) -> Drops:
    """Kernel drops in between, per side. A socket opened in between counts from 0; one
    closed in between is missed (sample before the hang-up)."""

    def side(inodes: set[int]) -> tuple[int, int]:
        total = count = 0
        for inode in inodes & after.keys():
            old = before.get(inode)
            total += after[inode].drops - (old.drops if old is not None else 0)
            count += 1
        return total, count

    r, rn = side(relay)
    h, hn = side(harness)
    return Drops(r, h, rn, hn)


def counters_between(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    """Deltas of the bridge counters, under their short names."""
    return {short: int(after.get(name, 0.0) - before.get(name, 0.0))
            for name, short in BRIDGE_COUNTERS.items()}  # fmt: skip


# ---- reading (I/O) -------------------------------------------------------------------------


def sample_udp() -> dict[int, UdpSocket]:
    sockets: dict[int, UdpSocket] = {}
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(path, encoding="ascii") as fh:
            sockets.update(parse_udp_table(fh.read()))
    return sockets


def sample_snmp() -> dict[str, int]:
    """The host's Udp counters, and the input backlog's drops as `BacklogDrops`."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/net/snmp", encoding="ascii") as fh:
        out.update(parse_snmp(fh.read()))
    with contextlib.suppress(OSError), open("/proc/net/softnet_stat", encoding="ascii") as fh:
        out["BacklogDrops"] = parse_softnet(fh.read())[1]
    return out


def socket_inodes(pids: Iterable[int]) -> set[int]:
    """Inodes of every socket the processes hold now (a process gone meanwhile: skipped)."""
    found: set[int] = set()
    for pid in pids:
        base = f"/proc/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            try:
                inode = parse_fd_link(os.readlink(f"{base}/{name}"))
            except OSError:
                continue
            if inode is not None:
                found.add(inode)
    return found


def scrape(port: int, timeout: float = 5.0) -> dict[str, float] | None:
    """The bridge counters from http://127.0.0.1:<port>/metrics; None if it did not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return None
    return parse_counters(text, [*BRIDGE_COUNTERS, QUEUED_GAUGE])


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of every counter above, for the relay's processes and the harness's."""

    udp: Mapping[int, UdpSocket]
    snmp: Mapping[str, int]
    relay_inodes: frozenset[int]
    harness_inodes: frozenset[int]
    counters: Mapping[str, float] | None  # summed over the bridge's workers; None: no /metrics


def take_sample(relay_pids: Iterable[int], harness_pids: Iterable[int],
                http_ports: Iterable[int]) -> Sample:  # fmt: skip
    relay, harness = socket_inodes(relay_pids), socket_inodes(harness_pids)
    udp, snmp = sample_udp(), sample_snmp()
    counters: dict[str, float] | None = None
    for port in http_ports:
        scraped = scrape(port)
        if scraped is None:
            counters = None
            break
        counters = counters or dict.fromkeys([*BRIDGE_COUNTERS, QUEUED_GAUGE], 0.0)
        for name, value in scraped.items():
            counters[name] = counters.get(name, 0.0) + value
    return Sample(udp, snmp, frozenset(relay), frozenset(harness), counters)


def between(before: Sample, after: Sample) -> dict[str, int]:
    """What happened from one sample to the next: kernel drops per side, the host's UDP
    errors, and (with /metrics) the bridge's counters; -1 where a number is not available."""
    drops = drops_between(before.udp, after.udp, set(after.relay_inodes),
                          set(after.harness_inodes))  # fmt: skip
    out = {
        "relay_drops": drops.relay,
        "harness_drops": drops.harness,
        "relay_udp_sockets": drops.relay_sockets,
        "harness_udp_sockets": drops.harness_sockets,
    }
    for key in SNMP_KEYS:
        old, new = before.snmp.get(key), after.snmp.get(key)
        out[f"host_{key}"] = new - old if old is not None and new is not None else -1
    if before.counters is not None and after.counters is not None:
        out.update(counters_between(before.counters, after.counters))
        out["queued_frames"] = round(after.counters.get(QUEUED_GAUGE, 0.0) / FRAME_S)
    else:
        out.update(dict.fromkeys([*BRIDGE_COUNTERS.values(), "queued_frames"], -1))
    return out


def unexplained(lost: int, found: Mapping[str, int], frame_bytes: int = 160) -> int | None:
    """Of `lost` packets, those no counter accounts for: not dropped by a socket, a reorder
    window, the bot send queue or the playout queue, and not still queued at the hang-up.
    None without the bridge's counters. (The counters run to the drain's end, the loss counts
    what was sent in the window: a rough tally, exact when all of them are 0.)"""
    if found.get("rx_late", -1) < 0:
        return None
    explained = (found["relay_drops"] + found["harness_drops"] + found["rx_late"]
                 + found["bot_dropped"] + found["tx_overflow_bytes"] // frame_bytes
                 + found["queued_frames"])  # fmt: skip
    return lost - explained
