"""Callers a dead run left waiting in the app: sent once to --orphan-context, not dropped.

A worker that died (kill -9, OOM) leaves its callers in Stasis of its app, in silence. Its
successor, under the same app name, finds them in its start-up sweep (bridge.service.reconcile).
With --orphan-context/--orphan-extension (typically the StasisBroadcast extension) such a
caller `continue`s there, so a live worker claims it and it gets a new bot session. The round
is counted in the channel variable PIPECAT_ORPHAN_ROUNDS: a caller found orphaned a second
time gets the fallback instead (as every orphan does without --orphan-context), so no caller
circles between dying workers and the broadcast. The bot-failure fallback is not involved.
"""

from __future__ import annotations

from ari.models import Channel
from ari.rest import AriRestClient
from bridge.errors import AriHttpError
from bridge.logs import get_logger
from bridge.service.config import Settings

log = get_logger("bridge")

ROUNDS_VARIABLE = "PIPECAT_ORPHAN_ROUNDS"
MAX_ROUNDS = 1


def rounds_from(value: str | None) -> int:
    """The rounds a caller has been re-homed; unset is 0, anything unreadable counts as all
    of them (better the fallback once than a loop)."""
    if value is None or not value.strip():
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        return MAX_ROUNDS


async def read_rounds(rest: AriRestClient, channel_id: str) -> int:
    try:
        body = await rest.request(
            "GET", f"/channels/{channel_id}/variable", {"variable": ROUNDS_VARIABLE},
            idempotent=True,
        )  # fmt: skip
    except AriHttpError as exc:
        if exc.status == 404:  # "Provided variable was not found": never re-homed
            return 0
        raise
    value = body.get("value") if isinstance(body, dict) else None
    return rounds_from(value if isinstance(value, str) else None)


async def rehome(rest: AriRestClient, settings: Settings, channel: Channel) -> bool:
    """Send the orphan to --orphan-context once. True: sent; False: it gets the fallback.
    Raises BridgeError when Asterisk refuses (the caller is gone, say)."""
    if not settings.orphan_context:
        return False
    rounds = await read_rounds(rest, channel.id)
    if rounds >= MAX_ROUNDS:
        log.warning("orphan_rounds_exhausted", channel_id=channel.id, rounds=rounds)
        return False
    await rest.set_variable(channel.id, ROUNDS_VARIABLE, str(rounds + 1))
    await rest.continue_in_dialplan(
        channel.id, settings.orphan_context, settings.orphan_extension, 1
    )
    log.info("orphan_rehomed", channel_id=channel.id, context=settings.orphan_context,
             extension=settings.orphan_extension, round=rounds + 1)  # fmt: skip
    return True
