"""chan_websocket control messages (Asterisk 23.4.1 `channels/chan_websocket.c`), no I/O.

Asterisk -> us: `parse_control(text)` turns one text frame into a frozen event. Both formats
are read whatever the channel was set to:

* plain text, `NAME key:value key:value ...` (`MEDIA_START connection_id:... channel:...
  channel_id:... format:ulaw optimal_frame_size:160 ptime:20`), except that
  MEDIA_MARK_PROCESSED and MEDIA_BUFFERING_COMPLETED carry the bare correlation id
  (`MEDIA_MARK_PROCESSED lab-mark-1`) and ERROR ends with `error_text:` and free text, spaces
  and all. MEDIA_XON, MEDIA_XOFF and QUEUE_DRAINED are the bare name.
* JSON, `{"event": "NAME", "channel_id": "...", ...}` with `transport_data=f(json)` or
  `control_message_format=json`: every event has `channel_id`, numbers are JSON ints,
  STATUS flags JSON booleans, the ids are under `correlation_id` ("" when there was none), and
  MEDIA_START adds `channel_variables` (the channel's variables, strings).

An event name we do not know becomes `UnknownControl`, never an exception; a known event that
lacks a field or has one of the wrong type raises `WebSocketControlError` with one exact
message. Input is capped at `MAX_CONTROL_MESSAGE` characters: Asterisk's plain events are a
few hundred bytes, but JSON MEDIA_START lists every channel variable and Asterisk bounds
nothing it writes.

Versions: chan_websocket from 20.16 / 22.6 / 23.0 (plain text only); `channel_id` in
MEDIA_START, DTMF_END and STATUS from 20.17 / 22.7 / 23.1, hence optional here; JSON, MARK_MEDIA
-> MEDIA_MARK_PROCESSED and ERROR events from 20.18 / 22.8 / 23.2; SET_MEDIA_DIRECTION from
20.19 / 22.9 / 23.3.

Us -> Asterisk: `encode_command(name, fields, json=...)`. Asterisk reads a plain command as
`NAME` plus everything after the first space as its one argument (the correlation id of
MARK_MEDIA and STOP_MEDIA_BUFFERING: `MARK_MEDIA lab-mark-1`, not `correlation_id:...`), and a
JSON one as `{"command": "NAME", "correlation_id": "..."}`; it parses only the format the
channel was created with (a plain command to a JSON channel gets an ERROR event back). It strips
the message, compares names case-sensitively, ignores unknown commands, and silently ignores any
text frame over `MAX_TEXT_MESSAGE_LEN` (128) bytes, so `encode_command` refuses to build one.
FLUSH_MEDIA also drops the marks still queued: they are never reported, which `MarkIds` knows.
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from bridge.errors import WebSocketCommandError, WebSocketControlError

MAX_TEXT_MESSAGE_LEN = 128
MAX_CONTROL_MESSAGE = 64 * 1024
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True, slots=True)
class MediaStart:
    connection_id: str
    channel: str
    channel_id: str | None
    format: str
    optimal_frame_size: int
    ptime: int
    # None in plain text, which never carries them.
    channel_variables: Mapping[str, str] | None = field(default=None, hash=False)


@dataclass(frozen=True, slots=True)
class DtmfEnd:
    digit: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaXoff:
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaXon:
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueueDrained:
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    queue_length: int
    xon_level: int
    xoff_level: int
    queue_full: bool
    bulk_media: bool
    media_paused: bool
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class BufferingCompleted:
    """MEDIA_BUFFERING_COMPLETED; `name` is STOP_MEDIA_BUFFERING's correlation id or ""."""

    name: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MarkProcessed:
    """MEDIA_MARK_PROCESSED; `name` is MARK_MEDIA's correlation id or ""."""

    name: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class ControlError:
    """Asterisk's ERROR event: a command it refused (passthrough mode, media direction, JSON)."""

    error_text: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnknownControl:
    name: str
    fields: Mapping[str, Any] = field(hash=False)


ControlEvent = (
    MediaStart
    | DtmfEnd
    | MediaXoff
    | MediaXon
    | QueueDrained
    | Status
    | BufferingCompleted
    | MarkProcessed
    | ControlError
    | UnknownControl
)

ERR_TOO_LONG = "control message of {} characters exceeds the {} limit"
ERR_EMPTY = "control message is empty"
ERR_JSON = "control message is not valid JSON"
ERR_NOT_OBJECT = "JSON control message is not an object"
ERR_NO_EVENT = 'JSON control message has no string "event"'
ERR_NAME = "control message name {!r} is not an event name"
ERR_FIELD = "{} field {!r} is not key:value"
ERR_DUPLICATE = "{} field {!r} appears twice"
ERR_MISSING = "{} lacks {}"
ERR_TYPE = "{} {} is not {}"
ERR_DIGIT = "DTMF_END digit {!r} is not one of 0-9 * # A-D"

_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_INTEGER = re.compile(r"[0-9]{1,9}")
_ERROR_BODY = re.compile(r"channel_id:(\S*) error_text:(.*)", re.DOTALL)
_BOOLEANS = {"true": True, "false": False}


def parse_control(text: str) -> ControlEvent:
    """One chan_websocket text message from Asterisk, plain or JSON."""
    if len(text) > MAX_CONTROL_MESSAGE:
        raise WebSocketControlError(ERR_TOO_LONG.format(len(text), MAX_CONTROL_MESSAGE))
    text = text.strip()
    if not text:
        raise WebSocketControlError(ERR_EMPTY)
    if text[0] == "{":
        return _from_json(text)
    return _from_plain(text)


def _from_json(text: str) -> ControlEvent:
    try:
        message = jsonlib.loads(text)
    except (ValueError, RecursionError):
        raise WebSocketControlError(ERR_JSON) from None
    if not isinstance(message, dict):
        raise WebSocketControlError(ERR_NOT_OBJECT)
    name = message.pop("event", None)
    if not isinstance(name, str):
        raise WebSocketControlError(ERR_NO_EVENT)
    build = _BUILDERS.get(name)
    if build is None:
        return UnknownControl(name, MappingProxyType(message))
    return build(_Fields(name, message, typed=True))


def _from_plain(text: str) -> ControlEvent:
    name, _, rest = text.partition(" ")
    if not _NAME.fullmatch(name):
        raise WebSocketControlError(ERR_NAME.format(name[:40]))
    if name in ("MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"):
        values: dict[str, Any] = {"correlation_id": rest}
    elif name == "ERROR" and (match := _ERROR_BODY.fullmatch(rest)):
        values = {"channel_id": match[1], "error_text": match[2]}
    else:
        values = _split_plain(name, rest, strict=name in _BUILDERS)
    build = _BUILDERS.get(name)
    if build is None:
        return UnknownControl(name, MappingProxyType(values))
    return build(_Fields(name, values, typed=False))


def _split_plain(name: str, rest: str, *, strict: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for token in rest.split():
        key, colon, value = token.partition(":")
        if not (key and colon) or key in values:
            if not strict:
                return {"": rest}
            message = ERR_DUPLICATE if colon and key else ERR_FIELD
            raise WebSocketControlError(message.format(name, token[:40]))
        values[key] = value
    return values


class _Fields:
    """One message's fields, read with a type; plain-text values are converted from text."""

    __slots__ = ("name", "typed", "values")

    def __init__(self, name: str, values: dict[str, Any], *, typed: bool) -> None:
        self.name, self.values, self.typed = name, values, typed

    def _get(self, key: str) -> Any:
        if key not in self.values:
            raise WebSocketControlError(ERR_MISSING.format(self.name, key))
        return self.values[key]

    def _wrong(self, key: str, kind: str) -> WebSocketControlError:
        return WebSocketControlError(ERR_TYPE.format(self.name, key, kind))

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._wrong(key, "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if key in self.values else None

    def integer(self, key: str) -> int:
        value = self._get(key)
        if self.typed:
            if type(value) is not int or value < 0:
                raise self._wrong(key, "a non-negative integer")
            return value
        if not isinstance(value, str) or not _INTEGER.fullmatch(value):
            raise self._wrong(key, "a non-negative integer")
        return int(value)

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if self.typed:
            if type(value) is not bool:
                raise self._wrong(key, "a boolean")
            return value
        if value not in _BOOLEANS:
            raise self._wrong(key, "true or false")
        return _BOOLEANS[value]

    def variables(self, key: str) -> Mapping[str, str] | None:
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._wrong(key, "an object of strings")
        return MappingProxyType(value)


_Builder = Callable[[_Fields], ControlEvent]


def _media_start(f: _Fields) -> MediaStart:
    return MediaStart(
        f.text("connection_id"),
        f.text("channel"),
        f.optional_text("channel_id"),
        f.text("format"),
        f.integer("optimal_frame_size"),
        f.integer("ptime"),
        f.variables("channel_variables"),
    )


def _dtmf_end(f: _Fields) -> DtmfEnd:
    digit = f.text("digit")
    if len(digit) != 1 or digit not in DTMF_DIGITS:
        raise WebSocketControlError(ERR_DIGIT.format(digit[:40]))
    return DtmfEnd(digit, f.optional_text("channel_id"))


def _status(f: _Fields) -> Status:
    return Status(
        f.integer("queue_length"),
        f.integer("xon_level"),
        f.integer("xoff_level"),
        f.flag("queue_full"),
        f.flag("bulk_media"),
        f.flag("media_paused"),
        f.optional_text("channel_id"),
    )


def _correlated(cls: type[MarkProcessed] | type[BufferingCompleted]) -> _Builder:
    def build(f: _Fields) -> MarkProcessed | BufferingCompleted:
        return cls(f.optional_text("correlation_id") or "", f.optional_text("channel_id"))

    return build


def _bare(cls: type[MediaXoff] | type[MediaXon] | type[QueueDrained]) -> _Builder:
    def build(f: _Fields) -> MediaXoff | MediaXon | QueueDrained:
        return cls(f.optional_text("channel_id"))

    return build


def _error(f: _Fields) -> ControlError:
    return ControlError(f.text("error_text"), f.optional_text("channel_id"))


_BUILDERS: dict[str, _Builder] = {
    "MEDIA_START": _media_start,
    "DTMF_END": _dtmf_end,
    "MEDIA_XOFF": _bare(MediaXoff),
    "MEDIA_XON": _bare(MediaXon),
    "QUEUE_DRAINED": _bare(QueueDrained),
    "STATUS": _status,
    "MEDIA_BUFFERING_COMPLETED": _correlated(BufferingCompleted),
    "MEDIA_MARK_PROCESSED": _correlated(MarkProcessed),
    "ERROR": _error,
}


# Us -> Asterisk.


class Command(StrEnum):
    ANSWER = "ANSWER"
    HANGUP = "HANGUP"
    START_MEDIA_BUFFERING = "START_MEDIA_BUFFERING"
    STOP_MEDIA_BUFFERING = "STOP_MEDIA_BUFFERING"
    MARK_MEDIA = "MARK_MEDIA"
    FLUSH_MEDIA = "FLUSH_MEDIA"
    GET_STATUS = "GET_STATUS"
    REPORT_QUEUE_DRAINED = "REPORT_QUEUE_DRAINED"
    PAUSE_MEDIA = "PAUSE_MEDIA"
    CONTINUE_MEDIA = "CONTINUE_MEDIA"
    SET_MEDIA_DIRECTION = "SET_MEDIA_DIRECTION"


# The one field each command reads (if any), and whether it must be there.
_COMMAND_FIELD: dict[Command, tuple[str, bool]] = {
    Command.MARK_MEDIA: ("correlation_id", True),
    Command.STOP_MEDIA_BUFFERING: ("correlation_id", False),
    Command.SET_MEDIA_DIRECTION: ("direction", True),
}
MEDIA_DIRECTIONS = frozenset({"both", "in", "out"})
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def encode_command(
    name: Command | str, fields: Mapping[str, str] | None = None, *, json: bool
) -> str:
    """One command text frame; `json` must match the channel's control message format.

    Raises `WebSocketCommandError` for an unknown command, a field the command does not read,
    a correlation id Asterisk would alter (empty, control characters, edge whitespace), a
    plain-text SET_MEDIA_DIRECTION, and anything over `MAX_TEXT_MESSAGE_LEN` UTF-8 bytes.
    """
    if name not in Command.__members__:
        raise WebSocketCommandError(f"{name!r} is not a chan_websocket command")
    command = Command(name)
    fields = dict(fields or {})
    key, required = _COMMAND_FIELD.get(command, ("", False))
    if set(fields) - {key} or (required and key not in fields):
        raise WebSocketCommandError(f"{command} takes {key or 'no fields'}, not {sorted(fields)}")
    value = fields.get(key)
    if value is not None:
        _check_value(command, key, value, json=json)
    if json:
        message = {"command": command.value, **fields}
        text = jsonlib.dumps(message, separators=(",", ":"), ensure_ascii=False)
    else:
        text = command.value if value is None else f"{command.value} {value}"
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_MESSAGE_LEN:
        raise WebSocketCommandError(
            f"{command} is {size} bytes; Asterisk ignores text over {MAX_TEXT_MESSAGE_LEN}"
        )
    return text


def _check_value(command: Command, key: str, value: str, *, json: bool) -> None:
    if not isinstance(value, str):
        raise WebSocketCommandError(f"{command} {key} is not a string")
    if key == "direction":
        if not json:
            raise WebSocketCommandError(f"{command} exists only in JSON")
        if value not in MEDIA_DIRECTIONS:
            raise WebSocketCommandError(f"{command} direction {value!r} is not both, in or out")
    elif not value or value != value.strip() or _CONTROL_CHARACTER.search(value):
        raise WebSocketCommandError(
            f"{command} correlation id {value[:40]!r} is empty, has edge whitespace "
            "or control characters"
        )


class MarkIds:
    """Short MARK_MEDIA ids for the bot's mark names, which may be long or not ASCII.

    `issue(name)` returns an id (`m1`, `m2`, ... in base 36) that fits any command;
    `processed(mark_id)` maps MEDIA_MARK_PROCESSED back to the name and forgets it; `flushed()`
    forgets every pending mark after FLUSH_MEDIA (Asterisk drops them unreported) and returns
    their names. At most `max_pending` marks are remembered; the oldest is forgotten first.
    """

    def __init__(self, max_pending: int = 256, prefix: str = "m") -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self.prefix = prefix
        self._pending: dict[str, str] = {}
        self._issued = 0

    def __len__(self) -> int:
        return len(self._pending)

    def issue(self, name: str) -> str:
        self._issued += 1
        mark_id = self.prefix + _base36(self._issued)
        if len(self._pending) >= self.max_pending:
            del self._pending[next(iter(self._pending))]
        self._pending[mark_id] = name
        return mark_id

    def processed(self, mark_id: str) -> str | None:
        """The bot's name for a processed mark, or None if it was never ours or forgotten."""
        return self._pending.pop(mark_id, None)

    def flushed(self) -> list[str]:
        names = list(self._pending.values())
        self._pending.clear()
        return names


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return digits
