"""Model statistics as protocols read them (:meth:`RuntimeView.model_statistics`).

The shapes follow Triton's statistics extension, so a protocol can answer it field for
field. Per model version:

- ``success`` / ``fail``: requests answered / failed, with their time from arrival to
  answer. ``fail`` counts requests that reached the model's scheduler (the model raised,
  the deadline passed in the queue, the queue was full); a request refused before (bad
  input, unknown model) is in neither, as in Triton.
- ``queue``: per request, from the moment it was queued to the start of the execution
  that ran it.
- ``compute_infer``: per request, the time of the execution that ran it (the model's
  predict(), processor.py included); every request of a merged batch is charged the whole
  batch's time, as in Triton. dl-inference does not time the copies in and out of the
  model apart from it: ``compute_input`` and ``compute_output`` count the same requests
  with 0 ns, so clients that divide by their counts still can.
- ``inference_count``: rows (samples) answered; ``execution_count``: executions (batches)
  that ran them; ``batch_stats``: executions and their compute time per batch size.
- ``last_inference``: the end of the last execution, in milliseconds since the epoch
  (0 before the first).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StatisticDuration:
    """How many times something happened and how long it took in all, in nanoseconds."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class BatchStatistics:
    """Executions of one batch size (rows): their compute time."""

    batch_size: int
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration


@dataclass(frozen=True)
class VersionStatistics:
    """A snapshot of one model version's statistics (see the module's docstring)."""

    name: str
    version: str
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: StatisticDuration = StatisticDuration()
    fail: StatisticDuration = StatisticDuration()
    queue: StatisticDuration = StatisticDuration()
    compute_input: StatisticDuration = StatisticDuration()
    compute_infer: StatisticDuration = StatisticDuration()
    compute_output: StatisticDuration = StatisticDuration()
    batch_stats: list[BatchStatistics] = field(default_factory=list)
