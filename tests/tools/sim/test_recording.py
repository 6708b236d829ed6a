"""Bridge and snoop recordings against bridge_record_mixed and snoop_record, and the faults.

The files are real audio: the caller's far end says a 700 Hz beep (as far end 205 does), the
bot sends 1300 Hz; a bridge recording holds both sides, a snoop `in` only the caller, `out`
only the bot. The bot's packets are paced by Asterisk's own 20 ms stream, not by sleeping.
"""

from __future__ import annotations

import io
import wave
from typing import Any

import numpy as np
import pytest

from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.recorder import RecordingFault
from bridge.tools.sim.recording import load_recording
from bridge.tools.sim.targets import tone
from bridge.tools.sim.templates import ULAW, rtp_stream
from tests.tools.sim.ari_client import (
    Ari,
    Bridged,
    assert_asterisk_headers,
    assert_nothing_left,
    bridge_call,
    hang_up,
    per_channel,
    shape,
)

BEEP = tone(700.0, 0.4)  # what far end 205 plays first
OURS = tone(1300.0, 1.5)


def peak_hz(samples: np.ndarray[Any, Any]) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / 8000)[int(np.argmax(spectrum))])


def read_wav(data: bytes) -> tuple[wave._wave_params, np.ndarray[Any, Any]]:
    with wave.open(io.BytesIO(data)) as wav:
        params = wav.getparams()
        samples = np.frombuffer(wav.readframes(params.nframes), dtype="<i2")
    return params, samples


async def send_ours(bridged: Bridged, packets: int, *, wait: int = 0) -> None:
    """The bot's 1300 Hz, one packet for each packet Asterisk sends (its 20 ms clock), after
    `wait` of Asterisk's packets (the recording's bot started 0.8 s in, after the beep)."""
    for _ in range(wait):
        await bridged.udp.recv()
    for packet in rtp_stream(ULAW, OURS, ssrc=4242, first_seq=100)[:packets]:
        await bridged.udp.recv()
        bridged.udp.send(packet, bridged.asterisk_port)


async def test_a_bridge_recording_as_recorded(sim: SimulatedAsterisk, ari: Ari) -> None:
    recording = load_recording("bridge_record_mixed")
    events = await ari.connect()
    call = await sim.place_call("bridge_record_mixed", audio=BEEP, audio_start=0.0, echo=True)
    bridged = await bridge_call(ari, call, "em-record")
    bid, cid = bridged.bridge["id"], call.caller_id
    name = f"pipecat-lab/bridge-{cid}"
    recorded = {ex.note: ex for ex in recording.rest if ex.note}
    started = await ari.request("POST", f"/ari/bridges/{bid}/record", name=name, format="wav",
                                ifExists="overwrite", beep="false", maxDurationSeconds="20",
                                terminateOn="none")  # fmt: skip
    theirs = next(ex for ex in recording.rest if ex.status == 201)
    assert (started.status, started.reason, shape(started.body)) == (201, "Created",
                                                                    shape(theirs.body))  # fmt: skip
    assert started.body == {"name": name, "format": "wav", "state": "queued",
                            "target_uri": f"bridge:{bid}"}  # fmt: skip
    assert started.headers["Location"] == f"/ari/recordings/live/pipecat-lab%2Fbridge-{cid}"
    live = await events.wait_for("RecordingStarted")
    assert live["recording"] == {**started.body, "state": "recording"}
    mixing = await ari.request("GET", f"/ari/bridges/{bid}")
    assert mixing.body["technology"] == "softmix" and mixing.body["channels"] == [cid, "em-record"]
    got = await ari.request("GET", f"/ari/recordings/live/pipecat-lab%2Fbridge-{cid}")
    assert got.body == {**started.body, "state": "recording"}
    probes = [({"name": name, "format": "wav"}, 409),
              ({"name": "../pipecat-lab-escape", "format": "wav"}, 500),
              ({"name": "pipecat-lab/../../escape", "format": "wav"}, 500),
              ({"name": "pipecat-lab/x", "format": "nosuchformat"}, 422)]  # fmt: skip
    for params, status in probes:
        ours = await ari.request("POST", f"/ari/bridges/{bid}/record", **params)
        theirs = next(ex for ex in recording.rest if ex.status == status
                      and ex.path.endswith("/record"))  # fmt: skip
        assert (ours.status, ours.reason) == (theirs.status, theirs.reason)
        assert ours.text == theirs.body_text.replace("1796140403.1823", cid)
        assert_asterisk_headers(ours.headers, True)
    await send_ours(bridged, 40, wait=25)  # 0.8 s of 1300 Hz after the beep, echoed back
    stop = await ari.request("POST", f"/ari/recordings/live/pipecat-lab%2Fbridge-{cid}/stop")
    assert stop.status == 204
    finished = await events.wait_for("RecordingFinished")
    assert finished["recording"]["state"] == "done"
    assert finished["recording"]["duration"] == 1  # whole seconds: ~1.2 s were recorded
    gone = await ari.request("GET", f"/ari/recordings/live/pipecat-lab%2Fbridge-{cid}")
    assert (gone.status, gone.body) == (404, {"message": "Recording not found"})
    assert (await ari.request("GET", f"/ari/bridges/{bid}")).body["technology"] == "simple_bridge"
    listed = await ari.request("GET", "/ari/recordings/stored")
    assert listed.body == [{"name": name, "format": "wav"}]
    one = await ari.request("GET", f"/ari/recordings/stored/pipecat-lab%2Fbridge-{cid}")
    assert one.body == {"name": name, "format": "wav"}
    file = await ari.request("GET", f"/ari/recordings/stored/pipecat-lab%2Fbridge-{cid}/file")
    assert (file.status, file.headers["Content-Type"]) == (200, "audio/wav")
    assert file.headers["Server"] == "Asterisk/23.4.1"
    assert file.data == sim.stored_recordings[name].data
    params, samples = read_wav(file.data)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 8000)
    assert params.nframes / 8000 == pytest.approx(1.2, abs=0.15)
    assert peak_hz(samples[: 8000 * 3 // 10]) == pytest.approx(700, abs=30)  # the beep
    assert peak_hz(samples[8000 * 6 // 10 :]) == pytest.approx(1300, abs=30)  # us + echo
    # Silence between them: 50 ms of it somewhere in 0.3-0.6 s (where exactly moves with the
    # loop's scheduling when the machine is busy).
    windows = range(8000 * 3 // 10, 8000 * 6 // 10 - 400, 80)
    assert any(np.abs(samples[i : i + 400]).max() < 100 for i in windows)
    for path in ("..%2Fpipecat-lab-escape", "pipecat-lab%2F..%2F..%2F..%2Fetc%2Fpasswd",
                 "pipecat-lab-nosuch"):  # fmt: skip
        missing = await ari.request("GET", f"/ari/recordings/stored/{path}/file")
        assert (missing.status, missing.body) == (404, {"message": "Recording not found"})
    deleted = await ari.request("DELETE", f"/ari/recordings/stored/pipecat-lab%2Fbridge-{cid}")
    assert deleted.status == 204
    await hang_up(ari, bridged)
    await events.bridge_destroyed(bid)
    assert (await ari.request("GET", "/ari/recordings/stored")).body == []
    ours, theirs_order = per_channel(events.parsed), recording.per_channel_types()
    assert ours[cid] == theirs_order["1796140403.1823"]
    assert ours["em-record"] == theirs_order["em-a20bd26c31b5"]
    assert recorded  # the probes above are the recording's, note by note
    assert_nothing_left(sim)


async def test_snoops_record_each_direction(sim: SimulatedAsterisk, ari: Ari) -> None:
    recording = load_recording("snoop_record")
    events = await ari.connect()
    # The beep, then silence: a simple_bridge relays it, which paces the bot's packets.
    call = await sim.place_call("snoop_record", audio=BEEP + b"\xff" * 16000, echo=False)
    bridged = await bridge_call(ari, call, "em-snoop")
    cid = call.caller_id
    record = {"format": "wav", "ifExists": "overwrite", "beep": "false",
              "maxDurationSeconds": "20", "terminateOn": "none"}  # fmt: skip
    # The race round: a record before the snoop exists, then before its StasisStart.
    unknown = await ari.request("POST", "/ari/channels/snoop-race/record", name="r", **record)
    assert (unknown.status, unknown.body) == (404, {"message": "Channel not found"})
    sim.snoop_stasis_delay = 0.05
    race = await ari.request("POST", f"/ari/channels/{cid}/snoop", spy="both", app="pipecat",
                             appArgs="snoop,race", snoopId="snoop-race")  # fmt: skip
    theirs = next(ex for ex in recording.rest if ex.path.endswith("/snoop"))
    assert (race.status, shape(race.body)) == (200, shape(theirs.body))
    assert race.body["name"] == f"Snoop/{cid}-00000000" and race.body["state"] == "Up"
    assert race.body["dialplan"] == theirs.body["dialplan"]  # default/s/1, not in Stasis yet
    early = await ari.request("POST", "/ari/channels/snoop-race/record", name="r", **record)
    assert (early.status, early.text) == (409, '{"message":"Channel not in Stasis application"}')
    await events.wait_for("StasisStart", "snoop-race")
    assert (await ari.request("DELETE", "/ari/channels/snoop-race")).status == 204
    await events.wait_for("StasisEnd", "snoop-race")
    names = {}
    for spy, delay in (("in", 0.05), ("out", -0.001)):
        sim.snoop_stasis_delay = delay
        sid = f"snoop-{spy}"
        made = await ari.request("POST", f"/ari/channels/{cid}/snoop", spy=spy, app="pipecat",
                                 appArgs=f"snoop,{spy}", snoopId=sid)  # fmt: skip
        assert made.status == 200
        start = await events.wait_for("StasisStart", sid)
        assert start["args"] == ["snoop", spy]
        assert start["channel"]["dialplan"]["app_data"] == f"pipecat,snoop,{spy}"
        if delay < 0:  # its StasisStart came before the answer: the 200 shows it in Stasis
            assert made.body["dialplan"]["app_name"] == "Stasis"
        names[spy] = f"pipecat-lab/snoop-{spy}-{cid}"
        answer = await ari.request("POST", f"/ari/channels/{sid}/record", name=names[spy],
                                   **record)  # fmt: skip
        assert answer.status == 201 and answer.body["target_uri"] == f"channel:{sid}"
        await events.wait_until(lambda e, n=names[spy]: e["type"] == "RecordingStarted"
                                and e["recording"]["name"] == n)  # fmt: skip
    still = await ari.request("GET", f"/ari/bridges/{bridged.bridge['id']}")
    assert still.body["technology"] == "simple_bridge"  # snoops are no bridge members
    assert still.body["channels"] == [cid, "em-snoop"]
    await call.bridged
    await send_ours(bridged, 25)
    for spy in ("in", "out"):
        quoted = names[spy].replace("/", "%2F")
        assert (await ari.request("POST", f"/ari/recordings/live/{quoted}/stop")).status == 204
        await events.wait_until(lambda e, n=names[spy]: e["type"] == "RecordingFinished"
                                and e["recording"]["name"] == n)  # fmt: skip
    listed = await ari.request("GET", "/ari/recordings/stored")
    assert [r["name"] for r in listed.body] == [names["in"], names["out"]]
    _, heard_in = read_wav(sim.stored_recordings[names["in"]].data)
    _, heard_out = read_wav(sim.stored_recordings[names["out"]].data)
    assert len(heard_in) == len(heard_out) or abs(len(heard_in) - len(heard_out)) < 800
    assert peak_hz(heard_in) == pytest.approx(700, abs=30)  # from the caller: its beep
    assert peak_hz(heard_out) == pytest.approx(1300, abs=30)  # to the caller: the bot
    for sid in ("snoop-in", "snoop-out"):
        assert (await ari.request("DELETE", f"/ari/channels/{sid}")).status == 204
        await events.wait_for("StasisEnd", sid)
    await hang_up(ari, bridged)
    await events.bridge_destroyed(bridged.bridge["id"])
    ours, theirs_order = per_channel(events.parsed), recording.per_channel_types()
    assert ours[cid] == theirs_order["1796140325.1812"]
    assert ours["em-snoop"] == theirs_order["em-ca8776bfaafe"]
    for ours_id, recorded_id in (("snoop-race", "snoop-race0-85ce9700"),
                                 ("snoop-in", "snoop-in-2060a442"),
                                 ("snoop-out", "snoop-out-acb6c93e")):  # fmt: skip
        assert ours[ours_id] == theirs_order[recorded_id]  # no ChannelDestroyed
    assert_nothing_left(sim)


async def test_snoop_stasis_start_comes_either_side_of_the_answer(ari: Ari) -> None:
    orders = set()
    for seed in range(6):
        async with SimulatedAsterisk(seed=seed) as sim:
            ari.sim = sim
            events = await ari.connect()
            call = await sim.place_call("snoop_record", audio=b"")
            await events.wait_for("StasisStart", call.caller_id)
            made = await ari.request("POST", f"/ari/channels/{call.caller_id}/snoop", spy="in",
                                     app="pipecat", snoopId="s1")  # fmt: skip
            orders.add(made.body["dialplan"]["app_name"])  # "Stasis": it came first
            await events.wait_for("StasisStart", "s1")
            await events.close()
            ari.events = None
    assert orders == {"", "Stasis"}


async def test_recording_faults(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    bridged = await bridge_call(ari, await sim.place_call("basic_ulaw", audio=b""))
    bid = bridged.bridge["id"]
    sim.recording_faults.append(RecordingFault.failed("Disk on fire"))
    sim.recording_faults.append(RecordingFault.disk_full(after=0.0))
    failed = await ari.request("POST", f"/ari/bridges/{bid}/record", name="f1", format="wav")
    assert failed.status == 201
    event = await events.wait_for("RecordingFailed")
    assert event["recording"] == {
        "name": "f1",
        "format": "wav",
        "state": "failed",
        "target_uri": f"bridge:{bid}",
        "cause": "Disk on fire",
    }
    assert (await ari.request("GET", "/ari/recordings/live/f1")).status == 404
    full = await ari.request("POST", f"/ari/bridges/{bid}/record", name="f2", format="wav")
    assert full.status == 201
    done = await events.wait_until(lambda e: e["type"] == "RecordingFinished")
    assert done["recording"]["state"] == "done" and done["recording"]["duration"] == 0
    assert (await ari.request("GET", "/ari/recordings/stored/f2")).status == 404  # no file
    # A channel in a bridge cannot be recorded: record_file() fails after the 201.
    caller = bridged.call.caller_id
    chan = await ari.request("POST", f"/ari/channels/{caller}/record", name="c1", format="wav")
    assert chan.status == 201
    bridged_fail = await events.wait_until(lambda e: e["type"] == "RecordingFailed"
                                           and e["recording"]["name"] == "c1")  # fmt: skip
    assert bridged_fail["recording"]["cause"] == "Cannot record channel while in bridge"
    await hang_up(ari, bridged)
    assert_nothing_left(sim)


async def test_a_recording_ends_with_its_bridge(sim: SimulatedAsterisk, ari: Ari) -> None:
    events = await ari.connect()
    bridged = await bridge_call(ari, await sim.place_call("basic_ulaw", audio=b""))
    bid = bridged.bridge["id"]
    assert (await ari.request("POST", f"/ari/bridges/{bid}/record", name="b1",
                              format="wav")).status == 201  # fmt: skip
    await events.wait_for("RecordingStarted")
    # The Recorder makes the bridge mix: RTP every 20 ms although nobody talks (recorded).
    silence = [await bridged.udp.recv() for _ in range(5)]
    assert {data[12:] for _, data, _ in silence} == {b"\xff" * 160}
    assert silence[-1][0] - silence[0][0] == pytest.approx(0.08, abs=0.04)
    assert (await ari.request("DELETE", f"/ari/bridges/{bid}")).status == 204
    finished = await events.wait_for("RecordingFinished")
    destroyed = await events.bridge_destroyed(bid)
    assert events.parsed.index(finished) < events.parsed.index(destroyed)
    assert "b1" in sim.stored_recordings and sim.live_recordings == {}
    for cid in (bridged.call.caller_id, bridged.em["id"]):
        assert (await ari.request("DELETE", f"/ari/channels/{cid}")).status == 204
    await events.wait_for("ChannelDestroyed", bridged.em["id"])
    assert_nothing_left(sim)
