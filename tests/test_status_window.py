"""The status page's rolling window: bounded memory, percentiles within the stated error."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest

from dl_inference.kernel.metrics import WINDOW_RELATIVE_ERROR, RollingWindow


class Clock:
    """A settable stand-in for ``time.monotonic``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_memory_does_not_grow_with_the_number_of_samples() -> None:
    clock = Clock()
    window = RollingWindow(clock=clock)
    rng = random.Random(7)

    def feed(n: int) -> None:
        for i in range(n):
            clock.now = 1000.0 + i / n  # all within one second: nothing expires
            window.add(rng.lognormvariate(-6, 1.0), True)

    tracemalloc.start()
    try:
        feed(20_000)
        after_few, _ = tracemalloc.get_traced_memory()
        feed(200_000)
        after_many, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert window.summary()["count"] == 220_000
    # Keeping every latency would take about 100 bytes a sample here: 20 MB more.
    assert after_many - after_few < 100_000


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: rng.lognormvariate(-6, 0.5),  # a few ms
        lambda rng: rng.uniform(0.0001, 2.0),
        lambda rng: rng.choice([0.001, 0.002, 0.5]) * rng.uniform(0.9, 1.1),  # clusters
    ],
)
def test_percentiles_are_numpys_within_the_stated_error(draw) -> None:
    clock = Clock()
    window = RollingWindow(clock=clock)
    rng = random.Random(11)
    data = []
    for i in range(30_000):
        clock.now = 1000.0 + i * 50 / 30_000  # spread over 50 s of the 60 s window
        data.append(draw(rng))
        window.add(data[-1], True)
    summary = window.summary()
    assert summary["count"] == len(data)
    for key, q in (("p50_ms", 50), ("p99_ms", 99)):
        exact = float(np.percentile(data, q, method="nearest")) * 1000
        # The figure is rounded to a microsecond on top of the bucket's relative error.
        assert summary[key] == pytest.approx(exact, rel=WINDOW_RELATIVE_ERROR, abs=0.001), key


def test_window_forgets_what_is_older_than_a_minute() -> None:
    clock = Clock(1000.0)
    window = RollingWindow(clock=clock)
    for i in range(120):  # two calls a second for 60 s; every fourth one failed
        clock.now = 1000.0 + i / 2
        window.add(0.5, ok=i % 4 != 0)
    summary = window.summary()
    assert summary["count"] == 120 and summary["errors"] == 30
    assert summary["qps"] == pytest.approx(2.0, rel=0.05)
    assert summary["p50_ms"] == summary["p99_ms"] == pytest.approx(500, rel=WINDOW_RELATIVE_ERROR)
    clock.now += 30  # the first half has left the window
    assert window.summary()["count"] == pytest.approx(60, abs=2)
    window.add(0.002, ok=False)  # a new call lands in a slot that held an old second
    summary = window.summary()
    assert summary["p50_ms"] == pytest.approx(500, rel=WINDOW_RELATIVE_ERROR)
    clock.now += 61
    assert window.summary() == {
        "qps": 0.0,
        "p50_ms": None,
        "p99_ms": None,
        "errors": 0,
        "count": 0,
    }
