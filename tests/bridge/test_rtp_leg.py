"""The RTP leg's outbound side with the shared clock driven by hand: no sockets, no sleeps."""

from __future__ import annotations

from typing import Any

from ari.models import Channel
from bridge.ports import PortPool
from bridge.rtp_leg import RtpLeg
from bridge.ticker import Ticker
from rtp.formats import ULAW
from rtp.packet import RtpPacket

ASTERISK = ("127.0.0.1", 10314)


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


def make_leg(silence_fill: bool = True) -> tuple[RtpLeg, FakeTransport, Events]:
    events = Events()
    leg = RtpLeg(events=events, host="127.0.0.1", pool=PortPool(31000, 31010),
                 ticker=FakeTicker(), audio_format=ULAW, asterisk_host="127.0.0.1",
                 silence_fill=silence_fill)  # fmt: skip
    transport = FakeTransport()
    leg._transport = transport  # type: ignore[assignment]
    channel = Channel("em", "UnicastRTP/x", "Up", channelvars={
        "UNICASTRTP_LOCAL_ADDRESS": ASTERISK[0], "UNICASTRTP_LOCAL_PORT": str(ASTERISK[1])})
    leg.start(channel)
    return leg, transport, events


def sent_packets(transport: FakeTransport) -> list[RtpPacket]:
    assert {addr for _d, addr in transport.sent} <= {ASTERISK}
    return [RtpPacket.parse(data) for data, _addr in transport.sent]


def test_silence_fills_quiet_ticks_and_audio_replaces_it() -> None:
    leg, transport, _events = make_leg()
    leg.on_tick(1, 0)
    leg.play(b"\x55" * 400)  # 2.5 frames: the half frame waits for more audio
    leg.on_tick(2, 0)
    leg.on_tick(1, 0)
    packets = sent_packets(transport)
    assert [p.payload[:1] for p in packets] == [b"\xff", b"\x55", b"\x55", b"\xff"]
    assert [p.marker for p in packets] == [True, False, False, False]
    assert [p.timestamp - packets[0].timestamp for p in packets] == [0, 160, 320, 480]


def test_without_silence_fill_a_talkspurt_starts_with_the_marker() -> None:
    leg, transport, _events = make_leg(silence_fill=False)
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
    leg, _transport, events = make_leg()
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


def test_inbound_only_from_asterisk_and_only_once() -> None:
    leg, _transport, events = make_leg()
    packet = RtpPacket(False, 0, 7, 160, 1, payload=b"\x11" * 160).serialize()
    leg.datagram_received(packet, ASTERISK)
    leg.datagram_received(packet, ASTERISK)  # duplicate
    leg.datagram_received(packet, ("127.0.0.1", 9999))  # stranger
    leg.datagram_received(b"\x80", ASTERISK)  # not RTP
    assert events.audio == [b"\x11" * 160]
    stats = leg.stats()
    assert (stats["rx_duplicate"], stats["rx_wrong_source"], stats["rx_bad"]) == (1, 1, 1)
