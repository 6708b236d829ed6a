"""Which lifecycle webhook each change of a call sends: a reader of the read model.

    Milestone started                    -> call.started
    Milestone answered (outbound calls)  -> call.answered
    Milestone bot_connected              -> call.bot_connected
    Milestone bot_reconnected            -> call.bot_reconnected (a dropped bot resumed the
                                            call; media.bot_reconnects counts them)
    StateChanged to ENDED                -> call.failed (the caller got the fallback: which
                                            step, why), then call.ended (every call)

The data is the call's read model (`CallView.to_json()`); `call.ended` carries its duration,
talk time, ended_by, the end reason and the media counters. Per-call receivers come from the
view's `webhook_url` (a Stasis argument `webhook_url=...` or POST /calls).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from bridge.call.machine import CallState, StateChanged
from bridge.call.view import CallChange, CallView, Direction, Milestone
from bridge.logs import get_logger
from bridge.ops.spool import default_spool_path
from bridge.ops.webhooks import WebhookSender, load_webhook_secret

log = get_logger("bridge.webhooks")


class LifecycleWebhooks:
    def __init__(self, sender: WebhookSender) -> None:
        self.sender = sender

    def __call__(self, view: CallView, change: CallChange) -> None:
        extra = (view.webhook_url,) if view.webhook_url else ()
        for event_type in events_for(view, change):
            self.sender.send(event_type, _data(view, event_type), extra_urls=extra)


def events_for(view: CallView, change: CallChange) -> list[str]:
    if isinstance(change, Milestone):
        if change.name == "answered" and view.direction is not Direction.OUTBOUND:
            return []
        return [f"call.{change.name}"] if change.name in _MILESTONES else []
    if isinstance(change, StateChanged) and change.new is CallState.ENDED:
        return ["call.failed", "call.ended"] if view.fallback else ["call.ended"]
    return []


_MILESTONES = frozenset({"started", "answered", "bot_connected", "bot_reconnected"})


def _data(view: CallView, event_type: str) -> dict[str, Any]:
    data = view.to_json()
    if event_type == "call.failed":
        data["failure"] = {"step": failure_step(view.end_reason), "why": view.end_reason}
    return data


def failure_step(reason: str) -> str:
    """Which part of the call failed, from its end reason (a small closed set)."""
    lowered = reason.lower()
    for needle, step in _STEPS:
        if needle in lowered:
            return step
    return "call"


_STEPS = (
    ("connectbot", "bot"),
    ("bot ", "bot"),
    ("setup", "setup"),
    ("answer", "setup"),
    ("createbridge", "setup"),
    ("createexternalmedia", "setup"),
    ("openmedia", "media"),
    ("addchannels", "setup"),
    ("media", "media"),
    ("bridge destroyed", "asterisk"),
    ("full", "admission"),
    ("max calls", "admission"),
    ("rtp port", "admission"),
    ("draining", "admission"),
)


def webhooks_from_settings(settings: Any, env: Mapping[str, str] | None = None) -> (
    LifecycleWebhooks
):
    """The observer for the configured receivers. The spool: --webhook-spool, else the
    systemd StateDirectory; without either, undelivered events live in memory only (said)."""
    env = os.environ if env is None else env
    secret = load_webhook_secret(settings.webhook_secret_file) if (
        settings.webhook_secret_file) else None  # fmt: skip
    spool: Any = settings.webhook_spool or (
        default_spool_path(env) if env.get("STATE_DIRECTORY") else None
    )
    if spool is None and settings.webhook_urls:
        log.warning("webhook_spool_in_memory",
                    hint="set --webhook-spool or run under systemd (StateDirectory=): "
                         "undelivered webhooks are lost on restart")  # fmt: skip
    return LifecycleWebhooks(WebhookSender(settings.webhook_urls, secret, spool))
