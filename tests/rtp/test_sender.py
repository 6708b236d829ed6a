from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp.formats import ALAW, SLIN16, ULAW, AudioFormat, PayloadType, format_by_name
from rtp.packet import RtpPacket
from rtp.sender import RtpSender
from tests.rtp import load_rtp_records


@pytest.mark.parametrize(
    ("scenario", "audio_format"),
    [
        ("basic_ulaw", ULAW),
        ("slin16", SLIN16),
        ("inbound_audio_check_slin16_channel_send_ulaw", ULAW),
    ],
)
def test_rebuilds_the_recorded_outbound_stream_byte_for_byte(
    scenario: str, audio_format: AudioFormat
) -> None:
    sent = [bytes.fromhex(r["data_hex"]) for r in load_rtp_records(scenario) if r["dir"] == "out"]
    assert len(sent) == 100
    first = RtpPacket.parse(sent[0])
    sender = RtpSender(
        audio_format,
        ssrc=first.ssrc,
        sequence_number=first.sequence_number,
        timestamp=first.timestamp,
    )
    for data in sent:
        assert sender.packet(data[12:]) == data
    assert sender.packets_sent == 100
    assert sender.octets_sent == 100 * audio_format.frame_bytes()


def make_sender(**start: int) -> RtpSender:
    values = {"ssrc": 0x01020304, "sequence_number": 1000, "timestamp": 5000} | start
    return RtpSender(ULAW, **values)


def test_header_fields_and_steps() -> None:
    sender = RtpSender(SLIN16, ssrc=0x01020304, sequence_number=1000, timestamp=5000)
    first = RtpPacket.parse(sender.packet(bytes(640)))
    second = RtpPacket.parse(sender.packet(bytes(640)))
    assert (first.payload_type, first.ssrc, first.sequence_number, first.timestamp) == (
        118,
        0x01020304,
        1000,
        5000,
    )
    assert (second.sequence_number, second.timestamp) == (1001, 5320)
    assert first.marker
    assert not second.marker
    assert second.payload == bytes(640)
    assert (sender.sequence_number, sender.timestamp) == (1002, 5640)


def test_explicit_marker() -> None:
    sender = make_sender()
    sender.packet(b"a")
    assert RtpPacket.parse(sender.packet(b"b", marker=True)).marker
    assert not RtpPacket.parse(sender.packet(b"c")).marker


def test_sequence_and_timestamp_wrap() -> None:
    sender = make_sender(sequence_number=65535, timestamp=0xFFFFFFFF - 100)
    packets = [RtpPacket.parse(sender.packet(bytes(160))) for _ in range(3)]
    assert [p.sequence_number for p in packets] == [65535, 0, 1]
    assert [p.timestamp for p in packets] == [0xFFFFFFFF - 100, 59, 219]


def test_skip_moves_timestamp_only_and_marks_the_next_packet() -> None:
    sender = make_sender()
    sender.packet(bytes(160))
    sender.packet(bytes(160))
    sender.skip(3)
    resumed = RtpPacket.parse(sender.packet(bytes(160)))
    after = RtpPacket.parse(sender.packet(bytes(160)))
    assert (resumed.sequence_number, resumed.timestamp, resumed.marker) == (
        1002,
        5000 + 5 * 160,
        True,
    )
    assert (after.sequence_number, after.timestamp, after.marker) == (1003, 5000 + 6 * 160, False)


def test_skip_zero_changes_nothing() -> None:
    sender = make_sender()
    sender.packet(bytes(160))
    sender.skip(0)
    packet = RtpPacket.parse(sender.packet(bytes(160)))
    assert (packet.timestamp, packet.marker) == (5160, False)


def test_skip_wraps_the_timestamp() -> None:
    sender = make_sender(timestamp=0xFFFFFF00)
    sender.skip(2)
    assert sender.timestamp == 0x40


def test_skip_rejects_negative() -> None:
    with pytest.raises(ValueError):
        make_sender().skip(-1)


@pytest.mark.parametrize(
    "start",
    [{"ssrc": 2**32}, {"ssrc": -1}, {"sequence_number": 65536}, {"timestamp": 2**32}],
)
def test_rejects_out_of_range_start(start: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        make_sender(**start)


def test_random_start_comes_from_the_injected_rng() -> None:
    one = RtpSender.random_start(ULAW, random.Random(7))
    two = RtpSender.random_start(ULAW, random.Random(7))
    other = RtpSender.random_start(ULAW, random.Random(8))
    assert (one.ssrc, one.sequence_number, one.timestamp) == (
        two.ssrc,
        two.sequence_number,
        two.timestamp,
    )
    assert (one.ssrc, one.sequence_number, one.timestamp) != (
        other.ssrc,
        other.sequence_number,
        other.timestamp,
    )
    assert one.packet(b"x") == two.packet(b"x")


@given(st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))
def test_every_packet_parses_back(ssrc: int, sequence_number: int, timestamp: int) -> None:
    sender = RtpSender(ALAW, ssrc=ssrc, sequence_number=sequence_number, timestamp=timestamp)
    packet = RtpPacket.parse(sender.packet(b"\xd5" * 160))
    assert packet == RtpPacket(True, 8, sequence_number, timestamp, ssrc, payload=b"\xd5" * 160)


def test_repr() -> None:
    assert repr(make_sender()) == "RtpSender(pt=0, ssrc=0x01020304, next seq=1000 ts=5000)"


# ---- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audio_format", "name", "payload_type", "frame", "step", "silence_byte"),
    [
        (ULAW, "ulaw", PayloadType.PCMU, 160, 160, 0xFF),
        (ALAW, "alaw", PayloadType.PCMA, 160, 160, 0xD5),
        (SLIN16, "slin16", PayloadType.SLIN16, 640, 320, 0x00),
    ],
)
def test_formats(
    audio_format: AudioFormat,
    name: str,
    payload_type: int,
    frame: int,
    step: int,
    silence_byte: int,
) -> None:
    assert format_by_name(name) is audio_format
    assert audio_format.payload_type == payload_type
    assert audio_format.frame_bytes() == frame
    assert audio_format.timestamp_step() == step
    assert audio_format.silence() == bytes([silence_byte]) * frame
    assert audio_format.frame_bytes(40) == 2 * frame
    assert audio_format.timestamp_step(10) == step // 2
    assert audio_format.silence(30) == bytes([silence_byte]) * (frame * 3 // 2)


def test_payload_type_values() -> None:
    assert (PayloadType.PCMU, PayloadType.PCMA, PayloadType.SLIN16) == (0, 8, 118)


def test_unknown_format_and_bad_ptime() -> None:
    with pytest.raises(ValueError, match="'opus'"):
        format_by_name("opus")
    with pytest.raises(ValueError):
        ULAW.frame_bytes(0)
    with pytest.raises(ValueError):
        AudioFormat("bad", PayloadType.SLIN16, 16000, 2, b"\x00")
