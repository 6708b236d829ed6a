"""Hang-up causes as Asterisk 23.4.1 names, converts and reports them.

* `cause_txt`: `ast_cause2str()` (main/channel.c `causes[]`), "Unknown" for a code not in the
  table (0: the recorded ChannelDestroyed of a busy or nonexistent target);
* `HANGUP_REASONS`: `convert_reason_to_hangup_code()` (res/ari/resource_channels.c): the
  `reason` values `DELETE /channels/{id}` accepts; note `timeout` is 18 (no user responding),
  not 19, and `failure` 38 (AST_CAUSE_FAILURE = network out of order);
* `hangup_cause`: `ast_ari_channels_hangup()`'s checks, in its order, with its answers (the
  recorded ones in hangup_reason);
* `dial_status`: `ast_hangup_cause_to_dial_status()` (main/dial.c): the `Dial` status published
  when a dialled channel goes away before answering (a DELETE of a ringing target included).

Pure: no sockets, no clocks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from bridge.tools.sim.templates import Reply, error_reply

NORMAL = 16
BUSY = 17
NO_USER_RESPONSE = 18
NO_ANSWER = 19
CONGESTION = 34

CAUSE_TEXTS: Mapping[int, str] = {
    1: "Unallocated (unassigned) number", 2: "No route to specified transmit network",
    3: "No route to destination", 5: "Misdialed trunk prefix", 6: "Channel unacceptable",
    7: "Call awarded and being delivered in an established channel", 8: "Pre-empted",
    14: "Number ported elsewhere", 16: "Normal Clearing", 17: "User busy",
    18: "No user responding", 19: "User alerting, no answer", 20: "Subscriber absent",
    21: "Call Rejected", 22: "Number changed", 23: "Redirected to new destination",
    26: "Answered elsewhere", 27: "Destination out of order", 28: "Invalid number format",
    29: "Facility rejected", 30: "Response to STATus ENQuiry", 31: "Normal, unspecified",
    34: "Circuit/channel congestion", 38: "Network out of order", 41: "Temporary failure",
    42: "Switching equipment congestion", 43: "Access information discarded",
    44: "Requested channel not available", 50: "Facility not subscribed",
    52: "Outgoing call barred", 54: "Incoming call barred",
    57: "Bearer capability not authorized", 58: "Bearer capability not available",
    65: "Bearer capability not implemented", 66: "Channel not implemented",
    69: "Facility not implemented", 81: "Invalid call reference value",
    88: "Incompatible destination", 95: "Invalid message unspecified",
    96: "Mandatory information element is missing", 97: "Message type nonexist.",
    98: "Wrong message", 99: "Info. element nonexist or not implemented",
    100: "Invalid information element contents", 101: "Message not compatible with call state",
    102: "Recover on timer expiry", 103: "Mandatory IE length error",
    111: "Protocol error, unspecified", 127: "Interworking, unspecified",
}  # fmt: skip

HANGUP_REASONS: Mapping[str, int] = {
    "normal": 16, "busy": 17, "congestion": 34, "no_answer": 19, "timeout": 18,
    "rejected": 21, "unallocated": 1, "normal_unspecified": 31, "number_incomplete": 28,
    "codec_mismatch": 58, "interworking": 127, "failure": 38, "answered_elsewhere": 26,
}  # fmt: skip


def cause_txt(cause: int) -> str:
    return CAUSE_TEXTS.get(cause, "Unknown")


def hangup_cause(q: Mapping[str, str]) -> int | Reply:
    """The cause `DELETE /channels/{id}` sets, or its 400 answer (the channel is not touched).

    `reason_code` is read with `sscanf("%30d")`: leading blanks, a sign and digits, anything
    after them ignored; no digits at all is a 400 of its own.
    """
    reason, code = q.get("reason", ""), q.get("reason_code", "")
    if reason and code:
        return error_reply(400, "The reason and reason_code can't both be specified")
    if code:
        found = re.match(r"\s*([+-]?\d{1,30})", code)
        if found is None:
            return error_reply(400, "Invalid reason for hangup reason code provided",
                               "Invalid Reason Code")  # fmt: skip
        return int(found.group(1))
    if reason:
        if reason not in HANGUP_REASONS:
            return error_reply(400, "Invalid reason for hangup reason provided", "Invalid Reason")
        return HANGUP_REASONS[reason]
    return NORMAL


def dial_status(cause: int) -> str:
    """What `Dial` says for a dialled channel that went away with `cause` before answering."""
    if cause == BUSY:
        return "BUSY"
    if cause == CONGESTION:
        return "CONGESTION"
    if cause in (3, 20):  # no route to destination, unregistered (subscriber absent)
        return "CHANUNAVAIL"
    return "NOANSWER"
