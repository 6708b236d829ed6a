"""The HTTP API's request bodies, parsed once into frozen dataclasses (or refused).

Pure: bytes in, a dataclass or an `ApiRequestError(status, message)` out, never anything
else. Every body is capped (`MAX_BODY`, checked by the adapter before it reads more);
malformed JSON, a body that is not an object, unknown fields (named), missing fields and
wrongly typed values are 400s with one exact message each.

    BridgeError
     +-- ApiRequestError(status, message)   a request the API refuses (4xx)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson

from bridge.errors import BridgeError

MAX_BODY = 64 * 1024  # bytes; more is a 413

T = TypeVar("T")


class ApiRequestError(BridgeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_json_object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise ApiRequestError(413, f"body larger than {MAX_BODY} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiRequestError(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiRequestError(400, "the body must be a JSON object")
    return data


def parse_into(cls: type[T], data: Mapping[str, Any]) -> T:
    """`data` as the dataclass `cls`: only its fields, each of its declared type (str, int,
    float, bool, optional, tuples, string mappings), its required ones present; then the
    class's own checks (a ValueError or TypeError from its constructor is a 400 too)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ApiRequestError(400, f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ApiRequestError(400, f"missing field(s): {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(name, value, hints.get(name, Any)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ApiRequestError(400, str(exc)) from None


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` checked against `hint`; JSON lists become tuples, objects stay dicts."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except ApiRequestError as exc:
                errors.append(exc)
        raise errors[0] if errors else _wrong(name, hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _wrong(name, "a boolean")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong(name, "an integer")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _wrong(name, "a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _wrong(name, "a string")
    if origin is tuple:
        if not isinstance(value, list):
            raise _wrong(name, "a list")
        item = args[0] if args else Any
        return tuple(_coerce(f"{name}[]", v, item) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping) or origin is typing.Mapping:
        if not isinstance(value, dict):
            raise _wrong(name, "an object")
        item = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(f"{name}.{k}", v, item) for k, v in value.items()}
    return value  # anything else: the dataclass checks it itself


def _wrong(name: str, expected: object) -> ApiRequestError:
    return ApiRequestError(400, f"field {name!r} must be {expected}")


# ---- the Twilio-compatible hang-up ------------------------------------------------------

# What Pipecat's TwilioFrameSerializer sends; Twilio's own API also takes `canceled` (for a
# call not answered yet): both end the call here.
HANGUP_STATUSES = ("completed", "canceled")


@dataclass(frozen=True, slots=True)
class TwilioCallUpdate:
    """`POST .../Calls/{CallSid}.json` with a form body `Status=completed`."""

    status: str

    def __post_init__(self) -> None:
        if self.status not in HANGUP_STATUSES:
            raise ValueError(
                f"Status must be one of {', '.join(HANGUP_STATUSES)}, not {self.status!r}"
            )


def parse_twilio_update(body: bytes) -> TwilioCallUpdate:
    if len(body) > MAX_BODY:
        raise ApiRequestError(413, f"body larger than {MAX_BODY} bytes")
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except (UnicodeDecodeError, ValueError):
        raise ApiRequestError(
            400, "the body must be a form (application/x-www-form-urlencoded)"
        ) from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise ApiRequestError(400, f"parameter {key!r} given twice")
        form[key] = value
    unknown = sorted(set(form) - {"Status"})
    if unknown:
        raise ApiRequestError(400, f"unsupported parameter(s): {', '.join(unknown)}")
    if "Status" not in form:
        raise ApiRequestError(400, "missing parameter: Status")
    try:
        return TwilioCallUpdate(form["Status"])
    except ValueError as exc:
        raise ApiRequestError(400, str(exc)) from None
