"""Which bot a call goes to: the --bot-url template, or a ws:// URL given as a Stasis argument
(`Stasis(pipecat,ws://host/path)`), with {call_id} {channel_id} {caller} {called} filled in."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote

# Exactly {call_id}, {channel_id}, {caller} or {called}; every other brace is plain text.
_PLACEHOLDER = re.compile(r"\{(call_id|channel_id|caller|called)\}")


def bot_url_from_args(args: Sequence[str]) -> str | None:
    for arg in args:
        if arg.startswith(("ws://", "wss://")):
            return arg
    return None


def render_bot_url(template: str, values: Mapping[str, str]) -> str:
    """Fill the known placeholders, URL-quoted; anything else in braces is left as it is,
    so a URL that happens to contain braces is not an error."""
    # Lone surrogates (ARI JSON may carry "\ud800") cannot be UTF-8 encoded; they become '?'.
    return _PLACEHOLDER.sub(
        lambda m: quote(values.get(m.group(1), ""), safe="", errors="replace"), template
    )


def resolve_bot_url(default_template: str, args: Sequence[str], values: Mapping[str, str]) -> str:
    return render_bot_url(bot_url_from_args(args) or default_template, values)
