"""The Pipecat transfer bot, driven over a real loopback WebSocket with our own dialects."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, cast

import pytest
import websockets

from bridge import botkit
from bridge.bot.dialects import (
    MAX_BOT_MESSAGE,
    BotDialect,
    CallInfo,
    ExotelDialect,
    TwilioDialect,
    VonageDialect,
)
from bridge.tools.demo.transfer_bot import (
    PROMPTS,
    TransferPlan,
    create_app,
    main,
    run_transfer_bot,
    tone,
)

TIMEOUT = 5.0
# Bytes per millisecond of the bot's audio on the wire: µ-law 8 kHz, PCM16 8 or 16 kHz.
WIRE_BYTES_PER_MS = {"twilio": 8, "exotel": 16, "vonage": 32}


def call_info(call_id: str) -> CallInfo:
    return CallInfo(call_id, f"1718000000.{call_id}", "+15551230000", "6001", {"lang": "en"})


def dialect_for(name: str, info: CallInfo) -> BotDialect:
    if name == "exotel":
        return ExotelDialect(info, 8000)
    if name == "vonage":
        return VonageDialect(info)
    return TwilioDialect(info)


def prompt_bytes(dialect: str, *prompts: str) -> int:
    return sum(PROMPTS[p][1] for p in prompts) * WIRE_BYTES_PER_MS[dialect]


class BotSide:
    """The bridge's end of one call: sends the caller's keys and the bridge's replies, and
    reads the bot's audio and control messages in the order they came."""

    def __init__(self, ws: websockets.ClientConnection, dialect: BotDialect) -> None:
        self.ws = ws
        self.dialect = dialect

    async def press(self, digit: str) -> None:
        await self.ws.send(cast(str, self.dialect.encode_dtmf(digit)))

    async def reply(self, reply: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(reply))

    async def until_control(self) -> tuple[int, str]:
        """(bytes of audio that came first, the text of the next control message)."""
        audio = 0
        while True:
            message = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            payload = audio_of(message)
            if payload is None:
                return audio, cast(str, message)
            audio += len(payload)

    async def audio(self, n_bytes: int) -> None:
        """Until `n_bytes` of audio have come, and nothing else."""
        received = 0
        while received < n_bytes:
            message = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            payload = audio_of(message)
            assert payload is not None, f"{message!r} after {received} bytes of audio"
            received += len(payload)
        assert received == n_bytes


def audio_of(message: str | bytes) -> bytes | None:
    """A media message's audio (Vonage: any binary frame), or None for a control message.
    Read here, not with the bridge's dialects, so the test sees the raw wire."""
    if isinstance(message, bytes):
        return message
    obj = json.loads(message)
    if obj.get("event") == "media":
        return base64.b64decode(obj["media"]["payload"])
    return None


async def open_call(url: str, dialect: str, call_id: str) -> BotSide:
    info = call_info(call_id)
    ws = await asyncio.wait_for(
        websockets.connect(url, compression=None, max_size=MAX_BOT_MESSAGE), TIMEOUT
    )
    codec = dialect_for(dialect, info)
    for message in codec.opening_messages(info):
        await ws.send(message)
    return BotSide(ws, codec)


@pytest.mark.parametrize(
    ("dialect", "mode"), [("twilio", "blind"), ("exotel", "blind"), ("vonage", "attended")]
)
async def test_transfer_fails_the_bot_talks_on_then_dials_and_hangs_up(
    dialect: str, mode: str
) -> None:
    async with run_transfer_bot(dialect=dialect, target="PJSIP/1001", mode=mode) as bot:
        side = await open_call(bot.url, dialect, "t1")
        await side.press("0")

        # The transfer comes after the audio queued before it: the greeting, "connecting".
        audio, text = await side.until_control()
        assert audio == prompt_bytes(dialect, "greeting", "connecting")
        assert text == json.dumps(botkit.transfer("PJSIP/1001", mode=mode))
        assert json.loads(text) == {"event": "transfer", "target": "PJSIP/1001", "mode": mode}

        call = await asyncio.wait_for(bot.stats.next_call(), TIMEOUT)
        assert await call.wait_control("transfer") == json.loads(text)

        ringing = {"event": "transfer_ringing", "target": "PJSIP/1001"}
        failed = {"event": "transfer_failed", "target": "PJSIP/1001", "cause": "busy"}
        await side.reply(ringing)
        await side.reply(failed)
        await side.audio(prompt_bytes(dialect, "sorry"))  # it kept talking
        assert await asyncio.wait_for(call.wait_reply("transfer_failed"), TIMEOUT) == failed
        assert call.replies == [ringing, failed]
        assert call.prompts == ["greeting", "connecting", "sorry"]

        await side.press("9")
        assert await side.until_control() == (0, '{"event": "dtmf", "digits": "123#"}')
        await side.press("#")
        assert await side.until_control() == (0, '{"event": "hangup", "cause": "normal"}')

        # The bridge hangs up: the bot never closes by itself.
        await side.ws.close()
        await asyncio.wait_for(call.call.finished.wait(), TIMEOUT)
        assert [c["event"] for c in call.controls] == ["transfer", "dtmf", "hangup"]
        assert call.call.dtmf_digits == ["0", "9", "#"]
        assert call.call.custom_parameters["call_id"] == "t1"
        assert call.call.ended_by == "caller"


async def test_ringing_and_answered_are_seen_and_say_nothing() -> None:
    async with run_transfer_bot() as bot:
        side = await open_call(bot.url, "twilio", "t2")
        call = await asyncio.wait_for(bot.stats.next_call(), TIMEOUT)
        await side.press("0")
        await side.until_control()
        for event in ("transfer_ringing", "transfer_answered"):
            await side.reply({"event": event, "target": "PJSIP/1001"})
            await asyncio.wait_for(call.wait_reply(event), TIMEOUT)
        # A message after the replies proves no audio was queued for them.
        await side.press("#")
        assert await side.until_control() == (0, '{"event": "hangup", "cause": "normal"}')
        assert call.prompts == ["greeting", "connecting"]
        await side.ws.close()


async def test_the_plan_is_configurable() -> None:
    async with run_transfer_bot(
        target="206@caller", transfer_digit="*", caller_id="Bot <6001>", transfer_timeout=30
    ) as bot:
        side = await open_call(bot.url, "twilio", "t3")
        await side.press("0")  # not the transfer key any more: nothing
        await side.press("*")
        audio, text = await side.until_control()
        assert audio == prompt_bytes("twilio", "greeting", "connecting")
        assert json.loads(text) == {
            "event": "transfer",
            "target": "206@caller",
            "mode": "blind",
            "caller_id": "Bot <6001>",
            "timeout": 30,
        }
        await side.ws.close()


@pytest.mark.parametrize(
    ("plan", "error"),
    [
        ({"target": "206@caller", "mode": "attended"}, "only be transferred blind"),
        ({"target": "1001"}, "neither Tech/resource"),
        ({"transfer_digit": "#"}, "is taken"),
        ({"transfer_digit": "9"}, "is taken"),
        ({"transfer_digit": "A"}, "transfer digit must be one of"),
        ({"transfer_digit": "12"}, "transfer digit must be one of"),
    ],
)
def test_a_bad_plan_is_refused_before_serving(plan: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        create_app(plan=TransferPlan(**plan))


def test_prompts_last_whole_output_chunks() -> None:
    for frequency, ms in PROMPTS.values():
        assert len(tone(frequency, ms, 16000)) == ms * 32
    with pytest.raises(ValueError, match="whole 40 ms chunks, not 50 ms"):
        tone(440, 50, 8000)


def test_the_cli_refuses_bad_plans_and_dialects() -> None:
    with pytest.raises(SystemExit):
        main(["--target", "206@caller", "--mode", "attended"])
    with pytest.raises(SystemExit):
        main(["--dialect", "sip"])
