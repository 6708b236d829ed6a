"""The bot's control messages: parsed once, in every dialect, into typed requests."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.bot.control import (
    HANGUP_CAUSES,
    DtmfOut,
    HangupWithCause,
    RecordControl,
    RecordMode,
    TransferMode,
    TransferRequest,
    is_control,
    parse_control,
)
from bridge.bot.dialects import create_dialect
from bridge.bot.dialects.base import BotControl, BotIgnored, CallInfo
from bridge.errors import BotProtocolError

INFO = CallInfo("c1", "chan-1", "5551000", "100")


@pytest.mark.parametrize("dialect", ["twilio", "exotel", "vonage"])
def test_every_dialect_decodes_the_control_messages(dialect: str) -> None:
    d = create_dialect(dialect, INFO)
    message = {"event": "transfer", "target": "PJSIP/1001", "mode": "attended", "timeout": 15}
    assert d.decode(json.dumps(message)) == BotControl(
        TransferRequest("PJSIP/1001", TransferMode.ATTENDED, "", 15)
    )
    assert d.decode('{"event":"hangup","cause":"busy"}') == BotControl(HangupWithCause("busy"))
    assert d.decode('{"event":"dtmf","digits":"123#"}') == BotControl(DtmfOut("123#"))
    assert d.decode('{"event":"record","action":"stop"}') == BotControl(RecordControl(False))


@pytest.mark.parametrize("dialect", ["twilio", "exotel"])
def test_the_providers_own_dtmf_event_is_not_a_control_message(dialect: str) -> None:
    decoded = create_dialect(dialect, INFO).decode('{"event":"dtmf","dtmf":{"digit":"1"}}')
    assert isinstance(decoded, BotIgnored)


def test_defaults_and_targets() -> None:
    t = parse_control({"event": "transfer", "target": "Local/206@caller"})
    assert t == TransferRequest("Local/206@caller", TransferMode.BLIND, "", 20)
    assert t.location is None
    loc = parse_control({"event": "transfer", "target": "206@agents"})
    assert isinstance(loc, TransferRequest) and loc.location == ("206", "agents")
    assert parse_control({"event": "hangup"}) == HangupWithCause("normal")
    assert parse_control({"event": "hangup", "cause": 21}) == HangupWithCause("21")
    rec = parse_control({"event": "record", "action": "start", "mode": "tracks"})
    assert rec == RecordControl(True, RecordMode.TRACKS)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ({"event": "transfer"}, "needs a 'target'"),
        ({"event": "transfer", "target": "PJSIP/1001 & PJSIP/1002"}, "neither"),
        ({"event": "transfer", "target": "PJSIP/10\x0001"}, "unprintable"),
        ({"event": "transfer", "target": "PJSIP/1001", "mode": "warm"}, "'mode'"),
        ({"event": "transfer", "target": "PJSIP/1001", "timeout": 0}, "'timeout'"),
        ({"event": "transfer", "target": "PJSIP/1001", "timeout": True}, "'timeout'"),
        ({"event": "transfer", "target": "PJSIP/1001", "caller_id": "a\nb"}, "'caller_id'"),
        ({"event": "hangup", "cause": "bogus"}, "not an ARI reason"),
        ({"event": "hangup", "cause": 128}, "not an ARI reason"),
        ({"event": "dtmf", "digits": "12x"}, "'digits'"),
        ({"event": "dtmf", "digits": ""}, "'digits'"),
        ({"event": "dtmf", "digits": "1" * 33}, "'digits'"),
        ({"event": "record", "action": "pause"}, "'action'"),
        ({"event": "record", "action": "start", "mode": "stereo"}, "'mode'"),
    ],
)
def test_malformed_control_messages_are_refused_with_the_reason(
    message: dict[str, object], why: str
) -> None:
    with pytest.raises(BotProtocolError, match=why):
        parse_control(message)


def test_the_ari_reason_vocabulary_is_asterisks() -> None:
    # res/ari/resource_channels.c convert_reason_to_hangup_code, 23.4.1
    assert HANGUP_CAUSES["busy"] == 17 and HANGUP_CAUSES["timeout"] == 18
    assert len(HANGUP_CAUSES) == 13


@given(st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | st.integers()
                       | st.text(max_size=40), max_size=6),
       st.sampled_from(["transfer", "hangup", "dtmf", "record"]))  # fmt: skip
def test_any_control_message_parses_or_is_refused(obj: dict[str, object], event: str) -> None:
    obj["event"] = event
    if not is_control(obj):
        return
    try:
        request = parse_control(obj)
    except BotProtocolError:
        return  # refused, with its reason: the only other outcome allowed
    assert isinstance(request, TransferRequest | HangupWithCause | DtmfOut | RecordControl)
