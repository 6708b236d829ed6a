"""structlog set-up: JSON lines for systemd/journald, a console renderer for a terminal.

Secrets never reach a log line: `redact_url` strips the ARI `api_key` (and any password in a
URL), and the `_redact_secrets` processor masks values of keys that name a secret.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = frozenset({"password", "ari_password", "api_key", "authorization", "token"})
_URL_SECRET = re.compile(r"((?:api_key|password|token|key)=)[^&\s]*", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """The URL with query secrets and user:password@ replaced by '***'."""
    return _URL_USERINFO.sub(r"\1***@", _URL_SECRET.sub(r"\1***", url))


def _redact_secrets(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in event_dict:
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "***"
        elif key.endswith("url") and isinstance(event_dict[key], str):
            event_dict[key] = redact_url(event_dict[key])
    return event_dict


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """fmt is 'json' (one object per line, for journald) or 'console'."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info if fmt == "json" else _noop,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write() per line (print() makes two: the text, then the newline), so the lines
        # of --workers processes sharing one stderr (the journal's stream) never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _noop(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return event_dict


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
