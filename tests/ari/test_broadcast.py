"""CallBroadcast / CallClaimed parsed from the recording; AriRestClient.claim's answers."""

from __future__ import annotations

import json

import pytest

from ari.events import CallBroadcast, CallClaimed, parse_event
from ari.rest import AriRestClient
from bridge.errors import AriEventError, AriHttpError
from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.recording import FIXTURES_DIR

SESSION = FIXTURES_DIR / "broadcast_claim" / "session.jsonl"


def recorded_raw(event_type: str) -> list[str]:
    entries = (json.loads(line) for line in SESSION.read_text().splitlines())
    return [json.dumps(e["event"]) for e in entries
            if e["kind"] == "event" and e["event"]["type"] == event_type]  # fmt: skip


def test_call_broadcast_as_recorded() -> None:
    raw = recorded_raw("CallBroadcast")
    assert len(raw) > 4
    event = parse_event(raw[0])
    assert isinstance(event, CallBroadcast)
    assert (event.caller, event.called, event.application) == ("5550130", "130", "pipecat-a")
    assert event.channel.id == "1796137603.695"
    assert (event.channel.app_name, event.channel.app_data) == ("StasisBroadcast", "1000,^pipecat")
    assert all(isinstance(parse_event(r), CallBroadcast) for r in raw)


def test_call_claimed_as_recorded() -> None:
    events = [parse_event(r) for r in recorded_raw("CallClaimed")]
    assert events and all(isinstance(e, CallClaimed) for e in events)
    assert {e.winner_app for e in events if isinstance(e, CallClaimed)} == {"pipecat-b"}


def test_broadcast_without_channel_is_an_error() -> None:
    with pytest.raises(AriEventError):
        parse_event('{"type":"CallBroadcast","caller":"1"}')


async def test_claim_won_lost_late() -> None:
    async with (
        SimulatedAsterisk(seed=1) as sim,
        AriRestClient(sim.base_url, sim.user, sim.password) as rest,
    ):
        offer = await sim.place_broadcast_call(timeout_ms=1000)
        assert await rest.claim(offer.channel_id, "pipecat") is True
        assert await rest.claim(offer.channel_id, "pipecat-b") is False  # 409
        assert await rest.claim("nosuch.1", "pipecat") is False  # 404
        sim.fail_next("POST", "/events/claim", 500, {"message": "boom"})
        with pytest.raises(AriHttpError) as info:
            await rest.claim(offer.channel_id, "pipecat")
        assert info.value.status == 500
