"""Prometheus text-format metrics written by hand: counters, gauges and histograms with optional labels.

Capacity and reliability are measured against targets, so everything measurable is counted here. The
format is the Prometheus text exposition format 0.0.4 (HELP/TYPE lines, cumulative `_bucket{le=...}`, `_sum`,
`_count`), small enough not to need a client library. All updates happen on the event loop thread, so no locks.
"""

from __future__ import annotations

import math
from typing import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "sendreturn_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

LabelKey = tuple[str, ...]


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelKey, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        self.name = PREFIX + name
        self.help = help
        self.label_names = tuple(labels)

    def _key(self, labels: dict[str, str]) -> LabelKey:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[LabelKey, float] = {} if self.label_names else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_fmt(v)}" for k, v in sorted(self.values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self.values[self._key(labels)] = float(value)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[LabelKey, list[float]] = {}  # per label set: bucket counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        s = self.series.setdefault(key, [0.0] * (len(self.buckets) + 2))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                s[i] += 1
        s[-2] += value
        s[-1] += 1

    def count(self, **labels: str) -> float:
        s = self.series.get(self._key(labels))
        return s[-1] if s else 0.0

    def render(self) -> list[str]:
        lines = self.header()
        series = self.series or ({(): [0.0] * (len(self.buckets) + 2)} if not self.label_names else {})
        for key, s in sorted(series.items()):
            for bound, n in zip(self.buckets, s):
                le = 'le="' + _fmt(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_fmt(n)}")
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(self.label_names, key, inf)} {_fmt(s[-1])}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_fmt(s[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {_fmt(s[-1])}")
        return lines


class ServerMetrics:
    """Every metric the server exports, in one place (names are part of the operational interface)."""

    def __init__(self) -> None:
        self.connections = Gauge("connections", "Open websocket connections by role.", ["role"])
        self.connections.set(0, role="source")
        self.connections.set(0, role="listener")
        self.connections_total = Counter("connections_total", "Accepted websocket connections since start.", ["role"])
        self.refusals = Counter("handshake_refusals_total", "Refused handshakes by error code.", ["code"])
        self.rooms = Gauge("rooms", "Rooms with at least one connection.")
        self.audio_seconds = Counter("audio_seconds_total", "Seconds of source audio received and analysed.")
        self.audio_bytes = Counter("audio_bytes_total", "Bytes of source audio received.")
        self.windows = Counter("windows_analysed_total", "Windows run through the model.")
        self.batches = Histogram("batch_size", "Windows per inference batch.", BATCH_BUCKETS)
        self.inference_seconds = Histogram("inference_seconds", "Wall time of one inference batch.", LATENCY_BUCKETS)
        self.latency = Histogram(
            "update_latency_seconds", "Arrival of a window's last audio byte to its mood update being sent.", LATENCY_BUCKETS
        )
        self.updates = Counter("mood_updates_total", "Mood updates broadcast (one per room per analysed window).")
        self.messages_sent = Counter("messages_sent_total", "Messages written to clients.")
        self.errors = Counter("errors_total", "Error messages sent to clients by code.", ["code"])
        self.dropped = Counter("dropped_messages_total", "Mood updates dropped from full per-client send queues.")
        self.dropped_windows = Counter("dropped_windows_total", "Windows discarded because their track or source ended.")
        self.queue_depth = Gauge("inference_queue_depth", "Windows waiting for the inference worker.")
        self.node = Gauge("node_info", "This process: its node id in the cluster and its broker kind (always 1).", ["node", "broker"])
        self.broker_up = Gauge("broker_up", "1 while the broker (Redis) is reachable; always 1 in memory.")
        self.broker_reconnects = Counter("broker_reconnects_total", "Reconnections to the broker after it was lost.")
        self.broker_published = Counter("broker_published_total", "Messages published to the broker for other processes.")
        self.broker_received = Counter("broker_received_total", "Messages received from other processes through the broker.")
        self.broker_dropped = Counter("broker_dropped_total", "Messages for other processes dropped (broker down or slow).")
        self.broker_up.set(1)

    def all(self) -> list[_Metric]:
        return [v for v in vars(self).values() if isinstance(v, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
