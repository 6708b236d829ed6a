"""BridgeMetrics: hand-made read models into `observe`, the text of `render()` parsed back.

A fake controller holds just what a scrape reads; one test runs a real Controller against the
simulated Asterisk and the echo bot.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from bridge.call.commands import EndedBy
from bridge.call.machine import CallState, StateChanged
from bridge.call.view import CallView, Direction, Milestone
from bridge.media.ports import PortPool
from bridge.media.ticker import Ticker
from bridge.ops.metrics import BridgeMetrics, failure_reason, reject_reason
from bridge.ops.webhooks import WebhookCounters
from tests.integration.conftest import running_rig

T0 = 1_700_000_000.0
MEDIA = {
    "rx_packets": 100,
    "tx_packets": 90,
    "tx_silence": 5,
    "rx_lost": 2,
    "rx_late": 1,
    "rx_reordered": 3,
    "rx_duplicate": 0,
    "rx_silence_filled": 7,
    "tx_overflow_bytes": 0,
    "tx_queued_ms": 0,
    "bot_sent": 95,
    "bot_dropped": 4,
    "bot_bad_messages": 1,
    "bot_audio_bytes": 14400,
    "dtmf": 2,
}


def view(call_id: str = "c1", state: CallState = CallState.UP, **kw: Any) -> CallView:
    values: dict[str, Any] = {
        "id": call_id,
        "state": state,
        "direction": Direction.INBOUND,
        "transport": "rtp",
        "dialect": "twilio",
        "bot_url": "ws://bot",
        "caller": "100",
        "called": "200",
        "channel_id": f"ch-{call_id}",
        "started_at": T0,
        "media": MEDIA,
    }
    values.update(kw)
    return CallView(**values)


def ended(
    call_id: str = "c1", reason: str = "caller hung up", by: EndedBy = EndedBy.CALLER, **kw: Any
) -> CallView:
    kw.setdefault("bot_connected_at", T0 + 1.5)
    kw.setdefault("ended_at", T0 + 61.5)
    return view(call_id, CallState.ENDED, end_reason=reason, ended_by=by, **kw)


@dataclass
class FakeCall:
    current: CallView

    def view(self) -> CallView:
        return self.current


@dataclass
class FakeRegistry:
    calls: dict[str, FakeCall] = field(default_factory=dict)
    active: dict[str, str] = field(default_factory=dict)

    def add(self, v: CallView, *, rejected: bool = False) -> None:
        self.calls[v.id] = FakeCall(v)
        if not rejected:
            self.active[v.id] = v.transport


def fake_controller(**kw: Any) -> SimpleNamespace:
    connected = asyncio.Event()
    connected.set()
    values: dict[str, Any] = {
        "registry": FakeRegistry(),
        "media": SimpleNamespace(
            pool=PortPool(30000, 30009),
            audiosocket=SimpleNamespace(
                counters={"accepted": 4, "rejected": 1, "dialplan_calls": 2}
            ),
            websocket=None,
        ),
        "ticker": Ticker(),
        "events": SimpleNamespace(connects=3, bad_events=2, connected=connected),
        "reconciler": SimpleNamespace(resyncs=3),
        "settings": SimpleNamespace(ari_enabled=True),
        "draining": False,
    }
    values.update(kw)
    return SimpleNamespace(**values)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def scrape(metrics: BridgeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    body, content_type = metrics.render()
    assert content_type == CONTENT_TYPE_LATEST and content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def finish(metrics: BridgeMetrics, registry: FakeRegistry, v: CallView) -> None:
    """As the runner does: the ENDED view to the observers, then out of the registry."""
    metrics.observe(v, StateChanged(CallState.ENDING, CallState.ENDED, v.end_reason, v.ended_by))
    registry.calls.pop(v.id, None)
    registry.active.pop(v.id, None)


# ---- outcomes and reasons -------------------------------------------------------------------


def test_an_idle_bridge_has_every_series_at_zero() -> None:
    samples = scrape(BridgeMetrics(fake_controller()))
    for transport in ("rtp", "audiosocket", "websocket"):
        assert value(samples, "pipecat_bridge_calls_active", transport=transport) == 0
        assert value(samples, "pipecat_bridge_media_rx_packets_total", transport=transport) == 0
    for outcome in ("completed", "failed", "rejected"):
        assert value(samples, "pipecat_bridge_calls_total", outcome=outcome) == 0
    assert value(samples, "pipecat_bridge_calls_failed_total", reason="bot_unreachable") == 0
    assert value(samples, "pipecat_bridge_calls_rejected_total", reason="full") == 0
    assert value(samples, "pipecat_bridge_bot_failures_total", reason="dropped") == 0
    assert value(samples, "pipecat_bridge_call_setup_seconds_count") == 0
    assert value(samples, "pipecat_bridge_call_duration_seconds_bucket", le="+Inf") == 0
    assert value(samples, "pipecat_bridge_playout_queue_seconds") == 0
    assert value(samples, "pipecat_bridge_rtp_ports") == 5
    assert value(samples, "pipecat_bridge_rtp_ports_free") == 5
    assert value(samples, "pipecat_bridge_draining") == 0
    assert value(samples, "pipecat_bridge_pacing_lateness_seconds_count") == 0
    names = {name for name, _ in samples}
    assert all(n.startswith(("pipecat_bridge_", "process_")) for n in names)
    assert not any(n.startswith("pipecat_bridge_webhook") for n in names)  # no webhooks here


def test_calls_end_completed_failed_or_rejected() -> None:
    controller = fake_controller()
    registry = controller.registry
    metrics = BridgeMetrics(controller)
    cases = [
        (ended("a", "caller hung up", EndedBy.CALLER), False),
        (ended("b", "bot ended the call", EndedBy.BOT), False),
        (ended("c", "hung up by the API", EndedBy.API), False),
        (
            ended(
                "d", "ConnectBot failed: refused", EndedBy.BOT, fallback=True, bot_connected_at=None
            ),
            False,
        ),
        (ended("e", "bot closed abnormally (code 1011)", EndedBy.BOT, fallback=True), False),
        (ended("f", "bridge destroyed", EndedBy.ASTERISK, fallback=True), False),
        (ended("g", "bridge shutting down", EndedBy.BRIDGE), False),
        (
            ended("h", "max calls reached", EndedBy.BRIDGE, fallback=True, bot_connected_at=None),
            True,
        ),
        (ended("i", "bridge draining", EndedBy.BRIDGE, fallback=True, bot_connected_at=None), True),
    ]
    for v, rejected in cases:
        registry.add(v, rejected=rejected)
        finish(metrics, registry, v)
    samples = scrape(metrics)
    assert value(samples, "pipecat_bridge_calls_total", outcome="completed") == 3
    assert value(samples, "pipecat_bridge_calls_total", outcome="failed") == 4
    assert value(samples, "pipecat_bridge_calls_total", outcome="rejected") == 2
    failed = {
        r: value(samples, "pipecat_bridge_calls_failed_total", reason=r)
        for r in ("bot_unreachable", "bot_dropped", "asterisk_gone", "shutdown", "other")
    }
    assert failed == {
        "bot_unreachable": 1,
        "bot_dropped": 1,
        "asterisk_gone": 1,
        "shutdown": 1,
        "other": 0,
    }
    assert value(samples, "pipecat_bridge_calls_rejected_total", reason="full") == 1
    assert value(samples, "pipecat_bridge_calls_rejected_total", reason="draining") == 1
    assert value(samples, "pipecat_bridge_bot_failures_total", reason="unreachable") == 1
    assert value(samples, "pipecat_bridge_bot_failures_total", reason="dropped") == 1
    # Durations of the 7 calls taken (61.5 s each), talk time of the 6 that had a bot.
    assert value(samples, "pipecat_bridge_call_duration_seconds_count") == 7
    assert value(samples, "pipecat_bridge_call_duration_seconds_sum") == 7 * 61.5
    assert value(samples, "pipecat_bridge_call_duration_seconds_bucket", le="60.0") == 0
    assert value(samples, "pipecat_bridge_call_duration_seconds_bucket", le="120.0") == 7
    assert value(samples, "pipecat_bridge_call_talk_seconds_count") == 6
    assert value(samples, "pipecat_bridge_call_talk_seconds_sum") == 6 * 60.0


def test_transfers_and_recordings_of_ended_calls_are_counted() -> None:
    controller = fake_controller()
    metrics = BridgeMetrics(controller)
    answered = {"target": "PJSIP/1", "mode": "blind", "target_channel": "x", "outcome": "answered"}
    busy = {**answered, "outcome": "failed: busy"}
    done = {"name": "a", "format": "wav", "track": "mixed", "state": "done", "file": "a.wav"}
    cases = [
        ended("a", "transfer target hung up", EndedBy.TARGET, transfer=answered,
              recordings=(done,)),
        ended("b", "transfer to PJSIP/1 failed: busy", EndedBy.TARGET, fallback=True,
              transfer=busy, recordings=({**done, "state": "failed", "error": "x"},)),
        ended("c", "caller hung up", EndedBy.CALLER, transfer=busy),
    ]  # fmt: skip
    for v in cases:
        controller.registry.add(v)
        finish(metrics, controller.registry, v)
    samples = scrape(metrics)
    assert value(samples, "pipecat_bridge_transfers_total", outcome="answered") == 1
    assert value(samples, "pipecat_bridge_transfers_total", outcome="busy") == 2
    assert value(samples, "pipecat_bridge_transfers_total", outcome="no_answer") == 0
    assert value(samples, "pipecat_bridge_recordings_total", state="done") == 1
    assert value(samples, "pipecat_bridge_recordings_total", state="failed") == 1
    assert value(samples, "pipecat_bridge_calls_failed_total", reason="transfer_failed") == 1
    assert value(samples, "pipecat_bridge_calls_total", outcome="completed") == 2


def test_end_reasons_map_to_a_closed_set() -> None:
    def failed(reason: str, by: EndedBy = EndedBy.BRIDGE) -> str:
        return failure_reason(ended(reason=reason, by=by, fallback=True))

    assert failed("ConnectBot failed", EndedBy.BOT) == "bot_unreachable"  # a dialplan call
    assert failed("ConnectBot failed: BotConnectError: 403", EndedBy.BOT) == "bot_unreachable"
    assert failed("bot closed abnormally (code None bot stopped reading)") == "bot_dropped"
    assert failed("CreateBridge failed: 500 boom") == "setup_failed"
    assert failed("AddChannels failed: 422 channel not in Stasis") == "setup_failed"
    assert failed("OpenMedia failed: no free RTP port") == "media_failed"
    assert failed("setup timed out") == "setup_timeout"
    assert failed("media failed: send failed: OSError()") == "media_failed"
    assert failed("media stream closed by Asterisk", EndedBy.ASTERISK) == "asterisk_gone"
    assert failed("media channel went away", EndedBy.ASTERISK) == "asterisk_gone"
    assert failed("bridge or media channel gone") == "asterisk_gone"
    assert failed("something new", EndedBy.ASTERISK) == "asterisk_gone"
    assert failed("bot never came back", EndedBy.BOT) == "bot_dropped"
    assert failed("something new") == "other"

    def rejected(reason: str) -> str:
        return reject_reason(ended(reason=reason, by=EndedBy.BRIDGE, fallback=True))

    assert rejected("max calls reached") == "full"
    assert rejected("no free RTP port") == "no_rtp_port"
    assert rejected("bridge draining") == "draining"
    assert rejected("unknown bot 'sales' (not in --bot-map)") == "bad_arguments"
    assert rejected("unknown dialect 'twillio'") == "bad_arguments"
    assert rejected("unknown transport 'udp'") == "bad_arguments"
    assert rejected("transport audiosocket needs --audiosocket-listen") == "transport_unavailable"
    assert rejected("left waiting by an earlier run") == "orphaned"
    assert rejected("a reason nobody wrote yet") == "other"


def test_setup_time_is_start_to_up_on_the_clock_given() -> None:
    clock = Clock()
    metrics = BridgeMetrics(fake_controller(), clock=clock)
    clock.now = T0 + 0.7
    metrics.observe(view(state=CallState.UP), StateChanged(CallState.SETUP, CallState.UP))
    metrics.observe(view(), Milestone("bot_connected"))  # not a state change: ignored
    samples = scrape(metrics)
    assert value(samples, "pipecat_bridge_call_setup_seconds_count") == 1
    assert value(samples, "pipecat_bridge_call_setup_seconds_sum") == pytest.approx(0.7)
    assert value(samples, "pipecat_bridge_call_setup_seconds_bucket", le="0.5") == 0
    assert value(samples, "pipecat_bridge_call_setup_seconds_bucket", le="1.0") == 1


# ---- counters from per-call stats ---------------------------------------------------------


def test_media_counters_are_finished_totals_plus_calls_in_progress() -> None:
    controller = fake_controller()
    registry = controller.registry
    metrics = BridgeMetrics(controller)
    registry.add(view("live-1", media={**MEDIA, "tx_queued_ms": 120}))
    registry.add(
        view("live-2", transport="websocket", media={"rx_packets": 10, "tx_queued_ms": 60})
    )
    registry.add(view("live-3", transport="audiosocket", media={"rx_frames": 50, "tx_packets": 40}))
    samples = scrape(metrics)
    assert value(samples, "pipecat_bridge_calls_active", transport="rtp") == 1
    assert value(samples, "pipecat_bridge_calls_active", transport="websocket") == 1
    assert value(samples, "pipecat_bridge_media_rx_packets_total", transport="rtp") == 100
    assert value(samples, "pipecat_bridge_media_rx_packets_total", transport="websocket") == 10
    assert value(samples, "pipecat_bridge_media_rx_packets_total", transport="audiosocket") == 50
    assert value(samples, "pipecat_bridge_playout_queue_seconds") == 0.18
    # live-1 ends with higher counters; a new RTP call starts: nothing counted twice or lost.
    finish(metrics, registry, ended("live-1", media={**MEDIA, "rx_packets": 150, "rx_lost": 4}))
    registry.add(view("live-4", media={"rx_packets": 7, "tx_packets": 7}))
    samples = scrape(metrics)
    assert value(samples, "pipecat_bridge_calls_active", transport="rtp") == 1
    assert value(samples, "pipecat_bridge_calls_total", outcome="completed") == 1
    assert value(samples, "pipecat_bridge_media_rx_packets_total", transport="rtp") == 157
    assert value(samples, "pipecat_bridge_media_tx_packets_total", transport="rtp") == 97
    assert value(samples, "pipecat_bridge_media_rx_lost_total", transport="rtp") == 4
    assert value(samples, "pipecat_bridge_media_rx_late_total", transport="rtp") == 1
    assert value(samples, "pipecat_bridge_media_rx_reordered_total", transport="rtp") == 3
    assert value(samples, "pipecat_bridge_media_rx_silence_filled_total", transport="rtp") == 7
    assert value(samples, "pipecat_bridge_media_tx_silence_total", transport="rtp") == 5
    assert value(samples, "pipecat_bridge_bot_messages_sent_total") == 95
    assert value(samples, "pipecat_bridge_bot_messages_dropped_total") == 4
    assert value(samples, "pipecat_bridge_bot_messages_rejected_total") == 1
    assert value(samples, "pipecat_bridge_bot_audio_bytes_total") == 14400
    assert value(samples, "pipecat_bridge_dtmf_forwarded_total") == 2
    assert value(samples, "pipecat_bridge_playout_queue_seconds") == 0.06


def test_a_call_already_counted_is_not_counted_again_while_still_registered() -> None:
    controller = fake_controller()
    metrics = BridgeMetrics(controller)
    v = ended("c1")
    controller.registry.add(v)
    metrics.observe(v, StateChanged(CallState.ENDING, CallState.ENDED))  # not removed yet
    samples = scrape(metrics)
    assert value(samples, "pipecat_bridge_media_rx_packets_total", transport="rtp") == 100


# ---- the rest of the process -----------------------------------------------------------


def test_listeners_ports_ari_pacing_and_webhooks() -> None:
    webhooks = SimpleNamespace(
        sender=SimpleNamespace(
            counters=WebhookCounters(delivered=8, failed_attempts=3, dropped=1, pending=2)
        )
    )
    controller = fake_controller(webhooks=webhooks, draining=True)
    controller.media.pool.acquire()
    ticker = controller.ticker
    ticker.lateness_counts[:] = [40, 5, 3, 1, 1, 0, 0, 1]
    ticker.lateness_sum = 0.25
    ticker.skipped_frames = 6
    samples = scrape(BridgeMetrics(controller))
    assert value(samples, "pipecat_bridge_rtp_ports_free") == 4
    assert (
        value(
            samples,
            "pipecat_bridge_listener_connections_total",
            listener="audiosocket",
            result="accepted",
        )
        == 4
    )
    assert (
        value(
            samples,
            "pipecat_bridge_listener_connections_total",
            listener="audiosocket",
            result="rejected",
        )
        == 1
    )
    assert (
        "pipecat_bridge_listener_connections_total",
        (("listener", "websocket"), ("result", "accepted")),
    ) not in samples
    assert value(samples, "pipecat_bridge_ari_events_connected") == 1
    assert value(samples, "pipecat_bridge_ari_events_reconnects_total") == 2
    assert value(samples, "pipecat_bridge_ari_events_rejected_total") == 2
    assert value(samples, "pipecat_bridge_ari_resyncs_total") == 3
    assert value(samples, "pipecat_bridge_draining") == 1
    lateness = "pipecat_bridge_pacing_lateness_seconds"
    assert value(samples, f"{lateness}_bucket", le="0.001") == 40
    assert value(samples, f"{lateness}_bucket", le="0.005") == 48
    assert value(samples, f"{lateness}_bucket", le="0.1") == 50
    assert value(samples, f"{lateness}_bucket", le="+Inf") == 51
    assert value(samples, f"{lateness}_count") == 51
    assert value(samples, f"{lateness}_sum") == 0.25
    assert value(samples, "pipecat_bridge_pacing_skipped_frames_total") == 6
    assert value(samples, "pipecat_bridge_webhook_deliveries_total", result="delivered") == 8
    assert value(samples, "pipecat_bridge_webhook_deliveries_total", result="dropped") == 1
    assert value(samples, "pipecat_bridge_webhook_failed_attempts_total") == 3
    assert value(samples, "pipecat_bridge_webhook_pending") == 2


def test_without_ari_no_events_socket_series() -> None:
    controller = fake_controller(settings=SimpleNamespace(ari_enabled=False))
    names = {name for name, _ in scrape(BridgeMetrics(controller))}
    assert not any(n.startswith("pipecat_bridge_ari_") for n in names)


async def test_the_ticker_counts_its_wake_ups_by_lateness() -> None:
    ticker = Ticker()
    ticked = asyncio.get_running_loop().create_future()

    class Member:
        def on_tick(self, frames: int, skipped: int) -> None:
            if not ticked.done():
                ticked.set_result(frames)

        def on_tick_error(self, exc: Exception) -> None:
            raise AssertionError(exc)

    member = Member()
    ticker.add(member)
    try:
        await asyncio.wait_for(ticked, 1)
    finally:
        ticker.remove(member)
    assert sum(ticker.lateness_counts) >= 1
    assert ticker.lateness_sum >= 0
    samples = scrape(BridgeMetrics(fake_controller(ticker=ticker)))
    assert value(samples, "pipecat_bridge_pacing_lateness_seconds_count") >= 1


def test_render_cost_with_500_calls() -> None:
    """The figure in the module docstring: 500 calls in progress, a fresh view per call."""

    class BuildingCall:
        def __init__(self, n: int) -> None:
            self.n = n

        def view(self) -> CallView:  # as Call.view(): a new media dict and CallView each time
            media = {
                **MEDIA,
                "rx_jumps": 0,
                "rx_ssrc_changes": 0,
                "rx_restarts": 0,
                "rx_bad": 0,
                "rx_wrong_pt": 0,
                "rx_oversize": 0,
                "rx_wrong_source": 0,
                "rx_before_start": 0,
                "tx_overflow_bursts": 0,
                "tx_queued_ms": 40,
            }
            return view(f"c{self.n}", media=media)

    controller = fake_controller()
    for n in range(500):
        controller.registry.calls[f"c{n}"] = BuildingCall(n)
        controller.registry.active[f"c{n}"] = "rtp"
    metrics = BridgeMetrics(controller)
    samples = scrape(metrics)
    assert value(samples, "pipecat_bridge_calls_active", transport="rtp") == 500
    assert value(samples, "pipecat_bridge_media_rx_packets_total", transport="rtp") == 50_000
    assert value(samples, "pipecat_bridge_playout_queue_seconds") == 20.0
    runs = 20
    started = time.perf_counter()
    for _ in range(runs):
        metrics.render()
    per_render = (time.perf_counter() - started) / runs
    print(f"render() with 500 calls: {per_render * 1000:.2f} ms")
    assert per_render < 0.1  # generous, for a loaded CI machine; ~9 ms on a quiet one


# ---- a real bridge ------------------------------------------------------------------------


async def test_a_real_call_moves_calls_active_and_calls_total() -> None:
    async with running_rig(hangup_after=1.0) as rig:
        controller = rig.controller
        up = asyncio.get_running_loop().create_future()

        def on_change(v: CallView, change: Any) -> None:
            if isinstance(change, StateChanged) and change.new is CallState.UP:
                up.set_result(v)

        controller.observers.append(on_change)
        before = scrape(controller.metrics)
        assert value(before, "pipecat_bridge_calls_active", transport="rtp") == 0
        await rig.sim.place_call("basic_ulaw")
        await asyncio.wait_for(up, 10)
        during = scrape(controller.metrics)
        assert value(during, "pipecat_bridge_calls_active", transport="rtp") == 1
        ports = value(during, "pipecat_bridge_rtp_ports")
        assert value(during, "pipecat_bridge_rtp_ports_free") == ports - 1
        assert value(during, "pipecat_bridge_call_setup_seconds_count") == 1
        await rig.wait_idle()
        after = scrape(controller.metrics)
    assert value(after, "pipecat_bridge_calls_active", transport="rtp") == 0
    assert value(after, "pipecat_bridge_calls_total", outcome="completed") == 1
    assert value(after, "pipecat_bridge_calls_total", outcome="failed") == 0
    assert value(after, "pipecat_bridge_call_duration_seconds_count") == 1
    assert value(after, "pipecat_bridge_call_talk_seconds_count") == 1
    rx = value(after, "pipecat_bridge_media_rx_packets_total", transport="rtp")
    assert rx >= value(during, "pipecat_bridge_media_rx_packets_total", transport="rtp")
    assert rx > 0
    assert value(after, "pipecat_bridge_media_tx_packets_total", transport="rtp") > 0
    assert value(after, "pipecat_bridge_bot_messages_sent_total") > 0
    assert value(after, "pipecat_bridge_pacing_lateness_seconds_count") > 0
    assert value(after, "pipecat_bridge_ari_events_connected") == 1
