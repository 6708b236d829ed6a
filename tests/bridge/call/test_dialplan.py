"""The dialplan call machine driven by hand: every way in and out, with `now` passed in."""

from __future__ import annotations

import pytest

from bridge.call.commands import (
    BotClosed,
    BotConnected,
    CloseBot,
    CloseMedia,
    Command,
    CommandDone,
    CommandFailed,
    ConnectBot,
    DrainPlayout,
    EndedBy,
    Finished,
    HangupRequested,
    MediaDtmf,
    MediaEnded,
    MediaFailed,
    PlayoutDrained,
    SendDtmf,
)
from bridge.call.dialplan import TRANSITIONS, DialplanCallMachine
from bridge.call.machine import CallState


def up_call() -> tuple[DialplanCallMachine, ConnectBot]:
    machine = DialplanCallMachine("c1", "ws://bot/ws", now=100.0, setup_timeout=10.0)
    (connect,) = machine.commands_to_send()
    assert isinstance(connect, ConnectBot)
    assert connect.url == "ws://bot/ws"
    machine.handle(BotConnected(), 100.0)
    machine.handle(CommandDone(connect), 100.0)
    assert machine.state is CallState.UP
    return machine, connect


def answer_teardown(machine: DialplanCallMachine, now: float) -> list[Command]:
    """Answer every teardown command until the machine asks for nothing more; return all it
    asked for."""
    asked: list[Command] = []
    while commands := machine.commands_to_send():
        asked.extend(commands)
        for cmd in commands:
            if isinstance(cmd, CloseBot | CloseMedia):
                machine.handle(CommandDone(cmd), now)
    return asked


def assert_finished(machine: DialplanCallMachine, reason: str) -> None:
    assert machine.state is CallState.ENDED
    assert machine.end_reason == reason


def test_caller_hanging_up_closes_the_bot_and_nothing_else() -> None:
    machine, _ = up_call()
    machine.handle(MediaEnded("asterisk closed the media socket"), 100.0)
    commands = answer_teardown(machine, 100.0)
    assert [type(c) for c in commands] == [CloseBot, Finished]
    assert commands[0].send_stop  # type: ignore[union-attr]
    assert not machine.used_fallback
    assert machine.state is CallState.ENDED
    assert machine.end_reason == "caller hung up"


def test_bot_hanging_up_plays_out_then_hangs_up_through_the_leg() -> None:
    machine, _ = up_call()
    machine.handle(BotClosed(1000, ""), 100.0)
    assert machine.state is CallState.DRAINING
    assert [type(c) for c in machine.commands_to_send()] == [DrainPlayout]
    machine.handle(PlayoutDrained(), 100.0)
    (close,) = [c for c in machine.commands_to_send() if isinstance(c, CloseMedia)]
    assert close.hangup  # 0x00 / HANGUP: the call is over
    machine.handle(CommandDone(close), 100.0)
    assert [type(c) for c in machine.commands_to_send()] == [Finished]
    assert_finished(machine, "bot ended the call")


@pytest.mark.parametrize(
    "failure",
    [BotClosed(1011, "boom"), MediaFailed("garbage"), HangupRequested("x", fallback=True)],
)
def test_a_failure_closes_without_hanging_up_so_the_dialplan_goes_on(failure: object) -> None:
    machine, _ = up_call()
    machine.handle(failure, 100.0)  # type: ignore[arg-type]
    commands = answer_teardown(machine, 100.0)
    (close,) = [c for c in commands if isinstance(c, CloseMedia)]
    assert not close.hangup
    assert machine.used_fallback
    assert machine.state is CallState.ENDED


def test_unreachable_bot_falls_back_to_the_dialplan() -> None:
    machine = DialplanCallMachine("c1", "ws://bot/ws", now=0.0, setup_timeout=10.0)
    (connect,) = machine.commands_to_send()
    machine.handle(CommandFailed(connect, "refused"), 0.0)
    commands = answer_teardown(machine, 0.0)
    assert [type(c) for c in commands] == [CloseMedia, Finished]
    assert not commands[0].hangup  # type: ignore[union-attr]
    assert machine.end_reason == "ConnectBot failed"


def test_setup_timeout_uses_the_clock_passed_in() -> None:
    machine = DialplanCallMachine("c1", "ws://bot/ws", now=50.0, setup_timeout=10.0)
    machine.commands_to_send()
    assert machine.next_timer() == 60.0
    machine.handle_timer(59.9)
    assert machine.state is CallState.SETUP
    machine.handle_timer(60.0)
    assert machine.state is CallState.ENDING
    assert machine.end_reason == "setup timed out"


def test_media_dtmf_goes_to_the_bot_only_while_it_is_up() -> None:
    machine = DialplanCallMachine("c1", "ws://bot/ws", now=0.0, setup_timeout=10.0)
    machine.commands_to_send()
    machine.handle(MediaDtmf("5"), 0.0)
    assert machine.commands_to_send() == []
    machine.handle(BotConnected(), 0.0)
    machine.handle(MediaDtmf("7"), 0.0)
    (dtmf,) = machine.commands_to_send()
    assert isinstance(dtmf, SendDtmf) and dtmf.digit == "7"


def test_a_rejected_call_closes_the_leg_at_once() -> None:
    machine = DialplanCallMachine("c1", "", now=0.0, setup_timeout=10.0, reject="max calls")
    commands = answer_teardown(machine, 0.0)
    assert [type(c) for c in commands] == [CloseMedia, Finished]  # no bot was ever asked for
    assert not commands[0].hangup  # type: ignore[union-attr]
    assert_finished(machine, "max calls")


def test_every_transition_is_in_the_table() -> None:
    assert TRANSITIONS[CallState.ENDED] == frozenset()
    for state in CallState:
        assert state in TRANSITIONS


def test_hangup_with_drain_plays_out_then_hangs_up_through_the_leg() -> None:
    machine, _ = up_call()
    machine.handle(HangupRequested("bot hung up (REST)", by=EndedBy.BOT, drain=True), 100.0)
    assert machine.state is CallState.DRAINING
    assert [type(c) for c in machine.commands_to_send()] == [DrainPlayout]
    machine.handle(HangupRequested("again", by=EndedBy.BOT, drain=True), 100.0)
    assert machine.commands_to_send() == []
    machine.handle(PlayoutDrained(), 100.0)
    commands = answer_teardown(machine, 100.0)
    assert [type(c) for c in commands] == [CloseBot, CloseMedia, Finished]
    assert commands[1].hangup  # type: ignore[union-attr]
    assert_finished(machine, "bot hung up (REST)")
    assert machine.ended_by is EndedBy.BOT
