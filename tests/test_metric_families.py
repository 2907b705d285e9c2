"""The kernel's own counter / gauge / histogram families render what was observed."""

from __future__ import annotations

import re
import threading

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from dl_inference.kernel.metrics import LabelledMetric

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def samples(metric: LabelledMetric) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(metric)
    text = generate_latest(registry).decode()
    return {
        name: float(value)
        for name, value in re.findall(r"^(\S+) (\S+)$", text, re.MULTILINE)
        if not name.startswith("#")
    }


def test_histogram_buckets_are_cumulative_counts_with_le_inclusive() -> None:
    values = np.random.default_rng(1).exponential(0.05, 500)
    values[:3] = BOUNDS[:3]  # exactly on a bound: counted in that bucket (le = "<=")
    metric = LabelledMetric("histogram", "t_seconds", "test", ["model"], BOUNDS)
    for value in values:
        metric.of("m").observe(float(value))
    got = samples(metric)
    labels = ("0.001", "0.01", "0.1", "1.0", "+Inf")
    for bound, label in zip((*BOUNDS, np.inf), labels, strict=True):
        assert got[f't_seconds_bucket{{le="{label}",model="m"}}'] == np.sum(values <= bound)
    assert got['t_seconds_count{model="m"}'] == 500
    assert np.isclose(got['t_seconds_sum{model="m"}'], values.sum())


def test_counters_and_gauges_lose_no_update_across_threads() -> None:
    counter = LabelledMetric("counter", "t_calls", "test", ["model", "status"])
    gauge = LabelledMetric("gauge", "t_in_flight", "test", ["model"])

    def work() -> None:
        for _ in range(20_000):
            counter.of("m", "OK").inc()
            gauge.of("m").inc()
            gauge.of("m").dec()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counter.of("m", "FAIL").inc(2)
    got = {**samples(counter), **samples(gauge)}
    assert got['t_calls_total{model="m",status="OK"}'] == 80_000
    assert got['t_calls_total{model="m",status="FAIL"}'] == 2
    assert got['t_in_flight{model="m"}'] == 0
