"""Which bot a call goes to, and in which dialect.

The URL: the --bot-url template, or a ws:// URL given as a Stasis argument
(`Stasis(pipecat,ws://host/path)`), with {call_id} {channel_id} {caller} {called} filled in.
The dialect: --dialect, overridden by a `#dialect=NAME` fragment on the chosen URL (a
fragment never goes on the wire, so it is the bridge's own), overridden by a Stasis argument
`dialect=NAME` (`Stasis(pipecat,dialect=vonage)`). The media transport is chosen the same
way: --transport, overridden by `transport=NAME`.

A broadcast call (`StasisBroadcast(500,^pipecat,bot=sales:dialect=vonage)`) cannot carry a
URL: Asterisk splits its args at `:`, so `ws://h:8765/x` would arrive as three args. It names
its bot instead, `bot=NAME`, looked up in --bot-map (ARI calls and dialplan calls alike); an
unknown name is refused, never sent to the default bot."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urldefrag

# Exactly {call_id}, {channel_id}, {caller} or {called}; every other brace is plain text.
_PLACEHOLDER = re.compile(r"\{(call_id|channel_id|caller|called)\}")


def bot_url_from_args(args: Sequence[str]) -> str | None:
    for arg in args:
        if arg.startswith(("ws://", "wss://")):
            return arg
    return None


def bot_template(
    default_template: str, args: Sequence[str], bot_map: Sequence[tuple[str, str]]
) -> tuple[str, str]:
    """(URL template, why refused): the `bot=NAME` argument's entry of --bot-map, else the
    default; "" and a reason for a NAME that is not in the map."""
    name = option_from_args(args, "bot")
    if name is None:
        return default_template, ""
    url = dict(bot_map).get(name, "")
    return (url, "") if url else ("", f"unknown bot {name!r} (not in --bot-map)")


def render_bot_url(template: str, values: Mapping[str, str]) -> str:
    """Fill the known placeholders, URL-quoted; anything else in braces is left as it is,
    so a URL that happens to contain braces is not an error."""
    # Lone surrogates (ARI JSON may carry "\ud800") cannot be UTF-8 encoded; they become '?'.
    return _PLACEHOLDER.sub(
        lambda m: quote(values.get(m.group(1), ""), safe="", errors="replace"), template
    )


def resolve_bot_url(default_template: str, args: Sequence[str], values: Mapping[str, str]) -> str:
    return render_bot_url(bot_url_from_args(args) or default_template, values)


def split_dialect(url: str) -> tuple[str, str | None]:
    """The URL without a `#dialect=NAME` fragment, and NAME (None when there is none). Any
    other fragment is dropped too: the WebSocket handshake never sends one."""
    base, fragment = urldefrag(url)
    for part in fragment.split("&"):
        key, _, value = part.partition("=")
        if key == "dialect" and value:
            return base, value
    return base, None


def option_from_args(args: Sequence[str], name: str) -> str | None:
    """The value of the first `name=VALUE` Stasis argument (`dialect=vonage`,
    `transport=audiosocket`), or None."""
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.strip() == name and value.strip():
            return value.strip()
    return None


def dialect_from_args(args: Sequence[str]) -> str | None:
    return option_from_args(args, "dialect")


def resolve_bot(
    default_template: str, default_dialect: str, args: Sequence[str], values: Mapping[str, str]
) -> tuple[str, str]:
    """(bot URL, dialect name) for one call; the name is not checked here."""
    url, from_url = split_dialect(resolve_bot_url(default_template, args, values))
    return url, dialect_from_args(args) or from_url or default_dialect
