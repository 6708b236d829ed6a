"""Bot dialects: pure per-call codecs for the bot WebSocket (see base.py).

Known dialects, by the name create_dialect() takes:
- "twilio": Twilio Media Streams JSON, µ-law 8 kHz (TwilioDialect).
"""

from __future__ import annotations

from bridge.dialects.base import (
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
from bridge.dialects.twilio import TwilioDialect
from bridge.errors import ConfigError

DIALECT_NAMES = ("twilio",)


def create_dialect(name: str, info: CallInfo) -> BotDialect:
    """A fresh codec for one call; ConfigError for a dialect this bridge does not speak."""
    if name == "twilio":
        return TwilioDialect(info)
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
    "TwilioDialect",
    "create_dialect",
]
