"""The host's /metrics under --workers (bridge.ops.host_metrics): two workers' real
BridgeMetrics text relabelled and merged, rendered, and parsed back. Pure."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.ops.fanout import WorkerSeat
from bridge.ops.host_metrics import host_families, merged, relabelled, render
from bridge.ops.metrics import BridgeMetrics
from tests.bridge.ops.test_metrics import ended, fake_controller, finish, view

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def worker_text(active_calls: int) -> str:
    """A worker's /metrics as bridge.ops.metrics renders it, `active_calls` in progress and
    one finished."""
    controller = fake_controller()
    metrics = BridgeMetrics(controller)
    for n in range(active_calls):
        controller.registry.add(view(f"c{n}"))
    done = ended("done")
    controller.registry.add(done)
    finish(metrics, controller.registry, done)
    return metrics.render()[0].decode()


def parsed(text: bytes) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, sorted labels); each family's type by name."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text.decode()):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"{key} twice"
            samples[key] = s.value
    return samples, types


def seat(tag: str, state: str, restarts: int = 0) -> WorkerSeat:
    return WorkerSeat(tag=tag, slot=int(tag[0]), generation=0, address=("127.0.0.1", 1),
                      running=state != "restarting", ready=state == "ready",
                      draining=state == "draining", calls=0, restarts=restarts)  # fmt: skip


def test_two_workers_merge_into_one_family_each_with_a_worker_label() -> None:
    one, two = worker_text(active_calls=2), worker_text(active_calls=1)
    body = render(merged([relabelled(one, "0"), relabelled(two, "1g1")]))
    samples, types = parsed(body)
    alone, alone_types = parsed(one.encode())
    # Every family of a worker, once, of the same type; every sample twice, once per worker.
    assert types == alone_types
    assert len(samples) == 2 * len(alone)
    assert all(dict(labels)["worker"] in ("0", "1g1") for _name, labels in samples)
    rtp = (("transport", "rtp"),)
    assert samples[("pipecat_bridge_calls_active", (*rtp, ("worker", "0")))] == 2
    assert samples[("pipecat_bridge_calls_active", (*rtp, ("worker", "1g1")))] == 1
    completed = (("outcome", "completed"),)
    for tag in ("0", "1g1"):
        assert samples[("pipecat_bridge_calls_total", (*completed, ("worker", tag)))] == 1
        # A histogram's buckets keep their `le` beside the new label.
        inf = (("le", "+Inf"), ("worker", tag))
        assert samples[("pipecat_bridge_call_duration_seconds_bucket", inf)] == 1
        assert ("process_cpu_seconds_total", (("worker", tag),)) in samples
    # The text has one HELP and one TYPE per family, not one per worker.
    lines = Counter(line.split(" ")[2] for line in body.decode().splitlines()
                    if line.startswith("# TYPE"))  # fmt: skip
    assert set(lines.values()) == {1}
    assert 'pipecat_bridge_calls_active{transport="rtp",worker="0"} 2.0' in body.decode()


def test_a_family_of_another_type_keeps_the_first_workers() -> None:
    first = relabelled("# TYPE x gauge\nx 1\n", "0")
    other = relabelled("# TYPE x_total counter\nx_total 5\n# TYPE y gauge\ny 2\n", "1")
    samples, types = parsed(render(merged([first, other])))
    assert types == {"x": "gauge", "y": "gauge"}
    assert samples == {("x", (("worker", "0"),)): 1, ("y", (("worker", "1"),)): 2}


@pytest.mark.parametrize("text", ["garbage here\n", 'x{a="b} 1\n', "\x00\n"])
def test_text_that_does_not_parse_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="worker 3: metrics did not parse"):
        relabelled(text, "3")


def test_the_hosts_own_series() -> None:
    seats = [seat("0", "ready", restarts=2), seat("1", "starting"), seat("0g1", "draining")]
    samples, types = parsed(render(host_families(seats, {"1": 3})))
    assert types["pipecat_bridge_host_scrape_errors"] == "counter"
    assert samples[("pipecat_bridge_host_scrape_errors_total", (("worker", "1"),))] == 3
    states = {dict(k[1])["state"]: v for k, v in samples.items()
              if k[0] == "pipecat_bridge_host_workers"}  # fmt: skip
    assert states == {"ready": 1, "starting": 1, "draining": 1, "restarting": 0}
    restarts = ("pipecat_bridge_host_worker_restarts_total", (("worker", "0"),))
    assert samples[restarts] == 2
