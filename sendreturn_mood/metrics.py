"""The server's Prometheus metrics, through `prometheus_client` (the well-kept library; its text format and name
rules are the ones Prometheus itself checks).

Why a thin wrapper: the server, rooms and inference modules update metrics as `metrics.errors.inc(code=...)`,
`metrics.latency.observe(x)`, `metrics.connections.set(0, role=...)`; labels are keyword arguments there, so the
call sites stay one short line and tests can read values back (`get`, `count`). Each `ServerMetrics` owns its own
`CollectorRegistry`, so several servers can run in one process (the tests do) without sharing or clashing.

Names follow the Prometheus conventions: the `sendreturn_` namespace, base units as suffix (`_seconds`, `_bytes`),
`_total` only on counters, and no gauge whose name is a counter's without `_total` (the old hand-written
`sendreturn_connections` gauge next to `sendreturn_connections_total` was refused by `prometheus_client`'s parser).
The exported names are listed in README.md ("HTTP endpoints").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import prometheus_client as prom
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes (the classic text format)
PREFIX = "sendreturn_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
ANALYSIS_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0)


class _Metric:
    """One prometheus_client metric with keyword labels and read-back for tests."""

    kind: type[prom.metrics.MetricWrapperBase]
    sample_suffix = ""

    def __init__(self, name: str, help: str, registry: prom.CollectorRegistry, labels: Iterable[str] = (), **kw: object) -> None:
        self.name = PREFIX + name
        self.label_names = tuple(labels)
        self.registry = registry
        self.metric = self.kind(self.name, help, self.label_names, registry=registry, **kw)  # type: ignore[arg-type]

    def _child(self, labels: dict[str, str]):  # type: ignore[no-untyped-def]
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return self.metric.labels(**labels) if labels else self.metric

    def _sample(self, suffix: str, labels: dict[str, str]) -> float:
        base = self.name.removesuffix("_total") if isinstance(self, Counter) else self.name
        value = self.registry.get_sample_value(base + suffix, {k: str(v) for k, v in labels.items()})
        return float(value) if value is not None else 0.0


@dataclass
class Tally:
    """A running count as a plain attribute, for a hot path (`tally.n += 1`): a labelled counter's `tally(...)`
    carries what it has not carried yet into the registry when the counter is read; made alone it only counts."""

    n: float = 0.0
    carried: float = 0.0


class Counter(_Metric):
    kind = prom.Counter

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._pending = 0.0
        self._tallies: list[tuple[Tally, Any]] = []

    def tally(self, **labels: str) -> Tally:
        """`inc` for a labelled hot path (the OSC stream: thousands of bundles a second): a Tally whose count is
        carried into this counter's child of `labels` when the value is read. Event-loop thread only."""
        t = Tally()
        self._tallies.append((t, self._child(labels)))
        return t

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)

    def add(self, amount: float = 1.0) -> None:
        """`inc` for the per-frame hot path of an unlabelled counter: a float addition, carried into the registry
        when the value is read (`get`, `ServerMetrics.render`). prometheus_client's `inc` takes a lock and checks
        labels on every call, which at ten audio frames a second per room was a visible share of the server's CPU.
        Event-loop thread only (that is where frames arrive and where /metrics is rendered)."""
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0.0
            self.metric.inc(pending)
        for t, child in self._tallies:
            if t.n != t.carried:
                delta, t.carried = t.n - t.carried, t.n
                child.inc(delta)

    def get(self, **labels: str) -> float:
        self._child(labels)
        self.flush()
        return self._sample("_total", labels)


class Gauge(_Metric):
    kind = prom.Gauge

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).dec(amount)

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)

    def get(self, **labels: str) -> float:
        self._child(labels)
        return self._sample("", labels)


class Histogram(_Metric):
    kind = prom.Histogram

    def __init__(self, name: str, help: str, registry: prom.CollectorRegistry, buckets: Iterable[float], labels: Iterable[str] = ()) -> None:
        super().__init__(name, help, registry, labels, buckets=tuple(buckets))

    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)

    def count(self, **labels: str) -> float:
        self._child(labels)
        return self._sample("_count", labels)


class ServerMetrics:
    """Every metric the server exports, in one place (names are part of the operational interface)."""

    def __init__(self) -> None:
        r = self.registry = prom.CollectorRegistry(auto_describe=True)
        self.connections = Gauge("open_connections", "Open websocket connections by role.", r, ["role"])
        self.connections.set(0, role="source")
        self.connections.set(0, role="listener")
        self.connections_total = Counter("accepted_connections_total", "Accepted websocket connections since start.", r, ["role"])
        self.refusals = Counter("handshake_refusals_total", "Refused handshakes by error code.", r, ["code"])
        self.rooms = Gauge("rooms", "Rooms with at least one connection.", r)
        self.audio_seconds = Counter("audio_seconds_total", "Seconds of source audio received and analysed.", r)
        self.audio_bytes = Counter("audio_bytes_total", "Bytes of source audio received.", r)
        self.windows = Counter("windows_analysed_total", "Windows run through the model.", r)
        self.batches = Histogram("batch_size", "Windows per inference batch.", r, BATCH_BUCKETS)
        self.inference_seconds = Histogram("inference_duration_seconds", "Wall time of one inference batch.", r, LATENCY_BUCKETS)
        self.latency = Histogram(
            "update_latency_seconds", "Arrival of a window's last audio byte to its mood update being sent.", r, LATENCY_BUCKETS
        )
        self.prepared_delay = Histogram(
            "prepared_update_delay_seconds", "How late a prepared track's update left after the moment it was due.", r,
            LATENCY_BUCKETS,
        )
        self.updates = Counter("mood_updates_total", "Mood updates broadcast (one per room per analysed window).", r)
        self.track_changes = Counter("track_changes_detected_total", "Track changes heard in the audio (track_change messages).", r)
        self.messages_sent = Counter("messages_sent_total", "Messages written to clients.", r)
        self.errors = Counter("errors_total", "Error messages sent to clients by code.", r, ["code"])
        self.dropped = Counter("dropped_messages_total", "Mood updates dropped from full per-client send queues.", r)
        self.dropped_windows = Counter("dropped_windows_total", "Windows discarded because their track or source ended.", r)
        self.queue_depth = Gauge("inference_queue_windows", "Windows waiting for the inference worker.", r)
        self.node = Gauge("node_info", "This process: its node id in the cluster and its broker kind (always 1).", r, ["node", "broker"])
        self.broker_up = Gauge("broker_up", "1 while the broker (Redis) is reachable; always 1 in memory.", r)
        self.broker_reconnects = Counter("broker_reconnects_total", "Reconnections to the broker after it was lost.", r)
        self.broker_published = Counter("broker_published_total", "Messages published to the broker for other processes.", r)
        self.broker_received = Counter("broker_received_total", "Messages received from other processes through the broker.", r)
        self.osc_bundles = Counter("osc_bundles_sent_total", "OSC bundles sent, by target (HOST:PORT).", r, ["target"])
        self.osc_errors = Counter("osc_send_errors_total", "OSC bundles lost, by target: unresolved name, closed port, full buffer.", r, ["target"])
        self.broker_dropped = Counter("broker_dropped_total", "Messages for other processes dropped (broker down or slow).", r)
        self.broker_fenced = Counter(
            "broker_fenced_total", "Messages of a room's lapsed source lease: not published from here, or late from another process.", r)
        self.analyses = Counter("analyses_total", "POST /v1/analyze answers by error code (ok: analysed).", r, ["code"])
        self.analysis_seconds = Histogram(
            "analysis_duration_seconds", "Wall time of one upload's analysis in a worker process.", r, ANALYSIS_BUCKETS)
        self.broker_up.set(1)

    def all(self) -> list[_Metric]:
        return [v for v in vars(self).values() if isinstance(v, _Metric)]

    def render(self) -> str:
        """The Prometheus text exposition of this server's registry (served at GET /metrics)."""
        for metric in self.all():
            if isinstance(metric, Counter):
                metric.flush()
        return prom.generate_latest(self.registry).decode()
