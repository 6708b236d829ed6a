from __future__ import annotations

import re
from typing import Any

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import RtpParseError
from rtp.packet import MAX_DATAGRAM, RtpPacket, parse_header_fast
from tests.rtp import RECORDINGS, load_rtp_records

SHORT = "RTP packet is shorter than 12 bytes"
VERSION = "RTP version is not 2"
CSRC = "RTP CSRC list is truncated"
EXTENSION = "RTP header extension is truncated"
PADDING = "RTP padding length is 0 or longer than the rest of the packet"

# Scenarios with RTP in both directions; dtmf holds our RFC 4733 packets (PT 101, 16 bytes).
SCENARIOS = ["basic_ulaw", "slin16", "dtmf", "echo_roundtrip", "inbound_audio_check_slin16"]


def assert_parse_error(data: bytes, message: str) -> None:
    with pytest.raises(RtpParseError, match=f"^{re.escape(message)}$"):
        RtpPacket.parse(data)
    with pytest.raises(RtpParseError, match=f"^{re.escape(message)}$"):
        parse_header_fast(data)


def assert_matches_record(packet: RtpPacket, record: dict[str, Any]) -> None:
    assert record["v"] == 2
    assert packet.padding == record["p"] == 0
    assert (packet.extension_profile is not None) == bool(record["x"])
    assert len(packet.csrc) == record["cc"]
    assert packet.marker == bool(record["m"])
    assert packet.payload_type == record["pt"]
    assert packet.sequence_number == record["sn"]
    assert packet.timestamp == record["ts"]
    assert packet.ssrc == record["ssrc"]
    assert len(packet.payload) == record["payload_len"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_recorded_packet(scenario: str) -> None:
    records = load_rtp_records(scenario)
    assert records
    for record in records:
        data = bytes.fromhex(record["data_hex"])
        assert len(data) == record["len"] <= MAX_DATAGRAM
        packet = RtpPacket.parse(data)
        assert_matches_record(packet, record)
        assert packet.payload == data[record["hdr_len"] :]
        assert packet.serialize() == data
        assert parse_header_fast(data) == (
            record["pt"],
            record["sn"],
            record["ts"],
            record["ssrc"],
            bool(record["m"]),
            packet.payload,
        )


def test_recorded_dtmf_events() -> None:
    events = [
        RtpPacket.parse(bytes.fromhex(r["data_hex"]))
        for r in load_rtp_records("dtmf")
        if r["pt"] == 101
    ]
    assert len(events) == 13
    assert [p.marker for p in events] == [True] + [False] * 12
    assert {p.timestamp for p in events} == {3584067380}
    # RFC 4733: event 5, then three copies of the end packet (E bit) at the final duration.
    assert [p.payload[0] for p in events] == [5] * 13
    assert [p.payload[1] >> 7 for p in events] == [0] * 10 + [1] * 3
    assert len({p.payload for p in events[-3:]}) == 1


def test_recorded_pcap_udp_payloads_parse() -> None:
    records = load_rtp_records("basic_ulaw")
    with (RECORDINGS / "basic_ulaw" / "rtp.pcap").open("rb") as capture:
        payloads = []
        for _, frame in dpkt.pcap.Reader(capture):
            ip = dpkt.ethernet.Ethernet(frame).data
            assert isinstance(ip.data, dpkt.udp.UDP)
            payloads.append(bytes(ip.data.data))
    assert len(payloads) == len(records) == 277
    # The two directions interleave a little differently in the capture than in the log.
    by_data = {bytes.fromhex(r["data_hex"]): r for r in records}
    assert len(by_data) == 277
    assert set(payloads) == set(by_data)
    for data in payloads:
        assert_matches_record(RtpPacket.parse(data), by_data[data])


def test_every_truncation_of_a_recorded_packet() -> None:
    data = bytes.fromhex(load_rtp_records("basic_ulaw")[0]["data_hex"])
    for size in range(12):
        assert_parse_error(data[:size], SHORT)
    for size in range(12, len(data) + 1):
        packet = RtpPacket.parse(data[:size])
        assert packet.payload == data[12:size]
        assert packet.sequence_number == 38710


def test_version_other_than_2() -> None:
    data = bytes.fromhex(load_rtp_records("basic_ulaw")[0]["data_hex"])
    for version in (0, 1, 3):
        assert_parse_error(bytes([version << 6 | (data[0] & 0x3F)]) + data[1:], VERSION)


def test_csrc_extension_and_padding_all_at_once() -> None:
    data = bytes.fromhex(
        "b2 "  # V=2, P=1, X=1, CC=2
        "8b 1234 00000640 deadbeef "  # M=1 PT=11, seq, ts, ssrc
        "00000001 00000002 "  # CSRCs
        "bede 0002 11223344 55667788 "  # one-byte-header profile, 2 words
        "aabbcc "  # payload
        "000003"  # 3 padding octets
    )
    packet = RtpPacket.parse(data)
    assert packet == RtpPacket(
        marker=True,
        payload_type=11,
        sequence_number=0x1234,
        timestamp=1600,
        ssrc=0xDEADBEEF,
        csrc=(1, 2),
        extension_profile=0xBEDE,
        extension=bytes.fromhex("1122334455667788"),
        padding=3,
        payload=b"\xaa\xbb\xcc",
    )
    assert packet.serialize() == data
    assert parse_header_fast(data) == (11, 0x1234, 1600, 0xDEADBEEF, True, b"\xaa\xbb\xcc")
    assert repr(packet) == (
        "RtpPacket(pt=11, seq=4660, ts=1600, ssrc=0xdeadbeef, m=1, csrc=[1, 2], "
        "ext=0xbede/8, padding=3, 3 bytes)"
    )


def test_truncations_walk_through_csrc_then_extension() -> None:
    header = bytes.fromhex("9300 0001 00000000 00000000")  # X=1, CC=3
    csrcs = bytes(12)
    extension = bytes.fromhex("1000 0001 cafebabe")
    data = header + csrcs + extension + b"payload"
    for size in range(12, 24):
        assert_parse_error(data[:size], CSRC)
    for size in range(24, 32):
        assert_parse_error(data[:size], EXTENSION)
    assert RtpPacket.parse(data[:32]).payload == b""
    assert RtpPacket.parse(data).extension == bytes.fromhex("cafebabe")


def test_empty_extension_keeps_its_profile() -> None:
    data = bytes.fromhex("9000000100000002000000031000000001")
    packet = RtpPacket.parse(data)
    assert packet.extension_profile == 0x1000
    assert packet.extension == b""
    assert packet.payload == b"\x01"
    assert packet.serialize() == data


def test_padding_length_zero_or_too_long() -> None:
    header = bytes.fromhex("a000 0001 00000002 00000003")
    assert_parse_error(header + b"\x01\x02\x00", PADDING)
    assert_parse_error(header + b"\x01\x02\x04", PADDING)
    # The count octet can be the whole payload; the filler need not be zero.
    assert RtpPacket.parse(header + b"\x01\x02\x03").payload == b""
    assert RtpPacket.parse(header + b"\x07\x09\x02").payload == b"\x07"


def test_padding_bit_without_any_payload() -> None:
    # A 12-byte packet claiming padding: its count octet would be inside the header.
    assert_parse_error(bytes.fromhex("a000000100000002000000ff"), PADDING)
    assert_parse_error(bytes.fromhex("a00000010000000200000001"), PADDING)


def test_padding_must_fit_after_the_csrcs() -> None:
    data = bytes.fromhex("a100 0001 00000002 00000003 00000004 02")
    assert_parse_error(data, PADDING)


def test_repr_of_a_plain_packet() -> None:
    data = bytes.fromhex(load_rtp_records("basic_ulaw")[0]["data_hex"])
    assert repr(RtpPacket.parse(data)) == (
        "RtpPacket(pt=0, seq=38710, ts=160, ssrc=0x51eb8dc0, m=0, 160 bytes)"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"payload_type": 128},
        {"payload_type": -1},
        {"sequence_number": 65536},
        {"timestamp": 2**32},
        {"ssrc": -1},
        {"csrc": tuple(range(16))},
        {"csrc": (2**32,)},
        {"extension": b"\x00" * 4},
        {"extension_profile": 0x10000},
        {"extension_profile": 1, "extension": b"\x00" * 3},
        {"padding": 256},
        {"padding": -1},
    ],
)
def test_construction_rejects_what_cannot_be_serialized(fields: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "marker": False,
        "payload_type": 0,
        "sequence_number": 0,
        "timestamp": 0,
        "ssrc": 0,
    }
    with pytest.raises(ValueError):
        RtpPacket(**(base | fields))


@st.composite
def packets(draw: st.DrawFn) -> RtpPacket:
    extension_profile = draw(st.none() | st.integers(0, 0xFFFF))
    words = 0 if extension_profile is None else draw(st.integers(0, 8))
    return RtpPacket(
        marker=draw(st.booleans()),
        payload_type=draw(st.integers(0, 127)),
        sequence_number=draw(st.integers(0, 0xFFFF)),
        timestamp=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        csrc=tuple(draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=15))),
        extension_profile=extension_profile,
        extension=draw(st.binary(min_size=4 * words, max_size=4 * words)),
        padding=draw(st.integers(0, 255)),
        payload=draw(st.binary(max_size=700)),
    )


@given(packets())
def test_serialize_then_parse_is_identity(packet: RtpPacket) -> None:
    data = packet.serialize()
    assert RtpPacket.parse(data) == packet
    assert parse_header_fast(data) == (
        packet.payload_type,
        packet.sequence_number,
        packet.timestamp,
        packet.ssrc,
        packet.marker,
        packet.payload,
    )


@given(st.binary(max_size=80) | st.binary(min_size=12, max_size=80).map(lambda b: b"\x80" + b[1:]))
def test_arbitrary_bytes_parse_or_raise_rtp_parse_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpParseError as exc:
        with pytest.raises(RtpParseError) as fast_exc:
            parse_header_fast(data)
        assert str(fast_exc.value) == str(exc)
        assert str(exc) in {SHORT, VERSION, CSRC, EXTENSION, PADDING}
        return
    assert parse_header_fast(data)[5] == packet.payload
    assert len(packet.serialize()) == len(data)
