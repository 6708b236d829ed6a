"""The RTP leg with the shared clock driven by hand: no sockets, no sleeps."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from ari.models import Channel
from bridge.media.ports import PortPool
from bridge.media.rtp import RtpLeg
from bridge.media.ticker import Ticker
from rtp.formats import ALAW, SLIN16, ULAW, AudioFormat
from rtp.g711 import alaw_to_pcm16, ulaw_to_pcm16
from rtp.packet import RtpPacket
from tests.rtp import load_rtp_records

ASTERISK = ("127.0.0.1", 10314)
SSRC = 0x51EB8DC0


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


class FakeTicker(Ticker):
    def add(self, member: Any) -> None:
        self._members[id(member)] = member

    def remove(self, member: Any) -> None:
        self._members.pop(id(member), None)


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


class Events:
    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.marks: list[str] = []
        self.drained = 0

    def on_caller_audio(self, payload: bytes) -> None:
        self.audio.append(payload)

    def on_marks_played(self, names: list[str]) -> None:
        self.marks.extend(names)

    def on_playout_drained(self) -> None:
        self.drained += 1

    def on_media_failed(self, reason: str) -> None:
        raise AssertionError(reason)


def make_leg(**options: Any) -> tuple[RtpLeg, FakeTransport, Events]:
    """A started leg; `options` go to the constructor (ulaw, defaults otherwise)."""
    events = Events()
    leg = RtpLeg(events=events, host="127.0.0.1", pool=PortPool(31000, 31010),
                 ticker=FakeTicker(), asterisk_host="127.0.0.1", rng=random.Random(5),
                 **{"audio_format": ULAW, **options})  # fmt: skip
    transport = FakeTransport()
    leg._transport = transport  # type: ignore[assignment]
    channel = Channel(
        "em",
        "UnicastRTP/x",
        "Up",
        channelvars={
            "UNICASTRTP_LOCAL_ADDRESS": ASTERISK[0],
            "UNICASTRTP_LOCAL_PORT": str(ASTERISK[1]),
        },
    )
    leg.start(channel)
    return leg, transport, events


def sent_packets(transport: FakeTransport) -> list[RtpPacket]:
    assert {addr for _d, addr in transport.sent} <= {ASTERISK}
    return [RtpPacket.parse(data) for data, _addr in transport.sent]


def rtp(sequence_number: int, payload: bytes, payload_type: int = 0, ssrc: int = SSRC) -> bytes:
    timestamp = 160 * sequence_number & 0xFFFFFFFF
    return RtpPacket(False, payload_type, sequence_number & 0xFFFF, timestamp, ssrc,
                     payload=payload).serialize()  # fmt: skip


def caller_frame(sequence_number: int) -> bytes:
    """160 bytes that name their packet and are not silence."""
    return bytes([sequence_number % 100]) * 160


# ---- outbound: pacing, silence, timestamps ------------------------------------------------


def test_silence_fills_quiet_ticks_and_audio_replaces_it() -> None:
    leg, transport, _events = make_leg(playout_reserve_ms=0)
    leg.on_tick(1, 0)
    leg.play(b"\x55" * 400)  # 2.5 frames: the half frame waits for more audio
    leg.on_tick(2, 0)
    leg.on_tick(1, 0)
    packets = sent_packets(transport)
    assert [p.payload[:1] for p in packets] == [b"\xff", b"\x55", b"\x55", b"\xff"]
    assert [p.marker for p in packets] == [True, False, False, False]
    assert [p.timestamp - packets[0].timestamp for p in packets] == [0, 160, 320, 480]


def test_without_silence_fill_a_talkspurt_starts_with_the_marker() -> None:
    leg, transport, _events = make_leg(silence_fill=False, playout_reserve_ms=0)
    leg.on_tick(1, 0)
    assert transport.sent == []
    leg.play(b"\x55" * 160)
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)  # quiet again: nothing sent
    leg.play(b"\x56" * 160)
    leg.on_tick(1, 0)
    assert [p.marker for p in sent_packets(transport)] == [True, True]


def test_stall_advances_timestamps_by_the_skipped_frames() -> None:
    leg, transport, _events = make_leg()
    leg.on_tick(1, 0)
    leg.on_tick(2, 3)  # the loop stalled: 3 frame times lost, 2 frames sent now
    stamps = [p.timestamp for p in sent_packets(transport)]
    assert [s - stamps[0] for s in stamps] == [0, 160 * 4, 160 * 5]
    assert [p.sequence_number - sent_packets(transport)[0].sequence_number
            for p in sent_packets(transport)] == [0, 1, 2]  # fmt: skip


def test_marks_and_drain() -> None:
    leg, _transport, events = make_leg(playout_reserve_ms=0)
    leg.play(b"\x55" * 320)
    leg.mark("two-frames")
    leg.play(b"\x56" * 100)
    leg.drain()  # pads the 100-byte tail to a frame
    leg.on_tick(1, 0)
    assert events.marks == []
    leg.on_tick(1, 0)
    assert events.marks == ["two-frames"]
    leg.on_tick(1, 0)
    assert events.drained == 0
    leg.on_tick(1, 0)
    assert events.drained == 1


# ---- outbound: the playout reserve --------------------------------------------------------


def payload_bytes(transport: FakeTransport) -> list[int]:
    """The first byte of each packet sent: 0xff is silence, anything else bot audio."""
    return [p.payload[0] for p in sent_packets(transport)]


def test_a_talkspurt_waits_for_the_reserve_time() -> None:
    leg, transport, _events = make_leg()  # 40 ms reserve
    leg.play(b"\x55" * 320)
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    # Exactly two frame times later than without a reserve.
    assert payload_bytes(transport) == [0xFF, 0xFF, 0x55, 0x55, 0xFF]


def test_one_long_message_waits_too() -> None:
    # 2 s at once could be the first of many real-time messages of 2 s: no lead proven.
    leg, transport, _events = make_leg()
    leg.play(b"\x55" * 16000)
    leg.on_tick(3, 0)
    assert payload_bytes(transport) == [0xFF, 0xFF, 0x55]


def test_a_burst_ahead_of_real_time_starts_at_once() -> None:
    leg, transport, _events = make_leg()
    for _ in range(4):  # 160 ms in 40 ms messages before the first tick: a TTS burst
        leg.play(b"\x55" * 320)
    leg.on_tick(1, 0)
    assert payload_bytes(transport) == [0x55]


def test_a_lead_shown_during_the_hold_ends_it() -> None:
    leg, transport, _events = make_leg()
    leg.play(b"\x55" * 160)
    leg.on_tick(1, 0)
    for _ in range(4):
        leg.play(b"\x56" * 160)
    # Five frames by the second tick: three more than real time explains, a reserve ahead.
    leg.on_tick(1, 0)
    leg.on_tick(5, 0)
    assert payload_bytes(transport) == [0xFF, 0x55, 0x56, 0x56, 0x56, 0x56, 0xFF]


def test_a_stall_counts_towards_the_hold() -> None:
    leg, transport, _events = make_leg()
    leg.play(b"\x55" * 320)
    leg.on_tick(2, 3)
    assert payload_bytes(transport) == [0x55, 0x55]


def test_only_the_start_of_a_talkspurt_is_held() -> None:
    leg, transport, _events = make_leg(silence_fill=False)
    leg.play(b"\x55" * 160)
    for _ in range(3):
        leg.on_tick(1, 0)
        leg.play(b"\x56" * 160)  # a real-time sender, one frame per tick
    leg.on_tick(4, 0)
    # Held for two ticks, then a frame on every tick: the reserve stays queued until the end.
    assert payload_bytes(transport) == [0x55, 0x56, 0x56, 0x56]
    assert [p.marker for p in sent_packets(transport)] == [True, False, False, False]
    leg.play(b"\x57" * 160)  # after running dry: a new talkspurt, held again
    leg.on_tick(2, 0)
    assert len(transport.sent) == 4
    leg.on_tick(1, 0)
    assert payload_bytes(transport)[4:] == [0x57]
    assert sent_packets(transport)[4].marker


@pytest.mark.parametrize("message_ms", [20, 40, 95, 137.5, 1000])
def test_a_real_time_bot_with_late_messages_never_gaps(message_ms: float) -> None:
    """Messages sent at exactly real time reach us up to 35 ms late: no silence in the speech,
    also where a frame straddles two messages."""
    leg, transport, _events = make_leg()
    rng = random.Random(message_ms)
    size = int(message_ms * 8)
    count = int(6000 // message_ms)  # 6 s of speech
    arrivals, last = [], 0.0
    for k in range(count):  # one WebSocket: late, but never out of order
        last = max(last, k * message_ms + rng.uniform(0, 35))
        arrivals.append((last, k))
    phase = rng.uniform(0, 20)
    ticks = [(phase + 20 * n, -1) for n in range(6000 // 20 + 10)]
    for _time, k in sorted(arrivals + ticks):
        if k >= 0:
            leg.play(bytes([k % 200 + 1]) * size)
        else:
            leg.on_tick(1, 0)
    sent = b"".join(p.payload for p in sent_packets(transport))
    speech = sent.lstrip(b"\xff")[: count * size // 160 * 160]
    assert speech == b"".join(bytes([k % 200 + 1]) * size for k in range(count))[: len(speech)]
    assert len(speech) == count * size // 160 * 160


def test_marks_wait_for_their_audio_through_the_hold() -> None:
    leg, _transport, events = make_leg()
    leg.mark("before-any-audio")
    leg.play(b"\x55" * 160)
    leg.mark("after-one-frame")
    leg.on_tick(1, 0)
    # Held: the first mark's audio (none) is out, the second's is not.
    assert events.marks == ["before-any-audio"]
    leg.on_tick(1, 0)
    assert events.marks == ["before-any-audio"]
    leg.on_tick(1, 0)
    assert events.marks == ["before-any-audio", "after-one-frame"]


def test_clear_during_the_hold_drops_the_audio_and_releases_marks_at_once() -> None:
    leg, transport, events = make_leg()
    leg.play(b"\x55" * 200)
    leg.mark("never-played")
    leg.on_tick(1, 0)
    leg.clear()
    assert events.marks == ["never-played"]
    leg.on_tick(3, 0)
    assert payload_bytes(transport) == [0xFF] * 4
    # The next audio is a new talkspurt with its own reserve.
    leg.play(b"\x56" * 160)
    leg.on_tick(3, 0)
    assert payload_bytes(transport)[4:] == [0xFF, 0xFF, 0x56]


def test_drain_plays_out_what_the_reserve_holds() -> None:
    leg, transport, events = make_leg(silence_fill=False)
    leg.play(b"\x55" * 200)
    leg.mark("end")
    leg.drain()
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    tail = b"\x55" * 40 + b"\xff" * 120
    assert [p.payload for p in sent_packets(transport)] == [b"\x55" * 160, tail]
    assert events.marks == ["end"]
    assert events.drained == 0
    leg.on_tick(1, 0)
    assert events.drained == 1


def test_drain_with_nothing_queued_is_reported_on_the_next_tick() -> None:
    leg, transport, events = make_leg()
    leg.drain()
    assert events.drained == 0
    leg.on_tick(1, 0)
    assert events.drained == 1
    assert transport.sent == []


def test_overflow_is_dropped_counted_and_logged_once_per_burst() -> None:
    log = FakeLog()
    leg, transport, _events = make_leg(max_queue_ms=100, log=log, playout_reserve_ms=0)
    leg.play(b"\x55" * 800)  # exactly the cap
    leg.play(b"\x56" * 160)
    leg.on_tick(1, 0)
    leg.play(b"\x56" * 320)  # one frame fits again, one does not: the same burst
    assert leg.stats()["tx_overflow_bytes"] == 320
    assert leg.stats()["tx_overflow_bursts"] == 1
    assert [event for level, event, _ in log.lines if level == "warning"] == ["bot_audio_overflow"]
    leg.on_tick(20, 0)  # ran dry
    leg.play(b"\x57" * 1000)
    assert leg.stats()["tx_overflow_bursts"] == 2
    assert len([line for line in log.lines if line[1] == "bot_audio_overflow"]) == 2
    assert len(transport.sent) == 21


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        make_leg(playout_reserve_ms=-1)
    with pytest.raises(ValueError):
        make_leg(reorder_window_ms=-20)


# ---- inbound ------------------------------------------------------------------------------


def test_inbound_only_from_asterisk_and_only_once() -> None:
    leg, _transport, events = make_leg()
    packet = RtpPacket(False, 0, 7, 160, 1, payload=b"\x11" * 160).serialize()
    leg.datagram_received(packet, ASTERISK)
    leg.datagram_received(packet, ASTERISK)  # duplicate
    leg.datagram_received(packet, ("127.0.0.1", 9999))  # stranger
    leg.datagram_received(b"\x80", ASTERISK)  # not RTP
    leg.datagram_received(rtp(8, b"\x11" * 160, payload_type=8), ASTERISK)  # not ulaw
    leg.datagram_received(b"\x80" * 2049, ASTERISK)  # larger than any frame
    assert events.audio == [b"\x11" * 160]
    stats = leg.stats()
    assert (stats["rx_duplicate"], stats["rx_wrong_source"], stats["rx_bad"]) == (1, 1, 1)
    assert (stats["rx_wrong_pt"], stats["rx_oversize"], stats["rx_packets"]) == (1, 1, 1)


def test_packets_before_start_are_counted_and_dropped() -> None:
    events = Events()
    leg = RtpLeg(events=events, host="127.0.0.1", pool=PortPool(31000, 31010),
                 ticker=FakeTicker(), audio_format=ULAW, asterisk_host="127.0.0.1")  # fmt: skip
    leg.datagram_received(rtp(1, caller_frame(1)), ASTERISK)
    assert events.audio == []
    assert leg.stats()["rx_before_start"] == 1


def test_inbound_reordering_within_the_window_is_undone() -> None:
    leg, _transport, events = make_leg(caller_silence_fill=False)
    for sequence_number in (1, 2, 4, 3, 5):
        leg.datagram_received(rtp(sequence_number, caller_frame(sequence_number)), ASTERISK)
    assert events.audio == [caller_frame(n) for n in (1, 2, 3, 4, 5)]
    stats = leg.stats()
    assert (stats["rx_reordered"], stats["rx_lost"], stats["rx_packets"]) == (1, 0, 5)


def test_inbound_loss_is_skipped_when_the_window_closes_on_the_ticks() -> None:
    leg, _transport, events = make_leg(caller_silence_fill=False)
    for sequence_number in (1, 2, 4):
        leg.datagram_received(rtp(sequence_number, caller_frame(sequence_number)), ASTERISK)
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    assert events.audio == [caller_frame(1), caller_frame(2)]
    leg.on_tick(1, 0)
    assert events.audio == [caller_frame(n) for n in (1, 2, 4)]
    leg.datagram_received(rtp(3, caller_frame(3)), ASTERISK)
    stats = leg.stats()
    assert (stats["rx_lost"], stats["rx_late"], stats["rx_packets"]) == (1, 1, 3)


def test_reorder_window_zero_passes_packets_as_they_come() -> None:
    leg, _transport, events = make_leg(reorder_window_ms=0)
    for sequence_number in (1, 3, 2):
        leg.datagram_received(rtp(sequence_number, caller_frame(sequence_number)), ASTERISK)
    assert events.audio == [caller_frame(1), caller_frame(3)]
    stats = leg.stats()
    assert (stats["rx_lost"], stats["rx_late"]) == (1, 1)


def test_stats_keys() -> None:
    leg, _transport, _events = make_leg()
    assert set(leg.stats()) == {
        "rx_packets", "rx_silence_filled", "rx_lost", "rx_late", "rx_duplicate", "rx_reordered",
        "rx_jumps", "rx_ssrc_changes", "rx_restarts", "rx_bad", "rx_wrong_source", "rx_wrong_pt",
        "rx_oversize", "rx_before_start", "icmp_errors", "tx_packets", "tx_silence",
        "tx_overflow_bytes", "tx_overflow_bursts", "tx_queued_ms",
    }  # fmt: skip
    assert not any(leg.stats().values())


# ---- inbound: silence for the bot while the caller sends nothing --------------------------


def test_caller_silence_from_the_first_tick_until_rtp_comes() -> None:
    leg, _transport, events = make_leg()
    leg.on_tick(1, 0)
    leg.on_tick(2, 0)
    assert events.audio == [ULAW.silence()] * 3
    leg.datagram_received(rtp(1, caller_frame(1)), ASTERISK)
    leg.on_tick(1, 0)
    assert events.audio[3:] == [caller_frame(1)]
    assert leg.stats()["rx_silence_filled"] == 3
    assert leg.stats()["rx_packets"] == 1


def test_caller_silence_begins_after_two_empty_ticks_and_ends_with_rtp() -> None:
    leg, _transport, events = make_leg()
    sequence_number = 1
    for _ in range(5):  # a live stream: one packet per tick
        leg.datagram_received(rtp(sequence_number, caller_frame(sequence_number)), ASTERISK)
        sequence_number += 1
        leg.on_tick(1, 0)
    events.audio.clear()
    leg.on_tick(1, 0)  # one empty tick: a packet may just be late
    assert events.audio == []
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    assert events.audio == [ULAW.silence()] * 2
    leg.datagram_received(rtp(sequence_number, caller_frame(sequence_number)), ASTERISK)
    leg.on_tick(1, 0)
    assert events.audio[2:] == [caller_frame(sequence_number)]
    leg.datagram_received(rtp(sequence_number + 1, caller_frame(sequence_number + 1)), ASTERISK)
    leg.on_tick(1, 0)
    assert events.audio[3:] == [caller_frame(sequence_number + 1)]


def test_a_jittery_live_stream_gets_no_silence() -> None:
    leg, _transport, events = make_leg()
    rng = random.Random(9)
    # Asterisk's spacing around a Playback (asterisk-facts §9): 13.7 to 26.4 ms.
    arrivals, now = [], 0.0
    for _ in range(500):
        now += rng.uniform(13.7, 26.4) if arrivals else 5
        arrivals.append(now)
    drift = now / 500 - 20  # keep the ticker at the stream's mean rate
    ticks = [20 * n + n * drift for n in range(1, 500)]
    for _time, kind, n in sorted([(t, 1, i) for i, t in enumerate(arrivals)]
                                 + [(t, 0, 0) for t in ticks]):  # fmt: skip
        if kind:
            leg.datagram_received(rtp(n, caller_frame(n)), ASTERISK)
        else:
            leg.on_tick(1, 0)
    assert leg.stats()["rx_silence_filled"] == 0
    assert events.audio == [caller_frame(n) for n in range(500)]


def test_no_caller_silence_while_the_window_waits_for_a_missing_packet() -> None:
    leg, _transport, events = make_leg()
    for sequence_number in (1, 2, 4):
        leg.datagram_received(rtp(sequence_number, caller_frame(sequence_number)), ASTERISK)
    events.audio.clear()
    leg.on_tick(1, 0)
    leg.on_tick(1, 0)
    assert events.audio == []
    leg.on_tick(1, 0)  # the window closes: 4 goes out in place of the silence
    assert events.audio == [caller_frame(4)]
    assert leg.stats()["rx_silence_filled"] == 0


def test_a_stall_fills_at_most_the_frames_of_the_tick() -> None:
    leg, _transport, events = make_leg()
    leg.datagram_received(rtp(1, caller_frame(1)), ASTERISK)
    leg.on_tick(1, 0)
    leg.on_tick(2, 5)
    assert events.audio[1:] == [ULAW.silence()] * 2


def test_caller_silence_fill_can_be_turned_off() -> None:
    leg, _transport, events = make_leg(caller_silence_fill=False)
    leg.on_tick(10, 0)
    assert events.audio == []
    assert leg.stats()["rx_silence_filled"] == 0


# ---- formats: what Asterisk sends us, and what we send back -------------------------------


@pytest.mark.parametrize(("audio_format", "decode"), [(ULAW, ulaw_to_pcm16), (ALAW, alaw_to_pcm16)])
def test_g711_silence_is_the_quietest_sample(audio_format: AudioFormat, decode: Any) -> None:
    leg, transport, events = make_leg(audio_format=audio_format)
    leg.on_tick(1, 0)
    (caller_silence,) = events.audio
    (sent,) = sent_packets(transport)
    assert sent.payload == caller_silence == audio_format.silence()
    assert sent.payload_type == audio_format.payload_type
    samples = memoryview(decode(caller_silence)).cast("h")
    # G.711 has no code for zero: silence is the smallest magnitude there is (0 or ±8).
    assert set(samples) <= {0, 8}


def test_recorded_ulaw_silence_is_our_silence_byte() -> None:
    silent = [bytes.fromhex(r["data_hex"])[12:] for r in load_rtp_records("basic_ulaw")
              if r["dir"] == "in" and r["rms"] == 0.0]  # fmt: skip
    assert silent
    # Asterisk's silent ulaw frames are 0xff (+0) with a 0x7f (-0) here and there.
    assert all(set(frame) <= {0xFF, 0x7F} for frame in silent)
    assert set(memoryview(ulaw_to_pcm16(ULAW.silence())).cast("h")) == {0}


def feed_recording(leg: RtpLeg, scenario: str) -> list[bytes]:
    """Replay the packets Asterisk sent in `scenario`, from its address; their payloads."""
    payloads = []
    for record in load_rtp_records(scenario):
        if record["dir"] == "in":
            data = bytes.fromhex(record["data_hex"])
            leg.datagram_received(data, ASTERISK)
            payloads.append(data[12:])
    return payloads


def test_slin16_in_and_ulaw_out() -> None:
    leg, transport, events = make_leg(audio_format=SLIN16, tx_format=ULAW)
    leg.on_tick(1, 0)
    assert events.audio == [bytes(640)]  # the caller's silence is slin16 zeros
    recorded = feed_recording(leg, "inbound_audio_check_slin16_channel_send_ulaw")
    assert events.audio[1:] == recorded
    assert {len(p) for p in recorded} == {640}
    leg.datagram_received(rtp(1, b"\xff" * 160, payload_type=0), ASTERISK)  # not what it sends
    assert leg.stats()["rx_wrong_pt"] == 1
    # Back to Asterisk in ulaw, as it accepts on this channel (asterisk-facts §10).
    leg.play(b"\x55" * 480)
    leg.on_tick(3, 0)
    packets = sent_packets(transport)
    assert [p.payload_type for p in packets] == [0] * 4
    assert [len(p.payload) for p in packets] == [160] * 4
    assert [p.timestamp - packets[0].timestamp for p in packets] == [0, 160, 320, 480]
    assert packets[0].payload == ULAW.silence()


def steps(packets: list[RtpPacket]) -> set[tuple[int, int]]:
    """Every (timestamp step, sequence step) between neighbours."""
    return {(b.timestamp - a.timestamp, b.sequence_number - a.sequence_number)
            for a, b in itertools.pairwise(packets)}  # fmt: skip


def test_recorded_ulaw_answer_on_a_slin16_channel_has_our_framing() -> None:
    recorded = [RtpPacket.parse(bytes.fromhex(r["data_hex"]))
                for r in load_rtp_records("inbound_audio_check_slin16_channel_send_ulaw")
                if r["dir"] == "out"]  # fmt: skip
    leg, transport, _events = make_leg(audio_format=SLIN16, tx_format=ULAW, playout_reserve_ms=0)
    for packet in recorded:
        leg.play(packet.payload)
        leg.on_tick(1, 0)
    ours = sent_packets(transport)
    assert [p.payload for p in ours] == [p.payload for p in recorded]
    assert steps(ours) == steps(recorded) == {(160, 1)}


def test_slin16_both_ways_frames_as_recorded() -> None:
    leg, transport, events = make_leg(audio_format=SLIN16, caller_silence_fill=False)
    recorded = feed_recording(leg, "slin16")
    assert events.audio == recorded
    assert leg.stats()["rx_lost"] == 0
    leg.play(b"\x12\x34" * 320 * 3)
    leg.on_tick(3, 0)
    packets = sent_packets(transport)
    assert [(p.payload_type, len(p.payload)) for p in packets] == [(118, 640)] * 3
    assert [p.timestamp - packets[0].timestamp for p in packets] == [0, 320, 640]
