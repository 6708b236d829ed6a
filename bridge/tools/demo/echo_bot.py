"""A real Pipecat echo bot speaking Twilio, Exotel or Vonage, for the tests and the demo.

Per WebSocket connection it does what a stock Pipecat telephony bot does, minus the LLM:

    twilio   parse_telephony_websocket() reads `connected` + `start`, detects "twilio";
             TwilioFrameSerializer(stream_sid, call_sid, auto_hang_up=False)
    exotel   parse_telephony_websocket() detects "exotel";
             ExotelFrameSerializer(stream_sid, call_sid, exotel_sample_rate=<rate>)
    vonage   no runner detection: the bot reads `websocket:connected` itself;
             VonageFrameSerializer() (16 kHz on the wire)
    FastAPIWebsocketTransport        audio in/out at the pipeline rate, no VAD
    Pipeline: transport.input() -> EchoProcessor -> transport.output()

The pipeline rate (`sample_rate`) defaults to the dialect's wire rate: 8000 for twilio and
exotel, 16000 for vonage; for exotel it is the stream's rate too. At the wire rate Pipecat
neither resamples nor re-encodes beyond µ-law -> PCM16 -> µ-law, so the echo is bit-exact;
the output transport re-chunks it into 40 ms messages sent at real time. What each call
received is recorded in EchoBotStats.

    async with run_echo_bot() as bot:      # in-process, 127.0.0.1, ephemeral port
        connect(bot.url) ...
        call = await bot.stats.next_call()
    async with run_echo_bot(dialect="exotel", sample_rate=16000) as bot: ...

    python -m bridge.tools.demo.echo_bot --port 8765 [--dialect vonage] [--hangup-after 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    OutputAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.serializers.exotel import ExotelFrameSerializer
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.serializers.vonage import VonageFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

DIALECTS = ("twilio", "exotel", "vonage")
# The rate each dialect carries on the wire by default; the pipeline runs at it unless told.
WIRE_RATES = {"twilio": 8000, "exotel": 8000, "vonage": 16000}
PIPELINE_RATES = (8000, 16000)
VONAGE_RATE = 16000
WS_PATH = "/ws"
# Close code when the handshake is not the expected dialect's. A stock bot raises in
# create_transport() and its server closes with 1011 too.
CLOSE_BAD_HANDSHAKE = 1011


@dataclass(slots=True, eq=False)
class EchoCallStats:
    """What the bot received on one connection. `finished` is set when the call is over."""

    path: str
    stream_sid: str  # "" for vonage, which has none
    call_sid: str
    custom_parameters: dict[str, Any]  # vonage: the websocket:connected headers
    dialect: str = "twilio"
    audio_frames: int = 0  # InputAudioRawFrames: one per audio message
    audio_bytes: int = 0  # samples received at the pipeline rate (= µ-law bytes for twilio)
    dtmf_digits: list[str] = field(default_factory=list)  # as Pipecat saw them: 0-9 * #
    ended_by: str = ""  # "caller" (the peer closed) or "bot" (hangup_after)
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    audio_arrived: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def wait_audio(self, frames: int) -> None:
        """Until the bot has received `frames` audio messages: a call in full flow."""
        while self.audio_frames < frames:
            self.audio_arrived.clear()
            await self.audio_arrived.wait()


CallT = TypeVar("CallT")


class BotStats(Generic[CallT]):
    """Every call a demo bot served, in connection order, and handshakes it refused."""

    def __init__(self) -> None:
        self.calls: list[CallT] = []
        self.rejected: list[str] = []
        self._started: asyncio.Queue[CallT] = asyncio.Queue()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(calls={len(self.calls)}, rejected={len(self.rejected)})"

    def add_call(self, call: CallT) -> None:
        self.calls.append(call)
        self._started.put_nowait(call)

    async def next_call(self) -> CallT:
        """The next call whose handshake the bot accepted, waiting for it if need be."""
        return await self._started.get()


class EchoBotStats(BotStats[EchoCallStats]):
    """The echo bot's calls."""


class EchoProcessor(FrameProcessor):
    """Turns each InputAudioRawFrame into the same audio as an OutputAudioRawFrame."""

    def __init__(self, call: EchoCallStats, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._call = call

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._call.audio_frames += 1
            self._call.audio_bytes += len(frame.audio) // 2
            self._call.audio_arrived.set()
            echo = OutputAudioRawFrame(
                audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels
            )
            await self.push_frame(echo, direction)
            return
        if isinstance(frame, InputDTMFFrame):
            self._call.dtmf_digits.append(frame.button.value)
        await self.push_frame(frame, direction)


def create_app(
    *,
    stats: EchoBotStats | None = None,
    hangup_after: float | None = None,
    dialect: str = "twilio",
    sample_rate: int | None = None,
) -> FastAPI:
    """The bot's FastAPI app: WebSocket on /ws and /ws/{anything}; stats on app.state.stats.

    `sample_rate` is the pipeline's (and an exotel stream's) rate; None: the dialect's."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}")
    rate = WIRE_RATES[dialect] if sample_rate is None else sample_rate
    if rate not in PIPELINE_RATES:
        raise ValueError(f"sample rate must be 8000 or 16000, not {rate!r}")
    app = FastAPI()
    app.state.stats = stats if stats is not None else EchoBotStats()

    async def endpoint(websocket: WebSocket) -> None:
        await serve_call(websocket, app.state.stats, hangup_after, dialect, rate)

    app.add_api_websocket_route(WS_PATH, endpoint)
    app.add_api_websocket_route(WS_PATH + "/{rest:path}", endpoint)
    return app


class HandshakeRefused(Exception):
    """The peer did not open the call the way the bot's dialect does."""


async def accept_call(
    websocket: WebSocket, stats: BotStats[Any], dialect: str
) -> EchoCallStats | None:
    """Accept the connection and read the dialect's handshake as a stock bot does; None (the
    refusal noted in `stats`, the socket closed) when the peer did not open a call."""
    await websocket.accept()
    try:
        return await _handshake(websocket, dialect)
    except HandshakeRefused as exc:
        stats.rejected.append(str(exc))
        await _close_quietly(websocket, CLOSE_BAD_HANDSHAKE)
        return None


async def serve_call(
    websocket: WebSocket,
    stats: EchoBotStats,
    hangup_after: float | None,
    dialect: str = "twilio",
    sample_rate: int = 8000,
) -> None:
    """One connection: the dialect's handshake as a stock bot reads it, then the echo."""
    call = await accept_call(websocket, stats, dialect)
    if call is None:
        return
    stats.add_call(call)
    try:
        await _run_echo(websocket, call, _serializer(call, sample_rate), sample_rate, hangup_after)
    finally:
        call.finished.set()


async def _handshake(websocket: WebSocket, dialect: str) -> EchoCallStats:
    if dialect == "vonage":
        return await _vonage_handshake(websocket)
    try:
        transport_type, call_data = await parse_telephony_websocket(websocket)
    except Exception as exc:  # what a stock bot dies of; recorded for the tests
        raise HandshakeRefused(f"handshake failed: {exc.__class__.__name__}: {exc}") from exc
    if transport_type != dialect or not call_data.stream_id:
        raise HandshakeRefused(f"unsupported telephony provider: {transport_type}")
    parameters = call_data.body if dialect == "twilio" else call_data.custom_parameters
    return EchoCallStats(
        path=websocket.url.path,
        stream_sid=call_data.stream_id,
        call_sid=call_data.call_id or "",
        custom_parameters=dict(parameters) if isinstance(parameters, dict) else {},
        dialect=dialect,
    )


async def _vonage_handshake(websocket: WebSocket) -> EchoCallStats:
    """Vonage opens with a `websocket:connected` text message carrying the call's headers."""
    message = await websocket.receive()
    try:
        connected = json.loads(message.get("text") or "")
    except ValueError:
        connected = None
    if not isinstance(connected, dict) or connected.get("event") != "websocket:connected":
        raise HandshakeRefused("vonage handshake failed: no websocket:connected message")
    content_type = connected.get("content-type")
    if content_type != f"audio/l16;rate={VONAGE_RATE}":
        raise HandshakeRefused(f"vonage handshake failed: content-type {content_type!r}")
    headers = {k: v for k, v in connected.items() if k not in ("event", "content-type")}
    return EchoCallStats(
        path=websocket.url.path,
        stream_sid="",
        call_sid=str(headers.get("call_id", "")),
        custom_parameters=headers,
        dialect="vonage",
    )


def _serializer(call: EchoCallStats, sample_rate: int) -> FrameSerializer:
    if call.dialect == "exotel":
        return ExotelFrameSerializer(
            call.stream_sid,
            call_sid=call.call_sid,
            params=ExotelFrameSerializer.InputParams(exotel_sample_rate=sample_rate),
        )
    if call.dialect == "vonage":
        params = VonageFrameSerializer.InputParams(vonage_sample_rate=VONAGE_RATE)
        return VonageFrameSerializer(params=params)
    return TwilioFrameSerializer(
        call.stream_sid,
        call_sid=call.call_sid,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )


async def _close_quietly(websocket: WebSocket, code: int) -> None:
    with contextlib.suppress(RuntimeError, OSError):  # the peer may be gone already
        await websocket.close(code=code)


def bot_worker(
    websocket: WebSocket,
    call: EchoCallStats,
    serializer: FrameSerializer,
    sample_rate: int,
    processor: FrameProcessor,
) -> PipelineWorker:
    """A stock telephony bot's pipeline on `websocket`: transport in, `processor`, transport
    out, at `sample_rate`; cancelled when the bridge closes the connection."""
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            serializer=serializer,
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=sample_rate,
            audio_out_sample_rate=sample_rate,
            add_wav_header=False,
            allowed_origins=[],
        ),
    )
    worker = PipelineWorker(
        Pipeline([transport.input(), processor, transport.output()]),
        # The serializer takes its PCM rate from here, not from the transport params.
        params=PipelineParams(audio_in_sample_rate=sample_rate, audio_out_sample_rate=sample_rate),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport: Any, _websocket: Any) -> None:
        call.ended_by = call.ended_by or "caller"
        await worker.cancel()

    return worker


async def _run_echo(
    websocket: WebSocket,
    call: EchoCallStats,
    serializer: FrameSerializer,
    sample_rate: int,
    hangup_after: float | None,
) -> None:
    worker = bot_worker(websocket, call, serializer, sample_rate, EchoProcessor(call))
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    hangup = None
    if hangup_after is not None:
        hangup = asyncio.create_task(_hang_up_after(worker, call, hangup_after))
    try:
        await runner.run()
    finally:
        if hangup is not None:
            hangup.cancel()
            await asyncio.wait({hangup})


async def _hang_up_after(worker: PipelineWorker, call: EchoCallStats, delay: float) -> None:
    """End the call like a bot that said goodbye: EndFrame, 2 s of silence, close 1000."""
    await asyncio.sleep(delay)
    call.ended_by = call.ended_by or "bot"
    await worker.queue_frame(EndFrame())


# Running it


def quiet_pipecat_logs(level: str = "WARNING") -> None:
    """Lower loguru (Pipecat's logger) to `level` on stderr, once per process.

    Only loguru's own default stderr sink (id 0) is replaced; a process that configured
    loguru itself has already removed it, and its sinks are left alone.
    """
    try:
        logger.remove(0)
    except ValueError:
        return
    logger.add(_write_stderr, level=level)


def _write_stderr(message: str) -> None:
    """A loguru sink that looks sys.stderr up at write time: test runners swap it."""
    sys.stderr.write(message)


class _Server(uvicorn.Server):
    """uvicorn on the caller's loop: tells when it listens, leaves signals to the host."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True, slots=True)
class EchoBot:
    """A running in-process echo bot."""

    url: str
    host: str
    port: int
    stats: EchoBotStats


@contextlib.asynccontextmanager
async def run_echo_bot(
    host: str = "127.0.0.1",
    port: int = 0,
    hangup_after: float | None = None,
    dialect: str = "twilio",
    sample_rate: int | None = None,
) -> AsyncIterator[EchoBot]:
    """Serve the echo bot on this loop until the block exits; port 0 picks a free port."""
    quiet_pipecat_logs()
    stats = EchoBotStats()
    app = create_app(
        stats=stats, hangup_after=hangup_after, dialect=dialect, sample_rate=sample_rate
    )
    async with serve_app(app, host, port, "echo bot") as (bound_host, bound_port):
        yield EchoBot(f"ws://{bound_host}:{bound_port}{WS_PATH}", bound_host, bound_port, stats)


@contextlib.asynccontextmanager
async def serve_app(app: Any, host: str, port: int, what: str) -> AsyncIterator[tuple[str, int]]:
    """Serve an ASGI bot `app` with uvicorn on this loop until the block exits; yields the
    bound (host, port). Port 0 picks a free port."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        ws="websockets-sansio",
        timeout_graceful_shutdown=5,
    )
    # Bind here so a taken port raises OSError to the caller (uvicorn would sys.exit).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name=f"{what} server")
    ready = asyncio.create_task(server.ready.wait())
    try:
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            raise RuntimeError(f"{what} server stopped before listening")
        bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
        yield bound_host, bound_port
    finally:
        ready.cancel()
        server.should_exit = True
        await serving


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pipecat echo bot (Twilio, Exotel or Vonage)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--dialect", choices=DIALECTS, default="twilio")
    parser.add_argument(
        "--sample-rate",
        type=int,
        choices=PIPELINE_RATES,
        default=None,
        help="pipeline (and exotel stream) rate; default: the dialect's (vonage 16000, else 8000)",
    )
    parser.add_argument("--hangup-after", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--verbose", action="store_true", help="keep Pipecat's debug logs")
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_pipecat_logs()
    app = create_app(
        hangup_after=args.hangup_after, dialect=args.dialect, sample_rate=args.sample_rate
    )
    print(f"{args.dialect} echo bot on ws://{args.host}:{args.port}{WS_PATH}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws="websockets-sansio")


if __name__ == "__main__":
    main()
