"""The real service against the simulated Asterisk (driven by the recordings) and a real Pipecat
echo bot, over loopback sockets: REST calls in order, media both ways, nothing left behind."""

from __future__ import annotations

import asyncio
import itertools
import statistics

from bridge.tools.sim.asterisk import SimCall
from rtp.packet import RtpPacket
from tests.integration.conftest import Rig, running_rig

SILENCE_FREE = bytes(range(256)).replace(b"\x7f", b"")


def requests_of(rig: Rig) -> list[tuple[str, str]]:
    """(method, path) of what the bridge asked the simulated Asterisk for its calls, ids
    generalised; the reads of the start-up sweep and resyncs, and the heartbeat (a global
    variable, bridge.service.peering), are left out."""
    out = []
    for r in rig.sim.requests:
        if r.path in ("/ari/events", "/ari/asterisk/variable") or r.method == "GET":
            continue
        path = r.path
        for name, value in (("{caller}", None), ("{em}", "pcb-em-"), ("{br}", "pcb-br-")):
            if value and value in path:
                start = path.index(value)
                end = path.find("/", start)
                path = path[:start] + name + (path[end:] if end != -1 else "")
        out.append((r.method, path))
    return out


def assert_nothing_left(rig: Rig) -> None:
    sim, controller = rig.sim, rig.controller
    assert controller.calls == {}
    assert controller.pool.in_use == 0
    assert controller.ticker._members == {}
    ours = [c for c in sim.channels if c.startswith("pcb-")]
    assert ours == [], f"channels left in Asterisk: {ours}"
    assert sim.bridges == {}, f"bridges left in Asterisk: {list(sim.bridges)}"
    assert sim.open_udp_sockets() == []


def assert_rtp_stream(call: SimCall) -> list[RtpPacket]:
    """What the bridge sent Asterisk is one clean 20 ms RTP stream from one socket."""
    packets = [RtpPacket.parse(data) for _t, data, _src in call.rtp_received]
    assert packets, "the bridge sent no RTP"
    assert {src for _t, _d, src in call.rtp_received} == {call.rtp_received[0][2]}
    assert call.rtp_dropped == []  # strict RTP accepted every packet
    assert {p.payload_type for p in packets} == {0}
    assert {len(p.payload) for p in packets} == {160}
    assert len({p.ssrc for p in packets}) == 1
    stalls = 0
    for prev, cur in itertools.pairwise(packets):
        assert cur.sequence_number == (prev.sequence_number + 1) & 0xFFFF
        step = (cur.timestamp - prev.timestamp) & 0xFFFFFFFF
        if step != 160:
            # The event loop of this test process (Asterisk double, Pipecat bots and bridge
            # in one) stalled: the bridge skips the lost frames' timestamps and marks the jump
            # as a new talkspurt, never bursts. Rare, and only for such a stall.
            assert step % 160 == 0 and cur.marker, (prev, cur)
            stalls += 1
        else:
            assert not cur.marker, cur
    assert packets[0].marker
    assert stalls <= 2, f"{stalls} stalls"
    gaps = [b[0] - a[0] for a, b in zip(call.rtp_received, call.rtp_received[1:], strict=False)]
    assert 0.018 < statistics.median(gaps) < 0.022
    return packets


def caller_audio(call: SimCall) -> bytes:
    return b"".join(RtpPacket.parse(data).payload for _t, data, _a in call.rtp_sent)


async def test_basic_ulaw_bot_ends_call() -> None:
    # The recorded caller audio ends 4.1 s after bridging; the bot says goodbye after it.
    # Caller silence fill off: the bot then gets exactly the caller's RTP frames, one each.
    async with running_rig(hangup_after=5.0, caller_silence_fill=False) as rig:
        call = await rig.sim.place_call("basic_ulaw")
        await asyncio.wait_for(call.ended, 10)
        await rig.wait_idle()
        assert call.hung_up_by == "app"
        reqs = requests_of(rig)
        assert reqs[0] == ("POST", f"/ari/channels/{call.caller_id}/answer")
        setup = reqs[1:4]
        assert sorted(setup) == sorted(
            [("POST", "/ari/bridges"), ("POST", "/ari/channels/externalMedia"),
             ("POST", "/ari/bridges/{br}/addChannel")]
        )
        assert setup[-1] == ("POST", "/ari/bridges/{br}/addChannel")
        assert sorted(reqs[4:]) == sorted(
            [("DELETE", f"/ari/channels/{call.caller_id}"), ("DELETE", "/ari/channels/{em}"),
             ("DELETE", "/ari/bridges/{br}")]
        )
        assert all(r.status in (101, 200, 204) for r in rig.sim.requests), rig.sim.requests
        em_request = next(r for r in rig.sim.requests if r.path.endswith("externalMedia"))
        assert em_request.query["format"] == "ulaw"
        assert em_request.query["encapsulation"] == "rtp"
        assert em_request.query["transport"] == "udp"
        assert em_request.query["direction"] == "both"
        assert em_request.query["external_host"].startswith("127.0.0.1:310")

        bot_call = rig.bot.stats.calls[0]
        assert bot_call.custom_parameters["from_number"] == "5551000"
        assert bot_call.custom_parameters["to_number"] == "100"
        assert bot_call.custom_parameters["channel_id"] == call.caller_id
        assert bot_call.audio_frames == len(call.rtp_sent) > 100
        assert bot_call.ended_by == "bot"

        packets = assert_rtp_stream(call)
        echoed = b"".join(p.payload for p in packets)
        # Pipecat turns µ-law negative zero (0x7f) into positive zero (0xff); all else is exact.
        sent = caller_audio(call).replace(b"\x7f", b"\xff")
        # The bot echoes in 40 ms chunks and drops a trailing half chunk at its end of call.
        assert sent[: len(sent) - len(sent) % 320] in echoed
        assert_nothing_left(rig)


async def test_caller_hangup_tears_down_bridge_and_media_not_caller() -> None:
    async with running_rig() as rig:
        call = await rig.sim.place_call("caller_hangup")
        await asyncio.wait_for(call.ended, 10)
        await rig.wait_idle()
        assert call.hung_up_by == "caller"
        reqs = requests_of(rig)
        deletes = sorted(r for r in reqs if r[0] == "DELETE")
        assert deletes == [("DELETE", "/ari/bridges/{br}"), ("DELETE", "/ari/channels/{em}")]
        bot_call = rig.bot.stats.calls[0]
        await asyncio.wait_for(bot_call.finished.wait(), 5)
        assert bot_call.ended_by == "caller"
        assert_rtp_stream(call)  # silence fill while the caller said nothing (facts §8)
        assert_nothing_left(rig)


async def test_dtmf_reaches_the_bot(rig: Rig) -> None:
    call = await rig.sim.place_call("dtmf", hangup_after=3.5)
    await asyncio.wait_for(call.ended, 10)
    await rig.wait_idle()
    assert rig.bot.stats.calls[0].dtmf_digits == ["1", "2", "3", "#"]
    assert_nothing_left(rig)


async def test_stasis_argument_overrides_bot_url(rig: Rig) -> None:
    call = await rig.sim.place_call("app_args", args=[rig.bot.url + "/custom"], hangup_after=1.0)
    await asyncio.wait_for(call.ended, 10)
    await rig.wait_idle()
    assert rig.bot.stats.calls[0].path == "/ws/custom"
    assert_nothing_left(rig)


async def test_unreachable_bot_hangs_up_caller_and_cleans_up() -> None:
    async with running_rig(bot_url="ws://127.0.0.1:9/nobody") as rig:
        call = await rig.sim.place_call("basic_ulaw")
        await asyncio.wait_for(call.ended, 10)
        await rig.wait_idle()
        assert call.hung_up_by == "app"
        assert rig.bot.stats.calls == []
        assert_nothing_left(rig)


async def test_concurrent_calls_are_independent(rig: Rig) -> None:
    rig.sim.set_em_stasis_delay(-0.002)  # StasisStart before the REST answer (facts §1)
    calls = await asyncio.gather(
        *(rig.sim.place_call("concurrent", hangup_after=2.5) for _ in range(5))
    )
    await asyncio.wait_for(asyncio.gather(*(c.ended for c in calls)), 15)
    await rig.wait_idle()
    assert len(rig.bot.stats.calls) == 5
    ports = set()
    for call in calls:
        packets = assert_rtp_stream(call)
        ports.add(call.rtp_received[0][2])
        echoed = b"".join(p.payload for p in packets)
        assert caller_audio(call)[:1600].replace(b"\x7f", b"\xff") in echoed
    assert len(ports) == 5
    assert_nothing_left(rig)
