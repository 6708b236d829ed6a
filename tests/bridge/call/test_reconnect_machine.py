"""The call machines keep the caller through a bot's drop: hand clock, commands asserted."""

from __future__ import annotations

import pytest

from bridge.call.commands import (
    BotClosed,
    BotConnected,
    ClearPlayout,
    CloseBot,
    CloseMedia,
    Command,
    CommandDone,
    CommandFailed,
    ConnectBot,
    DeleteBridge,
    DrainPlayout,
    EndedBy,
    Finished,
    HangupChannel,
    HangupRequested,
    MediaDtmf,
    MediaEnded,
    SendDtmf,
    StartHold,
    StopHold,
)
from bridge.call.dialplan import DialplanCallMachine
from bridge.call.machine import TRANSITIONS, CallState
from bridge.call.reconnect import FALLBACK_SLACK, ReconnectPolicy
from tests.bridge.call.test_machine import Harness, types

POLICY = ReconnectPolicy(window=3.0, max_resumes=3)


def up(policy: ReconnectPolicy = POLICY, scenario: str = "basic_ulaw") -> Harness:
    h = Harness(scenario, reconnect=policy)
    h.now = 100.0
    h.setup_to_up()
    h.take()
    return h


def drop(h: Harness, code: int | None = 1012) -> list[Command]:
    h.machine.handle(BotClosed(code, "service restart"), h.now)
    return h.take()


def finish(h: Harness, commands: list[Command]) -> None:
    for cmd in commands:
        h.done(cmd)
    assert types(h.take()) == [Finished]
    assert h.machine.state is CallState.ENDED


def test_bot_away_is_in_the_table() -> None:
    assert CallState.BOT_AWAY in TRANSITIONS[CallState.UP]
    assert TRANSITIONS[CallState.BOT_AWAY] == frozenset(
        {CallState.UP, CallState.TRANSFERRING, CallState.ENDING}
    )


def test_drop_redials_at_once_and_a_resumed_session_takes_the_call_back() -> None:
    h = up()
    clear, hold, dial = drop(h)
    assert isinstance(clear, ClearPlayout)
    assert isinstance(hold, StartHold) and hold.channel_id == h.caller.id
    assert isinstance(dial, ConnectBot) and dial.resume == 1 and dial.budget == 3.0
    assert h.machine.state is CallState.BOT_AWAY and h.machine.end_reason == ""
    h.done(hold)
    h.now += 0.4
    h.machine.handle(BotConnected(), h.now)
    (stop,) = h.take()
    assert isinstance(stop, StopHold) and stop.channel_id == h.caller.id
    assert h.machine.state is CallState.UP
    h.done(stop)
    assert h.machine.reconnects.resumes == 1
    assert h.machine.next_timer() is None  # nothing pending: no fallback coming


def test_refused_redials_follow_the_backoff_then_the_fallback_comes_within_the_window() -> None:
    h = up()
    _clear, hold, dial = drop(h)
    h.done(hold)
    dials = [h.now]
    while True:
        h.now += 0.01
        h.machine.handle(CommandFailed(dial, "refused"), h.now)
        out = h.take()
        if out:
            break  # no re-dial fits in the window any more
        timer = h.machine.next_timer()
        assert timer is not None
        h.now = timer
        h.machine.handle_timer(h.now)
        (dial,) = h.take()
        assert isinstance(dial, ConnectBot) and dial.budget == pytest.approx(103.0 - h.now)
        dials.append(h.now)
    assert [round(t - 100.0, 2) for t in dials] == [0.0, 0.11, 0.32, 0.73, 1.54, 2.55]
    # The caller goes to the fallback (hangup) well within drop + window + 2 s; hold stopped.
    assert h.now < 100.0 + POLICY.window + FALLBACK_SLACK
    assert types(out) == [HangupChannel, StopHold, HangupChannel, DeleteBridge, CloseMedia]
    assert h.machine.used_fallback and h.machine.ended_by is EndedBy.BOT
    finish(h, out)


def test_the_deadline_ends_the_outage_whatever_is_in_flight() -> None:
    h = up()
    _clear, hold, _dial = drop(h)
    h.done(hold)
    h.now = 103.0
    h.machine.handle_timer(h.now)
    assert "did not come back within 3 s" in h.machine.end_reason
    assert h.machine.used_fallback


def test_a_dial_in_flight_at_the_deadline_is_abandoned() -> None:
    h = up()
    _clear, hold, dial = drop(h, 1006)
    h.done(hold)
    assert h.machine.next_timer() == 103.0
    h.now = 103.0
    h.machine.handle_timer(h.now)
    out = h.take()
    assert types(out)[0] is CloseBot  # the connect attempt is cancelled
    h.machine.handle(CommandFailed(dial, "cancelled"), h.now)
    finish(h, out)


def test_normal_close_drains_as_today() -> None:
    h = up()
    (drain,) = drop(h, 1000)
    assert isinstance(drain, DrainPlayout)
    assert h.machine.state is CallState.DRAINING


def test_a_hung_bot_fails_at_once() -> None:
    h = up()
    out = drop(h, None)
    assert types(out) == [HangupChannel, HangupChannel, DeleteBridge, CloseMedia]
    assert "code None" in h.machine.end_reason and h.machine.used_fallback


def test_a_bot_refusing_before_the_call_is_up_is_final() -> None:
    h = Harness(reconnect=POLICY)
    _open, _bridge, dial = h.answered()
    h.machine.handle(CommandFailed(dial, "refused"), h.now)
    assert h.machine.state is CallState.ENDING
    assert not any(isinstance(c, ConnectBot) for c in h.take())


def test_caller_hangs_up_during_the_outage_nothing_left() -> None:
    h = up(scenario="caller_hangup")
    _clear, hold, dial = drop(h)
    h.done(hold)
    h.event('"cause":16,"type":"ChannelHangupRequest"')
    out = h.take()
    assert types(out) == [CloseBot, HangupChannel, DeleteBridge, CloseMedia]  # no StopHold
    h.machine.handle(CommandFailed(dial, "cancelled"), h.now)  # the abandoned re-dial
    finish(h, out)


def test_caller_hangs_up_while_the_hold_is_starting() -> None:
    h = up(scenario="caller_hangup")
    _clear, hold, dial = drop(h)
    h.event('"cause":16,"type":"ChannelHangupRequest"')
    out = h.take()
    h.machine.handle(CommandFailed(dial, "cancelled"), h.now)
    for cmd in out:
        h.done(cmd)
    assert h.machine.state is CallState.ENDING  # the music on hold request is in flight
    h.machine.handle(CommandFailed(hold, "Channel not found", 404), h.now)
    assert types(h.take()) == [Finished]


def test_max_resumes_then_the_fallback() -> None:
    h = up(ReconnectPolicy(window=3.0, max_resumes=2))
    for _ in range(2):
        _clear, hold, _dial = drop(h)
        h.done(hold)
        h.now += 0.2
        h.machine.handle(BotConnected(), h.now)
        (stop,) = h.take()
        h.done(stop)
    out = drop(h, 1011)
    assert types(out) == [HangupChannel, HangupChannel, DeleteBridge, CloseMedia]
    assert "no resumes left" in h.machine.end_reason


def test_dtmf_during_the_outage_is_dropped_and_counted() -> None:
    h = up(scenario="dtmf")
    _clear, hold, _dial = drop(h)
    h.done(hold)
    h.event('"type":"ChannelDtmfReceived"')
    assert not any(isinstance(c, SendDtmf) for c in h.take())
    assert h.machine.dtmf_dropped == 1


def test_window_zero_keeps_todays_behaviour() -> None:
    h = up(ReconnectPolicy(window=0))
    out = drop(h, 1012)
    assert types(out) == [HangupChannel, HangupChannel, DeleteBridge, CloseMedia]


def test_a_bot_hang_up_during_the_outage_ends_at_once() -> None:
    h = up()
    _clear, hold, _dial = drop(h)
    h.done(hold)
    h.machine.handle(HangupRequested("api hang-up", drain=True), h.now)
    assert h.machine.state is CallState.ENDING


# ---- the dialplan machine --------------------------------------------------------------


def dialplan_up() -> tuple[DialplanCallMachine, list[float]]:
    clock = [50.0]
    m = DialplanCallMachine("d1", "ws://bot/ws", clock[0], 10.0, reconnect=POLICY)
    (dial,) = m.commands_to_send()
    m.handle(BotConnected(), clock[0])
    m.handle(CommandDone(dial), clock[0])
    assert m.state is CallState.UP
    return m, clock


def test_dialplan_call_resumes_too() -> None:
    m, clock = dialplan_up()
    m.handle(BotClosed(1012, ""), clock[0])
    clear, hold, dial = m.commands_to_send()
    assert isinstance(clear, ClearPlayout) and isinstance(hold, StartHold)
    assert isinstance(dial, ConnectBot) and dial.resume == 1
    m.handle(MediaDtmf("5"), clock[0])
    assert m.dtmf_dropped == 1 and m.commands_to_send() == []
    clock[0] += 0.5
    m.handle(BotConnected(), clock[0])
    assert types(m.commands_to_send()) == [StopHold]
    assert m.state is CallState.UP


def test_dialplan_call_never_back_continues_in_the_dialplan() -> None:
    m, clock = dialplan_up()
    m.handle(BotClosed(1001, ""), clock[0])
    *_, dial = m.commands_to_send()
    clock[0] += 0.5
    m.handle(CommandFailed(dial, "refused"), clock[0])
    assert m.next_timer() == 50.6  # the next re-dial
    clock[0] = 53.0  # it never ran: the deadline comes first
    m.handle_timer(clock[0])
    assert "did not come back within 3 s" in m.end_reason
    (close,) = m.commands_to_send()
    assert isinstance(close, CloseMedia) and not close.hangup  # the dialplan goes on
    m.handle(CommandDone(close), clock[0])
    assert types(m.commands_to_send()) == [Finished]


def test_dialplan_caller_hangs_up_during_the_outage() -> None:
    m, clock = dialplan_up()
    m.handle(BotClosed(1012, ""), clock[0])
    *_, dial = m.commands_to_send()
    m.handle(MediaEnded("closed"), clock[0])
    (close_bot,) = m.commands_to_send()  # the leg is gone already
    assert isinstance(close_bot, CloseBot)
    m.handle(CommandFailed(dial, "cancelled"), clock[0])
    m.handle(CommandDone(close_bot), clock[0])
    assert types(m.commands_to_send()) == [Finished]
