"""Prometheus metrics and the rolling figures the status page shows.

One registry per server process (not prometheus-client's global one), exposed at
``/metrics`` on the HTTP port. With ``--workers N`` each process exports its own figures.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WINDOW_S = 60.0


class RollingWindow:
    """Latencies of the last ``WINDOW_S`` seconds: recent QPS, p50 and p99 for the status page."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._items: collections.deque[tuple[float, float, bool]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, latency_s: float, ok: bool) -> None:
        now = time.monotonic()
        with self._lock:
            self._items.append((now, latency_s, ok))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._items and self._items[0][0] < now - self.window_s:
            self._items.popleft()

    def summary(self) -> dict[str, float | int | None]:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            items = list(self._items)
        if not items:
            return {"qps": 0.0, "p50_ms": None, "p99_ms": None, "errors": 0, "count": 0}
        latencies = sorted(latency for _, latency, _ in items)
        span = max(min(self.window_s, now - items[0][0]), 1.0)
        return {
            "qps": round(len(items) / span, 2),
            "p50_ms": round(_percentile(latencies, 0.50) * 1000, 3),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
            "errors": sum(1 for *_, ok in items if not ok),
            "count": len(items),
        }


def _percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class Metrics:
    """Every metric the kernel records, in one private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "dli_requests",
            "Inference requests by model, version, protocol and outcome.",
            ["model", "version", "protocol", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dli_request_duration_seconds",
            "Time from decoded request to response, by model and protocol.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "dli_queue_duration_seconds",
            "Time a request waited before its model ran it.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute = Histogram(
            "dli_compute_duration_seconds",
            "Time the model's predict() took per executed batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "dli_batch_size",
            "Rows per executed batch.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dli_in_flight_requests",
            "Requests in progress, by model.",
            ["model"],
            registry=self.registry,
        )
        self.windows: dict[str, RollingWindow] = collections.defaultdict(RollingWindow)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        # labels() takes a lock and builds a key on every call; per request that shows.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def in_flight_of(self, model: str) -> Any:
        return self._child(self.in_flight, model)

    def observe_request(
        self, model: str, version: str, protocol: str, status: str, latency_s: float
    ) -> None:
        self._child(self.requests, model, version, protocol, status).inc()
        self._child(self.latency, model, protocol).observe(latency_s)
        self.windows[model].add(latency_s, status == "OK")

    def observe_execution(
        self, model: str, version: str, rows: int, queue_s: float, compute_s: float
    ) -> None:
        self._child(self.batch_size, model, version).observe(rows)
        self._child(self.queue, model, version).observe(queue_s)
        self._child(self.compute, model, version).observe(compute_s)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CallbackCollector(Collector):
    """Gauges read at scrape time from a callback (models loaded, upstream node state)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        read: Callable[[], Iterable[tuple[list[str], float]]],
    ) -> None:
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, value in self.read():
            family.add_metric(values, value)
        yield family

    def describe(self) -> Iterable[Any]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labels)


class UpstreamCollector(Collector):
    """Per upstream node of the gateway: requests, failures, in-flight, weight, state."""

    _LABELS = ("model", "node")

    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        rows = self.snapshot()
        labels = list(self._LABELS)
        requests = CounterMetricFamily(
            "dli_upstream_requests", "Calls forwarded to the node.", labels=labels
        )
        failures = CounterMetricFamily(
            "dli_upstream_failures", "Forwarded calls the node failed.", labels=labels
        )
        gauges = {
            "in_flight": GaugeMetricFamily(
                "dli_upstream_in_flight", "Calls outstanding to the node.", labels=labels
            ),
            "effective_weight": GaugeMetricFamily(
                "dli_upstream_effective_weight", "The balancer's current weight.", labels=labels
            ),
            "weight": GaugeMetricFamily(
                "dli_upstream_configured_weight", "The configured weight.", labels=labels
            ),
            "latency_ewma_ms": GaugeMetricFamily(
                "dli_upstream_latency_ewma_ms", "Smoothed call latency.", labels=labels
            ),
        }
        ejected = GaugeMetricFamily(
            "dli_upstream_ejected", "1 while the node is ejected or unhealthy.", labels=labels
        )
        for row in rows:
            key = [row["model"], row["address"]]
            requests.add_metric(key, row.get("requests", 0))
            failures.add_metric(key, row.get("failures", 0))
            for field_name, family in gauges.items():
                family.add_metric(key, float(row.get(field_name) or 0))
            ejected.add_metric(key, 0.0 if row.get("state") in ("healthy", "warming") else 1.0)
        yield from (requests, failures, *gauges.values(), ejected)
