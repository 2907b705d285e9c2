"""Per model version counters behind :class:`~dl_inference.spi.statistics.VersionStatistics`.

Counted where the runtime already times its work: ``success`` / ``fail`` from the latency
the runtime records for its metrics, ``queue`` and ``compute_infer`` from the timing of
each execution the scheduler reports (see :mod:`dl_inference.spi.statistics` for what each
figure means). Cheap on the hot path: a request adds two integers (on the event loop); an
execution adds a handful under one uncontended lock (in its scheduler's thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from dl_inference.spi.statistics import BatchStatistics, StatisticDuration, VersionStatistics

NS = 1_000_000_000


class VersionCounters:
    """The live counters of one model version; :meth:`snapshot` reads them."""

    __slots__ = (
        "_batches",
        "_lock",
        "compute_count",
        "compute_ns",
        "executions",
        "fail_count",
        "fail_ns",
        "last_finished",
        "queue_count",
        "queue_ns",
        "rows",
        "success_count",
        "success_ns",
    )

    def __init__(self) -> None:
        self.success_count = self.success_ns = 0
        self.fail_count = self.fail_ns = 0
        self.queue_count = self.queue_ns = 0
        self.compute_count = self.compute_ns = 0
        self.rows = self.executions = 0
        self.last_finished = 0.0  # monotonic; turned into wall-clock time when read
        # batch size -> [executions, compute ns]
        self._batches: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def succeeded(self, latency_s: float) -> None:
        """A request answered ``latency_s`` after it arrived (on the event loop)."""
        self.success_count += 1
        self.success_ns += int(latency_s * NS)

    def failed(self, latency_s: float) -> None:
        """A request the model's scheduler took that failed ``latency_s`` after it arrived."""
        self.fail_count += 1
        self.fail_ns += int(latency_s * NS)

    def executed(self, rows: int, queued: Sequence[float], started: float, finished: float) -> None:
        """One execution of ``rows`` rows for the requests queued at ``queued`` (monotonic
        instants), run from ``started`` to ``finished``; called in the scheduler's thread."""
        requests = len(queued)
        compute = int((finished - started) * NS)
        waited = int((started * requests - sum(queued)) * NS)
        with self._lock:
            self.queue_count += requests
            self.queue_ns += waited
            self.compute_count += requests
            self.compute_ns += compute * requests
            self.rows += rows
            self.executions += 1
            self.last_finished = finished
            batch = self._batches.get(rows)
            if batch is None:
                self._batches[rows] = [1, compute]
            else:
                batch[0] += 1
                batch[1] += compute

    def snapshot(self, name: str, version: str) -> VersionStatistics:
        """The counters now, as a :class:`VersionStatistics`."""
        with self._lock:
            batches = sorted((size, list(pair)) for size, pair in self._batches.items())
            compute = StatisticDuration(self.compute_count, self.compute_ns)
            queue = StatisticDuration(self.queue_count, self.queue_ns)
            rows, executions, finished = self.rows, self.executions, self.last_finished
        last = int((time.time() - time.monotonic() + finished) * 1000) if executions else 0
        return VersionStatistics(
            name=name,
            version=version,
            last_inference=last,
            inference_count=rows,
            execution_count=executions,
            success=StatisticDuration(self.success_count, self.success_ns),
            fail=StatisticDuration(self.fail_count, self.fail_ns),
            queue=queue,
            compute_input=StatisticDuration(compute.count, 0),
            compute_infer=compute,
            compute_output=StatisticDuration(compute.count, 0),
            batch_stats=[
                BatchStatistics(
                    size,
                    StatisticDuration(count, 0),
                    StatisticDuration(count, ns),
                    StatisticDuration(count, 0),
                )
                for size, (count, ns) in batches
            ],
        )


class Statistics:
    """Every model version's counters, made on first use, by (model, version).

    They live as long as the server process: a version unloaded and loaded again goes on
    counting from where it was.
    """

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionCounters] = {}
        self._lock = threading.Lock()

    def of(self, name: str, version: str) -> VersionCounters:
        """The counters of ``name`` version ``version`` (made on first use)."""
        counters = self._versions.get((name, version))
        if counters is None:
            with self._lock:
                counters = self._versions.setdefault((name, version), VersionCounters())
        return counters

    def snapshot(self, name: str, version: str) -> VersionStatistics:
        """The statistics of one version; zeros for a version that has not run yet."""
        counters = self._versions.get((name, version))
        if counters is None:
            return VersionStatistics(name=name, version=version)
        return counters.snapshot(name, version)
