"""What Asterisk does with a channel's Stasis commands that no recording shows: play, continue.

No recorded scenario played a sound or continued a caller in the dialplan, so these rules come
from Asterisk 23's source, cited per function:

* res/ari/resource_channels.c: `find_control` (404 / 409), `channel_state_invalid` (412 for a
  Down, Reserved or Ringing channel), `ast_ari_channels_continue_in_dialplan` (where the
  channel goes), `ari_channels_handle_play` (201 + Location, 400 / 500 answers);
* res/res_stasis_playback.c: the Playback object, its states and which of them become events
  (`playback_to_json`: playing -> PlaybackStarted, done/failed -> PlaybackFinished), and
  `play_on_channel`, which skips the final update (so no PlaybackFinished, ever) for a scheme
  it does not know, a stored recording that does not exist or a number that does not parse;
* res/stasis/control.c: one command queue per channel, run in order by the channel's thread, so
  a `continue` sent during a playback takes effect when the playback ends.

Pure: no sockets, no clocks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.tools.sim.templates import Reply, error_reply

# Outbound-only states in which Asterisk refuses to play or move a channel (channel_state_invalid).
INVALID_STATES = frozenset({"Down", "Reserved", "Ringing"})
# play_on_channel's URI schemes; anything else: "scheme is unsupported", no final update.
PLAYBACK_SCHEMES = frozenset({"sound", "recording", "number", "digits", "characters", "tone"})

Target = tuple[str, str, int]  # (context, extension, priority) a continued channel goes to


@dataclass(eq=False, slots=True)
class SimPlayback:
    """One `POST /channels/{id}/play`: the Playback object and its state."""

    id: str
    media: str  # the media URI, e.g. "sound:tt-monkeys"
    target: str  # "channel:<id>"
    language: str
    state: str = "queued"  # queued -> playing -> done | failed
    canceled: bool = False  # stopped while queued: it finishes when its turn comes

    @property
    def controllable(self) -> bool:
        """play_on_channel() marks sounds, recordings and tones controllable: only those stop
        (playback_stop() fails for the others: 500 "Could not stop playback")."""
        return self.media.partition(":")[0] in ("sound", "recording", "tone")

    def values(self) -> dict[str, str]:
        return {"id": self.id, "media_uri": self.media, "target_uri": self.target,
                "language": self.language, "state": self.state}  # fmt: skip


def c_atol(text: str | None) -> int:
    """C `atol`/`sscanf("%d")` as the generated ARI argument parsers apply it: leading
    whitespace, an optional sign and digits; anything else counts as 0."""
    found = re.match(r"\s*([+-]?\d+)", text or "")
    return int(found.group(1)) if found else 0


DTMF_DIGITS = frozenset("0123456789*#abcdABCD")
MIN_DTMF_MS = 100  # AST_DEFAULT_EMULATE_DTMF_DURATION (main/channel.c)


def dtmf_schedule(digits: str, before: int, between: int, duration: int, after: int
                  ) -> tuple[list[tuple[float, str]], float]:  # fmt: skip
    """When each digit of `POST /channels/{id}/dtmf` ends (seconds from the command's start),
    and when the command is done: main/app.c dtmf_stream() after control.c's `before` sleep.

    100 ms of quiet first; a digit lasts `duration` ms (at least 100: ast_senddigit), then
    `between` ms (0 means 100); `w` waits 0.5 s, `W` 1 s; `f` is a flash (no digit); anything
    else is skipped with a warning. dtmf_to_caller: `123#`, 150 / 200 -> 0.25 ... 1.30 s.
    """
    gap = (between or 100) / 1000
    length = max(duration, MIN_DTMF_MS) / 1000
    t = max(before, 0) / 1000 + 0.1
    ends: list[tuple[float, str]] = []
    for char in digits:
        if char == "w":
            t += 0.5
        elif char == "W":
            t += 1.0
        elif char in "fF":
            t += gap
        elif char in DTMF_DIGITS:
            ends.append((t + length, char))
            t += length + gap
    return ends, t + max(after, 0) / 1000


def state_invalid(state: str) -> Reply | None:
    """resource_channels.c channel_state_invalid(): 412 for a channel not yet up outbound."""
    if state in INVALID_STATES:
        return error_reply(412, "Channel in invalid state")
    return None


def continue_target(dialplan: tuple[str, str, int], q: Mapping[str, str]) -> Target | Reply:
    """Where `POST /channels/{id}/continue` sends the channel, or Asterisk's error answer.

    ast_ari_channels_continue_in_dialplan(): no context keeps the channel's context (and its
    extension unless one is given); a context without extension means `s`; a label that is a
    number is a priority, any other label must exist in the dialplan (the simulator has none,
    so 404); priority 0 from a label is 400; no priority at all means priority 1, except with
    neither context nor extension, which moves on to the next priority.
    """
    context, exten, priority = dialplan
    if q.get("context"):
        context, exten = q["context"], q.get("extension") or "s"
    else:
        exten = q.get("extension") or exten
    label = q.get("label", "")
    if label:
        if not re.match(r"\s*[+-]?\d", label):
            return error_reply(404, "Requested label can not be found")
        target = c_atol(label)
        if target == 0:
            return error_reply(400, "Requested priority is illegal")
    elif c_atol(q.get("priority")):
        target = c_atol(q.get("priority"))
    elif not q.get("context") and not q.get("extension"):
        target = priority + 1
    else:
        target = 1
    return context, exten, target


def play_request_error(q: Mapping[str, str]) -> Reply | None:
    """ari_channels_handle_play()'s argument checks, after find_control and the state check."""
    if c_atol(q.get("skipms")) < 0:
        return error_reply(400, "skipms cannot be negative")
    if c_atol(q.get("offsetms")) < 0:
        return error_reply(400, "offsetms cannot be negative")
    if not q.get("media"):
        # No media: stasis_app_control_play_uri() returns NULL (media_count == 0).
        return error_reply(500, "Failed to queue media for playback")
    return None


def playback_outcome(
    media: str, sounds: Mapping[str, float | None], default_seconds: float | None
) -> tuple[str, float] | None:
    """How a playback of `media` ends: ("done", seconds) or ("failed", 0), after PlaybackStarted.

    None: it never ends for the app (play_on_channel skips the final update: unknown scheme,
    missing stored recording, a number that does not parse), so no PlaybackFinished comes.
    `sounds` maps a media URI to its length, None for a file that does not exist (then
    ast_control_streamfile fails: "failed"); unlisted media last `default_seconds`, but an
    unlisted `tone:` plays until it is stopped (ast_control_tone() waits for STREAM_STOP).
    """
    scheme, _, name = media.partition(":")
    if scheme not in PLAYBACK_SCHEMES:
        return None
    if scheme == "number" and not re.match(r"\s*[+-]?\d", name):
        return None
    seconds = sounds.get(media, math.inf if scheme == "tone" else default_seconds)
    if seconds is None:
        return None if scheme == "recording" else ("failed", 0.0)
    return "done", seconds
