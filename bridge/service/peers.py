"""Several bridge hosts on one Asterisk: who is alive, who died, who sweeps it; pure.

Theory of operation. ARI shows no liveness: a dead app stays listed in `GET /applications`
with its channels and bridges, exactly like a live one. So every bridge keeps a heartbeat that
Asterisk holds for it, a global variable it rewrites every --heartbeat-interval
(`bridge.service.peering` does the I/O), and lists that variable in a registry every bridge
reads:

    PIPECAT_BRIDGE_HB_<APP>   "<unix time> <app> <id prefix> <instance>"
    PIPECAT_BRIDGE_PEERS      the heartbeat variables, space-separated

The heartbeat names what its writer creates, its *scope*: one process's --app and --id-prefix
(`pipecat-a pcb-a-`), or a whole `--workers` host's, where `{tag}` stands for any worker tag
(`pipecat-h1-{tag} pcb-h1-{tag}-`: `pipecat-h1-0`, `pcb-h1-1g3-`...). <APP> is the scope's app
without the tag, upper-case, anything but A-Z and 0-9 as `_` (what a dialplan can read back,
`${PIPECAT_BRIDGE_HB_PIPECAT_A}`). The time is the writer's wall clock and the readers compare it
with theirs: the hosts need NTP, and the grace is generous.

The registry is read-modify-write: two bridges starting at once can each write a list without
the other. Each one re-adds itself at every heartbeat that finds it missing, so an entry is
never lost for longer than an interval.

A peer whose heartbeat is older than --peer-grace is dead. Exactly one live peer sweeps it:
the one rendezvous hashing picks among the live ones, so every bridge that reads the same
heartbeats picks the same sweeper (and when that one dies before sweeping, the choice moves
on). A sweeper sweeps a death once: a newer heartbeat is a new life, alive again, and its next
death is swept again. A dead peer whose scope overlaps ours is never swept: it is us, or a
peer configured with our names.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bridge.errors import HeartbeatError

HEARTBEAT_PREFIX = "PIPECAT_BRIDGE_HB_"
REGISTRY = "PIPECAT_BRIDGE_PEERS"
TAG = "{tag}"
# Any worker tag (bridge.service.workers.worker_tag): the slot, then g<generation> after 0.
_TAG_PATTERN = r"\d+(?:g\d+)?"
_NAME = re.compile(re.escape(HEARTBEAT_PREFIX) + r"[A-Z0-9_]+")
_INSTANCE = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")
# A heartbeat value is a handful of short words; anything longer is not one.
MAX_VALUE = 512


def _pattern(text: str) -> re.Pattern[str]:
    literal, tag, rest = text.partition(TAG)
    return re.compile(re.escape(literal) + (_TAG_PATTERN + re.escape(rest) if tag else ""))


@dataclass(frozen=True, slots=True)
class Scope:
    """The app names and the ids one bridge creates: an app and an id prefix, each holding at
    most one `{tag}` (any worker tag). `parse` checks a scope read from somewhere."""

    app: str
    id_prefix: str
    _app_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _id_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_app_re", _pattern(self.app))
        object.__setattr__(self, "_id_re", _pattern(self.id_prefix))

    @classmethod
    def parse(cls, app: str, id_prefix: str) -> Scope:
        """ValueError unless both are one word with at most one `{tag}` and no other brace."""
        for what, text in (("app", app), ("id prefix", id_prefix)):
            if not text or any(c.isspace() for c in text):
                raise ValueError(f"a scope's {what} must be one word")
            if text.count(TAG) > 1 or any(c in "{}" for c in text.replace(TAG, "", 1)):
                raise ValueError(f"a scope's {what} may hold one {TAG} and no other brace")
        return cls(app, id_prefix)

    def owns_app(self, name: str) -> bool:
        return self._app_re.fullmatch(name) is not None

    def created(self, ident: str, kinds: Sequence[str] = ()) -> bool:
        """`ident` starts with our id prefix (and then `<kind>-`, one of `kinds`, if given)."""
        found = self._id_re.match(ident)
        if found is None:
            return False
        if not kinds:
            return True
        return ident[found.end() :].startswith(tuple(f"{kind}-" for kind in kinds))

    def overlaps(self, other: Scope) -> bool:
        """Could one of the two take an app or an id of the other's for its own?"""
        if TAG in self.app or TAG in other.app:
            tagged, literal = (self, other) if TAG in self.app else (other, self)
            apps = (_could_share_a_prefix(self.app, other.app) if TAG in literal.app
                    else tagged.owns_app(literal.app))  # fmt: skip
        else:
            apps = self.app == other.app
        return apps or _could_share_a_prefix(self.id_prefix, other.id_prefix)


def _could_share_a_prefix(a: str, b: str) -> bool:
    """Could one string start with both `a` and `b` (each with at most one tag)? Judged on
    the parts before the tags; a tag begins with a digit."""
    (head_a, tagged_a), (head_b, tagged_b) = ((t.partition(TAG)[0], TAG in t) for t in (a, b))
    if len(head_a) > len(head_b):
        head_a, tagged_a, head_b = head_b, tagged_b, head_a
    if not head_b.startswith(head_a):
        return False
    rest = head_b[len(head_a) :]
    return not tagged_a or not rest or rest[0].isdigit()


def heartbeat_name(scope: Scope) -> str:
    """The global variable holding the heartbeat of `scope`'s writer."""
    base = scope.app.replace(TAG, "")
    clean = re.sub(r"[^A-Z0-9]+", "_", base.upper()).strip("_")
    return HEARTBEAT_PREFIX + (clean or base.encode().hex().upper())


@dataclass(frozen=True, slots=True)
class Heartbeat:
    name: str  # the variable it was read from
    at: float  # the writer's wall clock, unix seconds
    scope: Scope
    instance: str  # the writer's host (--instance-id), for the logs

    def value(self) -> str:
        return f"{self.at:.3f} {self.scope.app} {self.scope.id_prefix} {self.instance}"


def parse_heartbeat(name: str, value: str) -> Heartbeat:
    """The heartbeat in variable `name`; HeartbeatError (one reason each) if it is not one."""
    if len(value) > MAX_VALUE:
        raise HeartbeatError(f"{name}: {len(value)} characters, more than {MAX_VALUE}")
    words = value.split()
    if len(words) != 4:
        raise HeartbeatError(f"{name}: {len(words)} words, not 4 (time app id-prefix instance)")
    at_text, app, id_prefix, instance = words
    try:
        at = float(at_text)
    except ValueError:
        raise HeartbeatError(f"{name}: time {at_text[:32]!r} is not a number") from None
    if not math.isfinite(at) or at < 0:
        raise HeartbeatError(f"{name}: time {at_text[:32]!r} is not a time")
    if not _INSTANCE.fullmatch(instance):
        raise HeartbeatError(f"{name}: instance {instance[:32]!r} is not an instance id")
    try:
        scope = Scope.parse(app, id_prefix)
    except ValueError as exc:
        raise HeartbeatError(f"{name}: {exc}") from None
    return Heartbeat(name, at, scope, instance)


# ---- the registry ----------------------------------------------------------------------


def parse_registry(value: str) -> tuple[str, ...]:
    """The heartbeat variables listed, in order, once each; anything else is skipped (a
    registry is only ever read to find heartbeats, never to act on its words)."""
    names: dict[str, None] = {}
    for word in value.split():
        if _NAME.fullmatch(word):
            names.setdefault(word)
    return tuple(names)


def registry_with(value: str, name: str) -> str | None:
    """The registry with `name` added, or None if it is listed already."""
    names = parse_registry(value)
    return None if name in names else " ".join((*names, name))


def registry_without(value: str, gone: Iterable[str]) -> str | None:
    """The registry without `gone`, or None if none of them is listed."""
    names = parse_registry(value)
    kept = tuple(n for n in names if n not in set(gone))
    return None if kept == names else " ".join(kept)


# ---- who is dead, who sweeps -----------------------------------------------------------


def sweeper_for(dead: str, alive: Iterable[str]) -> str | None:
    """The live peer that sweeps `dead`: the highest hash of (dead, peer). The same answer
    for everyone who sees the same live peers; None if none is alive."""

    def weight(peer: str) -> bytes:
        return hashlib.sha256(f"{dead}\0{peer}".encode()).digest()

    return max(alive, key=weight, default=None)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One look at the heartbeats."""

    alive: tuple[str, ...]  # fresh heartbeats, ourselves always included
    dead: tuple[Heartbeat, ...]  # older than the grace
    newly_dead: tuple[Heartbeat, ...]  # dead since the last look (log it once)
    revived: tuple[Heartbeat, ...]  # dead at the last look, a newer heartbeat now
    to_sweep: tuple[Heartbeat, ...]  # dead, ours to sweep, not swept in this life yet
    refused: tuple[Heartbeat, ...]  # newly dead, but its scope overlaps ours: never swept


class PeerWatch:
    """The policy: which peers are dead, which of them this bridge sweeps now."""

    def __init__(self, me: str, own: Scope, grace: float) -> None:
        if not grace > 0:
            raise ValueError("the grace must be positive")
        self.me = me
        self.own = own
        self.grace = grace
        self._dead: dict[str, float] = {}  # name -> the heartbeat time it died with
        self._swept: dict[str, float] = {}

    def observe(self, now: float, heartbeats: Iterable[Heartbeat]) -> Verdict:
        latest = {hb.name: hb for hb in heartbeats}
        dead = tuple(hb for hb in latest.values()
                     if hb.name != self.me and now - hb.at > self.grace)  # fmt: skip
        dead_names = {hb.name for hb in dead}
        alive = tuple(sorted({self.me, *latest} - dead_names))
        newly = tuple(hb for hb in dead if self._dead.get(hb.name) != hb.at)
        revived = tuple(latest[name] for name in self._dead
                        if name in latest and name not in dead_names)  # fmt: skip
        self._dead = {hb.name: hb.at for hb in dead}
        # A death swept stays swept until that peer shows another heartbeat: a new life.
        self._swept = {n: at for n, at in self._swept.items()
                       if n not in latest or latest[n].at == at}  # fmt: skip
        to_sweep = tuple(
            hb for hb in dead
            if hb.name not in self._swept
            and not hb.scope.overlaps(self.own)
            and sweeper_for(hb.name, alive) == self.me
        )  # fmt: skip
        refused = tuple(hb for hb in newly if hb.scope.overlaps(self.own))
        return Verdict(alive, dead, newly, revived, to_sweep, refused)

    def swept(self, heartbeat: Heartbeat) -> None:
        """`heartbeat`'s death is dealt with: not again until it has a newer one."""
        self._swept[heartbeat.name] = heartbeat.at
