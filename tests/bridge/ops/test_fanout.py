"""The host API's decisions under --workers (bridge.ops.fanout): who is asked, what the
answers make. Pure: seats and results in, a choice or an answer out."""

from __future__ import annotations

from dataclasses import replace

import orjson

from bridge.ops.fanout import (
    Answer,
    NoAnswer,
    WorkerSeat,
    concatenated,
    first_created,
    originate_order,
    reachable,
    readiness,
    settle,
    tagged,
    takers,
    unanswered,
)


def seat(tag: str = "0", calls: int = 0, **kw: object) -> WorkerSeat:
    slot = int(tag.split("g")[0])
    generation = int(tag.split("g")[1]) if "g" in tag else 0
    values: dict[str, object] = {
        "tag": tag, "slot": slot, "generation": generation,
        "address": ("127.0.0.1", 8090 + slot + 2 * generation),
        "running": True, "ready": True, "draining": False, "calls": calls,
    }  # fmt: skip
    values.update(kw)
    return WorkerSeat(**values)  # type: ignore[arg-type]


def answer(tag: str, status: int, data: object) -> Answer:
    return Answer(tag, status, orjson.dumps(data))


def test_originate_goes_to_the_taker_with_the_fewest_calls() -> None:
    seats = [seat("0", calls=4), seat("1", calls=2), seat("2", calls=2), seat("3", calls=0,
             draining=True), seat("4", calls=0, ready=False), seat("5", calls=0, address=None),
             seat("6", calls=0, running=False)]  # fmt: skip
    assert [s.tag for s in originate_order(seats)] == ["1", "2", "0"]
    assert [s.tag for s in takers(seats)] == ["0", "1", "2"]
    # A draining worker still holds calls: lookups ask it; only the unreachable are left out.
    assert [s.tag for s in reachable(seats)] == ["0", "1", "2", "3", "4"]
    assert originate_order([seat("0", calls=1), seat("0g1", calls=1)])[0].tag == "0"
    assert originate_order([]) == []


def test_worker_states() -> None:
    assert seat().state == "ready"
    assert seat(ready=False).state == "starting"
    assert seat(draining=True).state == "draining"
    assert seat(running=False, draining=True).state == "restarting"


def test_a_call_lookup_is_the_first_answer_that_is_not_a_404() -> None:
    gone = NoAnswer("0", "cannot connect: Connection refused")
    mine = answer("2", 409, {"error": "call 'c' has ended already"})
    not_mine = answer("1", 404, {"error": "no call 'c'"})
    assert settle([gone, not_mine, mine]) == mine
    assert settle([not_mine, answer("2", 404, {})]) == not_mine  # nobody has it: a 404
    assert settle([gone, not_mine]) == not_mine  # a 404 though one did not answer
    assert settle([gone]) is None and settle([]) is None


def test_an_expected_call_answers_with_the_first_201() -> None:
    taken = answer("0", 409, {"error": "already expected"})
    created = answer("1", 201, {"uuid": "u"})
    assert first_created([taken, created]) == created
    assert first_created([NoAnswer("0", "x"), taken]) == taken
    assert first_created([NoAnswer("0", "x")]) is None


def test_why_nobody_answered() -> None:
    results = [NoAnswer("0", "no answer in 2 s"), answer("1", 404, {}), NoAnswer("2", "starting")]
    assert unanswered(results) == "no worker answered (0: no answer in 2 s; 2: starting)"
    assert unanswered([]) == "no worker is running"
    assert unanswered([], none="no worker takes calls now") == "no worker takes calls now"


def test_calls_are_concatenated_and_tagged_in_worker_order() -> None:
    results = [
        answer("0", 200, [{"id": "a"}, {"id": "b"}]),
        NoAnswer("1", "cannot connect: Connection refused"),
        answer("0g1", 200, [{"id": "c"}]),
        answer("1g1", 503, {"error": "x"}),
        Answer("2", 200, b"not json"),
    ]
    assert concatenated(results) == [
        {"id": "a", "worker": "0"}, {"id": "b", "worker": "0"}, {"id": "c", "worker": "0g1"},
    ]  # fmt: skip
    assert tagged({"id": "a"}, "1") == {"id": "a", "worker": "1"}
    assert tagged([1], "1") == [1]


def test_ready_when_one_worker_is() -> None:
    seats = [seat("0"), seat("1", draining=True), seat("2", running=False), seat("3", address=None)]
    results = [
        answer("0", 200, {"ready": True}),
        answer("1", 503, {"ready": False, "reason": "draining"}),
    ]
    status, body = readiness(seats, results)
    assert status == 200
    assert body == {"ready": True, "workers": [
        {"worker": "0", "ready": True},
        {"worker": "1", "ready": False, "reason": "draining"},
        {"worker": "2", "ready": False, "reason": "restarting"},
        {"worker": "3", "ready": False, "reason": "starting"},
    ]}  # fmt: skip
    why = "ARI events socket not connected (Stasis app not registered): not connected yet"
    results = [
        answer("0", 503, {"ready": False, "reason": why}),
        NoAnswer("1", "no answer in 2 s"),
    ]
    status, body = readiness(seats[:2], results)
    assert status == 503
    assert body["reason"] == f"no worker is ready (0: {why}; 1: no answer in 2 s)"
    assert [w["ready"] for w in body["workers"]] == [False, False]
    status, body = readiness([], [])
    assert (status, body["reason"]) == (503, "no worker is ready (no workers)")
    odd = readiness([seat("0")], [Answer("0", 500, b"oops")])[1]
    assert odd["workers"] == [{"worker": "0", "ready": False, "reason": "answered 500"}]


def test_a_seat_is_a_frozen_snapshot() -> None:
    s = seat("1g2", calls=3)
    assert (s.slot, s.generation, s.reachable) == (1, 2, True)
    assert not replace(s, address=None).reachable
