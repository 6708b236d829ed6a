"""The /proc and /metrics readers of the bench's loss accounting, on captured text."""

# The captures are kept as the kernel wrote them: long lines, trailing blanks.
# ruff: noqa: E501, W291

from __future__ import annotations

import pytest

from bridge.tools.bench.losses import (
    BRIDGE_COUNTERS,
    Sample,
    UdpSocket,
    between,
    drops_between,
    parse_counters,
    parse_fd_link,
    parse_snmp,
    parse_softnet,
    parse_udp_table,
    unexplained,
)
from bridge.tools.bench.procs import parent_pid, parse_stall

# Captured on this VM: a socket on 127.0.0.1:42857 with SO_RCVBUF 1024 sent 50 datagrams of
# 172 bytes (2 queued, 1664 bytes: 832 a datagram; 48 dropped), one idle on 0.0.0.0:42231.
UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
 7414: 00000000:A4F7 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 300630 2 00000000d60a379a 0        
 8040: 0100007F:A769 00000000:0000 07 00000000:00000680 00:00000000 00000000     0        0 300629 2 00000000e1699b18 48       
"""
UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 7010: 00000000000000000000000001000000:E363 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 300631 2 000000004b5bd3a6 0
"""
SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 123
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 2023086 8490 57176 2170755 57176 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
"""
METRICS = """\
# HELP pipecat_bridge_media_rx_late_total Caller packets too late, dropped.
# TYPE pipecat_bridge_media_rx_late_total counter
pipecat_bridge_media_rx_late_total{transport="rtp"} 3.0
pipecat_bridge_media_rx_late_total{transport="audiosocket"} 1.0
pipecat_bridge_bot_messages_dropped_total 7.0
pipecat_bridge_bot_messages_dropped_created 1.7e+09
pipecat_bridge_media_rx_lost_total{transport="rtp"} not-a-number
"""


def test_udp_table_every_field() -> None:
    table = parse_udp_table(UDP)
    assert table == {
        300630: UdpSocket(inode=300630, port=42231, rx_queue=0, drops=0),
        300629: UdpSocket(inode=300629, port=42857, rx_queue=1664, drops=48),
    }
    assert parse_udp_table(UDP6) == {300631: UdpSocket(300631, 58211, 0, 0)}


def test_udp_table_skips_what_does_not_parse() -> None:
    assert parse_udp_table("") == {}
    assert parse_udp_table(UDP.splitlines()[0] + "\n garbage line\n 1: x y z\n") == {}
    torn_down = UDP.replace(" 300630 ", " 0 ")
    assert list(parse_udp_table(torn_down)) == [300629]


def test_snmp_udp_row() -> None:
    udp = parse_snmp(SNMP)
    assert udp["RcvbufErrors"] == 57176 and udp["InDatagrams"] == 2023086
    assert udp["SndbufErrors"] == 0 and len(udp) == 9
    assert parse_snmp(SNMP, "UdpLite")["InDatagrams"] == 0
    assert parse_snmp("Ip: a\nIp: 1\n") == {}


SOFTNET = """\
004289a9 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
004e023e 0000000a 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000000
"""


def test_softnet_backlog_drops_over_cpus() -> None:
    assert parse_softnet(SOFTNET) == (0x004289A9 + 0x004E023E, 10)
    assert parse_softnet("") == (0, 0)
    assert parse_softnet("zz 1\n") == (0, 0)


def test_counters_summed_over_labels() -> None:
    names = ["pipecat_bridge_media_rx_late_total", "pipecat_bridge_bot_messages_dropped_total",
             "pipecat_bridge_media_rx_lost_total", "pipecat_bridge_nothing_total"]  # fmt: skip
    assert parse_counters(METRICS, names) == {
        "pipecat_bridge_media_rx_late_total": 4.0,
        "pipecat_bridge_bot_messages_dropped_total": 7.0,  # not its _created sample
        "pipecat_bridge_media_rx_lost_total": 0.0,  # a value that does not parse: skipped
        "pipecat_bridge_nothing_total": 0.0,
    }


def test_fd_links() -> None:
    assert parse_fd_link("socket:[300629]") == 300629
    assert parse_fd_link("pipe:[12]") is None
    assert parse_fd_link("/dev/null") is None
    assert parse_fd_link("socket:[x]") is None


def test_drops_per_side_between_samples() -> None:
    before = {1: UdpSocket(1, 20000, 0, 5), 2: UdpSocket(2, 40000, 0, 0)}
    after = {1: UdpSocket(1, 20000, 0, 9), 2: UdpSocket(2, 40000, 0, 1),
             3: UdpSocket(3, 20002, 0, 2)}  # fmt: skip
    drops = drops_between(before, after, relay={1, 3, 99}, harness={2})
    assert (drops.relay, drops.relay_sockets) == (4 + 2, 2)  # 3 is new: from 0; 99 is gone
    assert (drops.harness, drops.harness_sockets) == (1, 1)


def test_between_with_and_without_metrics() -> None:
    counters = dict.fromkeys(BRIDGE_COUNTERS, 0.0)
    later = {**counters, "pipecat_bridge_media_rx_late_total": 2.0,
             "pipecat_bridge_playout_queue_seconds": 1.5}  # fmt: skip
    udp = {1: UdpSocket(1, 20000, 0, 0)}
    a = Sample(udp, {"RcvbufErrors": 10}, frozenset({1}), frozenset(), counters)
    b = Sample(udp, {"RcvbufErrors": 13}, frozenset({1}), frozenset(), later)
    out = between(a, b)
    assert out["host_RcvbufErrors"] == 3 and out["host_SndbufErrors"] == -1
    assert out["rx_late"] == 2 and out["bot_dropped"] == 0 and out["relay_drops"] == 0
    assert out["queued_frames"] == 75  # 1.5 s of 20 ms frames, read at the second sample
    no_metrics = between(a, Sample(udp, {}, frozenset({1}), frozenset(), None))
    assert no_metrics["rx_late"] == -1 and no_metrics["host_RcvbufErrors"] == -1
    assert no_metrics["queued_frames"] == -1


def test_unexplained_loss() -> None:
    found = {"relay_drops": 1, "harness_drops": 2, "rx_late": 3, "bot_dropped": 4,
             "tx_overflow_bytes": 5 * 160, "queued_frames": 6}  # fmt: skip
    assert unexplained(21, found) == 0
    assert unexplained(30, found) == 9
    assert unexplained(5, {**found, "rx_late": -1}) is None


def test_parent_pid_with_a_name_that_has_spaces_and_parens() -> None:
    assert parent_pid("4242 (python -m (x)) S 17 4242 4242 0 -1 4194560") == 17


def test_stall_option() -> None:
    assert parse_stall("100/0.5") == (0.1, 0.5)
    assert parse_stall("250") == (0.25, 1.0)
    for bad in ("x/1", "0/1", "1000/1", "100/0.05"):
        with pytest.raises(ValueError):
            parse_stall(bad)
