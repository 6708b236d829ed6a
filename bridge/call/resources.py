"""What a call owns: one table of resources, each with its own small lifecycle. Pure.

Every row is one thing the call created on Asterisk or locally (or, for the caller, was
given), with the command that removes it:

    NONE --creating--> CREATING --created--> UP --teardown--> DELETING --deleted--> GONE
                          |                                      ^
                          +--teardown (the creation in flight)---+   then `created` answers
                                                                     with the delete to send

A creation that got no answer (a timeout, a lost connection) may still be performed by a slow
Asterisk under our pre-assigned id: the row is `unsure` and counts as UP, so it is deleted
(a 404 is fine) rather than left behind. An HTTP error answer means it was not created.

Teardown is driven by what exists: `held()` walks the rows in teardown order (the order of
ResourceKind), and the call is over when nothing is `in_flight()` any more.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from bridge.call.commands import Command


class ResourceKind(enum.Enum):
    """The rows of a call's table, declared in teardown order."""

    BOT = "bot"  # the bot's WebSocket session (its delete also cancels a connect in flight)
    MEDIA_CHANNEL = "media_channel"  # the ExternalMedia channel
    TARGET = "target"  # a transfer target's channel (bridge.call.transfer)
    # Recordings are stopped before what they record goes (bridge.call.recorder).
    RECORDING = "recording"  # the bridge's recording: both sides mixed
    TRACK_IN = "track_in"  # the recording of what the caller says (its snoop, spy=in)
    TRACK_OUT = "track_out"  # the recording of what the caller hears (spy=out)
    SNOOP_IN = "snoop_in"
    SNOOP_OUT = "snoop_out"
    RINGBACK = "ringback"  # what a caller hears while a blind transfer's target rings
    HOLD = "hold"  # what the caller hears while the bot is away
    CALLER = "caller"  # the caller's channel: its way out is the call's fallback plan
    BRIDGE = "bridge"  # the mixing bridge
    MEDIA_LEG = "media_leg"  # our local media endpoint


class Life(enum.Enum):
    """Lifecycle of one resource the call owns."""

    NONE = "none"
    CREATING = "creating"
    UP = "up"
    DELETING = "deleting"
    GONE = "gone"


HELD = (Life.CREATING, Life.UP, Life.DELETING)
IN_FLIGHT = (Life.CREATING, Life.DELETING)


@dataclass(slots=True)
class Resource:
    kind: ResourceKind
    life: Life = Life.NONE
    delete: Command | None = None  # what removes it; None: the call's own plan (the caller)
    cancels: bool = False  # the delete also cancels a creation still in flight
    unsure: bool = False  # its creation timed out: Asterisk may have made it all the same
    in_app: bool = False  # a channel whose StasisStart was seen
    joined: bool = False  # a channel added to the call's bridge

    def __repr__(self) -> str:
        extra = "".join(f" {f}" for f in ("unsure", "in_app", "joined") if getattr(self, f))
        return f"<{self.kind.name} {self.life.name}{extra}>"


class Resources:
    """The table. Methods that can require a delete return it, for the machine to send."""

    def __init__(self) -> None:
        self._rows = {kind: Resource(kind) for kind in ResourceKind}

    def __getitem__(self, kind: ResourceKind) -> Resource:
        return self._rows[kind]

    def __iter__(self) -> Iterator[Resource]:
        return iter(self._rows.values())

    def __repr__(self) -> str:
        return f"Resources({', '.join(repr(r) for r in self if r.life is not Life.NONE)})"

    def life(self, kind: ResourceKind) -> Life:
        return self._rows[kind].life

    def is_held(self, kind: ResourceKind) -> bool:
        """Created, being created or being deleted: something of it may exist."""
        return self._rows[kind].life in HELD

    def held(self) -> list[ResourceKind]:
        """What exists or may exist, in teardown order."""
        return [row.kind for row in self if row.life in HELD]

    def in_flight(self) -> bool:
        """A creation or a delete whose answer will still change what is left."""
        return any(row.life in IN_FLIGHT for row in self)

    def up(self, kind: ResourceKind, delete: Command | None = None) -> None:
        """`kind` exists from the start (the caller's channel, a dialplan call's leg)."""
        self._rows[kind] = Resource(kind, Life.UP, delete)

    def creating(self, kind: ResourceKind, delete: Command, *, cancels: bool = False) -> None:
        """Asked for `kind`; `delete` will remove it (`cancels`: even while in flight)."""
        self._rows[kind] = Resource(kind, Life.CREATING, delete, cancels)

    def created(self, kind: ResourceKind) -> Command | None:
        """Its creation was answered: UP, or the delete to send if teardown came first."""
        row = self._rows[kind]
        if row.life is Life.DELETING:
            return row.delete
        if row.life is Life.CREATING:
            row.life = Life.UP
        return None

    def creation_failed(self, kind: ResourceKind, *, answered: bool) -> Command | None:
        """Its creation failed: with an HTTP answer it does not exist; without one it may
        (unsure), so it stays to be deleted (the delete to send if teardown came first)."""
        row = self._rows[kind]
        if answered:
            row.life = Life.GONE
            return None
        row.unsure = True
        if row.life is Life.DELETING:
            return row.delete
        row.life = Life.UP
        return None

    def teardown(self, kind: ResourceKind) -> Command | None:
        """Start removing `kind`: the delete to send now, or None (nothing there, or its
        creation is still in flight: `created` gives the delete when it lands)."""
        row = self._rows[kind]
        if row.life is Life.UP or (row.life is Life.CREATING and row.cancels):
            row.life = Life.DELETING
            return row.delete
        if row.life is Life.CREATING:
            row.life = Life.DELETING
        return None

    def gone(self, kind: ResourceKind) -> None:
        self._rows[kind].life = Life.GONE

    def deleted_by(self, cmd: Command) -> ResourceKind | None:
        """The row `cmd` deletes (identity), now GONE; None if it deletes no row."""
        for row in self:
            if row.delete is cmd:
                row.life = Life.GONE
                return row.kind
        return None
