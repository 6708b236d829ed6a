"""The baseline: an ARI ExternalMedia <-> Twilio-dialect relay written the obvious way.

This is what the bench compares the bridge against, so it is deliberately *not* optimised,
but it must be correct enough to carry the same calls: per packet `json.dumps` and base64,
no pacing (a bot message is cut into 160-byte RTP packets sent at once), one task per
direction per call (UDP -> asyncio.Queue -> bot; bot -> UDP), aiohttp for REST, the
`websockets` client with its defaults for the events and bot sockets, an asyncio datagram
endpoint per call. It waits for the ExternalMedia channel's StasisStart before addChannel
(asterisk-facts §1b) because the load's fake Asterisk would otherwise not bridge the call.

`python -m bridge.tools.bench.naive_relay --ari-url URL --password P --bot-url URL`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import signal
import struct
import sys
import uuid
from typing import Any

import aiohttp
import websockets


class UdpQueue(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


class NaiveRelay:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = args.ari_url.rstrip("/") + "/ari"
        self.http: aiohttp.ClientSession | None = None
        self.hangups: dict[str, asyncio.Event] = {}
        self.media_started: dict[str, asyncio.Event] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        token = base64.b64encode(f"{self.args.user}:{self.args.password}".encode()).decode()
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"})
        host = self.args.ari_url.split("://", 1)[1].rstrip("/")
        url = f"ws://{host}/ari/events?app={self.args.app}&api_key={self.args.user}:{self.args.password}"
        try:
            async with websockets.connect(url) as ws:
                async for message in ws:
                    self.on_event(json.loads(message))
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.http.close()

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        channel = event.get("channel", {})
        if kind == "StasisStart":
            if channel["name"].startswith("UnicastRTP/"):
                self.media_started.setdefault(channel["id"], asyncio.Event()).set()
            else:
                self.hangups[channel["id"]] = asyncio.Event()
                task = asyncio.create_task(self.call(channel["id"]))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        elif kind in ("StasisEnd", "ChannelHangupRequest") and channel.get("id") in self.hangups:
            self.hangups[channel["id"]].set()

    async def rest(self, method: str, path: str, **params: str) -> Any:
        assert self.http is not None
        async with self.http.request(method, self.base + path, params=params) as resp:
            if resp.status == 204:
                return None
            resp.raise_for_status()
            return await resp.json()

    async def call(self, caller_id: str) -> None:
        call_id = uuid.uuid4().hex
        bridge_id, media_id = f"naive-br-{call_id}", f"naive-em-{call_id}"
        host = "127.0.0.1"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpQueue(queue), local_addr=(host, 0)
        )
        port = transport.get_extra_info("sockname")[1]
        started = self.media_started.setdefault(media_id, asyncio.Event())
        ws = None
        try:
            await self.rest("POST", f"/channels/{caller_id}/answer")
            await self.rest("POST", "/bridges", type="mixing", bridgeId=bridge_id)
            media = await self.rest(
                "POST", "/channels/externalMedia", app=self.args.app,
                external_host=f"{host}:{port}", format="ulaw", channelId=media_id,
            )  # fmt: skip
            variables = media["channelvars"]
            remote = (
                variables["UNICASTRTP_LOCAL_ADDRESS"],
                int(variables["UNICASTRTP_LOCAL_PORT"]),
            )
            await started.wait()
            await self.rest("POST", f"/bridges/{bridge_id}/addChannel",
                            channel=f"{caller_id},{media_id}")  # fmt: skip
            ws = await websockets.connect(self.args.bot_url.replace("{call_id}", call_id))
            sid = "MZ" + call_id
            connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
            await ws.send(json.dumps(connected))
            await ws.send(json.dumps({
                "event": "start", "sequenceNumber": "1", "streamSid": sid,
                "start": {"streamSid": sid, "callSid": "CA" + call_id, "accountSid": "AC0",
                          "tracks": ["inbound"],
                          "customParameters": {"call_id": call_id, "channel_id": caller_id},
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                          "channels": 1}},
            }))  # fmt: skip
            up = asyncio.create_task(caller_to_bot(queue, ws, sid))
            down = asyncio.create_task(bot_to_caller(ws, transport, remote))
            await self.hangups[caller_id].wait()
            up.cancel()
            down.cancel()
            with contextlib.suppress(Exception):
                await ws.send(json.dumps({"event": "stop", "streamSid": sid}))
        finally:
            if ws is not None:
                await ws.close()
            transport.close()
            with contextlib.suppress(Exception):
                await self.rest("DELETE", f"/channels/{media_id}")
            with contextlib.suppress(Exception):
                await self.rest("DELETE", f"/bridges/{bridge_id}")
            self.hangups.pop(caller_id, None)
            self.media_started.pop(media_id, None)


async def caller_to_bot(queue: asyncio.Queue[bytes], ws: Any, sid: str) -> None:
    sequence = 1
    while True:
        packet = await queue.get()
        sequence += 1
        payload = base64.b64encode(packet[12:]).decode()
        await ws.send(json.dumps({
            "event": "media", "sequenceNumber": str(sequence), "streamSid": sid,
            "media": {"track": "inbound", "chunk": str(sequence - 1),
                      "timestamp": str((sequence - 2) * 20), "payload": payload},
        }))  # fmt: skip


async def bot_to_caller(ws: Any, transport: asyncio.DatagramTransport, remote: Any) -> None:
    seq, timestamp, ssrc = random.getrandbits(16), random.getrandbits(32), random.getrandbits(32)
    async for message in ws:
        data = json.loads(message)
        if data["event"] != "media":
            continue
        audio = base64.b64decode(data["media"]["payload"])
        for start in range(0, len(audio), 160):
            header = struct.pack("!BBHII", 0x80, 0, seq, timestamp, ssrc)
            transport.sendto(header + audio[start : start + 160], remote)
            seq = (seq + 1) & 0xFFFF
            timestamp = (timestamp + 160) & 0xFFFFFFFF


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.bench.naive_relay")
    parser.add_argument("--ari-url", required=True)
    parser.add_argument("--user", default="asterisk")
    parser.add_argument("--password", required=True)
    parser.add_argument("--app", default="pipecat")
    parser.add_argument("--bot-url", required=True)
    args = parser.parse_args(argv)

    async def serve() -> None:
        task = asyncio.create_task(NaiveRelay(args).run())
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
