"""The load generator's fake Asterisk dispatching callers: CallBroadcast to every matching
app's socket, claims answered as recorded (broadcast_claim), the winner's StasisStart on its own
socket only. Driven through its handlers with the sockets as queues; no network."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bridge.tools.bench.loadgen import Dispatch, FakeAsterisk

APPS = ["pipecat-bench-0", "pipecat-bench-1"]


class StubRtpGen:
    sockets = 4
    ports = [40000, 40001, 40002, 40003]

    def __init__(self) -> None:
        self.commands: list[str] = []

    def command(self, line: str) -> None:
        self.commands.append(line)


def make(mode: str, apps: list[str]) -> tuple[FakeAsterisk, dict[str, asyncio.Queue[str]]]:
    asterisk = FakeAsterisk("pipecat", "asterisk", "bench", StubRtpGen(),  # type: ignore[arg-type]
                            dispatch=Dispatch(mode, "^pipecat", 500, 150.0))  # fmt: skip
    queues: dict[str, asyncio.Queue[str]] = {app: asyncio.Queue() for app in apps}
    asterisk._sockets.update(queues)
    asterisk.apps_seen += apps
    return asterisk, queues


def drain(queue: asyncio.Queue[str]) -> list[dict[str, Any]]:
    out = []
    while not queue.empty():
        out.append(json.loads(queue.get_nowait()))
    return out


def body(response: Any) -> Any:
    return json.loads(response.body) if response.body else None


async def test_broadcast_claim_and_the_winners_stasis_start() -> None:
    asterisk, queues = make("broadcast", [*APPS, "observer"])
    asterisk.place_call()
    caller = asterisk.calls[0].caller_id
    offered = {app: drain(q) for app, q in queues.items()}
    assert offered["observer"] == []  # outside the filter: never offered
    for app in APPS:
        (event,) = offered[app]
        assert event["type"] == "CallBroadcast" and event["application"] == app
        assert event["channel"]["id"] == caller
        assert event["caller"] == "5551000" and event["called"] == "100"
        assert event["channel"]["dialplan"]["app_name"] == "StasisBroadcast"
        assert event["channel"]["dialplan"]["app_data"] == "500,^pipecat"

    won = asterisk._claim({"channelId": caller, "application": APPS[1]})
    assert (won.status, won.body) == (204, None)
    lost = asterisk._claim({"channelId": caller, "application": APPS[0]})
    assert lost.status == 409
    assert body(lost) == {"message": "Channel has already been claimed by another application"}
    missing = asterisk._claim({"application": APPS[0]})
    assert (missing.status, body(missing)) == (400, {"message": "channelId parameter is required"})
    await asyncio.sleep(0)  # the StasisStart follows the 204
    (start,) = drain(queues[APPS[1]])
    assert start["type"] == "StasisStart" and start["application"] == APPS[1]
    assert start["args"] == [] and start["channel"]["id"] == caller
    assert drain(queues[APPS[0]]) == []
    assert asterisk.calls[0].app == APPS[1] and asterisk.active_calls(APPS[1]) == 1

    asterisk.hang_up(asterisk.calls[0])
    assert [e["type"] for e in drain(queues[APPS[1]])] == ["ChannelHangupRequest", "StasisEnd"]
    assert drain(queues[APPS[0]]) == []
    late = asterisk._claim({"channelId": caller, "application": APPS[0]})
    assert late.status == 404
    assert body(late) == {"message": "Channel not found or not in broadcast state"}

    summary = asterisk.dispatch_summary()
    assert summary["calls_by_app"] == {APPS[0]: 0, APPS[1]: 1, "observer": 0}
    assert summary["apps"][APPS[0]] == {"won": 0, "lost_409": 1, "lost_404": 1}
    assert summary["unclaimed"] == 0 and summary["lost_claims"] == 2


async def test_an_unclaimed_call_times_out_and_no_app_hears_of_it_again() -> None:
    asterisk, queues = make("broadcast", APPS)
    asterisk.offers.timeout = 0.0  # nobody can be in time
    asterisk.place_call()
    for q in queues.values():
        drain(q)
    asterisk._offers_timed_out()
    call = asterisk.calls[0]
    assert call.unclaimed and call.hung_up and call.caller_id not in asterisk.channels
    assert asterisk._claim({"channelId": call.caller_id, "application": APPS[0]}).status == 404
    assert all(q.empty() for q in queues.values())
    assert asterisk.dispatch_summary()["unclaimed"] == 1


async def test_stasis_with_one_app_goes_to_it() -> None:
    asterisk, queues = make("stasis", ["pipecat"])
    asterisk.place_call()
    (start,) = drain(queues["pipecat"])
    assert start["type"] == "StasisStart" and start["application"] == "pipecat"
    assert start["channel"]["dialplan"]["app_name"] == "Stasis"
    assert start["channel"]["dialplan"]["app_data"] == "pipecat"


async def test_stasis_with_several_apps_spreads_the_calls() -> None:
    asterisk, queues = make("stasis", APPS)
    for _ in range(40):
        asterisk.place_call()
    counts = {app: len(drain(q)) for app, q in queues.items()}
    assert sum(counts.values()) == 40 and all(n > 0 for n in counts.values())
    assert asterisk.dispatch_summary()["calls_by_app"] == counts
