"""One call's runner: executes what its CallMachine asks, feeds the results back.

The runner owns the call's I/O objects (media leg, bot connection, REST tasks, setup timer)
and is the call's task boundary: an unexpected exception in any of its tasks is logged with
its traceback and ends this call, never another call or the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ari.events import AriEvent
from ari.models import Channel
from ari.rest import AriRestClient
from bridge.bot.connection import BotConnection
from bridge.bot.control import BotRequest, HangupWithCause, TransferCause, TransferRequest, reply
from bridge.bot.dialects.base import (
    BotAudio,
    BotClear,
    BotControl,
    BotDialect,
    BotIgnored,
    BotMark,
    CallInfo,
)
from bridge.call.commands import (
    AddChannels,
    Answer,
    BotClosed,
    BotConnected,
    ClearPlayout,
    CloseBot,
    CloseMedia,
    Command,
    CommandDone,
    CommandFailed,
    ConnectBot,
    ContinueInDialplan,
    CreateBridge,
    CreateExternalMedia,
    CreateSnoop,
    DeleteBridge,
    DrainPlayout,
    EndedBy,
    Finished,
    HangupChannel,
    HangupRequested,
    MediaDtmf,
    MediaEnded,
    MediaFailed,
    NotifyBot,
    OpenMedia,
    OriginateTarget,
    PlayoutDrained,
    PlaySound,
    SendDtmf,
    SendDtmfToCaller,
    StartHold,
    StartMedia,
    StartRecording,
    StartRingback,
    StopHold,
    StopRecording,
    StopRingback,
)
from bridge.call.dialplan import DialplanCallMachine
from bridge.call.hold import CallerHold
from bridge.call.machine import (
    CallIds,
    CallMachine,
    CallState,
    Fallback,
    MachineInput,
    Noted,
    StateChanged,
)
from bridge.call.reconnect import OFF, ReconnectPolicy
from bridge.call.recorder import RecordPlan
from bridge.call.transfer import TransferPolicy
from bridge.call.view import CallChange, CallView, Direction, Milestone
from bridge.errors import AriHttpError, BotProtocolError, BridgeError
from bridge.logs import redact_url
from bridge.media.leg import MediaLeg
from rtp.transcode import Transcoder

# Told of every change of a call, with the call's new view; must not raise (it is logged).
CallObserver = Callable[[CallView, CallChange], None]


class Call:
    def __init__(
        self,
        *,
        ids: CallIds,
        caller: Channel | None,
        bot_url: str,
        app: str,
        rest: AriRestClient | None,
        leg_factory: Callable[[Call], MediaLeg],
        dialect: BotDialect,
        info: CallInfo,
        bot_connect_timeout: float,
        setup_timeout: float,
        on_finished: Callable[[Call], None],
        log: Any,
        fallback: Fallback | None = None,
        reject: str = "",
        bot_options: dict[str, Any] | None = None,
        transport: str = "",
        direction: Direction = Direction.INBOUND,
        observers: Sequence[CallObserver] = (),
        ring_timeout: float | None = None,
        webhook_url: str = "",
        reconnect: ReconnectPolicy | None = None,
        transfer: TransferPolicy | None = None,
        record: RecordPlan | None = None,
        on_channel: Callable[[Call, str], None] | None = None,
    ) -> None:
        """An ARI call has its `caller` channel and the ARI `rest` session; a call from the
        dialplan alone (`caller` None) runs a DialplanCallMachine and needs no REST.
        The bot's audio is converted between the dialect's own (`dialect.audio`) and what
        the media leg announces it carries (`leg.formats`). `on_channel` is told of every
        further channel the call makes (a transfer target, a snoop) before it exists, so
        its events find the call."""
        self.ids = ids
        self.log = log
        self._loop = asyncio.get_running_loop()
        self._rest = rest
        self._app = app
        self._dialect = dialect
        self._bot_options = bot_options or {}
        self._info = info
        self._bot_connect_timeout = bot_connect_timeout
        self._on_finished = on_finished
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._bot: BotConnection | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._bot_up = False
        self.started_at = time.monotonic()
        # The read model's times are wall-clock (an API client's); durations use the above.
        self._times: dict[str, float] = {"started": time.time()}
        self._transport = transport
        self._direction = direction
        self._observers = tuple(observers)
        self._webhook_url = webhook_url
        self.bot_bad_messages = 0
        self.bot_audio_bytes = 0
        self.dtmf_sent = 0
        # A bot that drops mid-call and is re-dialled (bridge.call.reconnect).
        self._reconnect = reconnect or OFF
        self.bot_reconnects = 0
        self.caller_frames_dropped = 0  # the caller's audio while the bot was away
        self.bot_marks_dropped = 0  # marks of a dropped session, never echoed
        self._earlier_bots = (0, 0)  # sent, dropped by the sessions before this one
        self._dropped_at = 0.0
        self._drop_code: int | None = None
        self._on_channel = on_channel
        self.channels: set[str] = set()  # further channels of the call's (on_channel)
        # The bot's control messages wait in the playout behind the audio queued before
        # them, as marks of our own (a name no bot can guess).
        self._controls: dict[str, BotRequest] = {}
        self._control_tag = f"pcb-ctl-{secrets.token_hex(4)}-"
        self._control_seq = 0
        self.machine: CallMachine | DialplanCallMachine
        if caller is None:
            self._times["answered"] = self._times["started"]  # Asterisk answered it
            self.machine = DialplanCallMachine(
                ids.call_id, bot_url, self._loop.time(), setup_timeout, reject=reject,
                reconnect=self._reconnect,
            )  # fmt: skip
        else:
            self.machine = CallMachine(
                ids,
                caller,
                bot_url,
                self._loop.time(),
                setup_timeout,
                fallback=fallback,
                reject=reject,
                ring_timeout=ring_timeout,
                reconnect=self._reconnect,
                transfer=transfer,
                record=record,
            )
        self.leg = leg_factory(self)
        self._hold = CallerHold(self._reconnect.hold, self.leg, rest, self._loop)
        self._to_bot = Transcoder(self.leg.formats.rx, dialect.audio)
        self._from_bot = Transcoder(dialect.audio, self.leg.formats.tx)
        self.finished = self._loop.create_future()

    @property
    def state(self) -> CallState:
        return self.machine.state

    # ---- the read model -----------------------------------------------------------------

    def view(self) -> CallView:
        """A fresh snapshot: the call as it is now, media counters included."""
        m, info, times, bot = self.machine, self._info, self._times, self._bot
        media = {
            **self.leg.stats(),
            "bot_audio_bytes": self.bot_audio_bytes,
            "bot_sent": self._earlier_bots[0] + (bot.sent if bot else 0),
            "bot_dropped": self._earlier_bots[1] + (bot.dropped if bot else 0),
            "bot_bad_messages": self.bot_bad_messages,
            "dtmf": self.dtmf_sent,
            "bot_reconnects": self.bot_reconnects,
            "caller_frames_dropped": self.caller_frames_dropped,
            "dtmf_dropped": self.machine.dtmf_dropped,
        }
        return CallView(
            id=self.ids.call_id,
            state=m.state,
            direction=self._direction,
            transport=self._transport or self.leg.transport,
            dialect=self._dialect.name,
            bot_url=redact_url(m.bot_url),
            caller=info.caller,
            called=info.called,
            channel_id=info.channel_id,
            started_at=times["started"],
            answered_at=times.get("answered"),
            bot_connected_at=times.get("bot_connected"),
            ended_at=times.get("ended"),
            end_reason=m.end_reason,
            ended_by=m.ended_by,
            fallback=m.used_fallback,
            media=media,
            webhook_url=self._webhook_url,
            transfer=self._transfer_view(),
            recordings=tuple(r.as_dict() for r in getattr(m, "recordings", ())),
        )

    def _transfer_view(self) -> dict[str, str] | None:
        t = getattr(self.machine, "last_transfer", None)
        if t is None:
            return None
        outcome = t.outcome or ("ringing" if t.ringing else "dialling")
        return {"target": t.request.target, "mode": t.request.mode.value,
                "target_channel": t.channel_id, "outcome": outcome}  # fmt: skip

    def _milestone(self, name: str) -> None:
        if name not in self._times:
            self._times[name] = time.time()
            self._publish(Milestone(name))

    def _publish(self, change: CallChange) -> None:
        if not self._observers:
            return
        try:
            view = self.view()
            for observer in self._observers:
                observer(view, change)
        except Exception:
            # An operations reader must never take a call down with it.
            self.log.exception("call_observer_failed", change=repr(change))

    def start(self) -> None:
        if self.machine.state is CallState.ENDING:
            self.log.warning(
                "call_rejected",
                reason=self.machine.end_reason,
                fallback=self.machine.fallback.policy,
            )
        else:
            self.log.info(
                "call_started", bot_url=redact_url(self.machine.bot_url), dialect=self._dialect.name
            )
        self._publish(Milestone("started"))
        self._pump()

    def feed(self, event: AriEvent | MachineInput) -> None:
        self.machine.handle(event, self._loop.time())
        self._pump()

    # ---- command execution ----------------------------------------------------------------

    def _pump(self) -> None:
        finished: Finished | None = None
        while True:
            commands = self.machine.commands_to_send()
            if not commands:
                break
            for cmd in commands:
                if isinstance(cmd, Finished):
                    finished = cmd
                else:
                    self._execute(cmd)
        for change in self.machine.changes_to_report():
            if isinstance(change, Noted):
                (self.log.warning if change.warning else self.log.info)(
                    change.event, **change.fields
                )
                continue
            if isinstance(change, StateChanged) and change.new is CallState.ENDED:
                self._times["ended"] = time.time()
            self._publish(change)  # type: ignore[arg-type]
        self._arm_timer()
        if finished is not None:
            self._finish(finished)

    def _execute(self, cmd: Command) -> None:
        if isinstance(cmd, ConnectBot):
            self._connect_task = self._spawn(cmd, self._connect_bot(cmd))
        elif isinstance(cmd, ClearPlayout):
            self.leg.clear()  # releases the dropped session's marks (on_marks_played)
            self._from_bot.reset()
        elif isinstance(cmd, StartHold):
            self._spawn(cmd, self._hold.start(cmd.channel_id))
        elif isinstance(cmd, StopHold):
            self._spawn(cmd, self._hold.stop(cmd.channel_id))
        elif isinstance(cmd, SendDtmf):
            self._send_dtmf(cmd.digit)
        elif isinstance(cmd, DrainPlayout):
            self.leg.drain()
        elif isinstance(cmd, CloseBot):
            self._spawn(cmd, self._close_bot(cmd))
        elif isinstance(cmd, CloseMedia):
            self.leg.close(hangup=cmd.hangup)
            self.machine.handle(CommandDone(cmd), self._loop.time())
        elif isinstance(cmd, NotifyBot):
            self._notify_bot(cmd.message)
        elif self._rest is not None:
            self._execute_ari(cmd, self._rest)

    def _execute_ari(self, cmd: Command, rest: AriRestClient) -> None:
        if isinstance(cmd, Answer):
            self._spawn(cmd, rest.answer(cmd.channel_id))
        elif isinstance(cmd, OpenMedia):
            self._spawn(cmd, self._open_media())
        elif isinstance(cmd, CreateBridge):
            self._spawn(cmd, rest.create_bridge(cmd.bridge_id, cmd.name))
        elif isinstance(cmd, CreateExternalMedia):
            self._spawn(
                cmd,
                rest.create_external_media(
                    channel_id=cmd.channel_id, app=self._app, params=dict(cmd.params)
                ),
            )
        elif isinstance(cmd, StartMedia):
            self._start_media(cmd)
        elif isinstance(cmd, AddChannels):
            self._spawn(cmd, rest.add_channels(cmd.bridge_id, cmd.channel_ids))
        elif isinstance(cmd, HangupChannel):
            self._spawn(cmd, rest.hangup(cmd.channel_id, cmd.reason))
        elif isinstance(cmd, OriginateTarget):
            self._own(cmd.channel_id)
            self._spawn(cmd, rest.originate(
                endpoint=cmd.endpoint, app=self._app, app_args="transfer",
                channel_id=cmd.channel_id, caller_id=cmd.caller_id, ring_timeout=cmd.timeout,
                originator=cmd.originator))  # fmt: skip
        elif isinstance(cmd, SendDtmfToCaller):
            self.log.info("dtmf_to_caller", digits=cmd.digits)
            self._spawn(cmd, rest.send_dtmf(cmd.channel_id, cmd.digits))
        elif isinstance(cmd, CreateSnoop):
            self._own(cmd.snoop_id)
            self._spawn(cmd, rest.snoop(cmd.channel_id, snoop_id=cmd.snoop_id, spy=cmd.spy,
                                        app=self._app, app_args=f"snoop,{cmd.spy}"))  # fmt: skip
        elif isinstance(cmd, StartRecording):
            self._spawn(cmd, rest.record(cmd.target, cmd.target_id, cmd.name, cmd.fmt))
        elif isinstance(cmd, StopRecording):
            self._spawn(cmd, rest.stop_recording(cmd.name))
        elif isinstance(cmd, StartRingback):
            if cmd.mode == "moh":
                self._spawn(cmd, rest.bridge_moh(cmd.bridge_id, on=True))
            else:
                self._spawn(cmd, rest.play_bridge(cmd.bridge_id, "tone:ring", cmd.playback_id))
        elif isinstance(cmd, StopRingback):
            if cmd.mode == "moh":
                self._spawn(cmd, rest.bridge_moh(cmd.bridge_id, on=False))
            else:
                self._spawn(cmd, rest.stop_playback(cmd.playback_id))
        elif isinstance(cmd, DeleteBridge):
            self._spawn(cmd, rest.delete_bridge(cmd.bridge_id))
        elif isinstance(cmd, PlaySound):
            self.log.info("fallback_sound", media=cmd.media)
            self._spawn(cmd, rest.play(cmd.channel_id, cmd.media, cmd.playback_id))
        elif isinstance(cmd, ContinueInDialplan):
            self.log.info(
                "fallback_continue",
                context=cmd.context,
                extension=cmd.extension,
                priority=cmd.priority,
            )
            self._spawn(
                cmd,
                rest.continue_in_dialplan(cmd.channel_id, cmd.context, cmd.extension, cmd.priority),
            )

    def _spawn(self, cmd: Command, coro: Any) -> asyncio.Task[None]:
        task = self._loop.create_task(self._run(cmd, coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, cmd: Command, coro: Any) -> None:
        name = type(cmd).__name__
        try:
            value = await coro
        except AriHttpError as exc:
            level = "info" if exc.status == 404 and _is_teardown(cmd) else "warning"
            getattr(self.log, level)(
                "ari_request_failed", command=name, status=exc.status, error=exc.message
            )
            self.feed(CommandFailed(cmd, exc.message, exc.status))
        except (BridgeError, OSError, TimeoutError) as exc:
            self.log.warning("command_failed", command=name, error=str(exc))
            self.feed(CommandFailed(cmd, str(exc)))
        except Exception as exc:
            self.log.exception("command_crashed", command=name)
            self.feed(CommandFailed(cmd, repr(exc)))
        else:
            if isinstance(cmd, Answer) and cmd.channel_id == self.ids.caller_id:
                self._milestone("answered")
            self.feed(CommandDone(cmd, value))

    def _arm_timer(self) -> None:
        deadline = self.machine.next_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.machine.handle_timer(self._loop.time())
        self._pump()

    # ---- media --------------------------------------------------------------------------

    async def _open_media(self) -> Mapping[str, str]:
        params = await self.leg.open()
        self.log = self.log.bind(**self.leg.log_fields())
        self.log.info(
            "media_bound", transport=self.leg.transport, external_host=params.get("external_host")
        )
        return params

    def _start_media(self, cmd: StartMedia) -> None:
        try:
            self.leg.start(cmd.channel)
        except ValueError as exc:
            self.machine.handle(MediaFailed(str(exc)), self._loop.time())
            return
        self.log.info("media_started", **self.leg.describe())

    # MediaEvents, called by the leg
    def on_caller_audio(self, payload: bytes) -> None:
        if self._bot_up:
            assert self._bot is not None
            self._bot.send(self._dialect.encode_audio(self._to_bot.convert(payload)))
        elif self.machine.state is CallState.BOT_AWAY:
            self.caller_frames_dropped += 1

    def on_marks_played(self, names: list[str]) -> None:
        if self._controls:
            names = self._controls_due(names)
        if self._bot_up:
            assert self._bot is not None
            for name in names:
                message = self._dialect.encode_mark(name)
                if message is not None:
                    self._bot.send(message)
        elif names and self.machine.state is CallState.BOT_AWAY:
            self.bot_marks_dropped += len(names)
            self.log.info("bot_marks_dropped", marks=len(names), why="their session dropped")

    def on_caller_dtmf(self, digit: str) -> None:
        self.feed(MediaDtmf(digit))

    def on_playout_drained(self) -> None:
        self.feed(PlayoutDrained())

    def on_media_failed(self, reason: str) -> None:
        self.feed(MediaFailed(reason))

    def on_media_ended(self, reason: str) -> None:
        self.feed(MediaEnded(reason))

    # ---- bot ----------------------------------------------------------------------------

    async def _connect_bot(self, cmd: ConnectBot) -> None:
        """A new session, also for a re-dial (`cmd.resume`): the same call, told it resumes."""
        timeout = self._bot_connect_timeout
        bot = BotConnection(
            cmd.url,
            on_message=self._on_bot_message,
            on_closed=lambda code, reason: self._on_bot_closed(bot, code, reason),
            open_timeout=timeout if cmd.budget is None else min(timeout, cmd.budget),
            log=self.log,
            **self._bot_options,
        )
        if self._bot is not None:
            earlier = self._earlier_bots
            self._earlier_bots = (earlier[0] + self._bot.sent, earlier[1] + self._bot.dropped)
        self._bot = bot
        await bot.connect()
        info = self._info
        if cmd.resume:
            resumed = {"resumed": "true", "resume_count": str(cmd.resume)}
            info = dataclasses.replace(info, custom={**info.custom, **resumed})
        for message in self._dialect.opening_messages(info):
            bot.send(message)
        self._bot_up = True
        if cmd.resume:
            self.bot_reconnects += 1
            self.log.info("bot_reconnected", code=self._drop_code, resume_count=cmd.resume,
                          gap_ms=round((self._loop.time() - self._dropped_at) * 1000),
                          caller_frames_dropped=self.caller_frames_dropped)  # fmt: skip
        else:
            self.log.info("bot_connected")
        self.machine.handle(BotConnected(), self._loop.time())
        if cmd.resume:
            self._publish(Milestone("bot_reconnected"))
        self._milestone("bot_connected")

    async def _close_bot(self, cmd: CloseBot) -> None:
        self._bot_up = False
        connecting = self._connect_task
        if connecting is not None and not connecting.done():
            # Ending while the bot socket is still opening: abandon the attempt.
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            return
        bot = self._bot
        if bot is None:
            return
        final = self._dialect.closing_messages() if cmd.send_stop else []
        await bot.close(final, cmd.code)

    def _send_dtmf(self, digit: str) -> None:
        message = self._dialect.encode_dtmf(digit)
        if message is not None and self._bot is not None and self._bot.send(message):
            self.dtmf_sent += 1
            self.log.info("dtmf_forwarded", digit=digit)

    def _on_bot_message(self, message: str | bytes) -> None:
        try:
            event = self._dialect.decode(message)
        except BotProtocolError as exc:
            self.bot_bad_messages += 1
            if self.bot_bad_messages in (1, 10, 100, 1000):
                self.log.warning(
                    "bot_message_rejected", reason=str(exc), count=self.bot_bad_messages
                )
            return
        if isinstance(event, BotAudio):
            self.bot_audio_bytes += len(event.payload)
            self.leg.play(self._from_bot.convert(event.payload))
        elif isinstance(event, BotClear):
            self.leg.clear()
            self._from_bot.reset()
            self.log.info("bot_clear")
        elif isinstance(event, BotMark):
            self.leg.mark(event.name)
        elif isinstance(event, BotControl):
            self.log.info("bot_control", request=repr(event.request))
            self.request(event.request)
        elif isinstance(event, BotIgnored):
            self.log.debug("bot_message_ignored", reason=event.reason)

    def _on_bot_closed(self, bot: BotConnection, code: int | None, reason: str) -> None:
        if bot is not self._bot:
            return  # an earlier session's, already replaced
        self._bot_up = False
        self._dropped_at, self._drop_code = self._loop.time(), code
        self.log.info("bot_closed", code=code, reason=reason)
        self.feed(BotClosed(code, reason))

    # ---- the bot's control messages ------------------------------------------------------

    def request(self, request: BotRequest) -> None:
        """A control request (the bot's, or the API's): carried out once the audio queued
        before it has played (a barge-in's clear lets it through at once)."""
        self._control_seq += 1
        tag = f"{self._control_tag}{self._control_seq}"
        self._controls[tag] = request
        self.leg.mark(tag)

    def _controls_due(self, names: list[str]) -> list[str]:
        """Feed the machine the requests whose turn has come; the bot's own marks remain."""
        theirs = []
        for name in names:
            request = self._controls.pop(name, None)
            if request is None:
                theirs.append(name)
            elif self._rest is None:
                self._dialplan_request(request)
            else:
                self.feed(request)
        return theirs

    def _dialplan_request(self, request: BotRequest) -> None:
        """A call from the dialplan alone has no channel to ask ARI about: it can only
        hang up (with the dialplan's own cause)."""
        if isinstance(request, HangupWithCause):
            self.log.info("bot_hangup", cause=request.cause, why_normal="no ARI on this call")
            self.feed(HangupRequested("bot hung up", by=EndedBy.BOT, drain=True))
            return
        self.log.warning("bot_control_refused", request=repr(request),
                         why="a call from the dialplan alone has no ARI")  # fmt: skip
        if isinstance(request, TransferRequest):
            self._notify_bot(reply("transfer_failed", request.target, TransferCause.FAILED))

    def _notify_bot(self, message: Mapping[str, str]) -> None:
        if self._bot_up and self._bot is not None:
            self._bot.send(json.dumps(message, separators=(",", ":")))
            self.log.info("bot_notified", message=message.get("event"),
                          cause=message.get("cause"))  # fmt: skip

    def _recordings_logged(self) -> list[dict[str, str]] | str:
        """What the end line says of recordings: each file, or why there is none."""
        done = [r.as_dict() for r in getattr(self.machine, "recordings", ())]
        if done:
            return done
        plan = getattr(self.machine, "record_plan", None)
        if plan is None:
            return "none: a call from the dialplan alone cannot be recorded"
        if plan.mode.value == "none":
            return "none: --record none and the bot did not ask"
        return "none: the call ended before the bot was connected"

    def _own(self, channel_id: str) -> None:
        self.channels.add(channel_id)
        if self._on_channel is not None:
            self._on_channel(self, channel_id)

    # ---- end ----------------------------------------------------------------------------

    def _finish(self, finished: Finished) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._hold.close()
        self.leg.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        bot = self._bot
        self.log.info(
            "call_ended",
            reason=finished.reason,
            fallback=self.machine.fallback.policy if self.machine.used_fallback else None,
            duration_s=round(time.monotonic() - self.started_at, 3),
            bot_audio_bytes=self.bot_audio_bytes,
            bot_sent=bot.sent if bot else 0,
            bot_dropped=bot.dropped if bot else 0,
            bot_bad_messages=self.bot_bad_messages,
            dtmf=self.dtmf_sent,
            transfer=self._transfer_view(),
            recordings=self._recordings_logged(),
            **self.leg.stats(),
        )
        if not self.finished.done():
            self.finished.set_result(finished.reason)
        self._on_finished(self)


def _is_teardown(cmd: Command) -> bool:
    return isinstance(
        cmd, HangupChannel | DeleteBridge | CloseBot | CloseMedia | StopHold | StopRecording
        | StopRingback,
    )  # fmt: skip
