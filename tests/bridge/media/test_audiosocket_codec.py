"""AudioSocket framing: recorded frames and TCP streams, every defect, and fuzzed chunkings."""

from __future__ import annotations

import json
import uuid
from itertools import pairwise
from typing import Any

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import AudioSocketError, ParseError
from bridge.media.audiosocket_codec import (
    ERR_BROKEN,
    MAX_AUDIO_PAYLOAD,
    AudioSocketDecoder,
    Frame,
    Kind,
    digit_of,
    encode_audio,
    encode_dtmf,
    encode_error,
    encode_hangup,
    encode_uuid,
    is_audio,
    kind_for_rate,
    sample_rate_of,
    uuid_of,
)
from tests.recordings import FIXTURES

SCENARIOS = ("audiosocket", "audiosocket_dialplan")
# The `data=` of the two externalMedia requests in audiosocket/session.jsonl.
AUDIOSOCKET_UUIDS = (
    uuid.UUID("310fef72-91eb-4f7c-afc0-10cc3f359062"),
    uuid.UUID("c110e655-15e9-4feb-ad98-e8fda9fcd4ea"),
)
AUDIO_KINDS = [kind for kind in Kind if is_audio(kind)]
RATES = [8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000]


def records(scenario: str) -> list[dict[str, Any]]:
    path = FIXTURES / scenario / "audiosocket.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def frame_records(scenario: str) -> list[dict[str, Any]]:
    """The frames, each tagged with `connection`: how many `as_connect` lines precede it (the
    recorded calls are sequential; only audiosocket_dialplan has a `conn` field itself)."""
    frames, connection = [], 0
    for record in records(scenario):
        if record["kind"] == "as_connect":
            connection += 1
        elif record["kind"] in ("as_in", "as_out"):
            assert record.get("conn", connection) == connection
            frames.append({**record, "connection": connection})
    return frames


def tcp_streams(scenario: str) -> dict[tuple[int, int], bytes]:
    """Each direction of each TCP connection in media_tcp.pcap, reassembled by sequence."""
    segments: dict[tuple[int, int], dict[int, bytes]] = {}
    with (FIXTURES / scenario / "media_tcp.pcap").open("rb") as file:
        for _, raw in dpkt.pcap.Reader(file):
            tcp = dpkt.ethernet.Ethernet(raw).data.data
            if tcp.data:
                segments.setdefault((tcp.sport, tcp.dport), {})[tcp.seq] = bytes(tcp.data)
    streams = {}
    for flow, by_seq in segments.items():
        ordered = sorted(by_seq.items())
        for (seq, data), (next_seq, _) in pairwise(ordered):
            assert seq + len(data) == next_seq, f"gap or overlap in {flow}"
        streams[flow] = b"".join(data for _, data in ordered)
    return streams


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos, index = [], 0, 0
    while pos < len(data):
        size = sizes[index % len(sizes)]
        chunks.append(data[pos : pos + size])
        pos, index = pos + size, index + 1
    return chunks


def decode_all(chunks: list[bytes], **kwargs: Any) -> list[Frame]:
    decoder = AudioSocketDecoder(**kwargs)
    frames = [frame for chunk in chunks for frame in decoder.feed(chunk)]
    decoder.eof()
    assert decoder.pending == 0
    return frames


def assert_decode_error(data: bytes, message: str, **kwargs: Any) -> None:
    decoder = AudioSocketDecoder(**kwargs)
    with pytest.raises(AudioSocketError) as excinfo:
        decoder.feed(data)
    assert str(excinfo.value) == message
    assert decoder.pending == 0
    with pytest.raises(AudioSocketError, match=ERR_BROKEN):
        decoder.feed(encode_hangup())


def reencode(frame: Frame) -> bytes:
    if frame.kind is Kind.UUID:
        return encode_uuid(uuid_of(frame))
    if frame.kind is Kind.DTMF:
        return encode_dtmf(digit_of(frame))
    if frame.kind is Kind.HANGUP:
        return encode_hangup()
    if frame.kind is Kind.ERROR:
        return encode_error(frame.payload[0] if frame.payload else None)
    return encode_audio(frame.kind, frame.payload)


# Recordings.


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_recorded_frame_decodes_alone_and_reencodes(scenario: str) -> None:
    recorded = frame_records(scenario)
    assert len(recorded) > 150
    for record in recorded:
        data = bytes.fromhex(record["data_hex"])
        [frame] = AudioSocketDecoder().feed(data)
        assert frame.kind == record["kind_byte"]
        assert isinstance(frame.kind, Kind)
        assert len(frame.payload) == record["len"]
        assert frame.payload == data[3:]
        assert reencode(frame) == data


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_recorded_connections_decode_as_streams(scenario: str) -> None:
    by_direction: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for record in frame_records(scenario):
        by_direction.setdefault((record["connection"], record["kind"]), []).append(record)
    assert len(by_direction) == 4
    for (_, direction), recorded in by_direction.items():
        stream = b"".join(bytes.fromhex(r["data_hex"]) for r in recorded)
        frames = decode_all(chunked(stream, [1, 2, 3, 5, 318, 700]))
        assert [(f.kind, len(f.payload)) for f in frames] == [
            (r["kind_byte"], r["len"]) for r in recorded
        ]
        if direction == "as_in":
            # Asterisk: the UUID once, first, then audio of one kind; never 0x00 or 0xFF.
            assert frames[0].kind is Kind.UUID
            assert {f.kind for f in frames[1:]} in ({Kind.SLIN}, {Kind.SLIN16})


def test_audiosocket_uuids_are_the_externalmedia_data() -> None:
    firsts = [r for r in frame_records("audiosocket") if r["kind"] == "as_in" and r["len"] == 16]
    uuids = [uuid_of(AudioSocketDecoder().feed(bytes.fromhex(r["data_hex"]))[0]) for r in firsts]
    assert uuids == list(AUDIOSOCKET_UUIDS)


def test_dialplan_recording_ends_with_our_hangup_frame() -> None:
    [last] = [r for r in frame_records("audiosocket_dialplan") if r["kind_byte"] == 0]
    assert AudioSocketDecoder().feed(bytes.fromhex(last["data_hex"])) == [Frame(Kind.HANGUP, b"")]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("sizes", [[1], [3], [7, 1, 640], [323], [1024], [65536], [2, 999, 5]])
def test_pcap_tcp_streams_match_the_frame_log(scenario: str, sizes: list[int]) -> None:
    recorded = frame_records(scenario)
    streams = tcp_streams(scenario)
    assert len(streams) == 4
    decoded: list[tuple[int, bytes]] = []
    for stream in streams.values():
        decoded.extend((f.kind, f.payload) for f in decode_all(chunked(stream, sizes)))
    expected = [(r["kind_byte"], bytes.fromhex(r["data_hex"])[3:]) for r in recorded]
    assert sorted(decoded) == sorted(expected)


# Helpers.


@pytest.mark.parametrize(("kind", "rate"), list(zip(AUDIO_KINDS, RATES, strict=True)))
def test_rates_and_kinds(kind: Kind, rate: int) -> None:
    assert sample_rate_of(kind) == rate
    assert kind_for_rate(rate) is kind
    assert is_audio(kind)


def test_kind_values_are_res_audiosocket_h() -> None:
    assert [int(k) for k in Kind] == [0x00, 0x01, 0x03, *range(0x10, 0x19), 0xFF]


@pytest.mark.parametrize("kind", [Kind.HANGUP, Kind.UUID, Kind.DTMF, Kind.ERROR, 0x19, 0x0F])
def test_sample_rate_of_non_audio(kind: int) -> None:
    with pytest.raises(ValueError, match="carries no audio"):
        sample_rate_of(kind)


def test_kind_for_unknown_rate() -> None:
    with pytest.raises(ValueError, match="no slin kind for 22050 Hz"):
        kind_for_rate(22050)


def test_uuid_of_and_digit_of_check_the_kind() -> None:
    audio = Frame(Kind.SLIN, bytes(2))
    with pytest.raises(ValueError, match="is not a UUID frame"):
        uuid_of(audio)
    with pytest.raises(ValueError, match="is not a DTMF frame"):
        digit_of(audio)


def test_repr() -> None:
    assert repr(Frame(Kind.SLIN16, bytes(640))) == "Frame(SLIN16, 640 bytes)"


# Decoder behaviour.


def test_packed_and_split_frames() -> None:
    stream = encode_uuid(AUDIOSOCKET_UUIDS[0]) + encode_dtmf("#") + encode_audio(Kind.SLIN, b"ab")
    decoder = AudioSocketDecoder()
    assert decoder.feed(stream[:2]) == []
    assert decoder.pending == 2
    assert decoder.feed(stream[2:20]) == [Frame(Kind.UUID, AUDIOSOCKET_UUIDS[0].bytes)]
    assert decoder.pending == 1
    assert decoder.feed(stream[20:]) == [Frame(Kind.DTMF, b"#"), Frame(Kind.SLIN, b"ab")]
    assert decoder.pending == 0
    assert decoder.feed(b"") == []


def test_empty_audio_and_bare_error_decode() -> None:
    stream = bytes([0x10, 0, 0, 0xFF, 0, 0, 0xFF, 0, 1, 7])
    assert AudioSocketDecoder().feed(stream) == [
        Frame(Kind.SLIN, b""),
        Frame(Kind.ERROR, b""),
        Frame(Kind.ERROR, b"\x07"),
    ]


def test_buffer_is_bounded_by_one_frame() -> None:
    decoder = AudioSocketDecoder(max_payload=640)
    frame = encode_audio(Kind.SLIN16, bytes(640))
    assert decoder.feed(frame[:-1]) == []
    assert decoder.pending == 642
    assert decoder.feed(frame[-1:] + frame) == [Frame(Kind.SLIN16, bytes(640))] * 2


def test_limit_is_checked_before_the_payload_arrives() -> None:
    assert_decode_error(
        bytes([0x10, 0x20, 0x02]),
        "AudioSocket audio payload of 8194 bytes exceeds the 8192-byte limit",
    )


def test_max_payload_accepts_the_limit_itself() -> None:
    frame = encode_audio(Kind.SLIN48, bytes(MAX_AUDIO_PAYLOAD))
    assert decode_all([frame]) == [Frame(Kind.SLIN48, bytes(MAX_AUDIO_PAYLOAD))]
    assert decode_all([encode_audio(Kind.SLIN, bytes(65534))], max_payload=0xFFFF)[0].kind == 0x10


@pytest.mark.parametrize("max_payload", [0, -1, 0x10000])
def test_max_payload_range(max_payload: int) -> None:
    with pytest.raises(ValueError, match=r"is not in 1\.\.65535"):
        AudioSocketDecoder(max_payload=max_payload)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x02\x00\x00", "AudioSocket kind 0x02 is unknown"),
        (b"\x19\x00\x02", "AudioSocket kind 0x19 is unknown"),
        (b"\xfe\x00\x00", "AudioSocket kind 0xfe is unknown"),
        (b"\x10\x01\x41", "AudioSocket audio payload of 321 bytes is not whole 16-bit samples"),
        (b"\x18\xff\xff", "AudioSocket audio payload of 65535 bytes exceeds the 8192-byte limit"),
        (b"\x01\x00\x0f", "AudioSocket UUID payload is 15 bytes, not 16"),
        (b"\x01\x00\x00", "AudioSocket UUID payload is 0 bytes, not 16"),
        (b"\x03\x00\x02", "AudioSocket DTMF payload is 2 bytes, not 1"),
        (b"\x03\x00\x00", "AudioSocket DTMF payload is 0 bytes, not 1"),
        (b"\x03\x00\x01a", "AudioSocket DTMF digit 'a' is not one of 0-9 * # A-D"),
        (b"\x03\x00\x01\xff", "AudioSocket DTMF digit 'ÿ' is not one of 0-9 * # A-D"),
        (b"\x00\x00\x01", "AudioSocket hang-up payload is 1 bytes, not 0"),
        (b"\xff\x00\x02", "AudioSocket error payload is 2 bytes, not 0 or 1"),
    ],
)
def test_each_defect_has_its_message(data: bytes, message: str) -> None:
    assert_decode_error(data, message)
    # The same defect after a good frame, in one read and byte by byte.
    assert_decode_error(encode_hangup() + data, message)
    decoder = AudioSocketDecoder()
    with pytest.raises(AudioSocketError) as excinfo:
        for byte in data:
            decoder.feed(bytes([byte]))
    assert str(excinfo.value) == message


def test_eof_inside_a_frame() -> None:
    decoder = AudioSocketDecoder()
    decoder.feed(encode_audio(Kind.SLIN, bytes(320))[:100])
    with pytest.raises(AudioSocketError) as excinfo:
        decoder.eof()
    assert str(excinfo.value) == "AudioSocket stream ended inside a frame (100 bytes pending)"
    assert isinstance(excinfo.value, ParseError)
    with pytest.raises(AudioSocketError, match=ERR_BROKEN):
        decoder.feed(b"")
    decoder.eof()  # already reported


# Encoders.


def test_product_encoders() -> None:
    assert encode_hangup() == b"\x00\x00\x00"
    assert encode_audio(Kind.SLIN16, b"\x01\x02") == b"\x12\x00\x02\x01\x02"
    assert encode_audio(0x10, bytes(320))[:3] == b"\x10\x01\x40"


@pytest.mark.parametrize("kind", [Kind.HANGUP, Kind.UUID, Kind.DTMF, Kind.ERROR, 0x19])
def test_encode_audio_refuses_other_kinds(kind: int) -> None:
    with pytest.raises(ValueError, match="carries no audio"):
        encode_audio(kind, b"\x00\x00")


@pytest.mark.parametrize("size", [0, 1, 321, 65535, 65536])
def test_encode_audio_refuses_sizes_asterisk_rejects(size: int) -> None:
    with pytest.raises(ValueError, match=f"audio of {size} bytes"):
        encode_audio(Kind.SLIN, bytes(size))


def test_simulator_encoders() -> None:
    assert encode_uuid(AUDIOSOCKET_UUIDS[0]) == bytes.fromhex(
        "010010310fef7291eb4f7cafc010cc3f359062"
    )
    assert encode_dtmf("5") == b"\x03\x00\x015"
    assert encode_error() == b"\xff\x00\x00"
    assert encode_error(4) == b"\xff\x00\x01\x04"
    for digit in ("", "55", "a", "E", "é"):
        with pytest.raises(ValueError, match="is not one of"):
            encode_dtmf(digit)
    for code in (-1, 256):
        with pytest.raises(ValueError, match="is not one byte"):
            encode_error(code)


# Fuzz.

chunk_sizes = st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=8)


@given(st.binary(max_size=3000), chunk_sizes, st.integers(min_value=1, max_value=2000))
def test_any_bytes_decode_or_raise_audiosocket_error(
    data: bytes, sizes: list[int], max_payload: int
) -> None:
    decoder = AudioSocketDecoder(max_payload=max_payload)
    try:
        for chunk in chunked(data, sizes):
            for frame in decoder.feed(chunk):
                assert isinstance(frame.kind, Kind)
                assert reencode(frame)[3:] == frame.payload
            assert decoder.pending < 3 + max_payload
        decoder.eof()
    except AudioSocketError:
        pass


def frames_strategy() -> st.SearchStrategy[Frame]:
    audio = st.builds(
        Frame,
        st.sampled_from(AUDIO_KINDS),
        st.integers(min_value=1, max_value=400).flatmap(
            lambda n: st.binary(min_size=2 * n, max_size=2 * n)
        ),
    )
    return st.one_of(
        audio,
        st.builds(lambda u: Frame(Kind.UUID, u.bytes), st.uuids()),
        st.builds(lambda d: Frame(Kind.DTMF, d.encode()), st.sampled_from("0123456789*#ABCD")),
        st.just(Frame(Kind.HANGUP, b"")),
        st.builds(lambda c: Frame(Kind.ERROR, bytes([c])), st.integers(0, 255)),
    )


@given(st.lists(frames_strategy(), max_size=12), chunk_sizes)
def test_encode_decode_round_trip(frames: list[Frame], sizes: list[int]) -> None:
    stream = b"".join(reencode(frame) for frame in frames)
    assert decode_all(chunked(stream, sizes)) == frames
