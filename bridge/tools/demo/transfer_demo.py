"""`make demo SCENARIO=transfer`: a bot hands the caller to a person, on a machine with no Asterisk.

The simulated Asterisk 23.4.1 places a call into Stasis(pipecat); the real bridge serves it,
recording it (`--record mixed`); the bot is the real Pipecat transfer bot
(bridge/tools/demo/transfer_bot.py) speaking through Pipecat's own TwilioFrameSerializer. The
caller presses 0; the bot says "putting you through" and sends its transfer control frame;
the bridge waits for those words to play, originates the target into the app (the lab's
Local/233@caller, which rings 1 s, answers and echoes, as recorded in
transfer_originate_answer), reports ringing and answered to the bot, bridges the person with
the caller and lets the bot go. The caller hangs up a few seconds later. The demo prints what
happened on the wire and what is left (nothing).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bridge.service.config import Settings
from bridge.service.controller import Controller
from bridge.tools.demo.transfer_bot import PROMPTS, TransferCallStats, run_transfer_bot
from bridge.tools.sim.asterisk import SimCall, SimulatedAsterisk
from bridge.tools.sim.recording import load_recording

TARGET = "Local/233@caller"
PRESS_AT = 1.0  # seconds after the bot's greeting
CALLER_HANGS_UP_AFTER = 5.0  # seconds after the call is in Stasis
SILENCE = 0xFF


def _press(sim: SimulatedAsterisk, call: SimCall, digit: str) -> None:
    """The caller presses a key: Asterisk's ChannelDtmfReceived, shaped as recorded."""
    recording = load_recording("dtmf")
    raw = next(e.raw for e in recording.events if e.type == "ChannelDtmfReceived")
    event = json.loads(raw)
    event["digit"] = digit
    event["channel"]["id"] = call.caller_id
    sim.send_raw_event(json.dumps(event))


def _timeline(sim: SimulatedAsterisk, t0: float, bot: TransferCallStats) -> list[str]:
    rows: list[tuple[float, str]] = []
    for t, raw in zip(sim.event_times, sim.events_sent, strict=True):
        event = json.loads(raw)
        kind = event["type"]
        channel = event.get("channel") or event.get("peer") or {}
        name = channel.get("name") or event.get("bridge", {}).get("id", "")
        if kind == "Dial" and event.get("dialstatus"):
            rows.append((t, f"event  Dial {event['dialstatus']:<17} {name}"))
        elif kind in ("StasisStart", "StasisEnd", "ChannelDestroyed", "ChannelDtmfReceived",
                      "ChannelEnteredBridge", "RecordingStarted", "RecordingFinished",
                      "BridgeDestroyed", "PlaybackStarted", "PlaybackFinished"):  # fmt: skip
            extra = f" digit={event['digit']}" if "digit" in event else ""
            if "recording" in event:
                extra = f" {event['recording'].get('name')}"
            rows.append((t, f"event  {kind:<22} {name}{extra}"))
    for req in sim.requests:
        if req.path == "/ari/events" or "/asterisk/variable" in req.path:
            continue
        query = req.query.get("endpoint") or req.query.get("media") or ""
        rows.append((req.t, f"REST   {req.method:<6} {req.path} {query} -> {req.status}".replace(
            "  ", " ")))  # fmt: skip
    rows.extend((t, f"bot    {what}") for t, what in bot.timeline)
    return [f"  {1000 * (t - t0):8.1f} ms  {text}" for t, text in sorted(rows)]


async def run_demo(log_level: str = "warning") -> int:
    print("Asterisk <-> Pipecat bridge: a bot transfers the caller to a person\n")
    loop = asyncio.get_running_loop()
    async with (
        SimulatedAsterisk(seed=3) as sim,
        run_transfer_bot(target=TARGET, mode="attended") as bot,
    ):
        settings = Settings(
            ari_url=sim.base_url, ari_user=sim.user, ari_password=sim.password, app=sim.app,
            bot_url=bot.url, rtp_host="127.0.0.1", rtp_ports=(31000, 31999),
            audiosocket_listen="127.0.0.1:0", websocket_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0", log_level=log_level, transfer_allow=("Local/*",),
            record="mixed", record_name="demo/{call_id}",
        )  # fmt: skip
        print(f"Simulated Asterisk 23.4.1 at {sim.base_url}; the transfer bot at {bot.url};")
        print(f"the bridge records the call (--record mixed) and may dial {TARGET}.\n")
        controller = Controller(settings)
        views: list[Any] = []
        controller.observers.append(lambda view, change: views.append(view))
        task = loop.create_task(controller.run())
        try:
            await asyncio.wait_for(sim.wait_app_active(), 10)
            await asyncio.wait_for(controller.resynced.wait(), 10)
            call = await sim.place_call("basic_ulaw", hangup_after=CALLER_HANGS_UP_AFTER)
            t0 = sim.event_times[-1]
            await asyncio.wait_for(call.bridged, 10)
            stats: TransferCallStats = await asyncio.wait_for(bot.stats.next_call(), 10)
            await asyncio.wait_for(stats.wait_prompts(1), 10)
            await asyncio.sleep(PRESS_AT)  # the caller listens to the greeting, then presses 0
            _press(sim, call, "0")
            await asyncio.wait_for(stats.wait_reply("transfer_answered"), 10)
            await asyncio.wait_for(call.ended, 20)
            await asyncio.wait_for(controller.all_idle.wait(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        print("What happened (ARI events, the bridge's REST calls, the bot's control messages)")
        print("\n".join(_timeline(sim, t0, stats)))
        return _report(sim, call, stats, views)


def _report(sim: SimulatedAsterisk, call: SimCall, stats: TransferCallStats,
            views: list[Any]) -> int:  # fmt: skip
    originate = next(r for r in sim.requests if r.method == "POST" and r.path == "/ari/channels")
    spoken = [t for t, data, _src in call.rtp_received if any(b != SILENCE for b in data[12:])]
    expected = (PROMPTS["greeting"][1] + PROMPTS["connecting"][1]) // 20
    last_words = bool(spoken) and len(spoken) >= expected and max(spoken) <= originate.t
    final = views[-1] if views else None
    print("\nThe bot")
    print(f"  spoke {len(spoken)} frames (greeting + 'putting you through' = {expected}), the "
          f"last {1000 * (originate.t - max(spoken)):.1f} ms before the bridge dialled the target"
          if spoken else "  spoke nothing")  # fmt: skip
    print(f"  was told: {', '.join(r['event'] for r in stats.replies)}")
    print(f"  sent: {', '.join(c['event'] for c in stats.controls)}; its socket then closed")
    recordings = list(final.recordings) if final is not None else []
    if final is not None:
        print(f"\nThe call: {final.end_reason} (ended_by {final.ended_by}); transfer "
              f"{dict(final.transfer or {})}")
    for rec in recordings:
        print(f"Recording: {rec['file']} under Asterisk's recording directory, {rec['state']}")
    left = {"Asterisk channels": list(sim.channels), "Asterisk bridges": list(sim.bridges),
            "UDP sockets": sim.open_udp_sockets()}  # fmt: skip
    leaks = {k: v for k, v in left.items() if v}
    print(f"Left behind: {leaks if leaks else 'nothing (target, bridge, media, bot all gone)'}")
    answered = final is not None and (final.transfer or {}).get("outcome") == "answered"
    ok = last_words and answered and not leaks and any(r["state"] == "done" for r in recordings)
    print("\nDemo " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1
