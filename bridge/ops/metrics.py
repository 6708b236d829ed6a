"""`GET /metrics`: the bridge's numbers in the Prometheus text format.

    metrics = BridgeMetrics(controller)        # Controller.__init__ does this
    controller.observers.append(metrics.observe)
    body, content_type = metrics.render()      # the HTTP API serves this

Nothing here runs per packet or per tick. The media legs, bot sockets, listeners and the
shared clock keep plain ints; a finished call's final counters are added to running totals
once, when its `StateChanged(new=ENDED)` reaches `observe`; a scrape reads those totals plus
each call still in progress (`call.view().media`), so a counter never goes backwards and never
counts a call twice. Histograms of call times are fixed-bucket arrays filled once per call.

Outcomes. A call is `rejected` if it was refused at admission (it never became active: full,
draining, a bad argument, a caller an earlier run left waiting); `failed` if the caller got
the fallback or the bridge or Asterisk ended it (`fallback`, `ended_by` bridge/asterisk);
`completed` otherwise (the caller, the bot, or the API hung up). Reasons are a closed set
(`failure_reason`, `reject_reason`), never the raw end reason, so label cardinality stays fixed.

Metrics (counters carry the `_total` suffix in the output; histograms `_bucket/_sum/_count`):

| name | type | labels | meaning |
|---|---|---|---|
| `pipecat_bridge_calls_active` | gauge | `transport` | calls in progress (not rejected), per transport (rtp, audiosocket, websocket) |
| `pipecat_bridge_calls_total` | counter | `outcome` | calls ended: completed, failed, rejected |
| `pipecat_bridge_calls_failed_total` | counter | `reason` | failed calls by why: bot_unreachable, bot_dropped, setup_failed, setup_timeout, media_failed, asterisk_gone, shutdown, other |
| `pipecat_bridge_calls_rejected_total` | counter | `reason` | refused calls by why: full, no_rtp_port, draining, bad_arguments, transport_unavailable, orphaned, other |
| `pipecat_bridge_bot_failures_total` | counter | `reason` | calls whose bot failed them: unreachable (never connected), dropped (closed abnormally, stopped reading) |
| `pipecat_bridge_call_setup_seconds` | histogram | | from the call's start to UP (bridged and bot connected) |
| `pipecat_bridge_call_duration_seconds` | histogram | | from start to end, of calls not rejected |
| `pipecat_bridge_call_talk_seconds` | histogram | | from the bot's connection to the end (calls that had a bot) |
| `pipecat_bridge_media_rx_packets_total` | counter | `transport` | caller audio packets/frames received from Asterisk and delivered |
| `pipecat_bridge_media_tx_packets_total` | counter | `transport` | packets/frames sent to Asterisk (bot audio and silence) |
| `pipecat_bridge_media_tx_silence_total` | counter | `transport` | of those, silence frames sent while the bot had nothing queued |
| `pipecat_bridge_media_rx_lost_total` | counter | `transport` | caller packets never received (RTP sequence gaps) |
| `pipecat_bridge_media_rx_late_total` | counter | `transport` | caller packets that came after their slot was played (dropped) |
| `pipecat_bridge_media_rx_reordered_total` | counter | `transport` | caller packets put back in order |
| `pipecat_bridge_media_rx_duplicate_total` | counter | `transport` | duplicate caller packets dropped |
| `pipecat_bridge_media_rx_silence_filled_total` | counter | `transport` | silence frames given to the bot while the caller sent nothing |
| `pipecat_bridge_media_tx_overflow_bytes_total` | counter | `transport` | bot audio dropped because the playout queue was full |
| `pipecat_bridge_bot_messages_sent_total` | counter | | messages sent to bots |
| `pipecat_bridge_bot_messages_dropped_total` | counter | | messages to a bot not reading fast enough, dropped |
| `pipecat_bridge_bot_messages_rejected_total` | counter | | messages from bots that did not parse in their dialect |
| `pipecat_bridge_bot_audio_bytes_total` | counter | | bot audio received, bytes in the dialect's format |
| `pipecat_bridge_dtmf_forwarded_total` | counter | | DTMF digits forwarded to bots |
| `pipecat_bridge_bot_reconnects_total` | counter | | bot sessions resumed after a drop mid-call |
| `pipecat_bridge_bot_gap_frames_dropped_total` | counter | | caller frames dropped while the bot was away |
| `pipecat_bridge_playout_queue_seconds` | gauge | | bot audio queued and not played yet, summed over calls in progress |
| `pipecat_bridge_pacing_lateness_seconds` | histogram | | how late the shared 20 ms clock woke past each deadline |
| `pipecat_bridge_pacing_skipped_frames_total` | counter | | frame times skipped after a stall of the event loop |
| `pipecat_bridge_rtp_ports` | gauge | | size of the RTP port pool (--rtp-ports) |
| `pipecat_bridge_rtp_ports_free` | gauge | | RTP ports free now |
| `pipecat_bridge_listener_connections_total` | counter | `listener`, `result` | connections to the AudioSocket / WebSocket media listeners: accepted, rejected |
| `pipecat_bridge_ari_events_connected` | gauge | | 1 while the ARI events socket is up (absent without ARI) |
| `pipecat_bridge_ari_events_reconnects_total` | counter | | events socket connections after the first |
| `pipecat_bridge_ari_events_rejected_total` | counter | | ARI events that did not parse |
| `pipecat_bridge_ari_resyncs_total` | counter | | reconciliations with Asterisk after a (re)connect |
| `pipecat_bridge_claims_total` | counter | `result` | claims of StasisBroadcast calls: won, lost (409: another process was first; 404: too late) |
| `pipecat_bridge_peers` | gauge | `state` | peer bridges on this Asterisk at the last look at their heartbeats, this one included: alive, dead (absent without --peer-grace, and on a worker other than slot 0) |
| `pipecat_bridge_peer_sweeps_total` | counter | | dead peers whose leftovers this bridge swept |
| `pipecat_bridge_heartbeat_failures_total` | counter | | heartbeats that could not be written (alert on it: peers take a bridge silent for --peer-grace for dead) |
| `pipecat_bridge_draining` | gauge | | 1 once the bridge stopped taking calls |
| `pipecat_bridge_webhook_deliveries_total` | counter | `result` | webhook deliveries (one event to one URL): delivered, dropped (absent without webhooks) |
| `pipecat_bridge_webhook_failed_attempts_total` | counter | | webhook tries that failed (retried or final) |
| `pipecat_bridge_webhook_pending` | gauge | | webhook deliveries waiting |

Plus the standard `process_*` series (CPU, memory, open fds) of prometheus_client.

Cost: `render()` with 500 calls in progress takes about 9 ms on the 2-core development
machine (`test_render_cost_with_500_calls`): ~6 ms building the 500 views (a real `Call.view()`
measured ~14 µs, 25 media counters), ~1.5 ms for the rest including `process_*`. The event
loop is held that long once per scrape, under one 20 ms tick; the shared clock's absolute
deadlines absorb it (it shows in `pipecat_bridge_pacing_lateness_seconds`).
"""  # noqa: E501 (the table is the README's, one row a line)

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from bridge.bot.control import TransferCause
from bridge.call.commands import EndedBy
from bridge.call.machine import CallState, StateChanged
from bridge.call.view import CallChange, CallView
from bridge.media.factory import TRANSPORTS
from bridge.media.ticker import LATENESS_BUCKETS

P = "pipecat_bridge_"
OUTCOMES = ("completed", "failed", "rejected")
FAILURE_REASONS = ("bot_unreachable", "bot_dropped", "setup_failed", "setup_timeout",
                   "media_failed", "asterisk_gone", "shutdown", "transfer_failed",
                   "other")  # fmt: skip
# A transfer's outcome (bridge.call.transfer): answered, or why it failed.
TRANSFER_OUTCOMES = ("answered", *(c.value for c in TransferCause))
RECORDING_STATES = ("done", "failed")
REJECT_REASONS = ("full", "no_rtp_port", "draining", "bad_arguments", "transport_unavailable",
                  "orphaned", "other")  # fmt: skip
BOT_FAILURES = {"bot_unreachable": "unreachable", "bot_dropped": "dropped"}

SETUP_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

# Per-call counters summed into process totals: (metric, help, the view.media keys holding it,
# labelled by transport). AudioSocket calls its caller packets frames.
CALL_COUNTERS: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("media_rx_packets", "Caller audio packets received and delivered.",
     ("rx_packets", "rx_frames"), True),
    ("media_tx_packets", "Packets sent to Asterisk.", ("tx_packets",), True),
    ("media_tx_silence", "Silence frames sent to Asterisk.", ("tx_silence",), True),
    ("media_rx_lost", "Caller packets lost.", ("rx_lost",), True),
    ("media_rx_late", "Caller packets too late, dropped.", ("rx_late",), True),
    ("media_rx_reordered", "Caller packets reordered.", ("rx_reordered",), True),
    ("media_rx_duplicate", "Duplicate caller packets dropped.", ("rx_duplicate",), True),
    ("media_rx_silence_filled", "Silence frames given to the bot.", ("rx_silence_filled",), True),
    ("media_tx_overflow_bytes", "Bot audio dropped, playout queue full.",
     ("tx_overflow_bytes",), True),
    ("bot_messages_sent", "Messages sent to bots.", ("bot_sent",), False),
    ("bot_messages_dropped", "Messages to bots dropped.", ("bot_dropped",), False),
    ("bot_messages_rejected", "Bot messages that did not parse.", ("bot_bad_messages",), False),
    ("bot_audio_bytes", "Bot audio received, bytes.", ("bot_audio_bytes",), False),
    ("dtmf_forwarded", "DTMF digits forwarded to bots.", ("dtmf",), False),
    ("bot_reconnects", "Bot sessions resumed after a drop mid-call.", ("bot_reconnects",), False),
    ("bot_gap_frames_dropped", "Caller frames dropped while the bot was away.",
     ("caller_frames_dropped",), False),
)  # fmt: skip


# ---- outcomes: closed sets from the read model ------------------------------------------


def outcome(view: CallView, *, rejected: bool) -> str:
    if rejected:
        return "rejected"
    if view.ended_by is EndedBy.API:
        return "completed"
    if view.fallback or view.ended_by in (EndedBy.BRIDGE, EndedBy.ASTERISK):
        return "failed"
    return "completed"


_FAILURE_PREFIXES = (
    ("bot closed abnormally", "bot_dropped"),
    ("setup timed out", "setup_timeout"),
    ("media failed", "media_failed"),
    ("media stream closed by asterisk", "asterisk_gone"),
    ("media channel went away", "asterisk_gone"),
    ("bridge destroyed", "asterisk_gone"),
    ("bridge or media channel gone", "asterisk_gone"),
    ("bridge shutting down", "shutdown"),
    ("transfer to ", "transfer_failed"),  # a blind transfer's target failed: the fallback
)
# "<Command> failed: ..." (or "ConnectBot failed" from a dialplan call).
_FAILED_COMMANDS = {"connectbot": "bot_unreachable", "openmedia": "media_failed"}


def failure_reason(view: CallView) -> str:
    """A failed call's end reason as one of FAILURE_REASONS."""
    reason = view.end_reason.lower()
    for prefix, label in _FAILURE_PREFIXES:
        if reason.startswith(prefix):
            return label
    command, sep, _ = reason.partition(" failed")
    if sep and command.isalpha():
        return _FAILED_COMMANDS.get(command, "setup_failed")
    if view.ended_by is EndedBy.ASTERISK:
        return "asterisk_gone"
    if view.ended_by is EndedBy.BOT:
        return "bot_dropped"
    return "other"


_REJECT_PREFIXES = (
    ("max calls reached", "full"),
    ("no free rtp port", "no_rtp_port"),
    ("bridge draining", "draining"),
    ("unknown bot", "bad_arguments"),
    ("unknown dialect", "bad_arguments"),
    ("unknown transport", "bad_arguments"),
    ("transport audiosocket needs", "transport_unavailable"),
    ("left waiting by an earlier run", "orphaned"),
)


def reject_reason(view: CallView) -> str:
    """A refused call's reason as one of REJECT_REASONS."""
    reason = view.end_reason.lower()
    return next((label for prefix, label in _REJECT_PREFIXES if reason.startswith(prefix)),
                "other")  # fmt: skip


# ---- fixed-bucket histograms --------------------------------------------------------------


class Buckets:
    """A histogram as plain ints: `counts[i]` observations <= bounds[i] (and above the one
    before), the last slot for the rest. The ticker keeps the same shape itself."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


def histogram(
    name: str, doc: str, bounds: Iterable[float], counts: Iterable[int], total: float
) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for le, n in zip([*map(str, bounds), "+Inf"], counts, strict=True):
        cumulative += n
        buckets.append((le, cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


# ---- the metrics ----------------------------------------------------------------------------


class BridgeMetrics:
    """What the controller (`registry`, `media`, `ticker`, `events`, `reconciler`,
    `draining`, optional `webhooks`) and its calls count, for one scrape at a time."""

    def __init__(self, controller: Any, *, clock: Callable[[], float] = time.time) -> None:
        self._controller = controller
        self._clock = clock  # wall clock, as the views' times
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.rejects = dict.fromkeys(REJECT_REASONS, 0)
        self.transfers = dict.fromkeys(TRANSFER_OUTCOMES, 0)
        self.recordings = dict.fromkeys(RECORDING_STATES, 0)
        self.setup = Buckets(SETUP_BUCKETS)
        self.duration = Buckets(DURATION_BUCKETS)
        self.talk = Buckets(DURATION_BUCKETS)
        # Final counters of finished calls, per transport, in CALL_COUNTERS order.
        self.finished: dict[str, list[int]] = {}
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def observe(self, view: CallView, change: CallChange) -> None:
        if not isinstance(change, StateChanged):
            return
        if change.new is CallState.UP:
            self.setup.observe(max(self._clock() - view.started_at, 0.0))
        elif change.new is CallState.ENDED:
            self._ended(view)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _ended(self, view: CallView) -> None:
        # A refused call is registered but was never active; the registry drops a call only
        # after its observers have seen it ended.
        rejected = view.id not in self._controller.registry.active
        result = outcome(view, rejected=rejected)
        self.outcomes[result] += 1
        # Its counters move from the live sum to the totals, whatever the outcome.
        _add_counters(self.finished, view.transport, view.media)
        if view.transfer is not None:
            # Only the call's latest transfer is in its view: a failed one retried counts
            # once, as its last outcome.
            done = view.transfer.get("outcome", "")
            key = "answered" if done == "answered" else done.removeprefix("failed: ")
            if key in self.transfers:
                self.transfers[key] += 1
        for recording in view.recordings:
            if recording.get("state") in self.recordings:
                self.recordings[recording["state"]] += 1
        if result == "rejected":
            self.rejects[reject_reason(view)] += 1
            return
        if result == "failed":
            self.failures[failure_reason(view)] += 1
        if view.duration is not None:
            self.duration.observe(view.duration)
        if view.talk_time is not None:
            self.talk.observe(view.talk_time)

    def in_progress(self) -> Iterator[CallView]:
        """A fresh view of every call not accounted in the totals yet."""
        for call in list(self._controller.registry.calls.values()):
            view = call.view()
            if view.state is not CallState.ENDED:
                yield view


# (view.media key, its slot in CALL_COUNTERS): the one loop a scrape runs per call.
_SLOTS = tuple((key, i) for i, (_, _, keys, _) in enumerate(CALL_COUNTERS) for key in keys)


def _add_counters(totals: dict[str, list[int]], transport: str, media: Mapping[str, int]) -> None:
    slots = totals.get(transport)
    if slots is None:
        slots = totals[transport] = [0] * len(CALL_COUNTERS)
    get = media.get
    for key, i in _SLOTS:
        slots[i] += get(key, 0)


class _Collector:
    """Everything, read at scrape time."""

    def __init__(self, metrics: BridgeMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._calls()
        yield from self._clock()
        yield from self._listeners()
        yield from self._ari()
        yield from self._webhooks()

    def _calls(self) -> Iterator[Metric]:
        m, controller = self._m, self._m._controller
        active = GaugeMetricFamily(P + "calls_active", "Calls in progress.", labels=["transport"])
        per_transport = dict.fromkeys(TRANSPORTS, 0)
        for transport in controller.registry.active.values():
            per_transport[transport] = per_transport.get(transport, 0) + 1
        for transport, n in per_transport.items():
            active.add_metric([transport], n)
        yield active
        yield _labelled_counter("calls", "Calls ended, by outcome.", "outcome", m.outcomes)
        yield _labelled_counter("calls_failed", "Failed calls, by reason.", "reason", m.failures)
        yield _labelled_counter("calls_rejected", "Refused calls, by reason.", "reason", m.rejects)
        bot = {kind: m.failures[reason] for reason, kind in BOT_FAILURES.items()}
        yield _labelled_counter("bot_failures", "Calls whose bot failed.", "reason", bot)
        yield _labelled_counter("transfers", "Transfers of ended calls, by outcome (a call's "
                                "latest).", "outcome", m.transfers)  # fmt: skip
        yield _labelled_counter("recordings", "Recordings of ended calls, by final state.",
                                "state", m.recordings)  # fmt: skip
        yield histogram(P + "call_setup_seconds", "Start to UP.", m.setup.bounds,
                        m.setup.counts, m.setup.sum)  # fmt: skip
        yield histogram(P + "call_duration_seconds", "Start to end.", m.duration.bounds,
                        m.duration.counts, m.duration.sum)  # fmt: skip
        yield histogram(P + "call_talk_seconds", "Bot connected to end.", m.talk.bounds,
                        m.talk.counts, m.talk.sum)  # fmt: skip
        totals = {transport: list(slots) for transport, slots in m.finished.items()}
        queued_ms = 0
        for view in m.in_progress():
            _add_counters(totals, view.transport, view.media)
            queued_ms += view.media.get("tx_queued_ms", 0)
        zero = [0] * len(CALL_COUNTERS)
        for i, (name, doc, _keys, by_transport) in enumerate(CALL_COUNTERS):
            if by_transport:
                family = CounterMetricFamily(P + name, doc, labels=["transport"])
                for transport in TRANSPORTS:
                    family.add_metric([transport], totals.get(transport, zero)[i])
            else:
                total = sum(slots[i] for slots in totals.values())
                family = CounterMetricFamily(P + name, doc, value=total)
            yield family
        yield GaugeMetricFamily(P + "playout_queue_seconds", "Bot audio queued, all calls.",
                                value=queued_ms / 1000)  # fmt: skip
        yield GaugeMetricFamily(P + "draining", "1 once draining.",
                                value=1 if controller.draining else 0)  # fmt: skip

    def _clock(self) -> Iterator[Metric]:
        ticker = self._m._controller.ticker
        yield histogram(P + "pacing_lateness_seconds", "Shared clock wake-up lateness.",
                        LATENESS_BUCKETS, ticker.lateness_counts, ticker.lateness_sum)  # fmt: skip
        yield CounterMetricFamily(P + "pacing_skipped_frames", "Frame times skipped.",
                                  value=ticker.skipped_frames)  # fmt: skip

    def _listeners(self) -> Iterator[Metric]:
        media = self._m._controller.media
        pool = media.pool
        yield GaugeMetricFamily(P + "rtp_ports", "RTP port pool size.", value=pool.size)
        yield GaugeMetricFamily(P + "rtp_ports_free", "RTP ports free.",
                                value=pool.size - pool.in_use)  # fmt: skip
        family = CounterMetricFamily(P + "listener_connections", "Media listener connections.",
                                     labels=["listener", "result"])  # fmt: skip
        for name in ("audiosocket", "websocket"):
            listener = getattr(media, name, None)
            if listener is not None:
                for result in ("accepted", "rejected"):
                    family.add_metric([name, result], listener.counters.get(result, 0))
        yield family

    def _ari(self) -> Iterator[Metric]:
        controller = self._m._controller
        settings = getattr(controller, "settings", None)
        if not getattr(settings, "ari_enabled", True):
            return
        events = controller.events
        yield GaugeMetricFamily(P + "ari_events_connected", "Events socket up.",
                                value=1 if events.connected.is_set() else 0)  # fmt: skip
        yield CounterMetricFamily(P + "ari_events_reconnects", "Events socket reconnects.",
                                  value=max(events.connects - 1, 0))  # fmt: skip
        yield CounterMetricFamily(P + "ari_events_rejected", "ARI events that did not parse.",
                                  value=events.bad_events)  # fmt: skip
        yield CounterMetricFamily(P + "ari_resyncs", "Reconciliations with Asterisk.",
                                  value=controller.reconciler.resyncs)  # fmt: skip
        claims = {"won": getattr(controller, "claims_won", 0),
                  "lost": getattr(controller, "claims_lost", 0)}  # fmt: skip
        yield _labelled_counter("claims", "Claims of broadcast calls, by result.", "result",
                                claims)  # fmt: skip
        yield from self._peers(getattr(controller, "peering", None))

    def _peers(self, peering: Any) -> Iterator[Metric]:
        if peering is None:
            return
        yield CounterMetricFamily(P + "heartbeat_failures", "Heartbeats not written.",
                                  value=peering.heartbeat_failures)  # fmt: skip
        last = peering.last
        if last is None:  # this process does not look at the peers (or has not yet)
            return
        family = GaugeMetricFamily(P + "peers", "Peer bridges by state, at the last look.",
                                   labels=["state"])  # fmt: skip
        family.add_metric(["alive"], len(last.alive))
        family.add_metric(["dead"], len(last.dead))
        yield family
        yield CounterMetricFamily(P + "peer_sweeps", "Dead peers swept.", value=peering.sweeps)

    def _webhooks(self) -> Iterator[Metric]:
        webhooks = getattr(self._m._controller, "webhooks", None)
        # The sender itself, or a reader of the calls holding one (`.sender`).
        counters = getattr(webhooks, "counters", None)
        if counters is None:
            counters = getattr(getattr(webhooks, "sender", None), "counters", None)
        if counters is None:
            return
        family = CounterMetricFamily(P + "webhook_deliveries", "Webhook deliveries.",
                                     labels=["result"])  # fmt: skip
        family.add_metric(["delivered"], counters.delivered)
        family.add_metric(["dropped"], counters.dropped)
        yield family
        yield CounterMetricFamily(P + "webhook_failed_attempts", "Webhook tries that failed.",
                                  value=counters.failed_attempts)  # fmt: skip
        yield GaugeMetricFamily(P + "webhook_pending", "Webhook deliveries waiting.",
                                value=counters.pending)  # fmt: skip


def _labelled_counter(name: str, doc: str, label: str,
                      values: Mapping[str, int]) -> CounterMetricFamily:  # fmt: skip
    family = CounterMetricFamily(P + name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family
