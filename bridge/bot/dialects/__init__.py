"""Bot dialects: pure per-call codecs for the bot WebSocket (see base.py).

Known dialects, by the name create_dialect() takes, and the audio each carries (`.audio`):
- "twilio": Twilio Media Streams JSON, µ-law 8 kHz (TwilioDialect).
- "exotel": Exotel Voicebot JSON, base64 PCM16 LE at the call's rate (ExotelDialect).
- "vonage": Vonage Voice WebSocket, binary PCM16 LE 16 kHz (VonageDialect).
"""

from __future__ import annotations

from bridge.bot.dialects.base import (
    MAX_BOT_MESSAGE,
    BotAudio,
    BotClear,
    BotDialect,
    BotEvent,
    BotIgnored,
    BotMark,
    BotMessage,
    CallInfo,
)
from bridge.bot.dialects.exotel import ExotelDialect
from bridge.bot.dialects.twilio import TwilioDialect
from bridge.bot.dialects.vonage import VonageDialect
from bridge.errors import ConfigError

DIALECT_NAMES = ("twilio", "exotel", "vonage")


def create_dialect(name: str, info: CallInfo, sample_rate: int = 8000) -> BotDialect:
    """A fresh codec for one call; ConfigError for a dialect or rate this bridge cannot speak.

    `sample_rate` is the call's RTP rate (8000 for ulaw/alaw, 16000 for slin16). Only exotel
    follows it; twilio is always µ-law 8 kHz and vonage always PCM16 16 kHz. Whatever the
    dialect, its `.audio` says what it carries: convert to and from that.
    """
    if name == "twilio":
        return TwilioDialect(info)
    if name == "exotel":
        try:
            return ExotelDialect(info, sample_rate)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if name == "vonage":
        return VonageDialect(info)
    raise ConfigError(f"unknown bot dialect {name!r}; known: {', '.join(DIALECT_NAMES)}")


__all__ = [
    "DIALECT_NAMES",
    "MAX_BOT_MESSAGE",
    "BotAudio",
    "BotClear",
    "BotDialect",
    "BotEvent",
    "BotIgnored",
    "BotMark",
    "BotMessage",
    "CallInfo",
    "ExotelDialect",
    "TwilioDialect",
    "VonageDialect",
    "create_dialect",
]
