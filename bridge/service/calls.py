"""The call factory: turns a caller (an ARI StasisStart, or a connection to a media listener
from the dialplan alone) into a running `Call`, registered, with its bot, dialect, transport
and media leg chosen.

Which bot and dialect: `bridge.bot.url` (the --bot-url template or a Stasis ws:// argument,
`dialect=`/`transport=` arguments). A dialplan WebSocket call can only name its bot
(`v(bot=NAME)`, looked up in --bot-map). A call that cannot be taken (full, draining, a typo
in its arguments) is still built, rejected: its machine hands the caller to the fallback.
An outbound call (`bridge.service.outbound`) is an ARI call built when its originate is
accepted, ringing until its channel's StasisStart; an expected dialplan call takes the caller,
called, bot and parameters registered for its UUID.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from ari.models import Channel
from ari.rest import AriRestClient
from bridge.bot.control import RecordMode
from bridge.bot.dialects import create_dialect
from bridge.bot.dialects.base import BotDialect, CallInfo
from bridge.bot.url import bot_template, option_from_args, resolve_bot
from bridge.call.machine import CallIds, Fallback
from bridge.call.reconnect import ReconnectPolicy
from bridge.call.recorder import RecordPlan, render_record_name
from bridge.call.runner import Call, CallObserver
from bridge.call.transfer import TransferPolicy
from bridge.call.view import Direction
from bridge.errors import ConfigError
from bridge.logs import get_logger
from bridge.media.factory import TRANSPORTS, MediaFactory
from bridge.media.leg import MediaLeg
from bridge.service.config import Settings
from bridge.service.outbound import ExpectedCall, OutboundLeg
from bridge.service.registry import CallRegistry

log = get_logger("bridge")

# Why a new call cannot be taken now ("" if it can); None: no transport resource needed.
Admission = Callable[[str | None], str]


class CallFactory:
    def __init__(
        self,
        settings: Settings,
        *,
        rest: AriRestClient,
        media: MediaFactory,
        registry: CallRegistry,
        admission: Admission,
        observers: Sequence[CallObserver],
        on_finished: Callable[[Call], None],
    ) -> None:
        self._settings = s = settings
        self._rest = rest
        self._media = media
        self._registry = registry
        self._admission = admission
        self._observers = tuple(observers)
        self._on_finished = on_finished
        self._fallback = Fallback(
            s.fallback, s.fallback_context, s.fallback_extension, s.fallback_priority,
            s.fallback_sound,
        )  # fmt: skip
        # What the bot is told the call's rate is (exotel follows it): the format's.
        self._rate = 16000 if s.format == "slin16" else 8000
        self._transfer = TransferPolicy(
            s.transfer_allow, s.transfer_ringback, s.transfer_attended_ringback
        )

    @property
    def fallback(self) -> Fallback:
        return self._fallback

    # ---- ARI callers ----------------------------------------------------------------------

    def ari_call(
        self,
        caller: Channel,
        args: Sequence[str],
        reject: str = "",
        *,
        outbound: OutboundLeg | None = None,
    ) -> Call:
        """`outbound`: an originated channel, still ringing (admitted by its originate)."""
        s = self._settings
        transport = option_from_args(args, "transport") or s.transport
        reject = reject or ("" if outbound else self._admission(transport))
        call_id = outbound.call_id if outbound else uuid.uuid4().hex
        number, called = (outbound.caller, outbound.called) if outbound else (
            caller.caller_number, caller.exten)  # fmt: skip
        ids = CallIds(
            call_id=call_id,
            caller_id=caller.id,
            bridge_id=f"{s.id_prefix}br-{call_id}",
            media_channel_id=f"{s.id_prefix}em-{call_id}",
            bridge_name=f"{s.app}:{caller.id}",
            id_prefix=s.id_prefix,
        )
        values = {
            "call_id": call_id,
            "channel_id": caller.id,
            "caller": number,
            "called": called,
        }
        template, unknown_bot = bot_template(s.bot_url, args, s.bot_map)
        reject = reject or unknown_bot
        bot_url, dialect_name = resolve_bot(template or s.bot_url, s.dialect, args, values)
        info = CallInfo(call_id, caller.id, number, called, outbound.custom if outbound else {})
        call_log = log.bind(call_id=call_id, channel_id=caller.id)
        dialect, reject = self._dialect_for(dialect_name, info, call_log, reject)
        if transport not in TRANSPORTS:
            call_log.error("bad_transport", transport=transport)
            transport = s.transport  # for the leg object only: the call is rejected
        media = self._media
        call = self._call(
            ids=ids,
            caller=caller,
            bot_url=bot_url,
            rest=self._rest,
            leg_factory=lambda c: media.leg(transport, c, call_log),
            dialect=dialect,
            info=info,
            log=call_log,
            reject=reject,
            transport=transport,
            webhook_url=_webhook_arg(args, call_log),
            direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
            ring_timeout=outbound.ring_timeout if outbound else None,
            transfer=self._transfer,
            record=self._record_plan(args, call_id, caller.id, call_log),
            on_channel=self._registry.bind,
        )
        self._registry.add(call, transport, rejected=bool(reject))
        call.start()
        return call

    # ---- calls from the dialplan alone (no ARI) -------------------------------------------

    def dialplan_audiosocket_call(
        self, uuid_: Any, leg: MediaLeg, expected: ExpectedCall | None = None
    ) -> Call | None:
        # AudioSocket carries nothing but the UUID: no caller number, no extension (unless
        # the call was expected: then what was registered for that UUID).
        params = {"audiosocket_uuid": str(uuid_)}
        return self._dialplan_call(leg, "audiosocket", channel_id="",
                                   **_expected(expected, {}, params))  # fmt: skip

    def dialplan_websocket_call(
        self, leg: Any, params: dict[str, str], media_start: Any,
        expected: ExpectedCall | None = None,
    ) -> Call | None:  # fmt: skip
        values = {"caller": params.get("from", ""), "called": params.get("to", "")}
        return self._dialplan_call(leg, "websocket", channel_id=leg.channel_id or "",
                                   **_expected(expected, values, params))  # fmt: skip

    def _dialplan_call(
        self,
        leg: MediaLeg,
        transport: str,
        *,
        channel_id: str,
        values: dict[str, str],
        params: dict[str, str],
        bot_url: str = "",
    ) -> Call | None:
        """The new call, or None when it was refused (its start ended it): the listener then
        closes the connection without a hang-up, so the dialplan goes on."""
        s = self._settings
        call_id = uuid.uuid4().hex
        call_log = log.bind(call_id=call_id, channel_id=channel_id or None, transport=transport)
        caller, called = values.get("caller", ""), values.get("called", "")
        bot_name = params.get("bot")
        template = bot_url or (dict(s.bot_map).get(bot_name, "") if bot_name else s.bot_url)
        reject = "" if template else f"unknown bot {bot_name!r} (not in --bot-map)"
        # Asterisk brought the media itself: no transport resource to run out of here.
        reject = reject or self._admission(None)
        url_values = {"call_id": call_id, "channel_id": channel_id, "caller": caller,
                      "called": called}  # fmt: skip
        bot_url, dialect_name = resolve_bot(
            template or s.bot_url,
            s.dialect,
            [f"dialect={params['dialect']}"] if params.get("dialect") else [],
            url_values,
        )
        custom = {k: v for k, v in params.items() if k not in ("bot", "dialect")}
        info = CallInfo(call_id, channel_id, caller, called, custom)
        dialect, reject = self._dialect_for(dialect_name, info, call_log, reject)
        ids = CallIds(call_id=call_id, caller_id="", bridge_id="", media_channel_id="")
        call = self._call(ids=ids, caller=None, bot_url=bot_url, rest=None,
                          leg_factory=lambda _c: leg, dialect=dialect, info=info,
                          log=call_log, reject=reject, transport=transport)  # fmt: skip
        self._registry.add(call, transport, rejected=bool(reject))
        call.start()
        # A refused call is over already; the leg it never bound must not be served.
        return None if call.finished.done() else call

    # ---- shared ---------------------------------------------------------------------------

    def _dialect_for(
        self, name: str, info: CallInfo, call_log: Any, reject: str
    ) -> tuple[BotDialect, str]:
        try:
            return create_dialect(name, info, self._rate), reject
        except ConfigError as exc:
            # A typo in the dialplan's arguments: speaking the wrong dialect would give the
            # caller silence, so the caller goes to the fallback, loudly.
            call_log.error("bad_dialect", error=str(exc))
            dialect = create_dialect(self._settings.dialect, info, self._rate)
            return dialect, reject or f"unknown dialect {name!r}"

    def _record_plan(
        self, args: Sequence[str], call_id: str, channel_id: str, call_log: Any
    ) -> RecordPlan:
        """--record, or the call's own Stasis argument record=none|mixed|tracks."""
        s = self._settings
        mode = option_from_args(args, "record") or s.record
        if mode not in tuple(RecordMode):
            call_log.warning("bad_record_argument", record=mode, using=s.record)
            mode = s.record
        name = render_record_name(s.record_name, call_id=call_id, channel_id=channel_id,
                                  at=time.time())  # fmt: skip
        return RecordPlan(name, RecordMode(mode), s.record_format,
                          keep_on_transfer=s.record_on_transfer == "keep")  # fmt: skip

    def _call(self, **kwargs: Any) -> Call:
        s = self._settings
        return Call(
            app=s.app,
            bot_connect_timeout=s.bot_connect_timeout,
            setup_timeout=s.setup_timeout,
            on_finished=self._on_finished,
            fallback=self._fallback,
            bot_options={
                "stall_timeout": s.bot_stall_timeout,
                "ca_file": s.bot_ca_file,
                "headers": s.bot_headers,
            },
            observers=self._observers,
            reconnect=ReconnectPolicy(
                s.bot_reconnect_window, s.bot_reconnect_max, s.bot_reconnect_hold
            ),
            **kwargs,
        )


def _expected(
    expected: ExpectedCall | None, values: dict[str, str], params: dict[str, str]
) -> dict[str, Any]:
    """A dialplan call's caller, called, parameters and bot: what its connection said, or
    for an expected call what was registered for its UUID on top."""
    if expected is None:
        return {"values": values, "params": params}
    values = {"caller": expected.caller or values.get("caller", ""),
              "called": expected.called or values.get("called", "")}  # fmt: skip
    params = {**params, **expected.params}
    if expected.bot:
        params["bot"] = expected.bot
    return {"values": values, "params": params, "bot_url": expected.bot_url}


def _webhook_arg(args: Sequence[str], call_log: Any) -> str:
    """A Stasis argument `webhook_url=https://...`: this call's own lifecycle receiver."""
    url = option_from_args(args, "webhook_url") or ""
    if url and urlsplit(url).scheme not in ("http", "https"):
        call_log.warning("bad_webhook_url", webhook_url=url)
        return ""
    return url
