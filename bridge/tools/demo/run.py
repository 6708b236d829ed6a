"""`make demo`: one whole call on a machine with no Asterisk.

A simulated Asterisk 23.4.1 (built from the recorded traffic in tests/fixtures) places a call
into Stasis(pipecat); the real bridge service handles it; a real Pipecat pipeline (its own
TwilioFrameSerializer, an echo processor) is the bot. The caller's audio is the prompt Asterisk
played in the recorded call (demo-congrats, as it came over RTP), or a WAV you give. The demo
prints what happened on every wire and writes what the caller said and heard as WAV files.

Transports (`--transport`, `make demo TRANSPORT=...`): `rtp` (ExternalMedia UnicastRTP, the
default), `audiosocket` (ExternalMedia encapsulation=audiosocket: Asterisk connects to the
bridge's AudioSocket listener) or `websocket` (ExternalMedia chan_websocket: the bridge
connects to Asterisk's /media/<id>). `--dialplan`: no ARI at all; the dialplan hands the call
to the bridge itself, `AudioSocket(<uuid>,host:port)` or `Dial(WebSocket/pipecat_bridge/c(fmt))`
towards the bridge's listener.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.logs import configure_logging
from bridge.service.config import Settings
from bridge.service.controller import Controller
from bridge.tools.demo.echo_bot import EchoBot, run_echo_bot
from bridge.tools.sim.asterisk import SimCall, SimulatedAsterisk
from bridge.tools.sim.audio import decode
from bridge.tools.sim.audiosocket import AUDIO_KINDS, AudioSocketLink, Kind
from bridge.tools.sim.chan_websocket import WsMediaLink
from bridge.tools.sim.dialplan import DialplanCall
from rtp.g711 import pcm16_to_ulaw
from rtp.packet import RtpPacket

SCENARIO = "basic_ulaw"
TRANSPORTS = ("rtp", "audiosocket", "websocket")
# What each transport carries by default, and what it can carry (bridge.media.factory).
DEFAULT_FORMAT = {"rtp": "ulaw", "audiosocket": "slin", "websocket": "ulaw"}
FORMATS = {
    "rtp": ("ulaw",),  # the simulated RTP caller is the recorded µ-law stream
    "audiosocket": ("slin", "slin16"),
    "websocket": ("ulaw", "alaw", "slin", "slin16"),
}
WS_ENDPOINT = "pipecat_bridge"  # the websocket_client.conf entry the dialplan dials


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=TRANSPORTS, default="rtp",
                        help="media between Asterisk and the bridge (default rtp)")
    parser.add_argument("--format", choices=sorted({f for fs in FORMATS.values() for f in fs}),
                        help="audio format on that transport (default: rtp ulaw, audiosocket "
                             "slin, websocket ulaw)")
    parser.add_argument("--dialplan", action="store_true",
                        help="the call comes from the dialplan alone (AudioSocket() or "
                             "Dial(WebSocket/...)), no ARI; audiosocket or websocket only")
    parser.add_argument("--scenario", choices=("echo", "transfer"), default="echo",
                        help="echo: one call to an echo bot; transfer: a bot hands the caller "
                             "to a person (ARI, RTP)")  # fmt: skip
    parser.add_argument("--audio", type=Path, help="caller audio: a WAV, 8 kHz mono 16-bit")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="where WAVs go")
    parser.add_argument("--bot-hangs-up-after", type=float, default=6.0, metavar="S",
                        help="the bot ends the call after S seconds (default 6)")
    parser.add_argument("--log-level", default="info", help="the bridge's own log lines")
    args = parser.parse_args(argv)
    args.format = args.format or DEFAULT_FORMAT[args.transport]
    if args.format not in FORMATS[args.transport]:
        parser.error(f"--transport {args.transport} carries {', '.join(FORMATS[args.transport])}"
                     f", not {args.format}")
    if args.dialplan and args.transport == "rtp":
        parser.error("--dialplan needs --transport audiosocket or websocket (RTP needs ARI)")
    if args.dialplan and args.audio:
        parser.error("--audio needs ARI: a dialplan call plays the recorded caller")
    return args


def _read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (8000, 1, 2):
            raise SystemExit(f"{path}: need 8000 Hz, mono, 16-bit PCM")
        return pcm16_to_ulaw(wav.readframes(wav.getnframes()))


def _write_wav(path: Path, frames: list[tuple[float, bytes]], fmt: str) -> None:
    """The frames of one direction (format `fmt`) as 16-bit PCM at the format's rate."""
    chunks, rate = [], 16000 if fmt == "slin16" else 8000
    for _t, payload in frames:
        decoded = decode(payload, fmt)
        if decoded is not None:
            chunks.append(decoded[0])
            rate = decoded[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        wav.writeframes(samples.astype("<i2").tobytes())


@dataclass
class Media:
    """One call's audio as the simulated Asterisk saw it, whatever the transport."""

    transport: str
    fmt: str  # what the caller sends
    rx_fmt: str  # what comes back (RTP slin16 is answered in µ-law)
    sent: list[tuple[float, bytes]]  # the caller's audio frames, loop.time()
    received: list[tuple[float, bytes]]  # the bridge's audio frames
    rows: list[tuple[float, str]] = field(default_factory=list)  # non-audio things, timed
    rtp_headers: list[RtpPacket] = field(default_factory=list)
    rtp_dropped: int = 0


def _payloads(packets: list[tuple[float, bytes, tuple[str, int]]]) -> list[tuple[float, bytes]]:
    return [(t, RtpPacket.parse(data).payload) for t, data, _addr in packets]


def _rtp_media(call: SimCall, fmt: str) -> Media:
    return Media("rtp", fmt, fmt, _payloads(call.rtp_sent),
                 _payloads(call.rtp_received),
                 rtp_headers=[RtpPacket.parse(d) for _t, d, _a in call.rtp_received],
                 rtp_dropped=len(call.rtp_dropped))  # fmt: skip


def _link_media(link: Any, fmt: str) -> Media:
    """AudioSocket frames or media WebSocket messages, both ways, of one link."""
    media = Media("audiosocket" if isinstance(link, AudioSocketLink) else "websocket", fmt, fmt,
                  [], [])  # fmt: skip
    if isinstance(link, AudioSocketLink):
        for frames, into, arrow in ((link.sent, media.sent, "->"),
                                    (link.received, media.received, "<-")):  # fmt: skip
            for frame in frames:
                if frame.kind in AUDIO_KINDS:
                    into.append((frame.t, frame.payload))
                    if len(into) == 1:
                        media.rows.append((frame.t, f"media  {arrow} first audio frame "
                                           f"0x{frame.kind:02x} {len(frame.payload)} B"))
                else:
                    name = Kind(frame.kind).name if frame.kind in Kind._value2member_map_ else "?"
                    what = (frame.payload.hex() if frame.kind == Kind.UUID
                            else frame.payload.decode("ascii", "replace"))  # fmt: skip
                    media.rows.append((frame.t, f"media  {arrow} 0x{frame.kind:02x} {name:<7}"
                                       f" {what}".rstrip()))
    elif isinstance(link, WsMediaLink):
        for messages, into, arrow in ((link.sent, media.sent, "->"),
                                      (link.received, media.received, "<-")):  # fmt: skip
            for t, kind, data in messages:
                if kind == "binary":
                    into.append((t, bytes(data)))  # type: ignore[arg-type]
                    if len(into) == 1:
                        media.rows.append((t, f"media  {arrow} first binary frame "
                                           f"{len(data)} B"))
                else:
                    media.rows.append((t, f"media  {arrow} {str(data)[:110]}"))
    return media


def _key(payload: bytes, fmt: str) -> bytes:
    # Pipecat maps µ-law negative zero (0x7f) to 0xff; silent frames are not unique.
    return payload.replace(b"\x7f", b"\xff") if fmt == "ulaw" else payload


def _round_trips(media: Media) -> list[float]:
    """Per caller frame: when the same audio came back from the bridge."""
    if media.fmt != media.rx_fmt:
        return []
    back: dict[bytes, float] = {}
    for t, payload in media.received:
        back.setdefault(_key(payload, media.rx_fmt), t)
    trips = []
    for t, payload in media.sent:
        key = _key(payload, media.fmt)
        if len(set(key)) > 8 and key in back:
            trips.append(back[key] - t)
    return trips


def _echo_delay(media: Media) -> tuple[float, float] | None:
    """(delay ms, normalised correlation) of the echo against what the caller said, for audio
    that is not bit-exact through the 8 kHz µ-law bot (alaw, slin16: transcoded, resampled).
    Each frame is laid on a time axis at its timestamp; the peak of the cross-correlation is
    the delay."""
    rate = 8000
    streams = []
    starts = [t for frames in (media.sent, media.received) for t, _ in frames[:1]]
    if len(starts) < 2:
        return None
    t_ref = min(starts)
    for frames, fmt in ((media.sent, media.fmt), (media.received, media.rx_fmt)):
        end = max(t for t, _ in frames) - t_ref + 0.1
        signal = np.zeros(int(end * rate) + 1, dtype=np.float64)
        for t, payload in frames:
            decoded = decode(payload, fmt)
            if decoded is None:
                continue
            samples = decoded[0].astype(np.float64)[:: max(decoded[1] // rate, 1)]
            # On the 20 ms grid both sides are paced on: a frame's arrival time carries the
            # loop's scheduling jitter (a few ms under load), which would smear the peak.
            at = round((t - t_ref) / 0.020) * (rate // 50)
            signal[at : at + len(samples)] = samples[: len(signal) - at]
        streams.append(signal)
    said, heard = streams
    size = 1 << int(np.ceil(np.log2(len(said) + len(heard))))
    corr = np.fft.irfft(np.fft.rfft(heard, size) * np.conj(np.fft.rfft(said, size)), size)
    lag = int(np.argmax(corr[: len(heard)]))
    norm = float(np.sqrt(np.dot(said, said) * np.dot(heard, heard)))
    return 1000 * lag / rate, float(corr[lag]) / norm if norm else 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timeline(sim: SimulatedAsterisk, t0: float, media: Media) -> list[str]:
    rows: list[tuple[float, str]] = list(media.rows)
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


def _settings(args: argparse.Namespace, sim: SimulatedAsterisk, bot: EchoBot) -> Settings:
    # The listeners on ports of their own (0): a bridge already running here keeps 9092/9093.
    return Settings(
        ari_url=sim.base_url, ari_user=sim.user,
        ari_password="" if args.dialplan else sim.password, app=sim.app,
        bot_url=bot.url, rtp_host="127.0.0.1", rtp_ports=(31000, 31999),
        transport=args.transport, format=args.format,
        audiosocket_listen="127.0.0.1:0", websocket_listen="127.0.0.1:0", http_listen="127.0.0.1:0",
        log_level=args.log_level,
    )  # fmt: skip


async def _demo(args: argparse.Namespace) -> int:
    audio = _read_wav(args.audio) if args.audio else None
    out = print
    out("Asterisk <-> Pipecat bridge: one call, end to end, on this machine\n")
    async with run_echo_bot(hangup_after=args.bot_hangs_up_after) as bot, SimulatedAsterisk(
        seed=1
    ) as sim:
        _say_setup(bot, sim, audio, args)
        controller = Controller(_settings(args, sim, bot))
        task = asyncio.get_running_loop().create_task(controller.run())
        call: SimCall | DialplanCall
        try:
            if args.dialplan:
                call = await _dial(sim, controller, args)
                ended = call.ended
            else:
                await asyncio.wait_for(sim.wait_app_active(), 10)
                # The start-up sweep reads what Asterisk has; the call comes once it is done.
                await asyncio.wait_for(controller.resynced.wait(), 10)
                call = await sim.place_call(SCENARIO, audio=audio)
                ended = call.ended
            t0 = asyncio.get_running_loop().time() if args.dialplan else sim.event_times[-1]
            started = time.monotonic()
            await asyncio.wait_for(ended, 30)
            await asyncio.wait_for(controller.all_idle.wait(), 10)
            elapsed = time.monotonic() - started
            await _settle(sim, controller)
            listeners = _listener_leftovers(controller)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        bot_call = bot.stats.calls[0] if bot.stats.calls else None
        await asyncio.sleep(0)  # let the bot's last callbacks land in its stats
        media = _media(sim, call, args)
        t0 = min([t0, *(t for t, _ in media.rows)]) if args.dialplan else t0
        return _report(sim, call, media, controller, bot_call, t0, elapsed, args, listeners)


async def _dial(sim: SimulatedAsterisk, controller: Controller,
                args: argparse.Namespace) -> DialplanCall:  # fmt: skip
    """The dialplan calls the bridge's listener once it listens."""
    listener: Any = (controller.media.audiosocket if args.transport == "audiosocket"
                     else controller.media.websocket)  # fmt: skip
    deadline = time.monotonic() + 10
    while listener is None or listener.address is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bridge's {args.transport} listener never came up")
        await asyncio.sleep(0.01)
    host, port = listener.address
    if args.transport == "audiosocket":
        # AudioSocket() is always 8 kHz; slin16 needs Dial(AudioSocket/host:port/uuid/c(slin16)).
        return await sim.dial_audiosocket((host, port), slin16=args.format == "slin16",
                                          application=args.format != "slin16",
                                          scenario=SCENARIO)  # fmt: skip
    return await sim.dial_websocket(f"ws://{host}:{port}/media", endpoint=WS_ENDPOINT,
                                    fmt=args.format, scenario=SCENARIO,
                                    variables={"from": "5551000", "to": "100"})  # fmt: skip


async def _settle(sim: SimulatedAsterisk, controller: Controller) -> None:
    """A media connection the bridge closed may take a moment more to finish its TCP close."""
    for _ in range(250):
        if not sim.open_media_connections() and not any(_listener_leftovers(controller).values()):
            return
        await asyncio.sleep(0.02)


def _listener_leftovers(controller: Controller) -> dict[str, Any]:
    audiosocket, websocket = controller.media.audiosocket, controller.media.websocket
    return {
        "AudioSocket connections": audiosocket.connections if audiosocket else 0,
        "media WebSocket calls": list(websocket.calls) if websocket else [],
    }


def _media(sim: SimulatedAsterisk, call: SimCall | DialplanCall, args: argparse.Namespace
           ) -> Media:  # fmt: skip
    if isinstance(call, DialplanCall):
        return _link_media(call.link, call.format)
    if args.transport == "rtp":
        return _rtp_media(call, args.format)
    link = sim.media_links.get(call.em_channel_id or "")
    if link is None and sim.media_links:
        link = next(iter(sim.media_links.values()))
    return _link_media(link, args.format) if link is not None else Media(
        args.transport, args.format, args.format, [], [])


def _how_set_up(args: argparse.Namespace) -> str:
    if args.dialplan and args.transport == "audiosocket":
        if args.format == "slin16":
            return "Dial(AudioSocket/<bridge>/<uuid>/c(slin16)): AudioSocket 0x12, 16 kHz"
        return "AudioSocket(<uuid>,<bridge>): AudioSocket 0x10 slin, 8 kHz"
    if args.dialplan:
        return (f"Dial(WebSocket/{WS_ENDPOINT}/c({args.format})v(from=...,to=...)): "
                "chan_websocket client mode to the bridge's /media")
    if args.transport == "audiosocket":
        return f"ExternalMedia encapsulation=audiosocket, {args.format}: Asterisk dials the bridge"
    if args.transport == "websocket":
        return f"ExternalMedia transport=websocket, {args.format}: the bridge dials /media/<id>"
    return f"ExternalMedia UnicastRTP, {args.format}"


def _say_setup(bot: EchoBot, sim: SimulatedAsterisk, audio: bytes | None,
               args: argparse.Namespace) -> None:
    print(f"  bot        real Pipecat pipeline (TwilioFrameSerializer -> echo)  {bot.url}")
    print(f"             it ends the call after {args.bot_hangs_up_after:g} s, "
          "as a bot saying goodbye")
    print(f"  asterisk   simulated 23.4.1 from the '{SCENARIO}' recording     {sim.base_url}")
    source = f"{args.audio} ({len(audio) / 8000:.1f} s)" if audio else (
        "the demo-congrats prompt exactly as Asterisk sent it over RTP in the recording"
    )
    if args.dialplan:
        print(f"  caller     dials 100 -> the dialplan alone, no ARI; says: {source}")
    else:
        print(f"  caller     'Lab Caller' <5551000> dials 100 -> Stasis(pipecat); says: {source}")
    if args.transport != "rtp" or args.format != "ulaw":
        print(f"  media      transport {args.transport}, format {args.format}: "
              f"{_how_set_up(args)}")
    print("  bridge     pipecat-bridge, logs below (one line per call event)\n", flush=True)


def _end_text(call: SimCall | DialplanCall) -> tuple[str, str]:
    if isinstance(call, DialplanCall):
        reason = call.ended.result() if call.ended.done() else "still up"
        how = {
            "bridge_hangup": "the bot said goodbye; the bridge played out its queue and hung up "
                             "(AudioSocket 0x00 / chan_websocket HANGUP)",
            "bridge_closed": "the bridge closed the media connection",
            "caller_hangup": "the caller hung up",
        }.get(reason, reason)
        if call.continued:
            how += "; the dialplan went on to its next priority"
        return reason, how
    how = (
        "the bot said goodbye; the bridge played out its queue and hung up the caller"
        if call.hung_up_by == "app"
        else "the caller hung up"
    )
    return str(call.hung_up_by), how


def _report(sim: SimulatedAsterisk, call: SimCall | DialplanCall, media: Media,
            controller: Controller, bot_call: object, t0: float, elapsed: float,
            args: argparse.Namespace, listeners: dict[str, Any]) -> int:  # fmt: skip
    sys.stderr.flush()
    if args.dialplan:
        print(f"\nWhat happened ({args.transport} media connection, no ARI: frames other than "
              "audio, and the first audio each way)")
    elif args.transport == "rtp":
        print("\nWhat happened (ARI events from Asterisk, REST calls from the bridge)")
    else:
        print("\nWhat happened (ARI events from Asterisk, REST calls from the bridge, "
              f"{args.transport} frames other than audio)")
    print("\n".join(_timeline(sim, t0, media)))

    sent, received = media.sent, media.received
    gaps = [1000 * (b[0] - a[0]) for a, b in itertools.pairwise(received)]
    trips = [1000 * t for t in _round_trips(media)]
    sizes = sorted({len(p) for _t, p in sent})
    size = "/".join(str(s) for s in sizes[:2]) if sizes else "0"
    print(f"\nMedia ({media.transport}, {media.fmt})")
    if media.transport == "rtp":
        print(f"  caller -> bridge   {len(sent)} RTP packets (PT 0, {size} "
              "bytes, every 20 ms)")
    elif media.transport == "audiosocket":
        kind = "0x12 slin16" if media.fmt == "slin16" else "0x10 slin"
        print(f"  caller -> bridge   {len(sent)} AudioSocket frames (kind {kind}, {size} bytes, "
              "every 20 ms)")
    else:
        print(f"  caller -> bridge   {len(sent)} WebSocket binary frames ({media.fmt}, {size} "
              "bytes, every 20 ms)")
    if bot_call is not None:
        frames = getattr(bot_call, "audio_frames", 0)
        print(f"  bridge -> bot      {frames} Twilio 'media' messages; bot saw custom parameters "
              f"{getattr(bot_call, 'custom_parameters', {})}")
    continuous = True
    if media.transport == "rtp":
        headers = media.rtp_headers
        ssrcs = {h.ssrc for h in headers}
        continuous = all(
            (b.sequence_number - a.sequence_number) & 0xFFFF == 1
            and (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160
            for a, b in itertools.pairwise(headers)
        )
        print(f"  bridge -> caller   {len(received)} RTP packets, {len(ssrcs)} SSRC, sequence and "
              f"timestamps {'continuous' if continuous else 'NOT continuous'}, "
              f"{media.rtp_dropped} dropped by strict RTP")
    else:
        back = sorted({len(p) for _t, p in received})
        what = "AudioSocket frames" if media.transport == "audiosocket" else "binary frames"
        print(f"  bridge -> caller   {len(received)} {what} "
              f"({'/'.join(str(s) for s in back[:3]) or 0} bytes)")
    if gaps:
        print(f"  outbound pacing    gap p50 {statistics.median(gaps):.1f} ms, "
              f"p99 {_pct(gaps, 0.99):.1f} ms, max {max(gaps):.1f} ms")
    if trips:
        print(f"  echo round trip    p50 {statistics.median(trips):.1f} ms, "
              f"p95 {_pct(trips, 0.95):.1f} ms over {len(trips)} packets (caller "
              f"{media.transport} out -> the same audio back; includes the bot's 40 ms chunking "
              f"and the bridge's {controller.settings.playout_reserve_ms} ms playout reserve)")
    delay = None if trips else _echo_delay(media)
    if delay is not None:
        print(f"  echo delay         {delay[0]:.1f} ms by cross-correlation (correlation "
              f"{delay[1]:.2f}): {media.fmt} is transcoded for the 8 kHz µ-law bot, so the echo "
              "is the same audio, not the same bytes")

    left: dict[str, Any] = {
        "Asterisk channels": [c for c in sim.channels if c.startswith("pcb-")],
        "Asterisk bridges": list(sim.bridges),
        "UDP sockets": sim.open_udp_sockets(),
        "media connections": sim.open_media_connections(),
        "bridge calls": list(controller.calls),
        **listeners,
    }
    leaks = {k: v for k, v in left.items() if v}
    who, how = _end_text(call)
    since = "the media connection" if args.dialplan else "StasisStart"
    print(f"\nCall ended by: {who} ({how}), {elapsed:.1f} s after {since}")
    nothing = "nothing (bridge, media channel, socket, tasks all gone)"
    print(f"Left behind: {leaks if leaks else nothing}")

    caller_wav, echo_wav = args.out / "caller.wav", args.out / "echo.wav"
    _write_wav(caller_wav, sent, media.fmt)
    _write_wav(echo_wav, received, media.rx_fmt)
    print(f"Wrote: {caller_wav} (what the caller said), {echo_wav} (what the caller heard back)")
    echoed = bool(trips) or (delay is not None and delay[1] > 0.2 and 20 <= delay[0] <= 1000)
    ok = not leaks and echoed and continuous
    print("\nDemo " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging("console", args.log_level)
    if args.scenario == "transfer":
        from bridge.tools.demo.transfer_demo import run_demo

        return asyncio.run(run_demo(args.log_level))
    return asyncio.run(_demo(args))
