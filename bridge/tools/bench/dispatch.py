"""StasisBroadcast as the load generator plays it, and the numbers of a run's dispatch. Pure.

`Offers` is Asterisk's side of `StasisBroadcast(timeout,^filter)` + `POST /events/claim`, as
recorded in `broadcast_claim` (see that recording's notes.md):

    offer(channel, apps, now)   CallBroadcast to every matching app (the caller is in none)
    claim(channel, app, now)    the first claim: 204, the caller's StasisStart to that app
                                at once; any later one while the call lasts: 409; a claim
                                after the timeout or the hang-up, or for a channel never
                                offered: 404 (no channelId: 400, answered by the adapter)
    expire(now)                 offers nobody claimed within the timeout: the dialplan goes
                                on (STASISSTATUS=TIMEOUT); a claim for one of them is a 404
    forget(channel)             the caller hung up

The clock is passed in (the adapter uses `time.monotonic()`), so the claim latency, offer to
the winning claim's arrival, is arithmetic on recorded times. `summarize` turns the records
into what the bench prints: per app the calls won and the claims lost, the latency p50/p99,
and each app's share of the calls against an even split.

`policy_wait` is what the bridge's own claim policy (`bridge.service.claim`) makes the least
loaded process wait on purpose before it claims: subtracted from the latency, it leaves what
the claiming itself adds (event out, REST request in).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.service.claim import ClaimPolicy, load_of

WON, CLAIMED, GONE = 204, 409, 404


@dataclass(slots=True)
class Offer:
    channel_id: str
    apps: tuple[str, ...]  # the apps that got the CallBroadcast
    offered_at: float
    timeout: float
    policy_wait: float = math.nan  # the bridge policy's wait for the least loaded app
    winner: str = ""
    claimed_at: float = math.nan
    claims: list[tuple[str, int, float]] = field(default_factory=list)  # (app, status, at)
    open: bool = True  # still in broadcast state, or in the winner's Stasis

    @property
    def latency(self) -> float:
        """Offer to the winning claim's arrival (= the StasisStart going out), seconds."""
        return self.claimed_at - self.offered_at


class Offers:
    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"broadcast timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.offers: dict[str, Offer] = {}
        self.timed_out: list[str] = []
        self.stray_claims = 0  # claims for a channel that was never offered

    def offer(self, channel_id: str, apps: Sequence[str], now: float,
              policy_wait: float = math.nan) -> Offer:  # fmt: skip
        if channel_id in self.offers:
            raise ValueError(f"channel {channel_id} is offered already")
        offer = Offer(channel_id, tuple(apps), now, self.timeout, policy_wait)
        self.offers[channel_id] = offer
        return offer

    def claim(self, channel_id: str, app: str, now: float) -> int:
        """The status Asterisk answers this claim with: 204, 409 or 404."""
        offer = self.offers.get(channel_id)
        if offer is None:
            self.stray_claims += 1
            return GONE
        status = GONE
        if offer.open and offer.winner:
            status = CLAIMED
        elif offer.open and now - offer.offered_at <= offer.timeout:
            status = WON
            offer.winner, offer.claimed_at = app, now
        elif offer.open:  # past the timeout, whether or not `expire` ran yet
            self._time_out(offer)
        offer.claims.append((app, status, now))
        return status

    def expire(self, now: float) -> list[str]:
        """Offers whose timeout passed unclaimed; each is over (its caller goes on)."""
        gone = [o for o in self.offers.values()
                if o.open and not o.winner and now - o.offered_at > o.timeout]  # fmt: skip
        for offer in gone:
            self._time_out(offer)
        return [o.channel_id for o in gone]

    def forget(self, channel_id: str) -> None:
        """The caller left (hung up): a claim from now on is a 404."""
        offer = self.offers.get(channel_id)
        if offer is not None:
            offer.open = False

    def _time_out(self, offer: Offer) -> None:
        offer.open = False
        self.timed_out.append(offer.channel_id)


def policy_wait(
    active: Mapping[str, int],
    timeout: float,
    max_delay_ms: float = 150.0,
    max_calls: int = 0,
) -> float:
    """Seconds the least loaded of `active`'s apps (calls in progress each) waits before it
    claims, by the bridge's policy with --claim-max-delay-ms and the app's --max-calls."""
    if not active:
        return math.nan
    policy = ClaimPolicy(max_delay=max_delay_ms / 1000)
    return min(policy.delay(load_of(n, max_calls), timeout) for n in active.values())


# ---- the numbers ---------------------------------------------------------------------------


def percentiles(values: Sequence[float], *qs: float) -> tuple[float, ...]:
    """Nearest-rank-interpolated percentiles (numpy's default), nan for no values."""
    if not values:
        return tuple(math.nan for _ in qs)
    ordered = sorted(values)
    out = []
    for q in qs:
        pos = (len(ordered) - 1) * q / 100
        low = math.floor(pos)
        high = min(low + 1, len(ordered) - 1)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))
    return tuple(out)


def shares(won: Mapping[str, int]) -> dict[str, float]:
    """Each app's fraction of the calls won."""
    total = sum(won.values())
    return {app: (n / total if total else math.nan) for app, n in won.items()}


def split_deviation(won: Mapping[str, int]) -> float:
    """The largest relative distance of an app's share from an even split: 0.1 means some
    app took 10 % more (or less) than 1/N of the calls. nan without calls."""
    total = sum(won.values())
    if not won or not total:
        return math.nan
    even = total / len(won)
    return max(abs(n - even) / even for n in won.values())


def summarize(offers: Iterable[Offer], apps: Sequence[str]) -> dict[str, Any]:
    """JSON-able numbers of a run's broadcast dispatch. `apps`: every app that was connected,
    so one that never won shows up with 0."""
    offers = list(offers)
    per: dict[str, list[int]] = {app: [0, 0, 0] for app in apps}
    latencies: list[float] = []
    added: list[float] = []
    unclaimed = 0
    offered = 0
    for offer in offers:
        offered += 1
        for app, status, _at in offer.claims:
            counts = per.setdefault(app, [0, 0, 0])
            counts[{WON: 0, CLAIMED: 1, GONE: 2}[status]] += 1
        if not offer.winner:
            unclaimed += 1
            continue
        latencies.append(offer.latency)
        if not math.isnan(offer.policy_wait):
            added.append(offer.latency - offer.policy_wait)
    won = {app: c[0] for app, c in per.items()}
    p50, p99, pmax = percentiles(latencies, 50, 99, 100)
    a50, a99 = percentiles(added, 50, 99)
    waits = [o.policy_wait for o in offers if o.winner and not math.isnan(o.policy_wait)]
    w50, w99 = percentiles(waits, 50, 99)
    return {
        "offered": offered,
        "unclaimed": unclaimed,
        "apps": {app: {"won": c[0], "lost_409": c[1], "lost_404": c[2]} for app, c in per.items()},
        "shares": shares(won),
        "split_deviation": split_deviation(won),
        "lost_claims": sum(c[1] + c[2] for c in per.values()),
        "latency_ms": {"p50": p50 * 1e3, "p99": p99 * 1e3, "max": pmax * 1e3},
        "policy_wait_ms": {"p50": w50 * 1e3, "p99": w99 * 1e3},
        "added_ms": {"p50": a50 * 1e3, "p99": a99 * 1e3},
        "latencies_ms": [round(v * 1e3, 3) for v in latencies],
    }
