"""A real Pipecat bot that transfers, hangs up and dials DTMF through the bridge (bridge.botkit).

Served like echo_bot (its handshakes, its Twilio/Exotel/Vonage serializers, FastAPI + uvicorn
on the caller's loop), with the serializer wrapped by botkit.with_bridge_replies so that the
bridge's replies reach the pipeline. There is no TTS offline: the bot "speaks" tones.

    on start               the greeting tone
    DTMF transfer_digit    the "putting you through" tone, then transfer(target, mode)
    transfer_failed        the "sorry" tone: the bot keeps the caller
    DTMF "#"               hangup(hangup_cause, default "normal")
    DTMF "9"               dtmf("123#") to the caller's far end

    Pipeline: transport.input() -> TransferBotProcessor -> transport.output()

What each call saw and did is recorded in TransferCallStats, whose wait_*() a test awaits:

    async with run_transfer_bot(target="PJSIP/1001", mode="attended") as bot:
        connect(bot.url) ...
        call = await bot.stats.next_call()
        transfer = await call.wait_control("transfer")

    python -m bridge.tools.demo.transfer_bot --port 8766 [--dialect vonage] [--target T]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, WebSocket
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.workers.runner import WorkerRunner

from bridge import botkit

# The echo bot's handshake and serializers, so that both bots meet the bridge alike.
from bridge.tools.demo.echo_bot import (
    DIALECTS,
    PIPELINE_RATES,
    WIRE_RATES,
    WS_PATH,
    BotStats,
    EchoCallStats,
    _serializer,
    accept_call,
    bot_worker,
    quiet_pipecat_logs,
    serve_app,
)

DEFAULT_TARGET = "PJSIP/1001"
HANGUP_DIGIT = "#"
DTMF_OUT_DIGIT = "9"
DTMF_OUT = "123#"
# What Pipecat delivers as InputDTMFFrames (it drops A-D).
KEYPAD = "0123456789*#"
# What the bot "says": (tone Hz, milliseconds). Each lasts whole 40 ms output chunks:
# Pipecat's output transport holds a partial chunk back until more audio comes (and drops
# it when the bot stops speaking), so a tail would reach the caller after the control
# message queued behind it, or never.
OUTPUT_CHUNK_MS = 40
PROMPTS = {"greeting": (440, 200), "connecting": (660, 120), "sorry": (330, 200)}
TONE_LEVEL = 8000


def tone(frequency: int, ms: int, sample_rate: int) -> bytes:
    """A sine tone as PCM16 little-endian at `sample_rate`, for an OutputAudioRawFrame."""
    if ms <= 0 or ms % OUTPUT_CHUNK_MS:
        raise ValueError(f"a prompt lasts whole {OUTPUT_CHUNK_MS} ms chunks, not {ms} ms")
    n = np.arange(sample_rate * ms // 1000)
    samples = np.round(TONE_LEVEL * np.sin(2 * np.pi * frequency * n / sample_rate))
    return samples.astype("<i2").tobytes()


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """What the bot asks the bridge for when the caller presses `transfer_digit`."""

    target: str = DEFAULT_TARGET
    mode: str = "blind"
    transfer_digit: str = "0"
    caller_id: str | None = None
    timeout: int | None = None
    hangup_cause: str = "normal"  # what `#` hangs up with (the far end sees its Q.850 cause)

    def __post_init__(self) -> None:
        self.message()  # botkit refuses what the bridge would
        botkit.hangup(self.hangup_cause)
        if len(self.transfer_digit) != 1 or self.transfer_digit not in KEYPAD:
            raise ValueError(f"transfer digit must be one of {KEYPAD}, not {self.transfer_digit!r}")
        if self.transfer_digit in (HANGUP_DIGIT, DTMF_OUT_DIGIT):
            raise ValueError(
                f"transfer digit {self.transfer_digit!r} is taken (# hangs up, 9 dials)"
            )

    def message(self) -> botkit.ControlMessage:
        return botkit.transfer(
            self.target, mode=self.mode, caller_id=self.caller_id, timeout=self.timeout
        )


@dataclass(slots=True, eq=False)
class TransferCallStats:
    """One connection. `call` is what echo_bot records of it (handshake, the caller's audio
    and DTMF, `finished`); the rest is what this bot did."""

    call: EchoCallStats
    prompts: list[str] = field(default_factory=list)  # PROMPTS names, in the order queued
    controls: list[dict[str, Any]] = field(default_factory=list)  # pushed towards the bridge
    replies: list[dict[str, Any]] = field(default_factory=list)  # the bridge's, as received
    # (loop time, "sent <event>" | "got <event>"): the control messages and replies in order
    timeline: list[tuple[float, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def wait_control(self, event: str, nth: int = 1) -> dict[str, Any]:
        """The `nth` control message of `event` the bot pushed, once it has. Pushed means
        queued: the transport sends it after the audio queued before it."""
        await self._wait(lambda: len(_of(self.controls, event)) >= nth)
        return _of(self.controls, event)[nth - 1]

    async def wait_reply(self, event: str, nth: int = 1) -> dict[str, Any]:
        """The `nth` reply of `event` the bot received from the bridge, once it has."""
        await self._wait(lambda: len(_of(self.replies, event)) >= nth)
        return _of(self.replies, event)[nth - 1]

    async def wait_prompts(self, count: int) -> list[str]:
        """The prompts queued, once there are at least `count` of them."""
        await self._wait(lambda: len(self.prompts) >= count)
        return list(self.prompts)

    async def _wait(self, done: Callable[[], bool]) -> None:
        while not done():
            self.changed.clear()
            await self.changed.wait()


def _of(messages: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("event") == event]


class TransferBotStats(BotStats[TransferCallStats]):
    """The transfer bot's calls."""


class TransferBotProcessor(FrameProcessor):
    """Greets, then turns the caller's keys and the bridge's replies into tones and control
    frames. Everything goes downstream in order, so a control frame follows the tone
    queued before it out of the transport."""

    def __init__(
        self, stats: TransferCallStats, plan: TransferPlan, sample_rate: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._stats = stats
        self._plan = plan
        self._sample_rate = sample_rate

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._say("greeting")
        elif isinstance(frame, InputAudioRawFrame):
            self._heard(frame)  # the caller's audio goes no further: nothing wants it
        elif isinstance(frame, InputDTMFFrame):
            await self._on_digit(frame.button.value)
        elif isinstance(frame, InputTransportMessageFrame) and botkit.is_bridge_reply(
            frame.message
        ):
            await self._on_reply(dict(frame.message))
        else:
            await self.push_frame(frame, direction)

    def _heard(self, frame: InputAudioRawFrame) -> None:
        call = self._stats.call
        call.audio_frames += 1
        call.audio_bytes += len(frame.audio) // 2
        call.audio_arrived.set()

    async def _on_digit(self, digit: str) -> None:
        self._stats.call.dtmf_digits.append(digit)
        if digit == self._plan.transfer_digit:
            await self._say("connecting")
            await self._send(botkit.control_frame(self._plan.message()))
        elif digit == HANGUP_DIGIT:
            await self._send(botkit.hangup_frame(self._plan.hangup_cause))
        elif digit == DTMF_OUT_DIGIT:
            await self._send(botkit.dtmf_frame(DTMF_OUT))

    async def _on_reply(self, reply: dict[str, Any]) -> None:
        self._stats.replies.append(reply)
        self._stats.timeline.append((asyncio.get_running_loop().time(), f"got {reply['event']}"))
        self._stats.changed.set()
        if reply["event"] == "transfer_failed":
            await self._say("sorry")  # the caller stays with the bot

    async def _say(self, prompt: str) -> None:
        frequency, ms = PROMPTS[prompt]
        audio = tone(frequency, ms, self._sample_rate)
        await self.push_frame(
            OutputAudioRawFrame(audio=audio, sample_rate=self._sample_rate, num_channels=1)
        )
        self._stats.prompts.append(prompt)
        self._stats.changed.set()

    async def _send(
        self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame
    ) -> None:
        await self.push_frame(frame)
        self._stats.controls.append(dict(frame.message))
        self._stats.timeline.append((asyncio.get_running_loop().time(),
                                     f"sent {frame.message['event']}"))  # fmt: skip
        self._stats.changed.set()


def create_app(
    *,
    stats: TransferBotStats | None = None,
    dialect: str = "twilio",
    sample_rate: int | None = None,
    plan: TransferPlan | None = None,
) -> FastAPI:
    """The bot's FastAPI app: WebSocket on /ws and /ws/{anything}; stats on app.state.stats.

    `sample_rate` is the pipeline's (and an exotel stream's) rate; None: the dialect's."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}")
    rate = WIRE_RATES[dialect] if sample_rate is None else sample_rate
    if rate not in PIPELINE_RATES:
        raise ValueError(f"sample rate must be 8000 or 16000, not {rate!r}")
    transfer_plan = plan if plan is not None else TransferPlan()
    app = FastAPI()
    app.state.stats = stats if stats is not None else TransferBotStats()

    async def endpoint(websocket: WebSocket) -> None:
        await serve_call(websocket, app.state.stats, transfer_plan, dialect, rate)

    app.add_api_websocket_route(WS_PATH, endpoint)
    app.add_api_websocket_route(WS_PATH + "/{rest:path}", endpoint)
    return app


async def serve_call(
    websocket: WebSocket,
    stats: TransferBotStats,
    plan: TransferPlan,
    dialect: str = "twilio",
    sample_rate: int = 8000,
) -> None:
    """One connection: the dialect's handshake as a stock bot reads it, then the bot."""
    call = await accept_call(websocket, stats, dialect)
    if call is None:
        return
    call_stats = TransferCallStats(call)
    stats.add_call(call_stats)
    serializer = botkit.with_bridge_replies(_serializer(call, sample_rate))
    try:
        await _run_bot(websocket, call_stats, serializer, sample_rate, plan)
    finally:
        call.finished.set()


async def _run_bot(
    websocket: WebSocket,
    stats: TransferCallStats,
    serializer: FrameSerializer,
    sample_rate: int,
    plan: TransferPlan,
) -> None:
    # The bot never closes: after a hang-up or a transfer the bridge ends the connection.
    processor = TransferBotProcessor(stats, plan, sample_rate)
    worker = bot_worker(websocket, stats.call, serializer, sample_rate, processor)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


# Running it


@dataclass(frozen=True, slots=True)
class TransferBot:
    """A running in-process transfer bot."""

    url: str
    host: str
    port: int
    stats: TransferBotStats


@contextlib.asynccontextmanager
async def run_transfer_bot(
    host: str = "127.0.0.1",
    port: int = 0,
    dialect: str = "twilio",
    sample_rate: int | None = None,
    *,
    target: str = DEFAULT_TARGET,
    mode: str = "blind",
    transfer_digit: str = "0",
    caller_id: str | None = None,
    transfer_timeout: int | None = None,
    hangup_cause: str = "normal",
) -> AsyncIterator[TransferBot]:
    """Serve the transfer bot on this loop until the block exits; port 0 picks a free port.
    The transfer arguments are TransferPlan's, checked before anything listens."""
    plan = TransferPlan(target, mode, transfer_digit, caller_id, transfer_timeout, hangup_cause)
    quiet_pipecat_logs()
    stats = TransferBotStats()
    app = create_app(stats=stats, dialect=dialect, sample_rate=sample_rate, plan=plan)
    async with serve_app(app, host, port, "transfer bot") as (bound_host, bound_port):
        yield TransferBot(f"ws://{bound_host}:{bound_port}{WS_PATH}", bound_host, bound_port,
                          stats)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pipecat transfer bot (Twilio, Exotel or Vonage)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--dialect", choices=DIALECTS, default="twilio")
    parser.add_argument(
        "--sample-rate",
        type=int,
        choices=PIPELINE_RATES,
        default=None,
        help="pipeline (and exotel stream) rate; default: the dialect's (vonage 16000, else 8000)",
    )
    parser.add_argument("--target", default=DEFAULT_TARGET, help="Tech/resource or exten@context")
    parser.add_argument("--mode", choices=botkit.TRANSFER_MODES, default="blind")
    parser.add_argument("--transfer-digit", default="0")
    parser.add_argument("--caller-id", default=None)
    parser.add_argument("--transfer-timeout", type=int, default=None, metavar="SECONDS")
    parser.add_argument("--hangup-cause", default="normal", help="what # hangs up with, e.g. busy")
    parser.add_argument("--verbose", action="store_true", help="keep Pipecat's debug logs")
    args = parser.parse_args(argv)
    try:
        plan = TransferPlan(
            args.target, args.mode, args.transfer_digit, args.caller_id, args.transfer_timeout,
            args.hangup_cause,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if not args.verbose:
        quiet_pipecat_logs()
    app = create_app(dialect=args.dialect, sample_rate=args.sample_rate, plan=plan)
    print(f"{args.dialect} transfer bot on ws://{args.host}:{args.port}{WS_PATH}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws="websockets-sansio")


if __name__ == "__main__":
    main()
