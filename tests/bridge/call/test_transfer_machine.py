"""Transfers in the pure call machine, driven by the recorded target events
(transfer_originate_answer / _busy / _noanswer), with `now` taken by hand.

Each test ends by answering every teardown command and checking nothing is left."""

from __future__ import annotations

import re

import pytest

from ari.events import parse_event
from bridge.bot.control import TransferCause, TransferMode, TransferRequest, reply
from bridge.call.commands import (
    AddChannels,
    BotClosed,
    ChannelVanished,
    CloseBot,
    CloseMedia,
    Command,
    CommandFailed,
    ContinueInDialplan,
    DeleteBridge,
    EndedBy,
    Finished,
    HangupChannel,
    HangupRequested,
    NotifyBot,
    OriginateTarget,
    StartRingback,
    StopRingback,
)
from bridge.call.machine import CallState, Fallback
from bridge.call.resources import ResourceKind
from bridge.call.transfer import TRANSFER_GRACE, TransferPolicy
from tests.bridge.call.test_machine import Harness
from tests.recordings import rest_exchanges

TARGET_ID = "xf-c1-1"  # the Harness's call id c1, no id prefix, first transfer


def recorded_target(scenario: str) -> str:
    originate = next(
        r for r in rest_exchanges(scenario, "bridge")
        if r["path"] == "/ari/channels" and r["body"]["id"].startswith("xfer")
    )
    return str(originate["body"]["id"])


def target_events(h: Harness, scenario: str) -> list[str]:
    """The recorded events of the target's two halves, its ids mapped onto ours."""
    recorded = recorded_target(scenario)
    return [r.replace(recorded, TARGET_ID) for r in h.raw if recorded in r]


def feed_until(h: Harness, events: list[str], pattern: str) -> list[str]:
    """Feed events up to and including the first matching `pattern` (a regex)."""
    while events:
        raw = events.pop(0)
        h.machine.handle(parse_event(raw), h.now)
        if re.search(pattern, raw):
            return events
    raise AssertionError(f"no recorded event matches {pattern!r}")


def up(scenario: str, **kwargs: object) -> Harness:
    h = Harness(scenario, **kwargs)
    h.setup_to_up()
    h.take()
    return h


def finish(h: Harness, *, status_404: tuple[type, ...] = ()) -> list[Command]:
    """Answer every command until the call is over; assert nothing of it is left."""
    seen: list[Command] = []
    for _ in range(20):
        out = h.take()
        if not out:
            break
        for cmd in out:
            seen.append(cmd)
            if isinstance(cmd, Finished):
                continue
            if isinstance(cmd, status_404):
                h.machine.handle(CommandFailed(cmd, "Channel not found", 404), h.now)
            else:
                h.done(cmd)
    assert h.machine.state is CallState.ENDED, h.machine.res
    assert h.machine.res.held() == []
    assert any(isinstance(c, Finished) for c in seen)
    return seen


def caller_hangs_up(h: Harness) -> None:
    """The caller's recorded StasisEnd (in these recordings it comes after the target's)."""
    h.event('"type":"StasisEnd","timestamp"')
    if h.machine.state not in (CallState.ENDING, CallState.ENDED):
        raw = next(r for r in h.raw if '"type":"StasisEnd"' in r
                   and f'"id":"{h.ids.caller_id}"' in r)  # fmt: skip
        h.machine.handle(parse_event(raw), h.now)


def request(h: Harness, mode: TransferMode, target: str = "Local/233@caller",
            timeout: int = 20) -> list[Command]:  # fmt: skip
    h.machine.handle(TransferRequest(target, mode, timeout=timeout), h.now)
    return h.take()


def types(cmds: list[Command]) -> list[type]:
    return [type(c) for c in cmds]


# ---- attended -------------------------------------------------------------------------


def test_attended_answered_reports_ringing_and_answered_then_the_bot_side_leaves() -> None:
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.ATTENDED)
    assert isinstance(originate, OriginateTarget)
    assert (originate.channel_id, originate.endpoint, originate.timeout) == (
        TARGET_ID, "Local/233@caller", 20,
    )  # fmt: skip
    assert originate.originator == h.ids.caller_id
    assert originate.caller_id == "5551000"  # the caller's number, for the person
    assert h.machine.state is CallState.TRANSFERRING
    h.done(originate)
    assert h.take() == []  # the bot keeps the caller while the target rings
    events = target_events(h, "transfer_originate_answer")
    events = feed_until(h, events, r'"dialstatus":"RINGING"')
    (ringing,) = h.take()
    assert isinstance(ringing, NotifyBot)
    assert ringing.message == reply("transfer_ringing", "Local/233@caller")
    events = feed_until(h, events, r'"type":"StasisStart"')
    out = h.take()
    assert isinstance(out[0], NotifyBot) and out[0].message["event"] == "transfer_answered"
    add = next(c for c in out if isinstance(c, AddChannels))
    assert add.channel_ids == (TARGET_ID,)
    close = next(c for c in out if isinstance(c, CloseBot))
    assert close.send_stop  # the bot gets `stop`, its socket closes
    assert any(isinstance(c, HangupChannel) and c.channel_id == h.ids.media_channel_id
               for c in out)  # fmt: skip
    assert any(isinstance(c, CloseMedia) for c in out)
    assert h.machine.state is CallState.TRANSFERRED
    for cmd in out:
        if not isinstance(cmd, NotifyBot):
            h.done(cmd)
    h.machine.handle(BotClosed(1000), h.now)
    assert h.machine.state is CallState.TRANSFERRED  # the bot leaving ends nothing now
    held = h.machine.res.held()
    assert held == [ResourceKind.TARGET, ResourceKind.CALLER, ResourceKind.BRIDGE]
    # The person hangs up: the caller is hung up (no fallback), the bridge goes.
    feed_until(h, events, r'"type":"StasisEnd"')
    out = finish(h)
    assert HangupChannel(h.ids.caller_id) not in out  # identity: check by type and id
    assert any(isinstance(c, HangupChannel) and c.channel_id == h.ids.caller_id for c in out)
    assert any(isinstance(c, DeleteBridge) for c in out)
    assert not any(isinstance(c, HangupChannel) and c.channel_id == TARGET_ID for c in out)
    assert h.machine.ended_by is EndedBy.TARGET
    assert not h.machine.used_fallback
    assert h.machine.last_transfer is not None
    assert h.machine.last_transfer.outcome == "answered"


@pytest.mark.parametrize(
    ("scenario", "cause", "until"),
    [
        ("transfer_originate_busy", TransferCause.BUSY, r'"dialstatus":"BUSY"'),
        ("transfer_originate_noanswer", TransferCause.NO_ANSWER,
         r'"type":"ChannelDestroyed".*"id":"xf-c1-1"'),
    ],
)  # fmt: skip
def test_attended_failure_tells_the_bot_and_the_call_goes_on(
    scenario: str, cause: TransferCause, until: str
) -> None:
    h = up(scenario)
    (originate,) = request(h, TransferMode.ATTENDED, "Local/207@caller")
    h.done(originate)
    events = feed_until(h, target_events(h, scenario), until)
    out = h.take()
    (failed,) = [c for c in out if isinstance(c, NotifyBot) and c.message["event"] == (
        "transfer_failed")]  # fmt: skip
    assert failed.message == reply("transfer_failed", "Local/207@caller", cause)
    assert h.machine.state is CallState.UP
    assert h.machine.transfer is None
    # Busy: the target may still be there (its ChannelDestroyed comes next): hang it up,
    # a 404 is fine. No answer: Asterisk destroyed it already, nothing to delete.
    deletes = [c for c in out if isinstance(c, HangupChannel)]
    assert [c.channel_id for c in deletes] == ([TARGET_ID] if cause is TransferCause.BUSY else [])
    for cmd in deletes:
        h.machine.handle(CommandFailed(cmd, "Channel not found", 404), h.now)
    for raw in events:
        h.machine.handle(parse_event(raw), h.now)
    assert h.take() == []  # the target's last events change nothing
    assert h.machine.state is CallState.UP
    assert h.machine.res.held() == [
        ResourceKind.BOT, ResourceKind.MEDIA_CHANNEL, ResourceKind.CALLER, ResourceKind.BRIDGE,
        ResourceKind.MEDIA_LEG,
    ]  # fmt: skip
    # The bot may try again: a new target id.
    (again,) = request(h, TransferMode.ATTENDED)
    assert isinstance(again, OriginateTarget) and again.channel_id == "xf-c1-2"


def test_caller_hanging_up_while_the_target_rings_leaves_nothing() -> None:
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.ATTENDED)
    h.done(originate)
    feed_until(h, target_events(h, "transfer_originate_answer"), r'"dialstatus":"RINGING"')
    h.take()
    caller_hangs_up(h)
    assert h.machine.state is CallState.ENDING
    out = finish(h)
    assert any(isinstance(c, HangupChannel) and c.channel_id == TARGET_ID for c in out)
    assert h.machine.ended_by is EndedBy.CALLER


def test_caller_hanging_up_while_the_originate_is_in_flight_deletes_the_target_after() -> None:
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.ATTENDED)
    h.machine.handle(HangupRequested("caller left", caller_gone=True), h.now)
    out = h.take()
    assert not any(isinstance(c, HangupChannel) and c.channel_id == TARGET_ID for c in out)
    for cmd in out:
        h.done(cmd)
    assert h.machine.state is CallState.ENDING  # the originate's answer is still to come
    h.done(originate)
    (delete,) = [c for c in h.take() if isinstance(c, HangupChannel)]
    assert delete.channel_id == TARGET_ID
    h.done(delete)
    finish(h)


def test_the_bot_leaving_during_an_attended_transfer_makes_it_blind() -> None:
    h = up("transfer_originate_noanswer")
    (originate,) = request(h, TransferMode.ATTENDED, "Local/208@caller", timeout=3)
    h.done(originate)
    h.machine.handle(BotClosed(1000), h.now)
    out = h.take()
    assert h.machine.state is CallState.TRANSFERRED
    assert StartRingback in types(out)  # the caller hears ring-back meanwhile
    assert CloseMedia in types(out)
    for cmd in out:
        h.done(cmd)
    # Nobody answers: no bot to return to, so the caller gets the fallback.
    feed_until(h, target_events(h, "transfer_originate_noanswer"),
               r'"type":"ChannelDestroyed".*"id":"xf-c1-1"')  # fmt: skip
    out = finish(h)
    assert StopRingback in types(out)
    assert h.machine.used_fallback
    assert h.machine.ended_by is EndedBy.TARGET
    assert "no_answer" in h.machine.end_reason


def test_an_asterisk_restart_mid_transfer_ends_the_call_and_deletes_the_target() -> None:
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.ATTENDED)
    h.done(originate)
    assert h.machine.owned_channels() == [TARGET_ID]
    # What a resync feeds after a restart: the caller is gone (and so is everything else).
    h.machine.handle(HangupRequested("caller left while events were down", caller_gone=True),
                     h.now)  # fmt: skip
    finish(h, status_404=(HangupChannel, DeleteBridge))


def test_a_target_gone_while_the_events_were_down_fails_the_transfer() -> None:
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.ATTENDED)
    h.done(originate)
    h.machine.handle(ChannelVanished(TARGET_ID), h.now)
    (failed,) = h.take()
    assert isinstance(failed, NotifyBot) and failed.message["cause"] == "failed"
    assert h.machine.state is CallState.UP


def test_a_refused_originate_fails_at_once_and_an_unanswered_one_is_deleted() -> None:
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.BLIND, "Foo/bar")
    h.machine.handle(CommandFailed(originate, "Allocation failed", 500), h.now)
    (failed,) = h.take()
    assert isinstance(failed, NotifyBot)
    assert failed.message == reply("transfer_failed", "Foo/bar", TransferCause.UNAVAILABLE)
    assert h.machine.state is CallState.UP  # blind, but the bot still had the caller
    (originate,) = request(h, TransferMode.ATTENDED)
    h.machine.handle(CommandFailed(originate, "timed out"), h.now)  # no answer: unsure
    out = h.take()
    assert any(isinstance(c, HangupChannel) and c.channel_id == "xf-c1-2" for c in out)


def test_a_target_that_never_reports_back_fails_at_the_deadline() -> None:
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.ATTENDED, timeout=5)
    h.done(originate)
    deadline = h.machine.next_timer()
    assert deadline == pytest.approx(h.now + 5 + TRANSFER_GRACE)
    h.now = deadline
    h.machine.handle_timer(h.now)
    out = h.take()
    assert any(isinstance(c, NotifyBot) and c.message["cause"] == "no_answer" for c in out)
    assert any(isinstance(c, HangupChannel) and c.channel_id == TARGET_ID for c in out)


# ---- blind ----------------------------------------------------------------------------


def test_blind_the_bot_side_leaves_once_dialled_and_the_caller_hears_ringback() -> None:
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.BLIND)
    assert h.take() == []
    h.done(originate)
    out = h.take()
    assert h.machine.state is CallState.TRANSFERRED
    assert set(types(out)) == {CloseBot, HangupChannel, CloseMedia, StartRingback}
    ringback = next(c for c in out if isinstance(c, StartRingback))
    assert ringback.mode == "ring"
    for cmd in out:
        h.done(cmd)
    events = feed_until(h, target_events(h, "transfer_originate_answer"), r'"type":"StasisStart"')
    out = h.take()
    assert set(types(out)) == {AddChannels, StopRingback}  # no bot to notify
    for cmd in out:
        h.done(cmd)
    assert h.machine.res[ResourceKind.TARGET].joined
    del events
    # The caller hangs up: the target is hung up, the bridge deleted, exactly once each.
    caller_hangs_up(h)
    out = finish(h)
    assert [c.channel_id for c in out if isinstance(c, HangupChannel)] == [TARGET_ID]
    assert types(out).count(DeleteBridge) == 1
    assert h.machine.ended_by is EndedBy.CALLER


def test_blind_busy_gives_the_caller_the_fallback() -> None:
    fallback = Fallback("continue", "operators", "s", 1)
    h = up("transfer_originate_busy", fallback=fallback)
    (originate,) = request(h, TransferMode.BLIND, "Local/207@caller")
    h.done(originate)
    for cmd in h.take():
        h.done(cmd)
    feed_until(h, target_events(h, "transfer_originate_busy"), r'"dialstatus":"BUSY"')
    out = finish(h, status_404=(HangupChannel,))
    cont = next(c for c in out if isinstance(c, ContinueInDialplan))
    assert cont.context == "operators"
    assert h.machine.used_fallback
    assert "busy" in h.machine.end_reason


def test_ringback_none_and_moh() -> None:
    h = up("transfer_originate_answer", transfer=TransferPolicy(ringback="none"))
    (originate,) = request(h, TransferMode.BLIND)
    h.done(originate)
    assert StartRingback not in types(h.take())
    h = up("transfer_originate_answer", transfer=TransferPolicy(ringback="moh",
                                                                 attended_ringback="ring"))
    (originate, ring) = request(h, TransferMode.ATTENDED)
    assert isinstance(ring, StartRingback) and ring.mode == "ring"  # under the bot's voice


def test_a_dialplan_location_continues_the_caller_there_after_the_bridge_is_gone() -> None:
    h = up("transfer_originate_answer")
    out = request(h, TransferMode.BLIND, "206@agents")
    assert OriginateTarget not in types(out)
    assert h.machine.state is CallState.ENDING
    assert ContinueInDialplan not in types(out)  # not while the caller is in our bridge
    bridge_delete = next(c for c in out if isinstance(c, DeleteBridge))
    for cmd in out:
        if cmd is not bridge_delete:
            h.done(cmd)
    assert ContinueInDialplan not in types(h.take())
    h.done(bridge_delete)
    (cont,) = h.take()
    assert isinstance(cont, ContinueInDialplan)
    assert (cont.context, cont.extension, cont.priority) == ("agents", "206", 1)
    h.done(cont)
    finish(h)
    assert not h.machine.used_fallback


def test_targets_outside_the_allow_list_are_refused() -> None:
    h = up("transfer_originate_answer", transfer=TransferPolicy(allow=("PJSIP/1*",)))
    (failed,) = request(h, TransferMode.BLIND, "PJSIP/+4420555")
    assert isinstance(failed, NotifyBot) and failed.message["cause"] == "failed"
    (originate,) = request(h, TransferMode.BLIND, "PJSIP/1001")
    assert isinstance(originate, OriginateTarget)


def test_a_second_transfer_while_one_rings_is_refused() -> None:
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.ATTENDED)
    h.done(originate)
    # TransferRequest is taken in UP and BOT_AWAY only: while one rings, the bot is told no.
    (refused,) = request(h, TransferMode.ATTENDED)
    assert isinstance(refused, NotifyBot) and refused.message["cause"] == "failed"
    assert h.machine.state is CallState.TRANSFERRING
    assert any(getattr(c, "event", "") == "bot_control_ignored"
               for c in h.machine.changes_to_report())  # fmt: skip


def test_a_transfer_while_the_bot_is_away_is_blind() -> None:
    h = up("transfer_originate_answer", reconnect=None)
    h.machine.state = CallState.BOT_AWAY  # as _bot_away leaves it (bot gone, hold up)
    h.machine.res.gone(ResourceKind.BOT)
    (originate,) = request(h, TransferMode.ATTENDED)
    h.done(originate)
    assert h.machine.state is CallState.TRANSFERRED


def test_target_events_before_the_originates_answer_are_not_lost() -> None:
    # Asterisk sends the target's first events within a millisecond of its 200: they can
    # reach us before the REST answer does.
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.BLIND)
    feed_until(h, target_events(h, "transfer_originate_answer"), r'"type":"StasisStart"')
    out = h.take()
    assert AddChannels in types(out)
    h.done(originate)
    assert h.machine.state is CallState.TRANSFERRED
    for cmd in out + h.take():
        h.done(cmd)
    assert h.machine.res[ResourceKind.TARGET].joined
    # busy before the answer: the target is deleted once the answer says it exists
    h = up("transfer_originate_busy")
    (originate,) = request(h, TransferMode.BLIND, "Local/207@caller")
    feed_until(h, target_events(h, "transfer_originate_busy"), r'"dialstatus":"BUSY"')
    assert h.machine.state is CallState.UP
    assert not any(isinstance(c, HangupChannel) for c in h.take())
    h.done(originate)
    (delete,) = h.take()
    assert isinstance(delete, HangupChannel) and delete.channel_id == TARGET_ID


def test_the_bots_own_hang_up_after_its_transfer_never_ends_the_callers_conversation() -> None:
    # Pipecat's TwilioFrameSerializer hangs up through the REST API when its pipeline ends:
    # a bot that transfers and then ends must leave the caller with the person.
    h = up("transfer_originate_answer")
    (originate,) = request(h, TransferMode.ATTENDED)
    h.done(originate)
    h.machine.handle(HangupRequested("bot hung up (Twilio REST)", by=EndedBy.BOT, drain=True),
                     h.now)  # fmt: skip
    assert h.machine.state is CallState.TRANSFERRED  # ringing on, blind now
    for cmd in h.take():
        h.done(cmd)
    h.machine.handle(HangupRequested("bot hung up (Twilio REST)", by=EndedBy.BOT, drain=True),
                     h.now)  # fmt: skip
    assert h.machine.state is CallState.TRANSFERRED
    assert h.take() == []
    # The API's hang-up still ends it.
    h.machine.handle(HangupRequested("hung up through the API", by=EndedBy.API), h.now)
    finish(h, status_404=(HangupChannel,))
