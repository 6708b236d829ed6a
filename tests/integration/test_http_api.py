"""The HTTP API of a real bridge between the simulated Asterisk and real Pipecat bots: the
read models of a live call, an API hang-up, and the Twilio-compatible hang-up a stock
Pipecat TwilioFrameSerializer(auto_hang_up=True, base_url=<the bridge>) sends when its
pipeline ends, heard out before the caller is hung up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvicorn
from fastapi import FastAPI, WebSocket
from pipecat.frames.frames import EndFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

from bridge.call.machine import CallState
from bridge.call.view import CallChange, CallView
from bridge.ops.http_api import twilio_call_sid
from bridge.tools.demo.echo_bot import quiet_pipecat_logs
from rtp.g711 import ulaw_to_pcm16
from rtp.packet import RtpPacket
from tests.integration.conftest import Rig, running_rig

ACCOUNT = "AC" + "7" * 32
AUTH_TOKEN = "twilio-test-token"
GOODBYE_BYTE = 0x55  # µ-law, exact through Pipecat's PCM16 at 8 kHz
GOODBYE_FRAMES = 40  # 20 ms frames: 0.8 s


def api_base(rig: Rig) -> str:
    address = rig.controller.http_api.address
    assert address is not None
    return f"http://{address[0]}:{address[1]}"


def until_state(rig: Rig, state: CallState) -> asyncio.Future[CallView]:
    """The first view of any call in `state`, from the read model's observers."""
    seen: asyncio.Future[CallView] = asyncio.get_running_loop().create_future()

    def observe(view: CallView, _change: CallChange) -> None:
        if view.state is state and not seen.done():
            seen.set_result(view)

    rig.controller.observers.append(observe)
    return seen


def payloads(sim_call: Any) -> list[tuple[float, bytes]]:
    return [(t, RtpPacket.parse(d).payload) for t, d, _a in sim_call.rtp_received]


async def test_a_live_call_is_listed_and_an_api_hangup_leaves_nothing_behind() -> None:
    async with running_rig() as rig, aiohttp.ClientSession() as http:
        base = api_base(rig)
        up = until_state(rig, CallState.UP)
        sim_call = await rig.sim.place_call("basic_ulaw", caller_number="5551000", hangup_after=30)
        view = await asyncio.wait_for(up, 10)
        async with http.get(f"{base}/calls") as response:
            assert response.status == 200
            listed = await response.json()
        (call,) = [v for v in listed if v["id"] == view.id]
        assert (call["state"], call["direction"], call["channel_id"], call["caller"]) == (
            "up", "inbound", sim_call.caller_id, "5551000")  # fmt: skip
        async with http.get(f"{base}/calls/{view.id}") as response:
            assert response.status == 200
            assert (await response.json())["channel_id"] == sim_call.caller_id
        async with http.get(f"{base}/readyz") as response:
            assert (response.status, await response.json()) == (200, {"ready": True})

        async with http.delete(f"{base}/calls/{view.id}") as response:
            assert response.status == 202
            assert (await response.json())["state"] in ("ending", "ended")
        assert await asyncio.wait_for(sim_call.ended, 10) == "app"
        await rig.wait_idle()
        assert not rig.sim.leftovers(), rig.sim.leftovers()

        async with http.get(f"{base}/calls/{view.id}") as response:
            ended = await response.json()
        assert (ended["state"], ended["ended_by"]) == ("ended", "api")
        async with http.delete(f"{base}/calls/{view.id}") as response:
            assert response.status == 409
        async with http.delete(f"{base}/calls/{sim_call.caller_id}") as response:
            assert response.status == 404  # an Asterisk channel id is not a call of ours


# ---- a Pipecat bot that says goodbye and hangs up through the bridge's Twilio API --------


@dataclass
class GoodbyeBot:
    """Per connection: the Twilio handshake, then GOODBYE_FRAMES of a tone and EndFrame; its
    TwilioFrameSerializer hangs up through `base_url` (set once the bridge listens)."""

    url: str = ""
    base_url: str = ""
    call_sids: list[str] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


async def serve_goodbye(websocket: WebSocket, bot: GoodbyeBot) -> None:
    await websocket.accept()
    _kind, call_data = await parse_telephony_websocket(websocket)
    bot.call_sids.append(call_data.call_id or "")
    serializer = TwilioFrameSerializer(
        call_data.stream_id,
        call_sid=call_data.call_id,
        account_sid=ACCOUNT,
        auth_token=AUTH_TOKEN,
        base_url=bot.base_url,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=True),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            serializer=serializer,
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=8000,
            audio_out_sample_rate=8000,
            # No trailing silence: the hang-up comes right after the goodbye's last chunk,
            # so a bridge that did not play out first would clip it.
            audio_out_end_silence_secs=0,
            add_wav_header=False,
        ),
    )
    worker = PipelineWorker(
        Pipeline([transport.input(), transport.output()]),
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    goodbye = ulaw_to_pcm16(bytes([GOODBYE_BYTE]) * (160 * GOODBYE_FRAMES))

    @transport.event_handler("on_client_connected")
    async def on_connected(_transport: Any, _websocket: Any) -> None:
        audio = OutputAudioRawFrame(audio=goodbye, sample_rate=8000, num_channels=1)
        await worker.queue_frames([audio, EndFrame()])

    @transport.event_handler("on_client_disconnected")
    async def on_disconnected(_transport: Any, _websocket: Any) -> None:
        await worker.cancel()

    try:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()
    finally:
        bot.finished.set()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def goodbye_bot() -> AsyncIterator[GoodbyeBot]:
    quiet_pipecat_logs()
    bot = GoodbyeBot()
    app = FastAPI()

    async def endpoint(websocket: WebSocket) -> None:
        await serve_goodbye(websocket, bot)

    app.add_api_websocket_route("/ws", endpoint)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.wait_for(server.ready.wait(), 10)
        bot.url = f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
        yield bot
    finally:
        server.should_exit = True
        await serving


async def test_twilio_hangup_from_a_pipecat_serializer_plays_the_goodbye_out_first() -> None:
    loop = asyncio.get_running_loop()
    overrides = {"twilio_account_sid": ACCOUNT, "twilio_auth_token": AUTH_TOKEN}
    async with goodbye_bot() as bot, running_rig(**overrides) as rig:
        bot.base_url = api_base(rig)
        ended = until_state(rig, CallState.ENDED)
        sim_call = await rig.sim.place_call("basic_ulaw", args=[bot.url], hangup_after=30)
        hung_up_at: list[float] = []
        sim_call.ended.add_done_callback(lambda _f: hung_up_at.append(loop.time()))
        assert await asyncio.wait_for(sim_call.ended, 15) == "app"
        final = await asyncio.wait_for(ended, 5)
        await asyncio.wait_for(bot.finished.wait(), 10)
        await rig.wait_idle()
        assert not rig.sim.leftovers(), rig.sim.leftovers()

    assert bot.call_sids == [twilio_call_sid(final.id)]
    assert (final.ended_by, final.end_reason) == ("bot", "bot hung up (Twilio REST)")
    tone = [t for t, p in payloads(sim_call) if p == bytes([GOODBYE_BYTE]) * 160]
    assert len(tone) == GOODBYE_FRAMES  # every frame of the goodbye, none clipped
    assert tone[-1] <= hung_up_at[0]
