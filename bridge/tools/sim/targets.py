"""What a dialled endpoint does: the simulator's `targets` knob, and the lab's `[caller]` dialplan.

`TargetBehaviour` says how an endpoint originated (`POST /channels`) or created and dialled
(`/channels/create` + `/dial`) answers: after how long, with which outcome, and which dialplan
its Local `;2` half runs meanwhile (the `ChannelDialplan` events the app receives for it). Set
any endpoint's with `sim.targets["PJSIP/1001"] = TargetBehaviour.answer(after=0.2)`; the
defaults (`LAB_TARGETS`) are the lab's extensions (asterisk-conf/extensions.conf of the shared
fixtures): 233 rings 1 s and answers (Playback(agent-tone), Echo()), 207 is Busy(10), 208 rings
forever, the others answer at once.

Outcomes, from Asterisk 23.4.1's source where no recording has them:
* answer, busy, no answer: recorded (transfer_originate_answer/_busy/_noanswer);
* congestion: `Congestion()` (main/pbx_builtins.c indicate_congestion) is `Busy()` with cause
  34 (AST_CAUSE_CONGESTION) and the same Busy state; main/dial.c handle_frame publishes
  `Dial CONGESTION` for AST_CONTROL_CONGESTION and hangs the ;1 up exactly as for BUSY
  (synthetic_transfer_originate_congestion);
* unavailable: a Local channel to an extension that does not exist: chan_local's local_call()
  fails after ast_unreal_call_setup() (so ChannelCallerId / ChannelConnectedLine for ;2 still
  come when a caller id was given), begin_dial_channel() hangs the ;1 up without a `Dial`
  event: both halves destroyed with cause 0 (recorded in errors for `Local/999@caller`, and
  synthetic_transfer_originate_unavailable with a caller id). Any other technology's endpoint
  that cannot be reached fails in ast_request(): the originate answers 500 "Allocation failed".

Also here: what the lab's far ends 230 and 231 leave in global variables (`BOT_DTMF`,
`BOT_HANGUPCAUSE`), for `GET /asterisk/variable` as in dtmf_to_caller and hangup_reason.

Pure: no sockets, no clocks (numpy for the agent tone).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from bridge.tools.sim.audio import encode


class Outcome(StrEnum):
    ANSWER = "answer"
    BUSY = "busy"
    CONGESTION = "congestion"
    NO_ANSWER = "no_answer"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Step:
    """One application of the `;2` half's dialplan, as its ChannelDialplan event shows it."""

    app: str
    data: str = ""
    delay: float = 0.0  # after the previous step (after-answer steps only)
    status: tuple[str, str] | None = None  # set by the previous app as it ended, just before


# The application that produces each outcome on the far half (pbx_builtins.c).
_OUTCOME_STEPS = {
    Outcome.ANSWER: Step("Answer"),
    Outcome.BUSY: Step("Busy", "10"),
    Outcome.CONGESTION: Step("Congestion", "10"),
}


@dataclass(frozen=True, slots=True)
class TargetBehaviour:
    """How one endpoint answers a dial. Build one with the class methods."""

    outcome: Outcome
    after: float = 0.0  # seconds from the dial to the answer, the busy or the congestion
    ringing: bool = False  # Ringing() first: ;1 goes Ringing, `Dial RINGING`
    before: tuple[Step, ...] = ()  # the far half's dialplan before the outcome's application
    then: tuple[Step, ...] = ()  # after Answer()
    # Once answered and bridged: the recorded far end it plays (as place_call's), or `audio`.
    scenario: str = "outbound_originate"
    echo: bool | None = None
    audio: bytes | None = None  # µ-law from the bridged moment, instead of the recording's
    hangup_after: float | None = None

    @classmethod
    def answer(cls, after: float = 0.0, *, scenario: str = "outbound_originate",
               echo: bool | None = None, audio: bytes | None = None,
               hangup_after: float | None = None, then: tuple[Step, ...] = ()
               ) -> TargetBehaviour:  # fmt: skip
        """Answers `after` seconds after the dial (ringing meanwhile when `after` > 0)."""
        return cls(Outcome.ANSWER, after, after > 0, _ring(after), then, scenario, echo, audio,
                   hangup_after)  # fmt: skip

    @classmethod
    def busy(cls, after: float = 0.0) -> TargetBehaviour:
        return cls(Outcome.BUSY, after, after > 0, _ring(after))

    @classmethod
    def congestion(cls, after: float = 0.0) -> TargetBehaviour:
        return cls(Outcome.CONGESTION, after, after > 0, _ring(after))

    @classmethod
    def no_answer(cls) -> TargetBehaviour:
        """Rings until the dial's timeout (Ringing(), Wait(60): extension 208)."""
        return cls(Outcome.NO_ANSWER, 0.0, True, (Step("Ringing"), Step("Wait", "60")))

    @classmethod
    def unavailable(cls) -> TargetBehaviour:
        return cls(Outcome.UNAVAILABLE)

    @property
    def outcome_step(self) -> Step | None:
        return _OUTCOME_STEPS.get(self.outcome)


def _ring(after: float) -> tuple[Step, ...]:
    return (Step("Ringing"), Step("Wait", f"{after:g}")) if after > 0 else ()


def tone(frequency: float, seconds: float, amplitude: int = 8000) -> bytes:
    """A sine tone as 8 kHz µ-law (the lab's agent-tone is 1 kHz, 0.5 s)."""
    t = np.arange(int(8000 * seconds)) / 8000
    samples = (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    return encode(samples, 8000, "ulaw")


_AGENT_TONE = tone(1000.0, 0.5)

# The lab's [caller] extensions as dial targets (asterisk-conf/extensions.conf).
LAB_TARGETS: Mapping[str, TargetBehaviour] = {
    **{f"Local/{exten}@caller": TargetBehaviour.answer()
       for exten in ("201", "202", "204", "206", "209", "230", "231", "232", "234")},
    "Local/200@caller": TargetBehaviour.answer(then=(Step("Playback", "demo-congrats", 0.5),)),
    "Local/203@caller": TargetBehaviour.answer(scenario="echo_roundtrip", echo=True),
    "Local/205@caller": TargetBehaviour.answer(scenario="echo_roundtrip", echo=True),
    "Local/207@caller": TargetBehaviour.busy(),
    "Local/208@caller": TargetBehaviour.no_answer(),
    "Local/233@caller": TargetBehaviour.answer(
        1.0, scenario="echo_roundtrip", echo=True, audio=_AGENT_TONE,
        then=(Step("Playback", "agent-tone"),
              Step("Echo", delay=0.5, status=("PLAYBACKSTATUS", "SUCCESS")))),
}  # fmt: skip


def target_key(endpoint: str) -> str:
    """The endpoint without Local's options: `Local/233@caller/n` -> `Local/233@caller`."""
    tech, _, resource = endpoint.partition("/")
    if tech == "Local":
        resource = resource.partition("/")[0]
    return f"{tech}/{resource}"


# -- the lab's far ends that leave traces in global variables ---------------------------------

_LAB_CALLER = re.compile(r"Local/([^@/]+)@caller-")


def far_exten(channel_name: str) -> str | None:
    """The `[caller]` extension a Local channel reaches (`Local/231@caller-0000027f;1`: 231)."""
    found = _LAB_CALLER.match(channel_name)
    return found.group(1) if found else None


def far_end_answered(exten: str | None, variables: MutableMapping[str, str]) -> None:
    """230 and 231 clear their global on answer (`Set(GLOBAL(...)=)`, priority 2)."""
    if exten == "230":
        variables["BOT_DTMF"] = ""
    elif exten == "231":
        variables["BOT_HANGUPCAUSE"] = ""


def far_end_digit(exten: str | None, digit: str, variables: MutableMapping[str, str]) -> None:
    """230's Read(D,,1,t(),1,20) loop appends every digit (`#` too) to BOT_DTMF."""
    if exten == "230":
        variables["BOT_DTMF"] = variables.get("BOT_DTMF", "") + digit


def far_end_hung_up(exten: str | None, cause: int, variables: MutableMapping[str, str]) -> None:
    """231's hang-up handler stores the cause its own half saw."""
    if exten == "231":
        variables["BOT_HANGUPCAUSE"] = str(cause)
