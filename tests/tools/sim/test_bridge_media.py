"""What a bridge plays and mixes: softmix RTP, ring-back and music on hold for a caller.

Ring-back and bridge MOH are not recorded; the answers follow res/ari/resource_bridges.c and
res/res_stasis_playback.c (see bridge.tools.sim.bridgemedia), the Playback object and the
events the shapes of the recorded channel playback siblings.
"""

from __future__ import annotations

import numpy as np

from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.mixing import FRAME, MixBuffer, RtpSender, mix, ring_tone, wav_bytes
from bridge.tools.sim.templates import ULAW
from tests.tools.sim.ari_client import (
    Ari,
    Bridged,
    assert_asterisk_headers,
    assert_nothing_left,
    bridge_call,
    hang_up,
    rtp_fields,
)

# -- pure ---------------------------------------------------------------------------------


def test_mix_sums_the_others_and_clips() -> None:
    buffer = MixBuffer()
    buffer.push("caller", np.full(FRAME, 20000, dtype=np.int16))
    buffer.push("bot", np.full(FRAME + 10, 20000, dtype=np.int16))  # a frame and a bit
    frame = buffer.take_frame()
    assert set(frame) == {"caller", "bot"}
    assert mix(frame, exclude="bot").tolist() == [20000] * FRAME
    assert mix(frame).tolist() == [32767] * FRAME  # clipped
    second = buffer.take_frame()
    assert second["bot"][:10].tolist() == [20000] * 10 and not second["bot"][10:].any()
    assert buffer.take_frame() == {}


def test_rtp_sender_starts_like_asterisk() -> None:
    sender = RtpSender(ULAW, ssrc=7, seq=65535)
    first, second = sender.packet(b"\xff" * 160), sender.packet(b"\xff" * 160)
    assert rtp_fields(first) == (2, 0, 0, 65535, 160, 7)
    assert rtp_fields(second)[3:5] == (0, 320)


def test_ring_cadence_and_wav_header() -> None:
    assert ring_tone(0).any() and not ring_tone(2 * 8000).any()  # 2 s on, 4 s off
    assert ring_tone(6 * 8000).any()
    data = wav_bytes(np.zeros(8000, dtype=np.int16))
    assert len(data) == 44 + 16000 and data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "


# -- ring-back and hold -------------------------------------------------------------------


async def caller_alone(sim: SimulatedAsterisk, ari: Ari) -> Bridged:
    """A bridged caller whose bot leg left the bridge (a transfer is under way)."""
    bridged = await bridge_call(ari, await sim.place_call("basic_ulaw", audio=b""))
    removed = await ari.request("POST", f"/ari/bridges/{bridged.bridge['id']}/removeChannel",
                                channel=bridged.em["id"])  # fmt: skip
    assert removed.status == 204
    return bridged


async def test_ringback_plays_until_stopped(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    bridged = await caller_alone(sim, ari)
    call, bid = bridged.call, bridged.bridge["id"]
    answer = await ari.request("POST", f"/ari/bridges/{bid}/play", media="tone:ring",
                               playbackId="rb-1")  # fmt: skip
    assert (answer.status, answer.reason) == (201, "Created")
    assert answer.headers["Location"] == "/ari/playbacks/rb-1"
    assert_asterisk_headers(answer.headers, True)
    assert answer.text == ('{"id":"rb-1","media_uri":"tone:ring","target_uri":"bridge:'
                           f'{bid}","language":"en","state":"queued"}}')  # fmt: skip
    started = await events.wait_for("PlaybackStarted")
    assert started["playback"] == {**answer.body, "state": "playing"}
    assert list(started) == ["type", "timestamp", "playback", "asterisk_id", "application"]
    assert call.hearing == ["tone:ring"]
    peer = [
        e
        for e in events.parsed
        if e["type"] == "ChannelVarset"
        and e["variable"] == "BRIDGEPEER"
        and e["channel"]["id"] == call.caller_id
    ][-1]
    assert peer["value"].startswith("Announcer/ARI-") and peer["value"].endswith(";2")
    assert not any(e["type"] == "ChannelEnteredBridge" and "Announcer" in e["channel"]["name"]
                   for e in events.parsed)  # fmt: skip
    live = await ari.request("GET", "/ari/playbacks/rb-1")
    assert (live.status, live.body["state"]) == (200, "playing")
    got = await ari.request("GET", f"/ari/bridges/{bid}")
    assert got.body["channels"] == [call.caller_id]  # the Announcer is not listed
    stopped = await ari.request("DELETE", "/ari/playbacks/rb-1")
    assert stopped.status == 204
    finished = await events.wait_for("PlaybackFinished")
    assert finished["playback"]["state"] == "done"
    assert call.hearing == [] and [c for _, c, _ in call.heard] == ["start", "stop"]
    again = await ari.request("DELETE", "/ari/playbacks/rb-1")
    assert (again.status, again.body) == (404, {"message": "Playback not found"})
    for path in (f"/ari/channels/{call.caller_id}", f"/ari/channels/{bridged.em['id']}",
                 f"/ari/bridges/{bid}"):  # fmt: skip
        assert (await ari.request("DELETE", path)).status == 204
    await events.bridge_destroyed(bid)
    assert_nothing_left(sim)


async def test_bridge_playbacks_queue_and_cancel(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    bridged = await caller_alone(sim, ari)
    bid = bridged.bridge["id"]
    sim.sounds["sound:short"] = 0.05
    for pid, media in (("p1", "sound:short"), ("p2", "sound:short"), ("p3", "number:12")):
        answer = await ari.request("POST", f"/ari/bridges/{bid}/play/{pid}", media=media)
        assert answer.status == 201
    assert (await ari.request("DELETE", "/ari/playbacks/p2")).status == 204  # still queued
    third = await events.wait_until(lambda e: e["type"] == "PlaybackStarted"
                                    and e["playback"]["id"] == "p3")  # fmt: skip
    assert third["playback"]["target_uri"] == f"bridge:{bid}"
    order = [(e["type"], e["playback"]["id"]) for e in events.parsed if "playback" in e]
    assert order == [("PlaybackStarted", "p1"), ("PlaybackFinished", "p1"),
                     ("PlaybackFinished", "p2"), ("PlaybackStarted", "p3")]  # fmt: skip
    stuck = await ari.request("DELETE", "/ari/playbacks/p3")  # number: is not controllable
    assert (stuck.status, stuck.body) == (500, {"message": "Could not stop playback"})
    await events.wait_until(lambda e: e["type"] == "PlaybackFinished"
                            and e["playback"]["id"] == "p3")  # fmt: skip
    assert (await ari.request("POST", "/ari/bridges/nope/play", media="tone:ring")).status == 404
    nomedia = await ari.request("POST", f"/ari/bridges/{bid}/play")
    assert (nomedia.status, nomedia.body) == (500, {"error": "Allocation failed"})
    await hang_up(ari, bridged)
    await events.bridge_destroyed(bid)
    assert_nothing_left(sim)


async def test_a_caller_leaving_fails_the_ringback(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    bridged = await caller_alone(sim, ari)
    bid = bridged.bridge["id"]
    assert (await ari.request("POST", f"/ari/bridges/{bid}/play", media="tone:ring",
                              playbackId="rb-2")).status == 201  # fmt: skip
    await events.wait_for("PlaybackStarted")
    assert (await ari.request("DELETE", f"/ari/channels/{bridged.call.caller_id}")).status == 204
    finished = await events.wait_for("PlaybackFinished")
    assert finished["playback"]["state"] == "failed"  # the Announcer was kicked out
    assert (await ari.request("GET", "/ari/playbacks/rb-2")).status == 404
    await hang_up(ari, bridged)
    assert_nothing_left(sim)


async def test_music_on_hold_in_a_bridge(sim: SimulatedAsterisk, ari: Ari) -> None:
    await ari.connect()
    bridged = await caller_alone(sim, ari)
    call, bid = bridged.call, bridged.bridge["id"]
    assert (await ari.request("POST", f"/ari/bridges/{bid}/moh")).status == 204
    assert call.hearing == ["moh:default"]
    assert (await ari.request("POST", f"/ari/bridges/{bid}/moh", mohClass="jazz")).status == 204
    assert call.hearing == ["moh:jazz"]
    assert (await ari.request("DELETE", f"/ari/bridges/{bid}/moh")).status == 204
    assert call.hearing == []
    twice = await ari.request("DELETE", f"/ari/bridges/{bid}/moh")
    assert (twice.status, twice.body) == (409, {"message": "Bridge isn't playing music"})
    missing = await ari.request("POST", "/ari/bridges/nope/moh")
    assert (missing.status, missing.reason, missing.body) == (
        404, "Not found", {"message": "Bridge not found"})  # fmt: skip
    await hang_up(ari, bridged)
    assert_nothing_left(sim)


async def test_softmix_sends_the_mix_every_20_ms(sim: SimulatedAsterisk, ari: Ari) -> None:
    """A hidden Announcer makes caller + bot leg + it three: the bot leg gets the ring tone
    mixed with the (silent) caller, continuously, in Asterisk's own stream."""
    events = await ari.connect()
    bridged = await bridge_call(ari, await sim.place_call("basic_ulaw", audio=b""))
    bid = bridged.bridge["id"]
    assert (await ari.request("POST", f"/ari/bridges/{bid}/play", media="tone:ring",
                              playbackId="rb-3")).status == 201  # fmt: skip
    await events.wait_for("PlaybackStarted")
    assert (await ari.request("GET", f"/ari/bridges/{bid}")).body["technology"] == "softmix"
    packets = [await bridged.udp.recv() for _ in range(6)]
    fields = [rtp_fields(data) for _, data, _ in packets]
    assert [f[4] - fields[0][4] for f in fields] == [160 * i for i in range(6)]
    assert len({f[5] for f in fields}) == 1
    assert any(set(data[12:]) != {0xFF} for _, data, _ in packets)  # the tone is in the mix
    assert (await ari.request("DELETE", "/ari/playbacks/rb-3")).status == 204
    await events.wait_for("PlaybackFinished")
    got = await ari.request("GET", f"/ari/bridges/{bid}")
    assert got.body["technology"] == "simple_bridge"  # the Announcer left
    await hang_up(ari, bridged)
    await events.bridge_destroyed(bid)
    assert_nothing_left(sim)


async def test_channel_ringback_and_hold_are_heard_too(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    call = await sim.place_call("basic_ulaw", audio=b"")
    await events.wait_for("StasisStart", call.caller_id)
    path = f"/ari/channels/{call.caller_id}"
    assert (await ari.request("POST", f"{path}/play", media="tone:ring",
                              playbackId="cr-1")).status == 201  # fmt: skip
    await events.wait_for("PlaybackStarted")
    assert call.hearing == ["tone:ring"]  # a tone plays until it is stopped
    assert (await ari.request("DELETE", "/ari/playbacks/cr-1")).status == 204
    finished = await events.wait_for("PlaybackFinished")
    assert finished["playback"]["state"] == "done" and call.hearing == []
    assert (await ari.request("POST", f"{path}/moh", mohClass="jazz")).status == 204
    assert call.hearing == ["moh:jazz"]
    assert (await ari.request("DELETE", f"{path}/moh")).status == 204
    assert call.hearing == []
    assert (await ari.request("DELETE", path)).status == 204
    await events.wait_for("StasisEnd", call.caller_id)
    assert_nothing_left(sim)
