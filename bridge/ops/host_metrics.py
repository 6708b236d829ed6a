"""The host's one `/metrics` under `--workers N`: every worker's text, relabelled; pure.

Each worker's `/metrics` (bridge.ops.metrics) is parsed with prometheus_client's text parser,
every sample gains `worker="<tag>"` (`0`, `1`, ... `0g1` after a reload), and families of the
same name are merged, so `sum by (transport) (pipecat_bridge_calls_active)` is the host's and
`pipecat_bridge_calls_active{worker="1"}` one worker's. The host adds its own few series:

| name | type | labels | meaning |
|---|---|---|---|
| `pipecat_bridge_host_workers` | gauge | `state` | workers kept by the supervisor: ready, starting, draining, restarting |
| `pipecat_bridge_host_worker_restarts_total` | counter | `worker` | times a worker died and was started again |
| `pipecat_bridge_host_scrape_errors_total` | counter | `worker` | scrapes of a worker that got no answer, or text that did not parse |

A worker that does not answer is left out of that scrape (and counted): a restarting worker
never fails the host's scrape. A family whose type differs between workers (code of two
versions during a reload) keeps the first worker's type; the other workers' samples of it are
left out rather than rendered under the wrong type.
"""  # noqa: E501 (the table is the README's, one row a line)

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from bridge.ops.fanout import WORKER_STATES, WorkerSeat

P = "pipecat_bridge_host_"
WORKER_LABEL = "worker"


def relabelled(text: str, tag: str) -> list[Metric]:
    """One worker's exposition, every sample with `worker=tag`; ValueError if it does not
    parse (the parser raises several kinds; all of them mean the same here)."""
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"worker {tag}: metrics did not parse: {exc}") from None
    out = []
    for family in families:
        metric = Metric(family.name, family.documentation, family.type, family.unit)
        for s in family.samples:
            labels = {**s.labels, WORKER_LABEL: tag}
            metric.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
        out.append(metric)
    return out


def merged(per_worker: Iterable[Sequence[Metric]]) -> list[Metric]:
    """Families merged by name, in the order first seen; samples in worker order."""
    by_name: dict[str, Metric] = {}
    for families in per_worker:
        for family in families:
            into = by_name.get(family.name)
            if into is None:
                into = by_name[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            if into.type == family.type:
                into.samples.extend(family.samples)
    return list(by_name.values())


def host_families(seats: Sequence[WorkerSeat], scrape_errors: Mapping[str, int]) -> list[Metric]:
    workers = GaugeMetricFamily(P + "workers", "Workers kept, by state.", labels=["state"])
    for state in WORKER_STATES:
        workers.add_metric([state], sum(1 for seat in seats if seat.state == state))
    restarts = CounterMetricFamily(
        P + "worker_restarts", "Workers started again after dying.", labels=[WORKER_LABEL]
    )
    for seat in seats:
        restarts.add_metric([seat.tag], seat.restarts)
    errors = CounterMetricFamily(
        P + "scrape_errors", "Worker scrapes without a usable answer.", labels=[WORKER_LABEL]
    )
    for tag, count in sorted(scrape_errors.items()):
        errors.add_metric([tag], count)
    return [workers, restarts, errors]


def render(families: Sequence[Metric]) -> bytes:
    """The text exposition of these families (prometheus_client's own renderer)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
