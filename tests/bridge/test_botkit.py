"""bridge.botkit: the control messages, what Pipecat's own serializers make of their frames,
the reply wrapper, and the LLM tools run by a real Pipecat LLM service in a real pipeline."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    DataFrame,
    EndFrame,
    Frame,
    FunctionCallFromLLM,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InputTransportMessageFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import (
    FrameDirection,
    FrameProcessor,
    FrameProcessorSetup,
)
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.serializers.exotel import ExotelFrameSerializer
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.serializers.vonage import VonageFrameSerializer
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.utils.asyncio.task_manager import TaskManager
from pipecat.workers.runner import WorkerRunner

from bridge import botkit
from bridge.bot import control
from bridge.errors import BotProtocolError

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0
STREAM_SID = "MZ" + "0" * 32
CALL_SID = "CA" + "1" * 32

# Builders: exactly the documented messages


def test_transfer_defaults_to_blind_and_leaves_the_rest_to_the_bridge() -> None:
    assert botkit.transfer("PJSIP/1001") == {
        "event": "transfer",
        "target": "PJSIP/1001",
        "mode": "blind",
    }


def test_transfer_with_every_field_in_the_documented_order() -> None:
    message = botkit.transfer("PJSIP/1001", mode="attended", caller_id='"Sales" <6001>', timeout=30)
    assert json.dumps(message) == (
        '{"event": "transfer", "target": "PJSIP/1001", "mode": "attended", '
        '"caller_id": "\\"Sales\\" <6001>", "timeout": 30}'
    )


@pytest.mark.parametrize(
    ("target", "mode"),
    [
        ("PJSIP/1001", "blind"),
        ("PJSIP/1001", "attended"),
        ("Local/206@caller", "attended"),
        ("PJSIP/5551234@trunk", "blind"),
        ("SIP/trunk/5551234", "attended"),
        ("206@caller", "blind"),
        ("s@from-bot", "blind"),
        ("*98@voicemail_menu", "blind"),
        ("200@from.internal", "blind"),
    ],
)
def test_transfer_takes_dialled_and_dialplan_targets(target: str, mode: str) -> None:
    assert botkit.transfer(target, mode=mode)["target"] == target


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"target": ""}, "1 to 256 characters"),
        ({"target": "P/" + "1" * 255}, "1 to 256 characters"),
        ({"target": 1001}, "1 to 256 characters"),
        ({"target": "1001"}, "neither Tech/resource"),
        ({"target": "PJSIP/"}, "neither Tech/resource"),
        ({"target": "/1001"}, "neither Tech/resource"),
        ({"target": "PJSIP/10 01"}, "neither Tech/resource"),
        ({"target": "PJSIP/1001\n"}, "must be printable"),
        ({"target": "PJSIP/10\x0001"}, "must be printable"),
        ({"target": "206@"}, "neither Tech/resource"),
        ({"target": "@caller"}, "neither Tech/resource"),
        ({"target": "206@call er"}, "neither Tech/resource"),
        ({"target": "PJSIP/1001&PJSIP/900441"}, "one endpoint"),
        ({"target": "PJSIP/1001,30,L(1)"}, "one endpoint"),
        ({"target": "PJSIP/1001|PJSIP/1002"}, "one endpoint"),
        ({"target": "Local/(206)@caller"}, "one endpoint"),
        ({"target": "206@caller", "mode": "attended"}, "only be transferred blind"),
        ({"mode": "warm"}, "blind or attended"),
        ({"caller_id": ""}, "caller_id must be a string of 1 to 128"),
        ({"caller_id": "x" * 129}, "caller_id must be a string of 1 to 128"),
        ({"caller_id": "Sales\r\nX-Evil: 1"}, "caller_id must be printable"),
        ({"timeout": 0}, "1 to 300"),
        ({"timeout": 301}, "1 to 300"),
        ({"timeout": 2.5}, "1 to 300"),
        ({"timeout": "20"}, "1 to 300"),
        ({"timeout": True}, "1 to 300"),
    ],
)
def test_transfer_refuses_what_the_bridge_would(kwargs: dict[str, Any], error: str) -> None:
    args = {"target": "PJSIP/1001"} | kwargs
    target = args.pop("target")
    with pytest.raises(ValueError, match=error):
        botkit.transfer(target, **args)


def test_hangup_defaults_to_normal() -> None:
    assert botkit.hangup() == {"event": "hangup", "cause": "normal"}


@given(st.sampled_from(botkit.HANGUP_CAUSES) | st.integers(1, 127))
def test_hangup_takes_aris_reasons_and_q850_codes(cause: str | int) -> None:
    assert botkit.hangup(cause) == {"event": "hangup", "cause": cause}


@given(
    st.text(max_size=20).filter(lambda s: s not in botkit.HANGUP_CAUSES)
    | st.integers().filter(lambda n: not 1 <= n <= 127)
    | st.booleans()
    | st.floats()
    | st.none()
)
def test_hangup_refuses_any_other_cause(cause: Any) -> None:
    with pytest.raises(ValueError, match="cause"):
        botkit.hangup(cause)


@given(st.text(alphabet=botkit.DTMF_DIGITS, min_size=1, max_size=32))
def test_dtmf_takes_1_to_32_digits(digits: str) -> None:
    assert botkit.dtmf(digits) == {"event": "dtmf", "digits": digits}


@given(st.text(min_size=1, max_size=32).filter(lambda s: not set(s) <= set(botkit.DTMF_DIGITS)))
def test_dtmf_refuses_anything_but_the_keypad(digits: str) -> None:
    with pytest.raises(ValueError, match="not DTMF digits"):
        botkit.dtmf(digits)


@pytest.mark.parametrize("digits", ["", "1" * 33, None, 5, b"12"])
def test_dtmf_refuses_empty_long_and_non_strings(digits: Any) -> None:
    with pytest.raises(ValueError, match="1 to 32 digits"):
        botkit.dtmf(digits)


def test_record_start_and_stop() -> None:
    assert botkit.record("start") == {"event": "record", "action": "start"}
    assert botkit.record("start", mode="tracks") == {
        "event": "record",
        "action": "start",
        "mode": "tracks",
    }
    assert botkit.record("stop", mode="mixed") == {
        "event": "record",
        "action": "stop",
        "mode": "mixed",
    }


def test_record_refuses_unknown_actions_and_modes() -> None:
    with pytest.raises(ValueError, match="start or stop, not 'pause'"):
        botkit.record("pause")
    with pytest.raises(ValueError, match="mixed or tracks, not 'stereo'"):
        botkit.record("start", mode="stereo")


# In step with the bridge's own parser


def bridge_takes(message: Mapping[str, Any]) -> bool:
    try:
        control.parse_control(message)
    except BotProtocolError:
        return False
    return control.is_control(message)


def botkit_takes(build: Callable[[], Any]) -> bool:
    try:
        build()
    except ValueError:
        return False
    return True


def test_the_vocabularies_are_the_bridges() -> None:
    assert tuple(control.HANGUP_CAUSES) == botkit.HANGUP_CAUSES
    assert tuple(control.TransferMode) == botkit.TRANSFER_MODES
    assert tuple(control.TransferCause) == botkit.TRANSFER_FAILURE_CAUSES
    assert (botkit.MAX_TARGET, botkit.TRANSFER_TIMEOUTS.stop - 1) == (
        control.MAX_TARGET,
        control.MAX_TRANSFER_TIMEOUT,
    )


TECH = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,6}", fullmatch=True) | st.text(max_size=4)
PART = st.from_regex(r"[0-9A-Za-z*#+_.-]{1,8}", fullmatch=True) | st.text(max_size=8)
TARGETS = (
    st.builds("{}/{}".format, TECH, PART | st.builds("{}@{}".format, PART, PART))
    | st.builds("{}@{}".format, PART, PART)
    | st.text(max_size=12)
)


@given(TARGETS, st.sampled_from(botkit.TRANSFER_MODES))
def test_botkit_takes_the_targets_the_bridge_takes(target: str, mode: str) -> None:
    """The same, but for what botkit refuses on purpose: unprintable characters (the
    bridge's patterns let a NUL through) and an attended exten@context (the bridge would
    quietly make it blind)."""
    bridge = bridge_takes({"event": "transfer", "target": target, "mode": mode})
    kit = botkit_takes(lambda: botkit.transfer(target, mode=mode))
    if kit:
        assert bridge
    elif bridge:
        dialplan = "/" not in target
        assert not target.isprintable() or (dialplan and mode == "attended"), target


@given(st.text(max_size=130) | st.none())
def test_botkit_takes_the_caller_ids_the_bridge_takes_but_an_empty_one(caller_id: Any) -> None:
    message = {"event": "transfer", "target": "PJSIP/1001", "caller_id": caller_id}
    kit = botkit_takes(lambda: botkit.transfer("PJSIP/1001", caller_id=caller_id))
    if caller_id is None:  # botkit leaves it out
        assert kit
    else:
        assert kit == (bridge_takes(message) and caller_id != "")


@given(st.integers(-5, 400) | st.booleans() | st.floats() | st.text(max_size=3))
def test_the_same_timeouts(timeout: Any) -> None:
    message = {"event": "transfer", "target": "PJSIP/1001", "timeout": timeout}
    kit = botkit_takes(lambda: botkit.transfer("PJSIP/1001", timeout=timeout))
    assert kit == bridge_takes(message)


@given(
    st.sampled_from(botkit.HANGUP_CAUSES)
    | st.text(max_size=12)
    | st.integers(-2, 130)
    | st.booleans()
    | st.floats()
)
def test_the_same_hangup_causes(cause: Any) -> None:
    assert botkit_takes(lambda: botkit.hangup(cause)) == bridge_takes(
        {"event": "hangup", "cause": cause}
    )


@given(st.text(alphabet=botkit.DTMF_DIGITS + "abcd5 E", max_size=34) | st.integers())
def test_the_same_dtmf_digits(digits: Any) -> None:
    assert botkit_takes(lambda: botkit.dtmf(digits)) == bridge_takes(
        {"event": "dtmf", "digits": digits}
    )


@given(
    st.sampled_from(botkit.RECORD_ACTIONS) | st.text(max_size=6),
    st.sampled_from(botkit.RECORD_MODES) | st.text(max_size=6) | st.none(),
)
def test_the_same_recording_requests(action: Any, mode: Any) -> None:
    message = {"event": "record", "action": action} | ({} if mode is None else {"mode": mode})
    assert botkit_takes(lambda: botkit.record(action, mode=mode)) == bridge_takes(message)


@pytest.mark.parametrize("event", botkit.REPLY_EVENTS)
@pytest.mark.parametrize("cause", [None, *control.TransferCause])
def test_every_reply_the_bridge_sends_is_one(event: str, cause: Any) -> None:
    reply = control.reply(event, "PJSIP/1001", cause)
    assert botkit.parse_reply(json.dumps(reply)) == reply
    assert botkit.parse_reply(json.dumps(reply, separators=(",", ":"))) == reply


# Imported by a bot without the service's dependencies


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_botkit_loads_no_service_dependency_nor_pipecat() -> None:
    out = run_python(
        "import sys, json\nimport bridge.botkit\nprint(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = set(json.loads(out))
    heavy = {"orjson", "structlog", "aiohttp", "numpy", "pipecat", "loguru", "websockets"}
    assert {m.partition(".")[0] for m in loaded} & heavy == set()
    assert {m for m in loaded if m.split(".")[0] == "bridge"} == {"bridge", "bridge.botkit"}


def test_the_message_builders_work_where_pipecat_cannot_be_imported() -> None:
    out = run_python(
        "import sys, json\n"
        "for name in ('pipecat', 'orjson', 'structlog', 'aiohttp', 'numpy', 'loguru'):\n"
        "    sys.modules[name] = None  # importing it raises ImportError\n"
        "from bridge import botkit\n"
        "print(json.dumps([botkit.transfer('206@caller'), botkit.hangup(17),\n"
        "                  botkit.dtmf('1#'), botkit.record('stop')]))\n"
        'print(botkit.parse_reply(\'{"event": "transfer_ringing", "target": "T"}\'))\n'
        "try:\n"
        "    botkit.hangup_frame()\n"
        "except ImportError:\n"
        "    print('frames need pipecat')\n"
    )
    messages, reply, frames = out.splitlines()
    assert json.loads(messages) == [
        {"event": "transfer", "target": "206@caller", "mode": "blind"},
        {"event": "hangup", "cause": 17},
        {"event": "dtmf", "digits": "1#"},
        {"event": "record", "action": "stop"},
    ]
    assert reply == "{'event': 'transfer_ringing', 'target': 'T'}"
    assert frames == "frames need pipecat"


# The frames, through Pipecat's own serializers


def serializers() -> list[FrameSerializer]:
    """Built as bot-side.md and echo_bot.py build them."""
    return [
        TwilioFrameSerializer(
            STREAM_SID,
            call_sid=CALL_SID,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        ),
        ExotelFrameSerializer(
            STREAM_SID,
            call_sid=CALL_SID,
            params=ExotelFrameSerializer.InputParams(exotel_sample_rate=8000),
        ),
        VonageFrameSerializer(params=VonageFrameSerializer.InputParams(vonage_sample_rate=16000)),
    ]


SERIALIZER_IDS = ["twilio", "exotel", "vonage"]

# Each frame builder and the text the bridge reads from it, in every dialect.
WIRE_TEXT = [
    (
        lambda urgent: botkit.transfer_frame("PJSIP/1001", urgent=urgent),
        '{"event": "transfer", "target": "PJSIP/1001", "mode": "blind"}',
    ),
    (
        lambda urgent: botkit.transfer_frame(
            "Local/206@caller", mode="attended", caller_id="6001", timeout=15, urgent=urgent
        ),
        '{"event": "transfer", "target": "Local/206@caller", "mode": "attended", '
        '"caller_id": "6001", "timeout": 15}',
    ),
    (
        lambda urgent: botkit.hangup_frame("busy", urgent=urgent),
        '{"event": "hangup", "cause": "busy"}',
    ),
    (lambda urgent: botkit.hangup_frame(21, urgent=urgent), '{"event": "hangup", "cause": 21}'),
    (
        lambda urgent: botkit.dtmf_frame("123#", urgent=urgent),
        '{"event": "dtmf", "digits": "123#"}',
    ),
    (
        lambda urgent: botkit.record_frame("start", mode="tracks", urgent=urgent),
        '{"event": "record", "action": "start", "mode": "tracks"}',
    ),
    (
        lambda urgent: botkit.record_frame("stop", urgent=urgent),
        '{"event": "record", "action": "stop"}',
    ),
]


@pytest.mark.parametrize("serializer", serializers(), ids=SERIALIZER_IDS)
@pytest.mark.parametrize("urgent", [False, True], ids=["queued", "urgent"])
async def test_each_frame_is_the_documented_json_text_in_every_dialect(
    serializer: FrameSerializer, urgent: bool
) -> None:
    for build, text in WIRE_TEXT:
        frame = build(urgent)
        kind = OutputTransportMessageUrgentFrame if urgent else OutputTransportMessageFrame
        assert type(frame) is kind
        assert await serializer.serialize(frame) == text


def test_each_frame_gets_its_own_message() -> None:
    message = botkit.hangup("busy")
    first, second = botkit.control_frame(message), botkit.control_frame(message)
    assert first.message == second.message == message
    assert first.message is not message and first.message is not second.message


# The bridge's replies, through the wrapper


REPLIES = [
    {"event": "transfer_ringing", "target": "PJSIP/1001"},
    {"event": "transfer_answered", "target": "PJSIP/1001"},
    {"event": "transfer_failed", "target": "PJSIP/1001", "cause": "busy"},
    {"event": "transfer_failed", "target": "Local/206@caller", "cause": "unavailable"},
]


def setup_at(rate: int) -> FrameProcessorSetup:
    return FrameProcessorSetup(
        clock=SystemClock(),
        task_manager=TaskManager(),
        pipeline_worker=cast(Any, None),
        audio_in_sample_rate=rate,
        audio_out_sample_rate=rate,
    )


@pytest.fixture(params=SERIALIZER_IDS)
async def wrapped(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Any, Any]]:
    """(dialect, bare serializer, wrapped serializer), both set up at the pipeline's rate."""
    dialect = request.param
    bare, inner = (serializers()[SERIALIZER_IDS.index(dialect)] for _ in range(2))
    wrapper = botkit.with_bridge_replies(inner)
    rate = 16000 if dialect == "vonage" else 8000
    await bare.setup(setup_at(rate))
    await wrapper.setup(setup_at(rate))
    yield dialect, bare, wrapper


@pytest.mark.parametrize("reply", REPLIES)
async def test_replies_become_input_transport_messages(
    wrapped: tuple[str, Any, Any], reply: dict[str, Any]
) -> None:
    _, bare, wrapper = wrapped
    text = json.dumps(reply, separators=(",", ":"))
    assert await bare.deserialize(text) is None  # what a stock bot makes of it
    frame = await wrapper.deserialize(text)
    assert isinstance(frame, InputTransportMessageFrame)
    assert frame.message == reply


def caller_messages(dialect: str) -> list[str | bytes]:
    """Media, DTMF and other messages as the bridge sends them in `dialect`."""
    if dialect == "vonage":
        return [
            bytes(640),
            '{"event":"websocket:dtmf","digit":"5"}',
            '{"event":"websocket:notify","payload":{"transfer_failed":1}}',
        ]
    sid = "streamSid" if dialect == "twilio" else "stream_sid"
    audio = "/w" * 80 if dialect == "twilio" else "AAAA" * 80
    return [
        f'{{"event":"media","{sid}":"{STREAM_SID}","media":{{"payload":"{audio}"}}}}',
        f'{{"event":"dtmf","{sid}":"{STREAM_SID}","dtmf":{{"digit":"5"}}}}',
        f'{{"event":"mark","{sid}":"{STREAM_SID}","mark":{{"name":"transfer_failed"}}}}',
        '{"event":"stop"}',
    ]


async def test_everything_else_is_the_wrapped_serializers(wrapped: tuple[str, Any, Any]) -> None:
    dialect, bare, wrapper = wrapped
    kinds = []
    for message in caller_messages(dialect):
        mine, theirs = await wrapper.deserialize(message), await bare.deserialize(message)
        assert type(mine) is type(theirs)
        if isinstance(theirs, InputAudioRawFrame):
            assert mine.audio == theirs.audio and mine.sample_rate == theirs.sample_rate
        if isinstance(theirs, InputDTMFFrame):
            assert mine.button == theirs.button
        kinds.append(type(mine).__name__)
    assert kinds[:2] == ["InputAudioRawFrame", "InputDTMFFrame"]
    assert set(kinds[2:]) == {"NoneType"}
    for build, text in WIRE_TEXT:
        assert await wrapper.serialize(build(False)) == text


@pytest.mark.parametrize(
    "data",
    [
        '{"event":"transfer","target":"PJSIP/1001"}',  # the bot's own request, not a reply
        '{"event":"transfer_done"}',
        '["transfer_failed"]',
        '{"event": "transfer_failed"',  # not JSON
        b'{"event":"transfer_failed","target":"T","cause":"busy"}',  # binary: audio
        '{"event":"transfer_failed","pad":"' + "x" * botkit.MAX_REPLY + '"}',
    ],
)
def test_parse_reply_takes_only_the_replies(data: str | bytes) -> None:
    assert botkit.parse_reply(data) is None


@given(st.text(max_size=200) | st.binary(max_size=50))
def test_parse_reply_never_raises(data: str | bytes) -> None:
    reply = botkit.parse_reply(data)
    assert reply is None or botkit.is_bridge_reply(reply)


@given(
    st.sampled_from(botkit.REPLY_EVENTS),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=3),
)
def test_parse_reply_keeps_every_field_of_a_reply(event: str, fields: dict[str, Any]) -> None:
    reply = fields | {"event": event}
    assert botkit.parse_reply(json.dumps(reply)) == reply


# LLM tools, run by a real LLMService in a real pipeline


@dataclass
class CallTool(DataFrame):
    """Makes ToolLLM call `function` with `arguments`, as a model's tool call would."""

    function: str = ""
    arguments: Any = None


class ToolLLM(LLMService):
    """An LLMService with no model: it runs the tool calls it is handed, through Pipecat's
    own function-call machinery (registration, FunctionCallParams, result frames)."""

    def __init__(self) -> None:
        # Pipecat wants every setting given; None is "not supported".
        settings = LLMSettings(
            model=None,
            system_instruction=None,
            temperature=None,
            max_tokens=None,
            top_p=None,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=None,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
        )
        super().__init__(settings=settings)
        self._tool_context = LLMContext()

    def advertise(self, tools: list[FunctionSchema]) -> None:
        """The tools the model is shown; Pipecat refuses calls to any other."""
        self._tool_context = LLMContext(tools=ToolsSchema(standard_tools=tools))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, CallTool):
            call = FunctionCallFromLLM(
                function_name=frame.function,
                tool_call_id="call-1",
                arguments=frame.arguments,
                context=self._tool_context,
            )
            await self.run_function_calls([call])
        else:
            await self.push_frame(frame, direction)


class Sink(FrameProcessor):
    """Queues what reaches the end of the pipeline going downstream."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.put_nowait(frame)
        await self.push_frame(frame, direction)


async def call_tool(
    function: str, arguments: dict[str, Any], **control: Any
) -> list[OutputTransportMessageFrame | FunctionCallResultFrame]:
    """Register the tools with register_call_control(**control), have the LLM call one,
    and return the control frames then the result frame that came downstream."""
    llm = ToolLLM()
    llm.advertise(botkit.register_call_control(llm, **control))
    sink = Sink()
    worker = PipelineWorker(Pipeline([llm, sink]), enable_rtvi=False, idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await worker.queue_frame(CallTool(function=function, arguments=arguments))
    seen: list[OutputTransportMessageFrame | FunctionCallResultFrame] = []

    async def until_result() -> None:
        # The handler pushes its control frame before it reports: once the result is
        # here, every frame it pushed is too.
        while not seen or not isinstance(seen[-1], FunctionCallResultFrame):
            frame = await sink.frames.get()
            if isinstance(frame, OutputTransportMessageFrame | FunctionCallResultFrame):
                seen.append(frame)

    try:
        await asyncio.wait_for(until_result(), TIMEOUT)
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, TIMEOUT)
    return seen


def assert_result(frame: Any, result: dict[str, Any], *, run_llm: bool) -> None:
    assert isinstance(frame, FunctionCallResultFrame)
    assert frame.result == result
    assert frame.properties is not None and frame.properties.run_llm is run_llm


async def test_end_call_pushes_a_hangup_downstream_and_ends_the_turn() -> None:
    control, result = await call_tool("end_call", {"cause": "busy"})
    assert type(control) is OutputTransportMessageFrame  # queued behind the speech
    assert control.message == {"event": "hangup", "cause": "busy"}
    assert_result(result, {"status": "ending", "cause": "busy"}, run_llm=False)


async def test_end_call_without_a_cause_is_normal() -> None:
    control, result = await call_tool("end_call", {})
    assert isinstance(control, OutputTransportMessageFrame)
    assert control.message == {"event": "hangup", "cause": "normal"}
    assert_result(result, {"status": "ending", "cause": "normal"}, run_llm=False)


async def test_end_call_with_an_unknown_cause_hangs_nothing_up_and_tells_the_model() -> None:
    (result,) = await call_tool("end_call", {"cause": "exploded"})
    assert isinstance(result, FunctionCallResultFrame)
    assert "unknown cause 'exploded'" in result.result["error"]
    assert result.properties is not None and result.properties.run_llm is True


async def test_transfer_to_human_dials_the_authors_target_never_the_models() -> None:
    arguments = {"reason": "wants a person", "target": "PJSIP/900441234567"}
    control, result = await call_tool(
        "transfer_to_human", arguments, transfer_target="PJSIP/1001", transfer_mode="attended"
    )
    assert isinstance(control, OutputTransportMessageFrame)
    assert control.message == {"event": "transfer", "target": "PJSIP/1001", "mode": "attended"}
    assert_result(result, {"status": "transferring", "reason": "wants a person"}, run_llm=False)


async def test_transfer_to_human_passes_caller_id_and_timeout_but_not_the_reason() -> None:
    control, result = await call_tool(
        "transfer_to_human",
        {"reason": 42},
        transfer_target="206@caller",
        caller_id="Bot <6001>",
        timeout=45,
    )
    assert isinstance(control, OutputTransportMessageFrame)
    assert control.message == {
        "event": "transfer",
        "target": "206@caller",
        "mode": "blind",
        "caller_id": "Bot <6001>",
        "timeout": 45,
    }
    assert_result(result, {"status": "transferring", "reason": ""}, run_llm=False)


def test_register_call_control_registers_what_it_returns() -> None:
    llm = ToolLLM()
    schemas = botkit.register_call_control(llm, transfer_target="PJSIP/1001")
    assert [s.name for s in schemas] == ["transfer_to_human", "end_call"]
    assert llm.has_function("transfer_to_human") and llm.has_function("end_call")
    bare = ToolLLM()
    assert [s.name for s in botkit.register_call_control(bare)] == ["end_call"]
    assert not bare.has_function("transfer_to_human")
    assert botkit.register_call_control(ToolLLM(), end_call=False) == []


def test_a_bad_transfer_target_fails_at_registration_not_in_a_call() -> None:
    with pytest.raises(ValueError, match="only be transferred blind"):
        botkit.register_call_control(
            ToolLLM(), transfer_target="206@caller", transfer_mode="attended"
        )


def test_the_tool_schemas() -> None:
    transfer, end_call = botkit.transfer_to_human_schema(), botkit.end_call_schema()
    assert isinstance(transfer, FunctionSchema) and isinstance(end_call, FunctionSchema)
    assert transfer.to_default_dict()["name"] == "transfer_to_human"
    assert list(transfer.properties) == ["reason"]
    assert transfer.properties["reason"]["type"] == "string"
    assert "target" not in json.dumps(transfer.to_default_dict()["parameters"])
    assert transfer.required == [] and end_call.required == []
    assert end_call.name == "end_call"
    assert end_call.properties["cause"]["enum"] == list(botkit.HANGUP_CAUSES)
