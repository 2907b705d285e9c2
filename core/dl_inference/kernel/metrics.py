"""Prometheus metrics and the rolling figures the status page shows.

One registry per server process (not prometheus-client's global one), exposed at
``/metrics`` on the HTTP port. With ``--workers N`` a scrape of any worker returns every
worker's figures, each sample labelled ``worker`` (:func:`merge_worker_figures`).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from dl_inference.spi.statistics import VersionStatistics

log = structlog.get_logger("dl_inference.metrics")

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WINDOW_S = 60.0
# The status window's latency histogram: bucket i holds (B[i-1], B[i]] seconds, B being
# powers of GAMMA, and reports 2 * B[i] / (GAMMA + 1), within WINDOW_RELATIVE_ERROR of any
# value in it (the log-spaced buckets of DDSketch). Latencies outside [WINDOW_MIN_S,
# WINDOW_MAX_S] fall in the first or last bucket, so a window holds at most about 1,200
# buckets per second of it, whatever the rate.
WINDOW_RELATIVE_ERROR = 0.01
WINDOW_MIN_S, WINDOW_MAX_S = 1e-6, 1e4
_GAMMA = (1 + WINDOW_RELATIVE_ERROR) / (1 - WINDOW_RELATIVE_ERROR)
# Upper bounds of the buckets; bisect (in C) finds a bucket faster than math.log would.
_WINDOW_BOUNDS = tuple(
    _GAMMA**i
    for i in range(
        math.floor(math.log(WINDOW_MIN_S, _GAMMA)), math.ceil(math.log(WINDOW_MAX_S, _GAMMA)) + 1
    )
)


class _Second:
    """One second of a :class:`RollingWindow`: its calls, errors and latency buckets."""

    __slots__ = ("buckets", "count", "errors", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.count = 0
        self.errors = 0
        self.buckets: dict[int, int] = {}


class RollingWindow:
    """Recent QPS, p50, p99 and errors of the last ``WINDOW_S`` seconds, for the status page.

    Bounded whatever the request rate: one slot per second of the window, each a sparse
    log-spaced histogram, so the size depends on the window and the bucket width, not on the
    number of calls, and a summary walks buckets instead of sorting every latency. The
    percentiles are those of the same ranks over the exact latencies within
    ``WINDOW_RELATIVE_ERROR`` (1%); the window ends now and starts at the beginning of the
    oldest second held (between ``window_s - 1`` and ``window_s`` seconds ago).
    """

    def __init__(
        self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self._slots = [_Second(-1) for _ in range(max(1, math.ceil(window_s)))]
        self._lock = threading.Lock()

    def add(self, latency_s: float, ok: bool) -> None:
        second = int(self.clock())
        index = bisect.bisect_left(_WINDOW_BOUNDS, latency_s)  # value <= bound
        with self._lock:
            slot = self._slots[second % len(self._slots)]
            if slot.second != second:  # a second that left the window: start it afresh
                slot.second, slot.count, slot.errors = second, 0, 0
                slot.buckets.clear()
            slot.count += 1
            slot.errors += not ok
            slot.buckets[index] = slot.buckets.get(index, 0) + 1

    def summary(self) -> dict[str, float | int | None]:
        now = self.clock()
        oldest = int(now) - len(self._slots) + 1
        buckets: collections.Counter[int] = collections.Counter()
        count = errors = 0
        first = None
        with self._lock:
            for slot in self._slots:
                if slot.second < oldest or not slot.count:
                    continue
                count += slot.count
                errors += slot.errors
                buckets.update(slot.buckets)
                first = slot.second if first is None else min(first, slot.second)
        if first is None:
            return {"qps": 0.0, "p50_ms": None, "p99_ms": None, "errors": 0, "count": 0}
        ordered = sorted(buckets.items())
        span = max(min(self.window_s, now - first), 1.0)
        return {
            "qps": round(count / span, 2),
            "p50_ms": round(_percentile(ordered, count, 0.50) * 1000, 3),
            "p99_ms": round(_percentile(ordered, count, 0.99) * 1000, 3),
            "errors": errors,
            "count": count,
        }


def _percentile(ordered: list[tuple[int, int]], count: int, q: float) -> float:
    """The value of rank ``round(q * (count - 1))`` (numpy's "nearest"), within the error."""
    rank = min(count - 1, max(0, round(q * (count - 1))))
    seen = 0
    for index, n in ordered:
        seen += n
        if seen > rank:
            bound = _WINDOW_BOUNDS[min(index, len(_WINDOW_BOUNDS) - 1)]  # over the top: clamped
            return 2 * bound / (_GAMMA + 1)
    raise AssertionError("rank beyond the window's count")  # count is the buckets' sum


class _Series:
    """One labelled series: bucket counts (histograms) or a single value (counters, gauges)."""

    __slots__ = ("bounds", "counts", "lock", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)  # le: value <= bound
        with self.lock:
            self.counts[index] += 1
            self.total += value

    def inc(self, amount: float = 1.0) -> None:
        with self.lock:
            self.total += amount

    def dec(self, amount: float = 1.0) -> None:
        with self.lock:
            self.total -= amount


class LabelledMetric(Collector):
    """A counter, gauge or histogram family, cheap to update per request.

    prometheus_client's metrics walk histogram buckets in Python and take a lock per bucket
    and per sum on every observation, and ``labels()`` builds its key under a lock: on the
    event loop, per request, that was a fifth of the server's own Python time. Here an
    update is a dictionary lookup, a bisect and one uncontended lock; the exposition is the
    same text format (without the ``_created`` series).
    """

    def __init__(
        self,
        kind: str,
        name: str,
        documentation: str,
        labels: list[str],
        buckets: Iterable[float] = (),
    ) -> None:
        self.kind, self.name, self.documentation, self.labels = kind, name, documentation, labels
        self.bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()

    def of(self, *values: str) -> _Series:
        """The series for these label values, made on first use."""
        series = self._series.get(values)
        if series is None:
            with self._lock:
                series = self._series.setdefault(values, _Series(self.bounds))
        return series

    def _family(self) -> Any:
        families = {
            "counter": CounterMetricFamily,
            "gauge": GaugeMetricFamily,
            "histogram": HistogramMetricFamily,
        }
        return families[self.kind](self.name, self.documentation, labels=self.labels)

    def collect(self) -> Iterable[Any]:
        family = self._family()
        for values, series in list(self._series.items()):
            with series.lock:
                counts, total = list(series.counts), series.total
            if self.kind != "histogram":
                family.add_metric(list(values), total)
                continue
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(list(values), buckets, total)
        yield family

    def describe(self) -> Iterable[Any]:
        yield self._family()


class Metrics:
    """Every metric the kernel records, in one private registry.

    Label values come from the runtime, which names only models it holds (a name a client
    invents is ``""``): series, and the status page's windows, are bounded by the
    configuration, not by what clients send.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        # python_gc_*: objects the cyclic collector found in reference cycles, and its runs,
        # by generation; a count growing with traffic is a path that leaves cycles per call
        # (each collection pauses every call in flight).
        GCCollector(registry=self.registry)
        model_version = ["model", "version"]
        self.requests = self._add(
            "counter",
            "dli_requests",
            "Inference calls by model, version, protocol and outcome (status: a gRPC code "
            "name); model and version are empty for ones this server does not hold. "
            "Health, metadata and management calls are not counted.",
            ["model", "version", "protocol", "status"],
        )
        self.latency = self._add(
            "histogram",
            "dli_request_duration_seconds",
            "Time from a call's arrival to its answer, by model and version (empty: not held "
            "here) and protocol.",
            ["model", "version", "protocol"],
            LATENCY_BUCKETS,
        )
        self.queue = self._add(
            "histogram",
            "dli_queue_duration_seconds",
            "Time a request waited before its model ran it.",
            model_version,
            LATENCY_BUCKETS,
        )
        self.compute = self._add(
            "histogram",
            "dli_compute_duration_seconds",
            "Time the model's predict() took per executed batch.",
            model_version,
            LATENCY_BUCKETS,
        )
        self.batch_size = self._add(
            "histogram", "dli_batch_size", "Rows per executed batch.", model_version, BATCH_BUCKETS
        )
        self.in_flight = self._add(
            "gauge",
            "dli_in_flight_requests",
            "Inference requests in progress, by model (empty: not held here).",
            ["model"],
        )
        self.windows: dict[str, RollingWindow] = collections.defaultdict(RollingWindow)

    def _add(self, *definition: Any) -> LabelledMetric:
        """A :class:`LabelledMetric` made from ``definition`` and registered here."""
        metric = LabelledMetric(*definition)
        self.registry.register(metric)
        return metric

    def in_flight_of(self, model: str) -> _Series:
        return self.in_flight.of(model)

    def observe_request(
        self, model: str, version: str, protocol: str, status: str, latency_s: float
    ) -> None:
        self.requests.of(model, version, protocol, status).inc()
        self.latency.of(model, version, protocol).observe(latency_s)
        self.windows[model].add(latency_s, status == "OK")

    def observe_execution(
        self, model: str, version: str, rows: int, queue_s: float, compute_s: float
    ) -> None:
        self.batch_size.of(model, version).observe(rows)
        self.queue.of(model, version).observe(queue_s)
        self.compute.of(model, version).observe(compute_s)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def export_triton_names(self, read: Callable[[], Iterable[VersionStatistics]]) -> None:
        """Also export Triton's ``nv_inference_*`` families, read from ``read()`` (the
        statistics of every model version held) at each scrape (``server.metrics.triton_names``)."""
        self.add_collector(TritonCollector(read))

    def export_gpu(self) -> str | None:
        """Export NVML's figures of every GPU as Triton names them (``nv_gpu_*``); the reason
        there are none here (logged once), or None when they are exported."""
        collector, reason = GpuCollector.open()
        if collector is None:
            log.info("GPU metrics off", reason=reason)
            return reason
        self.add_collector(collector)
        return None

    def render(self) -> bytes:
        return exposition(self.registry.collect())


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

    # group: the route's split or shadow group ("" for a route without); one node may
    # serve several groups (another version each).
    _LABELS = ("model", "group", "node")

    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Any]:
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
            key = [row["model"], row.get("group", ""), row["address"]]
            requests.add_metric(key, row.get("requests", 0))
            failures.add_metric(key, row.get("failures", 0))
            for field_name, family in gauges.items():
                family.add_metric(key, float(row.get(field_name) or 0))
            ejected.add_metric(key, 0.0 if row.get("state") in ("healthy", "warming") else 1.0)
        yield from (requests, failures, *gauges.values(), ejected)


class TritonCollector(Collector):
    """Triton's per-model families (``nv_inference_*``), so its dashboards and alerts work.

    Names, help, label names and types as Triton 2.51 exports them: counters by ``model``
    and ``version`` for every version held (zeros until it runs), durations in whole
    microseconds. Read from the same counters as the statistics extension, as Triton's
    are: successes, failures of requests the model's scheduler took, rows (inferences),
    executions, and the request (successes), queue and compute times. dl-inference does
    not tell failure reasons apart yet: every failure counts as ``BACKEND``, the other
    reasons Triton labels are exported at 0 so its queries find their series.
    """

    FAILURE_REASONS = ("BACKEND", "CANCELED", "REJECTED", "OTHER")

    def __init__(self, read: Callable[[], Iterable[VersionStatistics]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Any]:
        labels = ["model", "version"]

        def counter(name: str, documentation: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, documentation, labels=labels)

        success = counter(
            "nv_inference_request_success",
            "Number of successful inference requests, all batch sizes",
        )
        failure = CounterMetricFamily(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            labels=["model", "reason", "version"],
        )
        count = counter(
            "nv_inference_count",
            "Number of inferences performed (does not include cached requests)",
        )
        executions = counter(
            "nv_inference_exec_count",
            "Number of model executions performed (does not include cached requests)",
        )
        durations = {
            "success": counter(
                "nv_inference_request_duration_us",
                "Cumulative inference request duration in microseconds (includes cached requests)",
            ),
            "queue": counter(
                "nv_inference_queue_duration_us",
                "Cumulative inference queuing duration in microseconds (includes cached requests)",
            ),
            "compute_input": counter(
                "nv_inference_compute_input_duration_us",
                "Cumulative compute input duration in microseconds (does not include cached "
                "requests)",
            ),
            "compute_infer": counter(
                "nv_inference_compute_infer_duration_us",
                "Cumulative compute inference duration in microseconds (does not include "
                "cached requests)",
            ),
            "compute_output": counter(
                "nv_inference_compute_output_duration_us",
                "Cumulative inference compute output duration in microseconds (does not "
                "include cached requests)",
            ),
        }
        for stats in self.read():
            key = [stats.name, stats.version]
            success.add_metric(key, stats.success.count)
            for reason in self.FAILURE_REASONS:
                failed = stats.fail.count if reason == "BACKEND" else 0
                failure.add_metric([stats.name, reason, stats.version], failed)
            count.add_metric(key, stats.inference_count)
            executions.add_metric(key, stats.execution_count)
            for field_name, family in durations.items():
                family.add_metric(key, getattr(stats, field_name).ns // 1000)
        yield from (success, failure, count, executions, *durations.values())


class GpuCollector(Collector):
    """Each GPU's utilization, memory, power and energy from NVML, as Triton names them
    (``nv_gpu_*``, labelled ``gpu_uuid``); made by :meth:`open` where NVML finds a GPU."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self.nvml, self.handles = nvml, handles
        # NVML counts energy since the driver loaded; Triton's counter starts with the server.
        self._energy_at_start: dict[int, float] = {}
        for index, handle in enumerate(handles):
            with contextlib.suppress(nvml.NVMLError):
                self._energy_at_start[index] = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)

    @classmethod
    def open(cls) -> tuple[GpuCollector | None, str]:
        """(collector, "") where NVML finds a GPU, else (None, the reason there is none)."""
        try:
            import pynvml  # optional (nvidia-ml-py): only GPU machines need it
        except ImportError:
            return None, "pynvml is not installed (pip install nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
            handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except pynvml.NVMLError as exc:
            return None, f"NVML cannot start here (no NVIDIA driver?): {exc}"
        if not handles:
            return None, "NVML found no GPU"
        return cls(pynvml, handles), ""

    def collect(self) -> Iterable[Any]:
        nvml = self.nvml
        labels = ["gpu_uuid"]
        # (family, NVML reading -> value); a reading the device does not support is left out.
        readings: list[tuple[Any, Callable[[Any], float]]] = [
            (
                GaugeMetricFamily(
                    "nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=labels
                ),
                lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100,
            ),
            (
                GaugeMetricFamily(
                    "nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=labels
                ),
                lambda h: nvml.nvmlDeviceGetMemoryInfo(h).total,
            ),
            (
                GaugeMetricFamily(
                    "nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=labels
                ),
                lambda h: nvml.nvmlDeviceGetMemoryInfo(h).used,
            ),
            (
                GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts", labels=labels),
                lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000,  # milliwatts
            ),
            (
                GaugeMetricFamily(
                    "nv_gpu_power_limit", "GPU power management limit in watts", labels=labels
                ),
                lambda h: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
            ),
            (
                CounterMetricFamily(
                    "nv_energy_consumption",
                    "GPU energy consumption in joules since the server started",
                    labels=labels,
                ),
                lambda h: (
                    (
                        nvml.nvmlDeviceGetTotalEnergyConsumption(h)
                        - self._energy_at_start[self.handles.index(h)]
                    )
                    / 1000
                ),  # millijoules; a GPU without a start reading raises KeyError
            ),
        ]
        for handle in self.handles:
            try:
                uuid = nvml.nvmlDeviceGetUUID(handle)
            except nvml.NVMLError:
                continue
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            for family, read in readings:
                with contextlib.suppress(nvml.NVMLError, KeyError):
                    family.add_metric([uuid], read(handle))
        for family, _ in readings:
            yield family


def exposition(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format of ``families``, Triton's ``nv_*`` counters as Triton
    writes them.

    prometheus_client names every counter's samples ``<name>_total``; Triton (through
    prometheus-cpp) writes ``nv_inference_count{...}`` under ``# TYPE nv_inference_count
    counter``, and that sample name is what Triton's dashboards and alerts query.
    """
    plain: list[Metric] = []
    triton: list[Metric] = []
    for family in families:
        if family.type == "counter" and family.name.startswith("nv_"):
            triton.append(family)
        else:
            plain.append(family)
    text = generate_latest(_Families(plain))
    for family in triton:
        # Written as a gauge (no suffix added), then typed as the counter it is.
        as_gauge = Metric(family.name, family.documentation, "gauge")
        as_gauge.samples = [
            sample._replace(name=family.name)
            for sample in family.samples
            if sample.name in (family.name, family.name + "_total")
        ]
        rendered = generate_latest(_Families([as_gauge])).decode()
        text += rendered.replace(
            f"# TYPE {family.name} gauge\n", f"# TYPE {family.name} counter\n", 1
        ).encode()
    return text


def parse_exposition(text: bytes) -> list[Metric]:
    """The families of a Prometheus text exposition; ValueError if it is not one."""
    return list(text_string_to_metric_families(text.decode()))


def merge_worker_figures(figures: dict[int, list[Metric] | None]) -> bytes:
    """One exposition of several workers' families, each sample labelled ``worker``.

    ``figures`` maps a worker's index to its families, or to None when it did not answer;
    ``dli_worker_up`` says which did, as Prometheus's own ``up`` does for targets.
    """
    merged: dict[str, Metric] = {}
    up = GaugeMetricFamily(
        "dli_worker_up", "1 when the worker's figures are in this scrape.", labels=["worker"]
    )
    for worker in sorted(figures):
        families = figures[worker]
        up.add_metric([str(worker)], 0.0 if families is None else 1.0)
        for family in families or ():
            into = merged.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = into
            into.samples.extend(
                sample._replace(labels={**sample.labels, "worker": str(worker)})
                for sample in family.samples
            )
    return exposition([*merged.values(), up])


class _Families(Collector):
    """Already collected families, as a registry for :func:`generate_latest`."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families
