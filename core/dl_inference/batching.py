"""Dynamic batching: concurrent requests to one model merged along dimension 0.

Requests that arrive while the model is busy wait in a queue; a free instance takes the
oldest request plus every compatible one behind it (same input names, dtypes, trailing
dimensions and parameters) up to ``max_batch_size`` rows, runs them once and splits the
outputs back. With ``max_queue_delay_ms`` an instance waits that long for more rows
before running a batch that is not full. An idle model runs a request at once. Requests
whose deadline passed are dropped before they cost compute; a full queue refuses at once.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dl_inference.errors import BackendError, DeadlineExceeded, InvalidInput, ResourceExhausted

# run(inputs, parameters, queued_at=<monotonic time the oldest request was queued>)
Runner = Callable[..., Awaitable[dict[str, np.ndarray]]]


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    deadline: float | None
    rows: int
    key: tuple[Any, ...]
    queued_at: float = field(default_factory=time.monotonic)
    future: asyncio.Future[dict[str, np.ndarray]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class BatchStats:
    """Counters for metrics and tests: batches run and rows per batch."""

    batches: int = 0
    rows: int = 0
    largest: int = 0
    expired: int = 0
    refused: int = 0
    sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class Batcher:
    """Per-model queue feeding ``instances`` concurrent executions of merged batches."""

    def __init__(
        self,
        name: str,
        run: Runner,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float = 0.0,
        max_queue_size: int | None = None,
        instances: int = 1,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self.delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.instances = instances
        self.stats = BatchStats()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, Any], deadline: float | None
    ) -> dict[str, np.ndarray]:
        """Queue one request (inputs carry its batch as dimension 0) and await its outputs."""
        rows = batch_rows(self.name, inputs, self.max_batch_size)
        if self.max_queue_size is not None and len(self._queue) >= self.max_queue_size:
            self.stats.refused += 1
            raise ResourceExhausted(
                f"model {self.name!r}: queue full ({self.max_queue_size} requests waiting); "
                "retry later, or raise max_queue_size / instances"
            )
        self._ensure_workers()
        item = _Pending(inputs, parameters, deadline, rows, _batch_key(inputs, parameters))
        self._queue.append(item)
        assert self._wakeup is not None
        self._wakeup.set()
        return await item.future

    def _ensure_workers(self) -> None:
        loop = asyncio.get_running_loop()
        if self._workers and self._loop is not loop:
            # A new event loop (tests, an embedding app): the old loop's tasks are gone.
            self._workers = []
            self._queue.clear()
        if not self._workers:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._workers = [
                asyncio.create_task(self._work(), name=f"batcher-{self.name}-{i}")
                for i in range(self.instances)
            ]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._collect()
            if batch:
                await self._execute(batch)

    async def _collect(self) -> list[_Pending]:
        """Take the oldest live request and the compatible ones behind it."""
        if self.delay > 0 and self._queued_rows() < self.max_batch_size:
            # Give concurrent clients a moment to fill the batch.
            end = time.monotonic() + self.delay
            while (
                self._queued_rows() < self.max_batch_size and (left := end - time.monotonic()) > 0
            ):
                assert self._wakeup is not None
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
        now = time.monotonic()
        batch: list[_Pending] = []
        rows = 0
        kept: collections.deque[_Pending] = collections.deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # the caller went away (cancelled)
                continue
            if item.deadline is not None and item.deadline <= now:
                self.stats.expired += 1
                item.future.set_exception(
                    DeadlineExceeded(
                        f"the deadline of the request to {self.name!r} passed in the queue"
                    )
                )
                continue
            if not batch or (item.key == batch[0].key and rows + item.rows <= self.max_batch_size):
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._queue.extendleft(reversed(kept))
        return batch

    def _queued_rows(self) -> int:
        return sum(item.rows for item in self._queue)

    async def _execute(self, batch: list[_Pending]) -> None:
        rows = sum(item.rows for item in batch)
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.largest = max(self.stats.largest, rows)
        self.stats.sizes[rows] += 1
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([i.inputs[name] for i in batch]) for name in batch[0].inputs
            }
        try:
            outputs = await self._run(
                inputs, batch[0].parameters, queued_at=min(i.queued_at for i in batch)
            )
            parts = _split(self.name, outputs, [item.rows for item in batch])
        except BaseException as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for item, part in zip(batch, parts, strict=True):
            if not item.future.done():
                item.future.set_result(part)


def batch_rows(name: str, inputs: dict[str, np.ndarray], max_batch_size: int) -> int:
    """The request's batch size (its common first dimension), checked against the maximum."""
    sizes = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise InvalidInput(
            f"model {name!r} batches along the first dimension: every input needs the same "
            f"first dimension (got {sorted(sizes)})"
        )
    rows = sizes.pop()
    if rows > max_batch_size:
        raise InvalidInput(
            f"model {name!r}: batch of {rows} exceeds its max_batch_size {max_batch_size}; "
            "split the request"
        )
    return rows


def _batch_key(inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> tuple[Any, ...]:
    """Requests merge only when everything but the batch dimension agrees."""
    tensors = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items()))
    try:
        params = tuple(sorted((k, repr(v)) for k, v in parameters.items()))
    except TypeError:
        params = (id(parameters),)
    return tensors, params


def _split(
    name: str, outputs: dict[str, np.ndarray], rows: list[int]
) -> list[dict[str, np.ndarray]]:
    total = sum(rows)
    if len(rows) == 1:
        return [outputs]
    for key, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise BackendError(
                f"model {name!r} returned output {key!r} with shape {list(array.shape)}; a "
                f"batching model must return the batch ({total} rows) as the first dimension"
            )
    bounds = np.cumsum(rows)[:-1]
    pieces = {key: np.split(array, bounds) for key, array in outputs.items()}
    return [{key: pieces[key][i] for key in outputs} for i in range(len(rows))]
