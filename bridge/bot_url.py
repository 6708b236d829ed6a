"""Which bot a call goes to: the --bot-url template, or a ws:// URL given as a Stasis argument
(`Stasis(pipecat,ws://host/path)`), with {call_id} {channel_id} {caller} {called} filled in."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from urllib.parse import quote

_FIELDS = frozenset({"call_id", "channel_id", "caller", "called"})


def bot_url_from_args(args: Sequence[str]) -> str | None:
    for arg in args:
        if arg.startswith(("ws://", "wss://")):
            return arg
    return None


def render_bot_url(template: str, values: Mapping[str, str]) -> str:
    """Fill the known placeholders, URL-quoted; anything else in braces is left as it is,
    so a URL that happens to contain braces is not an error."""
    out = []
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if field is None:
            continue
        if field in _FIELDS:
            out.append(quote(values.get(field, ""), safe=""))
        else:
            out.append("{" + field + "}")
    return "".join(out)


def resolve_bot_url(default_template: str, args: Sequence[str], values: Mapping[str, str]) -> str:
    return render_bot_url(bot_url_from_args(args) or default_template, values)
