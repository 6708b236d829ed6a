"""Call control for a Pipecat bot behind the bridge: transfer, hang-up cause, DTMF out, recording.

The bridge reads JSON text messages from the bot in every dialect. A Pipecat bot sends them as
`OutputTransportMessageFrame`s, which Pipecat's Twilio, Exotel and Vonage serializers write as
`json.dumps(message)`, after the audio queued before them. A bot author:

    from bridge import botkit

    # In a FrameProcessor, after pushing the audio to say first:
    await self.push_frame(botkit.transfer_frame("PJSIP/1001", mode="attended"))
    await self.push_frame(botkit.hangup_frame("busy"))  # plays out what is queued, hangs up
    await self.push_frame(botkit.dtmf_frame("123#"))

    # LLM tools: the target is the author's, never the model's.
    tools = ToolsSchema(botkit.register_call_control(llm, transfer_target="PJSIP/1001"))

    # The bridge's replies (transfer_ringing/answered/failed) as InputTransportMessageFrames:
    serializer = botkit.with_bridge_replies(TwilioFrameSerializer(stream_sid, ...))

This module imports only the standard library, so a bot can vendor it (one file) without the
service's dependencies; Pipecat is imported inside the functions that build Pipecat objects,
and the message builders work without it.

    bot -> bridge   transfer(), hangup(), dtmf(), record(): validated dicts;
                    *_frame(): the same as frames (urgent=True: sent before the queued audio)
    bridge -> bot   parse_reply(), is_bridge_reply(), with_bridge_replies(serializer)
    LLM tools       transfer_to_human_schema(), end_call_schema(), their *_handler()s,
                    register_call_control(llm, ...)
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
    from pipecat.frames.frames import (
        Frame,
        OutputTransportMessageFrame,
        OutputTransportMessageUrgentFrame,
    )
    from pipecat.serializers.base_serializer import FrameSerializer
    from pipecat.services.llm_service import FunctionCallParams, LLMService

    ControlFrame: TypeAlias = OutputTransportMessageFrame | OutputTransportMessageUrgentFrame
    FunctionCallHandler: TypeAlias = Callable[[FunctionCallParams], Awaitable[None]]

ControlMessage: TypeAlias = dict[str, str | int]

# The vocabularies the bridge accepts.
TRANSFER_MODES = ("blind", "attended")
# ARI's hang-up reasons (DELETE /channels/{id}?reason=...).
HANGUP_CAUSES = (
    "normal",
    "busy",
    "congestion",
    "no_answer",
    "timeout",
    "rejected",
    "unallocated",
    "normal_unspecified",
    "number_incomplete",
    "codec_mismatch",
    "interworking",
    "failure",
    "answered_elsewhere",
)
Q850_CAUSES = range(1, 128)  # or a Q.850 cause code, as an int
DTMF_DIGITS = "0123456789ABCD*#"
MAX_DTMF_DIGITS = 32
TRANSFER_TIMEOUTS = range(1, 301)  # seconds; the bridge rings 20 s when none is given
RECORD_ACTIONS = ("start", "stop")
RECORD_MODES = ("mixed", "tracks")
MAX_TARGET = 256
MAX_CALLER_ID = 128

# Bridge -> bot.
REPLY_EVENTS = ("transfer_ringing", "transfer_answered", "transfer_failed")
TRANSFER_FAILURE_CAUSES = ("busy", "no_answer", "congestion", "unavailable", "failed")
# Replies are a few dozen bytes; anything much larger is not one and is not parsed.
MAX_REPLY = 4096

# The bridge's own patterns (bridge.bot.control; this module may not import it).
# Tech/resource is dialled: PJSIP/1001, Local/206@caller, PJSIP/5551234@trunk.
_DIAL_TARGET = re.compile(r"[A-Za-z][A-Za-z0-9_-]*/[^\s,()&|]+")
# exten@context continues the caller in the dialplan there: 206@caller.
_DIALPLAN_TARGET = re.compile(r"[^\s@/,()&|]+@[A-Za-z0-9_.-]+")
# Dial strings chain endpoints with & (| of old) and take options after a comma or in
# parentheses: one endpoint only.
_CHAINING = frozenset("&,()|")


# Bot -> bridge: the messages


def transfer(
    target: str,
    *,
    mode: str = "blind",
    caller_id: str | None = None,
    timeout: int | None = None,
) -> ControlMessage:
    """Ask the bridge to hand the caller over to `target` (`Tech/resource` or `exten@context`).

    blind: the bridge connects the caller to the target and the bot is done; attended: it
    rings the target first and tells the bot (transfer_ringing/answered/failed). An
    `exten@context` target can only go blind: the caller continues in the dialplan there."""
    _check_target(target, mode)
    message: ControlMessage = {"event": "transfer", "target": target, "mode": mode}
    if caller_id is not None:
        _check_caller_id(caller_id)
        message["caller_id"] = caller_id
    if timeout is not None:
        if not _is_int(timeout) or timeout not in TRANSFER_TIMEOUTS:
            raise ValueError(f"transfer timeout must be whole seconds, 1 to 300, not {timeout!r}")
        message["timeout"] = timeout
    return message


def hangup(cause: str | int = "normal") -> ControlMessage:
    """Ask the bridge to play out what is queued, then hang up with `cause`: one of
    HANGUP_CAUSES, or a Q.850 code 1..127 as an int."""
    if _is_int(cause):
        if cause not in Q850_CAUSES:
            raise ValueError(f"a Q.850 hang-up cause is 1 to 127, not {cause}")
    elif cause not in HANGUP_CAUSES:
        raise ValueError(f"unknown hang-up cause {cause!r}; one of {', '.join(HANGUP_CAUSES)}")
    return {"event": "hangup", "cause": cause}


def dtmf(digits: str) -> ControlMessage:
    """Ask the bridge to send `digits` (0-9 A-D * #, 1 to 32) to the caller's far end,
    after the audio queued before."""
    if not isinstance(digits, str) or not 1 <= len(digits) <= MAX_DTMF_DIGITS:
        raise ValueError(f"DTMF digits must be a string of 1 to 32 digits, not {digits!r}")
    bad = sorted(set(digits) - set(DTMF_DIGITS))
    if bad:
        raise ValueError(f"not DTMF digits (0-9 A-D * #): {''.join(bad)!r} in {digits!r}")
    return {"event": "dtmf", "digits": digits}


def record(action: str, *, mode: str | None = None) -> ControlMessage:
    """Ask the bridge to start or stop recording the call; `mode` mixed (one file) or
    tracks (one per side), else the bridge's default."""
    if action not in RECORD_ACTIONS:
        raise ValueError(f"record action must be start or stop, not {action!r}")
    message: ControlMessage = {"event": "record", "action": action}
    if mode is not None:
        if mode not in RECORD_MODES:
            raise ValueError(f"record mode must be mixed or tracks, not {mode!r}")
        message["mode"] = mode
    return message


def _is_int(value: object) -> bool:
    # True and False are ints to Python but not to the bridge's JSON reader.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_target(target: str, mode: str) -> None:
    if mode not in TRANSFER_MODES:
        raise ValueError(f"transfer mode must be blind or attended, not {mode!r}")
    if not isinstance(target, str) or not 0 < len(target) <= MAX_TARGET:
        raise ValueError(f"transfer target must be a string of 1 to 256 characters: {target!r}")
    if not target.isprintable():
        raise ValueError(f"transfer target must be printable: {target!r}")
    if _CHAINING & set(target):
        raise ValueError(f"transfer target must be one endpoint, without & , ( ) |: {target!r}")
    if _DIAL_TARGET.fullmatch(target):
        return
    if not _DIALPLAN_TARGET.fullmatch(target):
        raise ValueError(
            f"transfer target {target!r} is neither Tech/resource (PJSIP/1001) "
            "nor exten@context (206@caller)"
        )
    if mode != "blind":
        raise ValueError(
            f"an exten@context target ({target!r}) can only be transferred blind; "
            "an attended transfer needs a Tech/resource to dial"
        )


def _check_caller_id(caller_id: str) -> None:
    if not isinstance(caller_id, str) or not 0 < len(caller_id) <= MAX_CALLER_ID:
        raise ValueError(f"caller_id must be a string of 1 to 128 characters: {caller_id!r}")
    if not caller_id.isprintable():
        raise ValueError(f"caller_id must be printable: {caller_id!r}")


# Bot -> bridge: the frames


def control_frame(message: Mapping[str, Any], *, urgent: bool = False) -> ControlFrame:
    """`message` as the frame Pipecat's serializers send verbatim as JSON text.

    Not urgent (the default): an OutputTransportMessageFrame, which the output transport
    sends after the audio queued before it, so the caller hears the bot out first. Urgent:
    an OutputTransportMessageUrgentFrame, sent at once, ahead of (skipping) the queued audio;
    for a hang-up cause that must not wait, say."""
    from pipecat.frames.frames import (
        OutputTransportMessageFrame,
        OutputTransportMessageUrgentFrame,
    )

    if urgent:
        return OutputTransportMessageUrgentFrame(message=dict(message))
    return OutputTransportMessageFrame(message=dict(message))


def transfer_frame(
    target: str,
    *,
    mode: str = "blind",
    caller_id: str | None = None,
    timeout: int | None = None,
    urgent: bool = False,
) -> ControlFrame:
    """transfer() as a frame to push downstream; see control_frame() for `urgent`."""
    message = transfer(target, mode=mode, caller_id=caller_id, timeout=timeout)
    return control_frame(message, urgent=urgent)


def hangup_frame(cause: str | int = "normal", *, urgent: bool = False) -> ControlFrame:
    """hangup() as a frame to push downstream; see control_frame() for `urgent`."""
    return control_frame(hangup(cause), urgent=urgent)


def dtmf_frame(digits: str, *, urgent: bool = False) -> ControlFrame:
    """dtmf() as a frame to push downstream; see control_frame() for `urgent`."""
    return control_frame(dtmf(digits), urgent=urgent)


def record_frame(action: str, *, mode: str | None = None, urgent: bool = False) -> ControlFrame:
    """record() as a frame to push downstream; see control_frame() for `urgent`."""
    return control_frame(record(action, mode=mode), urgent=urgent)


# Bridge -> bot


def is_bridge_reply(message: object) -> bool:
    """Whether a decoded message (e.g. an InputTransportMessageFrame's) is the bridge's reply
    to a transfer: {"event": "transfer_ringing" | "transfer_answered" | "transfer_failed",
    "target": ..., "cause": ... (failed only)}."""
    return isinstance(message, Mapping) and message.get("event") in REPLY_EVENTS


def parse_reply(data: str | bytes) -> dict[str, Any] | None:
    """The bridge's reply this WebSocket message is, or None for anything else (media,
    DTMF, binary audio, other events, malformed JSON)."""
    if not isinstance(data, str) or len(data) > MAX_REPLY:
        return None
    # Nearly every text message is the caller's media, one per 20 ms: a substring test
    # spares them a second JSON parse (a base64 payload cannot hold an event name).
    if not any(event in data for event in REPLY_EVENTS):
        return None
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return message if is_bridge_reply(message) else None


def with_bridge_replies(serializer: FrameSerializer) -> FrameSerializer:
    """`serializer` (Pipecat's Twilio, Exotel or Vonage one, or any other) that also turns
    the bridge's replies into InputTransportMessageFrame(message=reply).

    Pipecat's serializers return None for events they do not know, so without this a bot
    never sees the replies. Everything else (serialize, setup, media, DTMF, other
    messages) is the wrapped serializer's, unchanged. The input transport broadcasts the
    frame, so a processor after it receives it going downstream."""
    return _reply_serializer_class()(serializer)


@functools.cache
def _reply_serializer_class() -> Callable[[FrameSerializer], FrameSerializer]:
    """Built on first use, once, so that importing this module does not import Pipecat."""
    from pipecat.frames.frames import InputTransportMessageFrame
    from pipecat.processors.frame_processor import FrameProcessorSetup
    from pipecat.serializers.base_serializer import FrameSerializer

    class BridgeReplySerializer(FrameSerializer):
        """A serializer that sees the bridge's replies first; see with_bridge_replies()."""

        def __init__(self, inner: FrameSerializer) -> None:
            super().__init__()
            self.inner = inner

        def should_ignore_frame(self, frame: Frame) -> bool:
            return self.inner.should_ignore_frame(frame)

        # FrameSerializer.setup() narrows BaseObject.setup() the same way.
        async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
            await self.inner.setup(setup)

        async def serialize(self, frame: Frame) -> str | bytes | None:
            return await self.inner.serialize(frame)

        async def deserialize(self, data: str | bytes) -> Frame | None:
            reply = parse_reply(data)
            if reply is not None:
                return InputTransportMessageFrame(message=reply)
            return await self.inner.deserialize(data)

        async def cleanup(self) -> None:
            await self.inner.cleanup()
            await super().cleanup()

    return BridgeReplySerializer


# LLM tools

TRANSFER_TOOL = "transfer_to_human"
END_CALL_TOOL = "end_call"
MAX_REASON = 500  # characters of the model's reason kept for the log and the result


def transfer_to_human_schema() -> FunctionSchema:
    """The transfer_to_human tool: no target argument (see transfer_to_human_handler())."""
    from pipecat.adapters.llm.schemas.function_schema import FunctionSchema

    return FunctionSchema(
        name=TRANSFER_TOOL,
        description=(
            "Transfer the caller to a human agent, when they ask for a person or you cannot "
            "help them. Tell the caller you are putting them through before calling this."
        ),
        properties={
            "reason": {
                "type": "string",
                "description": "Why the caller needs a person, in a few words.",
            }
        },
        required=[],
    )


def end_call_schema() -> FunctionSchema:
    """The end_call tool, with an optional cause from HANGUP_CAUSES (default normal)."""
    from pipecat.adapters.llm.schemas.function_schema import FunctionSchema

    return FunctionSchema(
        name=END_CALL_TOOL,
        description=(
            "End the call, once the conversation is over and you have said goodbye. "
            "Whatever you said before calling this is played to the caller first."
        ),
        properties={
            "cause": {
                "type": "string",
                "enum": list(HANGUP_CAUSES),
                "description": "Why the call ends; normal unless there is a reason.",
            }
        },
        required=[],
    )


def transfer_to_human_handler(
    target: str,
    *,
    mode: str = "blind",
    caller_id: str | None = None,
    timeout: int | None = None,
) -> FunctionCallHandler:
    """A handler for transfer_to_human that asks the bridge to transfer to `target`.

    The target is the bot author's, fixed here, never an argument the model fills in: a
    model talked into dialling a number of the caller's choosing is toll fraud. The model's
    `reason` is logged and returned to it, and not sent to the bridge. Checked now, so a
    bad target fails when the bot starts, not in a call.

    The model is not run again: the bridge rings the target now. If the bridge replies
    transfer_failed (with_bridge_replies() shows it), tell the model, e.g. by pushing
    LLMMessagesAppendFrame([...], run_llm=True), so that it speaks to the caller again."""
    transfer(target, mode=mode, caller_id=caller_id, timeout=timeout)

    async def handle(params: FunctionCallParams) -> None:
        reason = _reason(params.arguments)
        _log(f"{TRANSFER_TOOL}: transferring to {target} ({mode}); reason: {reason!r}")
        # Downstream, behind the bot's speech: the TTS and then the output transport queue
        # it after the audio already on its way, so the caller hears the bot out first.
        frame = transfer_frame(target, mode=mode, caller_id=caller_id, timeout=timeout)
        await params.llm.push_frame(frame)
        await _result(params, {"status": "transferring", "reason": reason}, run_llm=False)

    return handle


def end_call_handler() -> FunctionCallHandler:
    """A handler for end_call that asks the bridge to hang up after the bot's speech."""

    async def handle(params: FunctionCallParams) -> None:
        cause = params.arguments.get("cause") or "normal"
        if not isinstance(cause, str) or cause not in HANGUP_CAUSES:
            # Nothing irreversible on a bad argument: the model is told and may call again.
            error = f"unknown cause {cause!r}; use one of: {', '.join(HANGUP_CAUSES)}"
            await _result(params, {"error": error}, run_llm=True)
            return
        _log(f"{END_CALL_TOOL}: hanging up, cause {cause}")
        await params.llm.push_frame(hangup_frame(cause))
        await _result(params, {"status": "ending", "cause": cause}, run_llm=False)

    return handle


def register_call_control(
    llm: LLMService[Any],
    *,
    transfer_target: str | None = None,
    transfer_mode: str = "blind",
    caller_id: str | None = None,
    timeout: int | None = None,
    end_call: bool = True,
) -> list[FunctionSchema]:
    """Register the end_call and (with a `transfer_target`) transfer_to_human handlers on
    `llm`; returns their schemas, to advertise in the context's ToolsSchema."""
    schemas = []
    if transfer_target is not None:
        handler = transfer_to_human_handler(
            transfer_target, mode=transfer_mode, caller_id=caller_id, timeout=timeout
        )
        llm.register_function(TRANSFER_TOOL, handler)
        schemas.append(transfer_to_human_schema())
    if end_call:
        llm.register_function(END_CALL_TOOL, end_call_handler())
        schemas.append(end_call_schema())
    return schemas


def _reason(arguments: Mapping[str, Any]) -> str:
    reason = arguments.get("reason")
    return reason[:MAX_REASON] if isinstance(reason, str) else ""


async def _result(params: FunctionCallParams, result: dict[str, Any], *, run_llm: bool) -> None:
    from pipecat.frames.frames import FunctionCallResultProperties

    await params.result_callback(result, properties=FunctionCallResultProperties(run_llm=run_llm))


def _log(line: str) -> None:
    # Pipecat logs through loguru: the bot author reads these lines beside Pipecat's own.
    from loguru import logger

    logger.info(line)
