from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.bot.url import (
    bot_url_from_args,
    render_bot_url,
    resolve_bot,
    resolve_bot_url,
    split_dialect,
)

VALUES = {
    "call_id": "pcb-1795313560.0",
    "channel_id": "1795313560.0",
    "caller": "5551000",
    "called": "100",
}
FIELDS = tuple(VALUES)

# Text as ARI JSON can carry it: any code point, lone surrogates included ("\ud800").
any_text = st.text(st.characters(exclude_categories=()))


def assert_renders(template: str, expected: str, **values: str) -> None:
    assert render_bot_url(template, {**VALUES, **values}) == expected


# ---- the template ------------------------------------------------------------------------


def test_every_placeholder_is_filled() -> None:
    assert_renders(
        "ws://bot:8765/ws/{call_id}?ch={channel_id}&from={caller}&to={called}",
        "ws://bot:8765/ws/pcb-1795313560.0?ch=1795313560.0&from=5551000&to=100",
    )


def test_template_without_placeholders_is_unchanged() -> None:
    assert_renders("wss://bot.example/ws", "wss://bot.example/ws")


def test_values_are_url_quoted() -> None:
    assert_renders(
        "ws://bot/ws?from={caller}&to={called}",
        "ws://bot/ws?from=%2B1%20555%2F1000%26x%3D1&to=%7B%7D%23%3F",
        caller="+1 555/1000&x=1",
        called="{}#?",
    )


def test_non_ascii_value_is_utf8_quoted() -> None:
    assert_renders("ws://bot/{caller}", "ws://bot/J%C3%BCrgen", caller="Jürgen")


def test_lone_surrogate_from_ari_json_does_not_break_rendering() -> None:
    assert_renders("ws://bot/{caller}", "ws://bot/a%3Fb", caller="a\ud800b")


def test_missing_value_is_empty() -> None:
    assert render_bot_url("ws://bot/{call_id}/{caller}", {"call_id": "c1"}) == "ws://bot/c1/"


def test_placeholder_may_repeat() -> None:
    assert_renders("ws://bot/{called}/{called}", "ws://bot/100/100")


@pytest.mark.parametrize(
    "template",
    [
        "ws://bot/{unknown}",
        "ws://bot/{0}",
        "ws://bot/{}",
        "ws://bot/{CALLER}",
        "ws://bot/{caller.x}",
        "ws://bot/{foo:bar}",
        "ws://bot/{foo!r}",
        "ws://bot/{{x}}",
        "ws://bot/{",
        "ws://bot/}",
        "ws://bot/{caller",
        "ws://bot/x}{y",
    ],
)
def test_anything_else_in_braces_is_kept_as_it_is(template: str) -> None:
    assert_renders(template, template)


def test_known_and_unknown_placeholders_together() -> None:
    assert_renders("ws://bot/{tenant}/{call_id}", "ws://bot/{tenant}/pcb-1795313560.0")


# ---- the Stasis arguments ----------------------------------------------------------------


def test_no_args_uses_the_template() -> None:
    assert bot_url_from_args([]) is None
    assert resolve_bot_url("ws://default/{call_id}", [], VALUES) == (
        "ws://default/pcb-1795313560.0"
    )


def test_ws_argument_overrides_the_template() -> None:
    # As recorded in the app_args scenario: Stasis(pipecat,ws://127.0.0.1:8765/custom).
    args = ("ws://127.0.0.1:8765/custom",)
    assert bot_url_from_args(args) == "ws://127.0.0.1:8765/custom"
    assert resolve_bot_url("ws://default/ws", args, VALUES) == "ws://127.0.0.1:8765/custom"


def test_wss_argument_overrides_the_template_and_is_filled_in() -> None:
    args = ("wss://bot.example/{call_id}",)
    assert resolve_bot_url("ws://default/ws", args, VALUES) == (
        "wss://bot.example/pcb-1795313560.0"
    )


def test_first_url_argument_wins() -> None:
    args = ("lang=en", "ws://first/ws", "wss://second/ws")
    assert bot_url_from_args(args) == "ws://first/ws"


@pytest.mark.parametrize(
    "args",
    [
        ("lang=en",),
        ("http://bot/ws",),
        ("WS://bot/ws",),
        (" ws://bot/ws",),
        ("bot/ws://x",),
        ("",),
    ],
)
def test_non_url_arguments_are_ignored(args: tuple[str, ...]) -> None:
    assert bot_url_from_args(args) is None
    assert resolve_bot_url("ws://default/ws", args, VALUES) == "ws://default/ws"


# ---- properties --------------------------------------------------------------------------


@given(
    template=any_text,
    values=st.dictionaries(st.sampled_from(FIELDS) | any_text, any_text),
)
def test_render_never_raises(template: str, values: dict[str, str]) -> None:
    assert isinstance(render_bot_url(template, values), str)


@given(template=any_text.filter(lambda t: "{" not in t), values=st.dictionaries(any_text, any_text))
def test_template_without_braces_is_returned_unchanged(
    template: str, values: dict[str, str]
) -> None:
    assert render_bot_url(template, values) == template


@given(field=st.sampled_from(FIELDS), value=st.text())
def test_filled_value_is_quoted_and_round_trips(field: str, value: str) -> None:
    rendered = render_bot_url("ws://bot/{" + field + "}", {field: value})
    path = rendered.removeprefix("ws://bot/")
    assert all(c.isalnum() or c in "%-._~" for c in path)
    assert unquote(path) == value


@given(args=st.lists(any_text))
def test_args_give_a_url_only_when_one_is_there(args: list[str]) -> None:
    found = bot_url_from_args(args)
    urls = [a for a in args if a.startswith(("ws://", "wss://"))]
    assert found == (urls[0] if urls else None)


# ---- the dialect -------------------------------------------------------------------------


def test_dialect_defaults_to_the_setting() -> None:
    assert resolve_bot("ws://bot/ws", "twilio", [], VALUES) == ("ws://bot/ws", "twilio")


def test_url_fragment_picks_the_dialect_and_is_not_sent() -> None:
    got = resolve_bot("ws://bot/{called}#dialect=vonage", "twilio", [], VALUES)
    assert got == ("ws://bot/100", "vonage")


def test_stasis_argument_beats_the_url_fragment() -> None:
    args = ["wss://other/ws#dialect=exotel", "dialect=vonage"]
    assert resolve_bot("ws://bot/ws", "twilio", args, VALUES) == ("wss://other/ws", "vonage")


def test_fragment_of_a_stasis_url_argument_counts() -> None:
    got = resolve_bot("ws://bot/ws", "twilio", ["ws://b2/x?k=v#dialect=exotel"], VALUES)
    assert got == ("ws://b2/x?k=v", "exotel")


def test_other_fragments_are_dropped_without_picking_a_dialect() -> None:
    assert split_dialect("ws://bot/ws#foo") == ("ws://bot/ws", None)
    assert split_dialect("ws://bot/ws#dialect=") == ("ws://bot/ws", None)


@given(st.lists(any_text, max_size=4))
def test_any_stasis_arguments_resolve_without_error(args: list[str]) -> None:
    url, dialect = resolve_bot("ws://bot/ws", "twilio", args, VALUES)
    assert "#" not in url
    assert dialect
