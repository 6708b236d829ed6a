"""ARI resource models (channels, bridges), parsed once at the edge into frozen dataclasses.

Only the fields the bridge uses are kept; the raw mapping is not, so nothing downstream can
grow a dependency on a key Asterisk might not send.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import AriEventError

# Name prefixes of the channels Asterisk creates for externalMedia (asterisk-facts §1).
MEDIA_CHANNEL_PREFIXES = ("UnicastRTP/", "WebSocket/", "AudioSocket/")


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    name: str
    state: str
    caller_number: str = ""
    caller_name: str = ""
    context: str = ""
    exten: str = ""
    priority: int = 0
    app_name: str = ""
    app_data: str = ""
    channelvars: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_media_channel(self) -> bool:
        """True for an ExternalMedia channel, which enters the app like a caller does."""
        return self.name.startswith(MEDIA_CHANNEL_PREFIXES)


@dataclass(frozen=True, slots=True)
class Bridge:
    id: str
    technology: str = ""
    bridge_type: str = ""
    name: str = ""
    channels: tuple[str, ...] = ()


def _str(obj: Mapping[str, Any], key: str, default: str = "") -> str:
    value = obj.get(key, default)
    return value if isinstance(value, str) else default


def _mapping_or_empty(obj: object) -> Mapping[str, Any]:
    return obj if isinstance(obj, dict) else {}


def _require_mapping(obj: object, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise AriEventError(f"{what} is not a JSON object")
    return obj


def parse_channel(obj: object) -> Channel:
    ch = _require_mapping(obj, "channel")
    channel_id = ch.get("id")
    if not isinstance(channel_id, str) or not channel_id:
        raise AriEventError("channel has no id")
    caller = _mapping_or_empty(ch.get("caller"))
    dialplan = _mapping_or_empty(ch.get("dialplan"))
    raw_vars = ch.get("channelvars")
    channelvars = (
        {str(k): str(v) for k, v in raw_vars.items()} if isinstance(raw_vars, dict) else {}
    )
    priority = dialplan.get("priority", 0)
    return Channel(
        id=channel_id,
        name=_str(ch, "name"),
        state=_str(ch, "state"),
        caller_number=_str(caller, "number"),
        caller_name=_str(caller, "name"),
        context=_str(dialplan, "context"),
        exten=_str(dialplan, "exten"),
        priority=priority if isinstance(priority, int) else 0,
        app_name=_str(dialplan, "app_name"),
        app_data=_str(dialplan, "app_data"),
        channelvars=channelvars,
    )


def parse_bridge(obj: object) -> Bridge:
    br = _require_mapping(obj, "bridge")
    bridge_id = br.get("id")
    if not isinstance(bridge_id, str) or not bridge_id:
        raise AriEventError("bridge has no id")
    channels = br.get("channels")
    return Bridge(
        id=bridge_id,
        technology=_str(br, "technology"),
        bridge_type=_str(br, "bridge_type"),
        name=_str(br, "name"),
        channels=tuple(c for c in channels if isinstance(c, str))
        if isinstance(channels, list)
        else (),
    )
