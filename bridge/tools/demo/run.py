"""`make demo`: one whole call on a machine with no Asterisk.

A simulated Asterisk 23.4.1 (built from the recorded traffic in tests/fixtures) places a call
into Stasis(pipecat); the real bridge service handles it; a real Pipecat pipeline (its own
TwilioFrameSerializer, an echo processor) is the bot. The caller's audio is the prompt Asterisk
played in the recorded call (demo-congrats, as it came over RTP), or a WAV you give. The demo
prints what happened on every wire and writes what the caller said and heard as WAV files.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
import wave
from pathlib import Path

from bridge.logs import configure_logging
from bridge.service.config import Settings
from bridge.service.controller import Controller
from bridge.tools.demo.echo_bot import EchoBot, run_echo_bot
from bridge.tools.sim.asterisk import SimCall, SimulatedAsterisk
from rtp.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from rtp.packet import RtpPacket

SCENARIO = "basic_ulaw"


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.demo", description=__doc__)
    parser.add_argument("--audio", type=Path, help="caller audio: a WAV, 8 kHz mono 16-bit")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="where WAVs go")
    parser.add_argument("--bot-hangs-up-after", type=float, default=6.0, metavar="S",
                        help="the bot ends the call after S seconds (default 6)")
    parser.add_argument("--log-level", default="info", help="the bridge's own log lines")
    return parser.parse_args(argv)


def _read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (8000, 1, 2):
            raise SystemExit(f"{path}: need 8000 Hz, mono, 16-bit PCM")
        return pcm16_to_ulaw(wav.readframes(wav.getnframes()))


def _write_wav(path: Path, ulaw: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(ulaw_to_pcm16(ulaw))


def _payloads(packets: list[tuple[float, bytes, tuple[str, int]]]) -> list[tuple[float, bytes]]:
    return [(t, RtpPacket.parse(data).payload) for t, data, _addr in packets]


def _round_trips(call: SimCall) -> list[float]:
    """Per caller packet: when the same audio came back as RTP from the bridge."""
    back: dict[bytes, float] = {}
    for t, payload in _payloads(call.rtp_received):
        back.setdefault(payload, t)
    trips = []
    for t, payload in _payloads(call.rtp_sent):
        # Pipecat maps µ-law negative zero (0x7f) to 0xff; silent frames are not unique.
        key = payload.replace(b"\x7f", b"\xff")
        if len(set(key)) > 8 and key in back:
            trips.append(back[key] - t)
    return trips


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timeline(sim: SimulatedAsterisk, t0: float) -> list[str]:
    rows: list[tuple[float, str]] = []
    for t, raw in zip(sim.event_times, sim.events_sent, strict=True):
        event = json.loads(raw)
        channel = event.get("channel") or event.get("peer") or {}
        what = channel.get("name") or event.get("bridge", {}).get("id", "")
        extra = f" digit={event['digit']}" if "digit" in event else ""
        if event["type"] in ("ChannelVarset", "ChannelConnectedLine", "Dial"):
            continue  # bookkeeping events the bridge ignores
        rows.append((t, f"event  {event['type']:<22} {what}{extra}"))
    for req in sim.requests:
        if req.path == "/ari/events":
            continue
        rows.append((req.t, f"REST   {req.method:<6} {req.path} -> {req.status}"))
    return [f"  {1000 * (t - t0):8.1f} ms  {text}" for t, text in sorted(rows)]


async def _demo(args: argparse.Namespace) -> int:
    audio = _read_wav(args.audio) if args.audio else None
    out = print
    out("Asterisk <-> Pipecat bridge: one call, end to end, on this machine\n")
    async with run_echo_bot(hangup_after=args.bot_hangs_up_after) as bot, SimulatedAsterisk(
        seed=1
    ) as sim:
        _say_setup(bot, sim, audio, args)
        settings = Settings(
            ari_url=sim.base_url, ari_user=sim.user, ari_password=sim.password, app=sim.app,
            bot_url=bot.url, rtp_host="127.0.0.1", rtp_ports=(31000, 31999),
            log_level=args.log_level,
        )  # fmt: skip
        controller = Controller(settings)
        task = asyncio.get_running_loop().create_task(controller.run())
        try:
            await asyncio.wait_for(sim.wait_app_active(), 10)
            # The start-up sweep reads what Asterisk has; the call comes once it is done.
            await asyncio.wait_for(controller.resynced.wait(), 10)
            started = time.monotonic()
            call = await sim.place_call(SCENARIO, audio=audio)
            t0 = sim.event_times[-1]
            await asyncio.wait_for(call.ended, 30)
            await asyncio.wait_for(controller.all_idle.wait(), 10)
            elapsed = time.monotonic() - started
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        bot_call = bot.stats.calls[0] if bot.stats.calls else None
        await asyncio.sleep(0)  # let the bot's last callbacks land in its stats
        return _report(sim, call, controller, bot_call, t0, elapsed, args.out)


def _say_setup(bot: EchoBot, sim: SimulatedAsterisk, audio: bytes | None,
               args: argparse.Namespace) -> None:
    print(f"  bot        real Pipecat pipeline (TwilioFrameSerializer -> echo)  {bot.url}")
    print(f"             it ends the call after {args.bot_hangs_up_after:g} s, "
          "as a bot saying goodbye")
    print(f"  asterisk   simulated 23.4.1 from the '{SCENARIO}' recording     {sim.base_url}")
    source = f"{args.audio} ({len(audio) / 8000:.1f} s)" if audio else (
        "the demo-congrats prompt exactly as Asterisk sent it over RTP in the recording"
    )
    print(f"  caller     'Lab Caller' <5551000> dials 100 -> Stasis(pipecat); says: {source}")
    print("  bridge     pipecat-bridge, logs below (one line per call event)\n", flush=True)


def _report(sim: SimulatedAsterisk, call: SimCall, controller: Controller, bot_call: object,
            t0: float, elapsed: float, out_dir: Path) -> int:
    sys.stderr.flush()
    print("\nWhat happened (ARI events from Asterisk, REST calls from the bridge)")
    print("\n".join(_timeline(sim, t0)))

    sent = _payloads(call.rtp_sent)
    received = _payloads(call.rtp_received)
    headers = [RtpPacket.parse(d) for _t, d, _a in call.rtp_received]
    gaps = [1000 * (b[0] - a[0]) for a, b in itertools.pairwise(received)]
    trips = [1000 * t for t in _round_trips(call)]
    print("\nMedia")
    print(f"  caller -> bridge   {len(sent)} RTP packets (PT 0, 160 bytes, every 20 ms)")
    if bot_call is not None:
        frames = getattr(bot_call, "audio_frames", 0)
        print(f"  bridge -> bot      {frames} Twilio 'media' messages; bot saw custom parameters "
              f"{getattr(bot_call, 'custom_parameters', {})}")
    ssrcs = {h.ssrc for h in headers}
    continuous = all(
        (b.sequence_number - a.sequence_number) & 0xFFFF == 1
        and (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160
        for a, b in itertools.pairwise(headers)
    )
    print(f"  bridge -> caller   {len(received)} RTP packets, {len(ssrcs)} SSRC, sequence and "
          f"timestamps {'continuous' if continuous else 'NOT continuous'}, "
          f"{len(call.rtp_dropped)} dropped by strict RTP")
    if gaps:
        print(f"  outbound pacing    gap p50 {statistics.median(gaps):.1f} ms, "
              f"p99 {_pct(gaps, 0.99):.1f} ms, max {max(gaps):.1f} ms")
    if trips:
        print(f"  echo round trip    p50 {statistics.median(trips):.1f} ms, "
              f"p95 {_pct(trips, 0.95):.1f} ms over {len(trips)} packets (caller RTP out -> "
              "the same audio back; includes the bot's 40 ms chunking and the bridge's "
              f"{controller.settings.playout_reserve_ms} ms playout reserve)")

    left = {
        "Asterisk channels": [c for c in sim.channels if c.startswith("pcb-")],
        "Asterisk bridges": list(sim.bridges),
        "UDP sockets": sim.open_udp_sockets(),
        "bridge calls": list(controller.calls),
    }
    leaks = {k: v for k, v in left.items() if v}
    how = (
        "the bot said goodbye; the bridge played out its queue and hung up the caller"
        if call.hung_up_by == "app"
        else "the caller hung up"
    )
    print(f"\nCall ended by: {call.hung_up_by} ({how}), {elapsed:.1f} s after StasisStart")
    nothing = "nothing (bridge, media channel, socket, tasks all gone)"
    print(f"Left behind: {leaks if leaks else nothing}")

    caller_wav, echo_wav = out_dir / "caller.wav", out_dir / "echo.wav"
    _write_wav(caller_wav, b"".join(p for _t, p in sent))
    _write_wav(echo_wav, b"".join(p for _t, p in received))
    print(f"Wrote: {caller_wav} (what the caller said), {echo_wav} (what the caller heard back)")
    ok = not leaks and bool(trips) and continuous
    print("\nDemo " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging("console", args.log_level)
    return asyncio.run(_demo(args))
