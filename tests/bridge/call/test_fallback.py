"""The caller's way out when the bot cannot have it: hang up, or continue in the dialplan,
optionally after a sound. Driven by recorded events, answers fed by hand."""

from __future__ import annotations

import json

import pytest

from ari.events import PlaybackFinished, parse_event
from bridge.call.commands import (
    Answer,
    BotClosed,
    CloseBot,
    CloseMedia,
    Command,
    CommandDone,
    CommandFailed,
    ConnectBot,
    ContinueInDialplan,
    CreateBridge,
    DeleteBridge,
    Finished,
    HangupChannel,
    HangupRequested,
    OpenMedia,
    PlaySound,
)
from bridge.call.machine import PLAYBACK_CAP, CallState, Fallback
from bridge.call.resources import Life, ResourceKind
from tests.bridge.call.test_machine import EM_PARAMS, Harness

HUMANS = Fallback("continue", "humans", "100", 2)
HUMANS_WITH_SOUND = Fallback("continue", "humans", "100", 2, sound="sound:sorry")


def answer_all(h: Harness, commands: list[Command]) -> list[Command]:
    """Answer each command as done; return what the machine does next."""
    for cmd in commands:
        h.done(cmd)
    return h.take()


def playback_finished(playback_id: str, channel_id: str) -> PlaybackFinished:
    # Shape from Asterisk's ARI model (no playback was recorded): synthetic.
    event = parse_event(
        json.dumps(
            {
                "type": "PlaybackFinished",
                "application": "pipecat",
                "playback": {
                    "id": playback_id,
                    "media_uri": "sound:sorry",
                    "target_uri": f"channel:{channel_id}",
                    "language": "en",
                    "state": "done",
                },
            }
        )
    )
    assert isinstance(event, PlaybackFinished)
    return event


def fail_bot_during_setup(h: Harness) -> list[Command]:
    _open_media, bridge, bot = h.answered()
    assert isinstance(bot, ConnectBot)
    h.done(bridge)
    h.machine.handle(CommandFailed(bot, "connection refused"), h.now)
    return h.take()


def test_default_fallback_hangs_the_caller_up_at_once() -> None:
    h = Harness()
    out = fail_bot_during_setup(h)
    assert HangupChannel(h.ids.caller_id).channel_id in [
        c.channel_id for c in out if isinstance(c, HangupChannel)
    ]
    assert h.machine.used_fallback


def test_continue_waits_for_the_bridge_to_be_gone_then_hands_the_caller_over() -> None:
    h = Harness(fallback=HUMANS)
    out = fail_bot_during_setup(h)
    assert not any(isinstance(c, ContinueInDialplan | HangupChannel) for c in out)
    (delete,) = [c for c in out if isinstance(c, DeleteBridge)]
    rest = [c for c in out if c is not delete]
    assert answer_all(h, rest) == []  # OpenMedia still in flight: CloseMedia waits
    h.done(delete)
    (cont,) = h.take()
    assert isinstance(cont, ContinueInDialplan)
    assert (cont.channel_id, cont.context, cont.extension, cont.priority) == (
        h.ids.caller_id,
        "humans",
        "100",
        2,
    )
    h.done(cont)
    assert h.machine.state is CallState.ENDING  # the bound media leg is still to close
    open_media = next(c for c in h.log if isinstance(c, OpenMedia))
    h.done(open_media, EM_PARAMS)
    (close,) = h.take()
    assert isinstance(close, CloseMedia)
    h.done(close)
    assert [type(c) for c in h.take()] == [Finished]
    assert h.machine.state is CallState.ENDED


def test_sound_plays_before_continue_and_waits_for_its_playback_finished() -> None:
    h = Harness(fallback=HUMANS_WITH_SOUND)
    h.setup_to_up()
    h.take()
    h.machine.handle(BotClosed(1011, "internal error"), h.now)
    out = h.take()
    assert not any(isinstance(c, PlaySound) for c in out)
    (delete,) = [c for c in out if isinstance(c, DeleteBridge)]
    answer_all(h, [c for c in out if c is not delete])
    h.done(delete)
    (play,) = h.take()
    assert isinstance(play, PlaySound)
    assert (play.channel_id, play.media) == (h.ids.caller_id, "sound:sorry")
    h.done(play)
    assert h.take() == []
    h.machine.handle(playback_finished("someone-else", h.ids.caller_id), h.now)
    assert h.take() == []
    h.machine.handle(playback_finished(play.playback_id, h.ids.caller_id), h.now)
    (cont,) = h.take()
    assert isinstance(cont, ContinueInDialplan)
    h.done(cont)
    assert [type(c) for c in h.take()] == [Finished]


def test_a_lost_playback_finished_does_not_strand_the_caller() -> None:
    h = Harness(fallback=HUMANS_WITH_SOUND)
    h.setup_to_up()
    h.take()
    h.machine.handle(BotClosed(1006, ""), h.now)
    (play,) = answer_all(h, h.take())
    h.done(play)
    deadline = h.machine.next_timer()
    assert deadline == pytest.approx(h.now + PLAYBACK_CAP)
    h.machine.handle_timer(deadline - 0.001)
    assert h.take() == []
    h.machine.handle_timer(deadline)
    (cont,) = h.take()
    assert isinstance(cont, ContinueInDialplan)


def test_a_bad_fallback_location_hangs_up_rather_than_strand_the_caller() -> None:
    h = Harness(fallback=HUMANS)
    out = fail_bot_during_setup(h)
    (cont,) = answer_all(h, out)
    h.machine.handle(CommandFailed(cont, "Requested context not found", 400), h.now)
    (hangup,) = h.take()
    assert isinstance(hangup, HangupChannel)
    assert hangup.channel_id == h.ids.caller_id


def test_caller_hanging_up_during_the_sound_ends_the_call() -> None:
    h = Harness(fallback=HUMANS_WITH_SOUND)
    h.setup_to_up()
    h.take()
    h.machine.handle(BotClosed(1011, ""), h.now)
    (play,) = answer_all(h, h.take())
    h.done(play)
    h.event('"ChannelHangupRequest"')
    assert [type(c) for c in h.take()] == [Finished]


def test_caller_hanging_up_ends_normally_without_the_fallback() -> None:
    h = Harness(fallback=HUMANS_WITH_SOUND)
    h.setup_to_up()
    h.take()
    h.event('"ChannelHangupRequest"')
    out = h.take()
    assert not any(isinstance(c, PlaySound | ContinueInDialplan) for c in out)
    assert not h.machine.used_fallback


def test_bot_ending_the_call_normally_is_a_hangup_not_a_fallback() -> None:
    h = Harness(fallback=HUMANS)
    h.setup_to_up()
    h.take()
    h.machine.handle(HangupRequested("bridge shutting down"), h.now)
    out = h.take()
    assert any(isinstance(c, HangupChannel) and c.channel_id == h.ids.caller_id for c in out)
    assert not any(isinstance(c, ContinueInDialplan) for c in out)


def test_rejected_call_creates_nothing_and_continues_at_once() -> None:
    h = Harness(fallback=HUMANS, reject="bridge full")
    (cont,) = h.take()
    assert isinstance(cont, ContinueInDialplan)
    h.done(cont)
    assert [type(c) for c in h.take()] == [Finished]
    assert h.machine.end_reason == "bridge full"


def test_rejected_call_with_a_sound_is_answered_first() -> None:
    h = Harness(fallback=Fallback(sound="sound:busy"), reject="draining")
    (answer,) = h.take()
    assert isinstance(answer, Answer)
    h.done(answer)
    (play,) = h.take()
    assert isinstance(play, PlaySound)
    h.done(play)
    h.machine.handle(playback_finished(play.playback_id, h.ids.caller_id), h.now)
    (hangup,) = h.take()
    assert isinstance(hangup, HangupChannel)
    h.done(hangup)
    assert [type(c) for c in h.take()] == [Finished]


def test_a_caller_gone_before_continue_needs_no_handover() -> None:
    h = Harness(fallback=HUMANS, reject="bridge full")
    (cont,) = h.take()
    h.machine.handle(CommandFailed(cont, "Channel not found", 404), h.now)
    assert [type(c) for c in h.take()] == [Finished]


def test_setup_timeout_uses_the_fallback() -> None:
    h = Harness(fallback=HUMANS)
    open_media, bridge, _bot = h.answered()
    h.machine.handle_timer(10.0)
    out = h.take()
    assert any(isinstance(c, CloseBot) for c in out)
    assert h.machine.used_fallback
    for cmd in (open_media, bridge):
        h.done(cmd, EM_PARAMS if isinstance(cmd, OpenMedia) else None)
    out = h.take()
    (delete,) = [c for c in out if isinstance(c, DeleteBridge)]
    answer_all(
        h, [c for c in out if c is not delete] + [c for c in h.log if isinstance(c, CloseBot)]
    )
    h.done(delete)
    (cont,) = h.take()
    assert isinstance(cont, ContinueInDialplan)


def test_a_failed_bridge_creation_lets_the_fallback_go_on() -> None:
    h = Harness(fallback=HUMANS)
    _open_media, bridge, _bot = h.answered()
    h.machine.handle(CommandFailed(bridge, "Internal Server Error", 500), h.now)
    out = h.take()
    (cont,) = [c for c in out if isinstance(c, ContinueInDialplan)]
    assert isinstance(bridge, CreateBridge)
    h.machine.handle(CommandDone(cont), h.now)
    assert h.machine.res.life(ResourceKind.CALLER) is Life.GONE


def test_fallback_rejects_continue_without_context() -> None:
    with pytest.raises(ValueError, match="context"):
        Fallback("continue")


def test_a_creation_that_timed_out_is_deleted_all_the_same() -> None:
    # No HTTP answer: a slow Asterisk may still create it, under our pre-assigned id.
    h = Harness()
    _open_media, bridge, _bot = h.answered()
    h.machine.handle(CommandFailed(bridge, "TimeoutError"), h.now)
    out = h.take()
    assert any(isinstance(c, DeleteBridge) and c.bridge_id == h.ids.bridge_id for c in out)


def test_a_creation_refused_with_an_http_error_is_not_deleted() -> None:
    h = Harness()
    _open_media, bridge, _bot = h.answered()
    h.machine.handle(CommandFailed(bridge, "Internal Server Error", 500), h.now)
    assert not any(isinstance(c, DeleteBridge) for c in h.take())
