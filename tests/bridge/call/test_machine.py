"""The pure call state machine, driven by recorded ARI events with `now` taken by hand."""

from __future__ import annotations

import json

import pytest

from ari.events import StasisStart, parse_event
from ari.models import parse_channel
from bridge.call.commands import (
    AddChannels,
    Answer,
    BotClosed,
    BotConnected,
    CloseBot,
    CloseMedia,
    Command,
    CommandDone,
    CommandFailed,
    ConnectBot,
    CreateBridge,
    CreateExternalMedia,
    DeleteBridge,
    DrainPlayout,
    EndedBy,
    Finished,
    HangupChannel,
    HangupRequested,
    MediaDtmf,
    MediaEnded,
    OpenMedia,
    PlayoutDrained,
    SendDtmf,
    StartMedia,
)
from bridge.call.machine import (
    MEDIA_ENDED_GRACE,
    TRANSITIONS,
    CallIds,
    CallMachine,
    CallState,
)
from tests.recordings import raw_events, rest_exchanges

# What an RTP leg answers OpenMedia with: the ExternalMedia parameters that reach it.
EM_PARAMS = {
    "format": "ulaw",
    "encapsulation": "rtp",
    "transport": "udp",
    "external_host": "127.0.0.1:31000",
}


class Harness:
    """Feeds one recorded scenario into a machine, answering its commands on demand."""

    def __init__(self, scenario: str = "basic_ulaw", **machine_kwargs: object) -> None:
        self.raw = list(raw_events(scenario))
        first = parse_event(self.raw[0])
        assert isinstance(first, StasisStart)
        self.caller = first.channel
        self.ids = CallIds("c1", self.caller.id, "pcb-br-c1", "pcb-em-c1")
        em_response = next(
            r for r in rest_exchanges(scenario, "bridge") if r["path"].endswith("externalMedia")
        )
        self.recorded_em_id = em_response["body"]["id"]
        self.em_channel = parse_channel({**em_response["body"], "id": self.ids.media_channel_id})
        self.now = 0.0
        self.machine = CallMachine(
            self.ids,
            self.caller,
            "ws://bot/ws",
            self.now,
            10.0,
            **machine_kwargs,  # type: ignore[arg-type]
        )
        self.log: list[Command] = []

    def take(self) -> list[Command]:
        out = self.machine.commands_to_send()
        self.log.extend(out)
        return out

    def event(self, predicate: str) -> None:
        """Feed the first recorded event whose raw text contains `predicate`, ids mapped."""
        self._feed(next(r for r in self.raw if predicate in r))

    def _feed(self, raw: str) -> None:
        self.machine.handle(
            parse_event(raw.replace(self.recorded_em_id, self.ids.media_channel_id)), self.now
        )

    def media_stasis_start(self) -> None:
        starts = [r for r in self.raw if r.startswith('{"type":"StasisStart"')]
        self._feed(next(r for r in starts if self.recorded_em_id in r))

    def done(self, cmd: Command, value: object = None) -> None:
        self.machine.handle(CommandDone(cmd, value), self.now)

    def answered(self) -> list[Command]:
        """Answer the caller; return what the machine does next (OpenMedia, CreateBridge,
        ConnectBot)."""
        (answer,) = self.take()
        self.done(answer)
        return self.take()

    def setup_to_up(self) -> None:
        open_media, bridge, bot = self.answered()
        self.done(open_media, EM_PARAMS)
        (create_em,) = self.take()
        self.done(bridge)
        self.done(create_em, self.em_channel)
        assert [type(c) for c in self.take()] == [StartMedia]
        self.media_stasis_start()
        (add,) = self.take()
        self.done(add)
        self.machine.handle(BotConnected(), self.now)
        assert self.machine.state is CallState.UP
        del bot


def types(commands: list[Command]) -> list[type]:
    return [type(c) for c in commands]


def test_setup_emits_rest_calls_in_recorded_order() -> None:
    h = Harness()
    (answer,) = h.take()
    assert isinstance(answer, Answer) and answer.channel_id == h.caller.id
    h.done(answer)
    open_media, bridge, bot = h.take()
    assert isinstance(open_media, OpenMedia)
    assert isinstance(bridge, CreateBridge) and bridge.bridge_id == "pcb-br-c1"
    assert isinstance(bot, ConnectBot) and bot.url == "ws://bot/ws"
    h.done(open_media, EM_PARAMS)
    (create_em,) = h.take()
    assert isinstance(create_em, CreateExternalMedia)
    assert create_em.channel_id == "pcb-em-c1"
    assert dict(create_em.params) == EM_PARAMS
    h.done(bridge)
    h.done(create_em, h.em_channel)
    (start,) = h.take()
    assert isinstance(start, StartMedia)
    assert start.channel.channelvars["UNICASTRTP_LOCAL_PORT"] == "10314"
    assert h.take() == []  # the media channel has not entered the app yet (facts §1b)
    h.media_stasis_start()
    (add,) = h.take()
    assert isinstance(add, AddChannels)
    assert add.channel_ids == (h.caller.id, "pcb-em-c1")
    h.done(add)
    assert h.machine.state is CallState.SETUP  # the bot is not connected yet
    h.machine.handle(BotConnected(), h.now)
    assert h.machine.state is CallState.UP
    assert h.machine.next_timer() is None


def test_media_stasis_start_before_rest_response_still_bridges_once() -> None:
    h = Harness("concurrent")
    open_media, bridge, _bot = h.answered()
    h.done(open_media, EM_PARAMS)
    (create_em,) = h.take()
    h.done(bridge)
    h.media_stasis_start()  # before the externalMedia response: seen 3 times in 5 (facts §1)
    assert h.take() == []
    h.done(create_em, h.em_channel)
    assert types(h.take()) == [StartMedia, AddChannels]


def test_caller_hangup_tears_down_everything_but_the_caller() -> None:
    h = Harness("caller_hangup")
    h.setup_to_up()
    h.event('"cause":16,"type":"ChannelHangupRequest"')
    teardown = h.take()
    assert types(teardown) == [CloseBot, HangupChannel, DeleteBridge, CloseMedia]
    assert isinstance(teardown[0], CloseBot) and teardown[0].send_stop
    assert isinstance(teardown[1], HangupChannel) and teardown[1].channel_id == "pcb-em-c1"
    assert h.machine.state is CallState.ENDING
    # Our own DELETE echoes back as events; they change nothing.
    h.event('"cause":32,"soft":true,"type":"ChannelHangupRequest"')
    h.event('"type":"StasisEnd"')
    for cmd in teardown:
        assert h.machine.state is CallState.ENDING
        h.done(cmd)
    (finished,) = h.take()
    assert isinstance(finished, Finished) and finished.reason == "caller hung up"
    assert h.machine.state is CallState.ENDED


def test_bot_ends_call_plays_out_then_hangs_up_caller() -> None:
    h = Harness()
    h.setup_to_up()
    h.machine.handle(BotClosed(1000, ""), h.now)
    assert types(h.take()) == [DrainPlayout]
    assert h.machine.state is CallState.DRAINING
    h.machine.handle(PlayoutDrained(), h.now)
    teardown = h.take()
    assert types(teardown) == [HangupChannel, HangupChannel, DeleteBridge, CloseMedia]
    assert {c.channel_id for c in teardown if isinstance(c, HangupChannel)} == {
        "pcb-em-c1",
        h.caller.id,
    }
    for cmd in teardown:
        h.done(cmd)
    assert types(h.take()) == [Finished]


def test_bot_abnormal_close_hangs_up_at_once() -> None:
    h = Harness()
    h.setup_to_up()
    h.machine.handle(BotClosed(1011, "internal error"), h.now)
    assert types(h.take()) == [HangupChannel, HangupChannel, DeleteBridge, CloseMedia]
    assert "1011" in h.machine.end_reason


def test_dtmf_goes_to_bot_only_when_connected() -> None:
    h = Harness("dtmf")
    h.setup_to_up()
    h.event('"type":"ChannelDtmfReceived"')
    (dtmf,) = h.take()
    assert isinstance(dtmf, SendDtmf) and dtmf.digit == "1"


def test_hangup_while_bridge_creation_in_flight_deletes_it_when_it_lands() -> None:
    h = Harness()
    open_media, bridge, bot = h.answered()
    h.machine.handle(HangupRequested("caller gone", caller_gone=True), h.now)
    assert types(h.take()) == [CloseBot]  # nothing else exists yet
    h.done(bot)
    assert h.take() == []
    h.done(bridge)  # the bridge now exists: delete it
    assert types(h.take()) == [DeleteBridge]
    h.done(open_media, EM_PARAMS)  # the socket bound late: close it, create nothing
    (close,) = h.take()
    assert isinstance(close, CloseMedia)
    h.done(close)
    assert h.machine.state is CallState.ENDING  # the DeleteBridge is still unanswered


def test_failed_external_media_rolls_back_and_hangs_up() -> None:
    h = Harness()
    open_media, bridge, _bot = h.answered()
    h.done(open_media, EM_PARAMS)
    (create_em,) = h.take()
    h.done(bridge)
    h.machine.handle(BotConnected(), h.now)
    h.machine.handle(CommandFailed(create_em, "Internal error", 500), h.now)
    teardown = h.take()
    assert types(teardown) == [CloseBot, HangupChannel, DeleteBridge, CloseMedia]
    assert isinstance(teardown[1], HangupChannel) and teardown[1].channel_id == h.caller.id
    for cmd in teardown:
        h.done(cmd)
    assert types(h.take()) == [Finished]


def test_setup_timeout() -> None:
    h = Harness()
    (answer,) = h.take()
    h.done(answer)
    h.take()
    assert h.machine.next_timer() == 10.0
    h.machine.handle_timer(9.99)
    assert h.machine.state is CallState.SETUP
    h.machine.handle_timer(10.0)
    assert h.machine.state is CallState.ENDING
    assert h.machine.end_reason == "setup timed out"


def test_answer_404_means_caller_gone() -> None:
    h = Harness()
    (answer,) = h.take()
    h.machine.handle(CommandFailed(answer, "Channel not found", 404), h.now)
    assert types(h.take()) == [Finished]


def test_every_state_has_a_transition_entry() -> None:
    assert set(TRANSITIONS) == set(CallState)
    assert TRANSITIONS[CallState.ENDED] == frozenset()


def test_em_channel_vanishing_ends_call() -> None:
    h = Harness()
    h.setup_to_up()
    raw = json.dumps({"type": "ChannelDestroyed", "cause": 16, "cause_txt": "Normal Clearing",
                      "channel": {"id": "pcb-em-c1", "name": "UnicastRTP/x"}})
    h.machine.handle(parse_event(raw), h.now)
    assert h.machine.end_reason == "media channel went away"
    assert HangupChannel not in [
        type(c) for c in h.take() if getattr(c, "channel_id", None) == "pcb-em-c1"
    ]


@pytest.mark.parametrize("scenario", ["basic_ulaw", "caller_hangup", "dtmf", "app_args"])
def test_full_recorded_stream_ends_cleanly(scenario: str) -> None:
    """Every recorded event of the scenario, in order, after setup; then our teardown."""
    h = Harness(scenario)
    h.setup_to_up()
    for raw in h.raw[1:]:
        h.machine.handle(parse_event(raw.replace(h.recorded_em_id, h.ids.media_channel_id)), h.now)
        for cmd in h.take():
            if not isinstance(cmd, SendDtmf | Finished):
                h.done(cmd)
    if h.machine.state is CallState.UP:
        h.machine.handle(HangupRequested("test over"), h.now)
        for cmd in h.take():
            h.done(cmd)
        h.take()
    assert h.machine.state is CallState.ENDED
    deletes = [c for c in h.log if isinstance(c, HangupChannel | DeleteBridge)]
    assert len(deletes) == len({getattr(c, "channel_id", None) or c.bridge_id for c in deletes})


def test_bot_that_says_goodbye_during_setup_is_still_heard() -> None:
    h = Harness()
    open_media, bridge, _bot = h.answered()
    h.machine.handle(BotConnected(), h.now)
    # It queued its audio and left before the bridge was up.
    h.machine.handle(BotClosed(1000, ""), h.now)
    assert h.machine.state is CallState.SETUP
    h.done(open_media, EM_PARAMS)
    (create_em,) = h.take()
    h.done(bridge)
    h.done(create_em, h.em_channel)
    h.media_stasis_start()
    add = h.take()[-1]
    h.done(add)
    assert types(h.take()) == [DrainPlayout]
    assert h.machine.state is CallState.DRAINING


def test_media_stream_closing_ends_an_ari_call_only_if_no_event_explains_it() -> None:
    h = Harness()
    h.setup_to_up()
    h.take()
    h.now = 5.0
    h.machine.handle(MediaEnded("asterisk closed the media socket"), h.now)
    assert h.machine.state is CallState.UP  # the hang-up's events may be just behind
    assert h.machine.next_timer() == 5.0 + MEDIA_ENDED_GRACE
    h.machine.handle_timer(5.0 + MEDIA_ENDED_GRACE)
    assert h.machine.state is CallState.ENDING
    assert h.machine.end_reason == "media stream closed by Asterisk"
    assert h.machine.used_fallback


def test_media_stream_closing_with_the_callers_hangup_is_just_a_hangup() -> None:
    h = Harness()
    h.setup_to_up()
    h.take()
    h.machine.handle(MediaEnded("asterisk closed the media socket"), h.now)
    h.machine.handle(MediaDtmf("5"), h.now)  # the ARI event carries the digit; this one is dropped
    assert not any(isinstance(c, SendDtmf) for c in h.take())
    h.event('"type":"StasisEnd"')
    assert h.machine.end_reason == "caller hung up"
    assert h.machine.next_timer() is None


def test_hangup_with_drain_plays_out_then_hangs_up_by_whoever_asked() -> None:
    h = Harness()
    h.setup_to_up()
    h.take()
    h.machine.handle(HangupRequested("bot hung up (REST)", by=EndedBy.BOT, drain=True), h.now)
    assert types(h.take()) == [DrainPlayout]  # the bot's queued goodbye is heard first
    assert h.machine.state is CallState.DRAINING
    h.machine.handle(BotClosed(1000, ""), h.now)  # its socket closing changes nothing
    h.machine.handle(HangupRequested("again", by=EndedBy.BOT, drain=True), h.now)
    assert h.take() == []
    h.machine.handle(PlayoutDrained(), h.now)
    teardown = h.take()
    assert types(teardown) == [HangupChannel, HangupChannel, DeleteBridge, CloseMedia]
    for cmd in teardown:
        h.done(cmd)
    assert types(h.take()) == [Finished]
    assert (h.machine.end_reason, h.machine.ended_by) == ("bot hung up (REST)", EndedBy.BOT)


def test_hangup_with_drain_while_the_bot_is_still_up_closes_it_after_the_play_out() -> None:
    h = Harness()
    h.setup_to_up()
    h.take()
    h.machine.handle(HangupRequested("bot hung up (REST)", by=EndedBy.BOT, drain=True), h.now)
    h.take()
    h.machine.handle(PlayoutDrained(), h.now)
    assert types(h.take()) == [CloseBot, HangupChannel, HangupChannel, DeleteBridge, CloseMedia]


def test_hangup_with_drain_during_setup_waits_for_the_call_to_be_up() -> None:
    h = Harness()
    open_media, bridge, _bot = h.answered()
    h.machine.handle(BotConnected(), h.now)
    h.machine.handle(HangupRequested("bot hung up (REST)", by=EndedBy.BOT, drain=True), h.now)
    assert h.machine.state is CallState.SETUP and h.take() == []
    h.done(open_media, EM_PARAMS)
    (create_em,) = h.take()
    h.done(bridge)
    h.done(create_em, h.em_channel)
    h.media_stasis_start()
    h.done(h.take()[-1])
    assert types(h.take()) == [DrainPlayout]
    assert h.machine.state is CallState.DRAINING


def test_hangup_without_drain_cuts_the_play_out() -> None:
    h = Harness()
    h.setup_to_up()
    h.machine.handle(BotClosed(1000, ""), h.now)
    h.take()
    h.machine.handle(HangupRequested("operator", by=EndedBy.API), h.now)
    assert types(h.take()) == [HangupChannel, HangupChannel, DeleteBridge, CloseMedia]
    assert h.machine.ended_by is EndedBy.API
