"""The pure parts of outbound calls: the ring outcome mapping (as recorded on 23.4.1), the
originate request's validation and the expected-call registry, with a hand clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.service.outbound import (
    ExpectedCall,
    ExpectedCalls,
    OriginateRequest,
    dial_outcome,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "asterisk-23.4.1"


def recorded_ring(scenario: str) -> tuple[str, int]:
    """The last Dial status and the ChannelDestroyed cause of the originated channel."""
    dialstatus, cause = "", -1
    target = None
    for line in (FIXTURES / scenario / "session.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "rest_request" and entry["path"] == "/ari/channels" and \
                entry["query"].get("app"):
            target = entry["query"].get("channelId")
        event = entry.get("data") if entry["kind"] == "event" else None
        if not event or target is None:
            continue
        if event["type"] == "Dial" and event["peer"]["id"] == target:
            dialstatus = event["dialstatus"]
        if event["type"] == "ChannelDestroyed" and event["channel"]["id"] == target:
            cause = event["cause"]
    return dialstatus, cause


@pytest.mark.parametrize(("scenario", "recorded", "outcome"), [
    ("transfer_originate_busy", ("BUSY", 0), "busy"),
    ("transfer_originate_noanswer", ("RINGING", 19), "no_answer"),
])  # fmt: skip
def test_recorded_rings_map_to_their_outcome(
    scenario: str, recorded: tuple[str, int], outcome: str
) -> None:
    assert recorded_ring(scenario) == recorded
    assert dial_outcome(*recorded) == outcome


@pytest.mark.parametrize(("dialstatus", "cause", "outcome"), [
    ("BUSY", 0, "busy"),
    ("NOANSWER", 16, "no_answer"),
    ("CONGESTION", 0, "congestion"),
    ("CHANUNAVAIL", 0, "unavailable"),
    ("", 19, "no_answer"),
    ("RINGING", 17, "busy"),
    ("", 34, "congestion"),
    ("", 0, "unavailable"),  # a nonexistent Local/ extension (errors: Local/999)
    ("", 21, "rejected"),
    ("", 16, "failed"),
])  # fmt: skip
def test_dialstatus_first_then_cause(dialstatus: str, cause: int, outcome: str) -> None:
    assert dial_outcome(dialstatus, cause) == outcome


@pytest.mark.parametrize(("fields", "message"), [
    ({"endpoint": "1001"}, "technology/resource"),
    ({"endpoint": "PJSIP/"}, "technology/resource"),
    ({"endpoint": "PJSIP/1001&app=x"}, "must not contain"),
    ({"endpoint": "PJSIP/1001", "bot_url": "http://bot"}, "ws:// or wss://"),
    ({"endpoint": "PJSIP/1001", "dialect": "klingon"}, "unknown dialect"),
    ({"endpoint": "PJSIP/1001", "timeout": 0}, "1..600"),
    ({"endpoint": "PJSIP/1001", "timeout": True}, "whole number"),
    ({"endpoint": "PJSIP/1001", "variables": {"": "x"}}, "empty or over-long"),
    ({"endpoint": "PJSIP/1001", "variables": {"a": 1}}, "strings"),
    ({"endpoint": "PJSIP/1001", "webhook_url": "ftp://x"}, "http"),
])  # fmt: skip
def test_bad_originate_requests_say_why(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OriginateRequest(**fields)


def test_a_request_is_frozen_with_its_variables() -> None:
    variables = {"lead": "42"}
    request = OriginateRequest("Local/205@caller", variables=variables)
    variables["lead"] = "changed"
    assert request.variables == {"lead": "42"}
    assert request.called == "205@caller"


def test_an_expectation_is_claimed_once_and_a_reuse_refused() -> None:
    registry = ExpectedCalls(ttl=30.0)
    ident = "0F0E0D0C-0B0A-0908-0706-050403020100"
    registry.add(ExpectedCall(ident, caller="+1555", params={"k": "v"}), now=100.0)
    with pytest.raises(ValueError, match="already expected"):
        registry.add(ExpectedCall(ident.lower()), now=101.0)
    found = registry.claim(ident.lower(), now=110.0)  # AudioSocket's canonical form
    assert found is not None and found.caller == "+1555" and found.params == {"k": "v"}
    with pytest.raises(ValueError, match="used already"):
        registry.claim(ident, now=111.0)
    with pytest.raises(ValueError, match="already expected or used"):
        registry.add(ExpectedCall(ident), now=112.0)


def test_an_expectation_not_used_in_time_expires() -> None:
    registry = ExpectedCalls(ttl=30.0)
    registry.add(ExpectedCall("order-1"), now=0.0)
    assert registry.claim("order-1", now=29.9) is not None
    registry.add(ExpectedCall("order-2"), now=0.0)
    assert registry.claim("order-2", now=30.0) is None  # expired: an ordinary call
    assert len(registry) == 0
    registry.add(ExpectedCall("order-2"), now=31.0)  # never used: may be expected again


def test_an_unknown_uuid_is_an_ordinary_call() -> None:
    assert ExpectedCalls(ttl=5.0).claim("nobody", now=0.0) is None
