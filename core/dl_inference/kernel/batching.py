"""Per-model scheduling: a queue feeding ``instances`` threads, with dynamic batching.

Requests that arrive while the model is busy wait in a queue; a free instance takes the
oldest request plus every compatible one behind it (same input names, dtypes, trailing
dimensions and parameters) up to ``max_batch_size`` rows, runs them once and splits the
outputs back. With ``max_queue_delay_ms`` an instance that finds requests waiting when it
finishes a batch waits for more rows until the oldest of them has waited that long (as
Triton's dynamic batcher counts its delay) before running a batch that is not full. An
idle model runs a request at once, delay or not.

With ``preferred_batch_sizes`` (Triton's ``dynamic_batching.preferred_batch_size``) a batch
holds at most the largest preferred size, and is cut at the largest preferred size its
requests can make, oldest first: with sizes 2 and 4, seven one-row requests queued run as
4, 2 and 1, as Triton 2.51's dynamic batcher runs them. Under load a queue delay ends as
soon as the queued requests can make a preferred size; when they cannot, the batch runs
with what is queued once the delay is over. Requests whose deadline passed
are dropped before they cost compute; a full queue refuses at once. Models without dynamic
batching use the same queue with ``merge=False``: one request per execution.

With ``run_requests`` (a backend that takes request lists: ``Backend.takes_request_lists``)
the gathered requests are not concatenated: the runner gets them as a list of
:class:`~dl_inference.InferRequest` (each with its own inputs, parameters and id) and
returns one result per request, its outputs or the exception that fails it alone, as
Triton's dynamic batcher hands a python model's ``execute`` a list of requests. Requests
gather as for merging: up to ``max_batch_size`` rows in all (the sum of their first
dimensions), with the same input names, dtypes and trailing dimensions; their parameters
may differ, since each request keeps its own.

A merged batch whose execution fails is bisected (see :meth:`Batcher._isolate`): one
request the model cannot take (an out-of-range token id) fails alone, with its own error,
and the requests merged with it get their answers, as Triton's per-request responses allow.
The reruns are bounded by ``2 * ceil(log2(n))`` for a batch of ``n``: enough to set one
bad request apart, and all a model that fails everything (it crashed) is made to repeat.

Each instance is a thread that forms its next batch itself the moment it finishes one, as
Triton's scheduler threads do: the event loop only queues requests and receives results,
so a busy loop never leaves the model idle between batches. Results go back to the loop
in bursts: one wake-up delivers every result finished since the last one, so a loaded
server pays one cross-thread hand-off per burst rather than one per request.

A request alone runs on the event loop's own thread (``alone_on_loop``): when it finds
every instance idle, nothing else queued by the end of that turn of the loop, and the
model's recent executions short (under ``LOOP_RUN_MAX_S``). Light traffic then pays no
thread hand-off at all (two wake-ups, a fifth of a small model's round trip), and a model
that already ran for one request alone leaves no batch to form. Requests arriving together
still go to the instances, so load batches as before. Only for backends that vouch their
executions never wait for this server (:attr:`~dl_inference.Backend.self_contained`): one
waiting on the loop it blocks would wait forever.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from dl_inference.spi.errors import (
    BackendError,
    DeadlineExceeded,
    InvalidInput,
    ResourceExhausted,
    Unavailable,
)
from dl_inference.spi.types import ExecutionTiming, InferRequest

# run(inputs, parameters, queued) -> outputs, called in a batcher thread; queued holds the
# monotonic time each request of the batch was queued, oldest first (for the queue time
# that metrics and statistics report).
Runner = Callable[[dict[str, np.ndarray], dict[str, Any], list[float]], dict[str, np.ndarray]]
# run_requests(requests, queued) -> one result per request, in order: its outputs, or the
# exception that fails that request alone (for backends that take request lists).
Result = dict[str, np.ndarray] | Exception
RequestsRunner = Callable[[list[InferRequest], list[float]], list[Result]]

# The longest recent execution with which a request alone still runs on the event loop:
# the most the loop may stall for it (a health probe, another model's request) when the
# server was idle anyway. A small model's hand-offs cost a fifth of its round trip; a
# model taking tens of milliseconds would gain under one percent.
LOOP_RUN_MAX_S = 0.002
# How fast a long execution is forgotten: the estimate jumps to a longer one at once and
# decays by this factor per execution (50 ms takes some 40 short ones to fall below 2 ms).
_RECENT_DECAY = 0.9


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    deadline: float | None
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    delivery: _Delivery
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    queued_at: float = field(default_factory=time.monotonic)
    # Filled in when the request runs, for a tracing plugin (None: nobody asked).
    timing: ExecutionTiming | None = None


@dataclass
class BatchStats:
    """Counters for metrics and tests: batches run and rows per batch.

    ``batches``, ``rows``, ``largest`` and ``sizes`` count batches as taken from the queue;
    the executions spent isolating a failed merged batch count in ``reruns`` only.
    """

    batches: int = 0
    rows: int = 0
    largest: int = 0
    expired: int = 0
    refused: int = 0
    isolated: int = 0  # merged batches that failed and were bisected
    reruns: int = 0  # executions of parts of those batches
    sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class _Delivery:
    """Results handed back to one event loop, every finished one per wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = threading.get_ident()  # made on the loop's thread (by submit)
        self._done: collections.deque[tuple[_Pending, Any, BaseException | None]] = (
            collections.deque()
        )
        self._scheduled = False

    def put(self, item: _Pending, result: Any, error: BaseException | None) -> None:
        """From any thread. Appending before reading the flag (and the loop clearing it
        before draining) means no result is left behind; a spare wake-up is harmless."""
        self._done.append((item, result, error))
        if self._scheduled:
            return
        self._scheduled = True
        if threading.get_ident() == self._thread:  # run on the loop: no wake-up to send
            self.loop.call_soon(self._deliver)
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        done = self._done
        while done:
            item, result, error = done.popleft()
            if item.future.done():  # cancelled meanwhile
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(result)


class Batcher:
    """Per-model queue feeding ``instances`` threads; with ``merge`` they run merged batches
    (or, with ``run_requests``, lists of requests)."""

    def __init__(
        self,
        name: str,
        run: Runner,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float = 0.0,
        max_queue_size: int | None = None,
        instances: int = 1,
        merge: bool = True,
        run_requests: RequestsRunner | None = None,
        preferred_batch_sizes: Sequence[int] = (),
        alone_on_loop: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self._run_requests = run_requests
        self.max_batch_size = max_batch_size
        self.merge = merge
        self.preferred = frozenset(preferred_batch_sizes)
        # The most rows one batch takes: with preferred sizes, the largest of them.
        self.limit = max(self.preferred) if self.preferred else max_batch_size
        self.delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.instances = instances
        self.stats = BatchStats()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._ready = threading.Condition()
        # Instances waiting on _ready, counted under its lock before they look at the
        # queue: submit() appends without the lock and takes it only to wake one of them.
        self._waiting = 0
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._deliveries: dict[asyncio.AbstractEventLoop, _Delivery] = {}
        # Whether the model may run a request alone on the event loop (its backend is
        # self-contained: asked at each one, since that is known once the model loaded).
        self._alone_on_loop = alone_on_loop
        self._dispatching = False  # a request alone waits for the end of the loop's turn
        # Executions in progress, in the threads or on a loop: at most ``instances``.
        self._running = 0
        self._recent_s = math.inf  # the recent executions' longest (decaying); none yet

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        deadline: float | None,
        timing: ExecutionTiming | None = None,
    ) -> dict[str, np.ndarray]:
        """Queue one request and await its outputs.

        When merging, inputs carry the request's batch as dimension 0. ``timing``, when
        given, receives when the request was queued and when the execution that carried it
        ran, with that execution's rows.
        """
        if self.merge:
            rows, key = (
                batch_rows(self.name, inputs, self.max_batch_size),
                # Listed requests keep their own parameters: only the tensors must agree.
                _batch_key(inputs, {} if self._run_requests else parameters),
            )
        else:
            rows, key = 1, ()
        loop = asyncio.get_running_loop()
        item = _Pending(
            inputs, parameters, deadline, rows, key, loop.create_future(), self._delivery(loop)
        )
        item.timing = timing
        # Submit and close run on the event loop; the instances only take from the left.
        # So the queue is appended to without the lock (a deque's append is atomic), and
        # the lock is taken only when an instance waits for work: under load the loop then
        # never contends with an instance forming its next batch.
        if self.max_queue_size is not None and len(self._queue) >= self.max_queue_size:
            self.stats.refused += 1
            raise ResourceExhausted(
                f"model {self.name!r}: queue full ({self.max_queue_size} requests waiting); "
                "retry later, or raise max_queue_size / instances"
            )
        if not self._threads:
            with self._ready:
                if not self._threads:
                    self._start_threads()
        # Read without the lock: a stale answer only sends this request the usual way.
        idle = not self._queue and not self._running
        self._queue.append(item)
        if (
            idle
            and not self._dispatching
            and self._recent_s <= LOOP_RUN_MAX_S
            and self._alone_on_loop is not None
            and self._alone_on_loop()
        ):
            # Whether it is alone is known once the requests that arrived with it queued:
            # at the end of this turn of the loop.
            self._dispatching = True
            loop.call_soon(self._dispatch)
        elif self._waiting:
            with self._ready:
                self._ready.notify()
        return await item.future

    def _dispatch(self) -> None:
        """Run the request queued alone on this loop's thread, or wake an instance."""
        self._dispatching = False
        with self._ready:
            alone = len(self._queue) == 1 and not self._running and not self._closed
            if not alone:
                if self._queue and self._waiting:
                    self._ready.notify()
                return
            item = self._queue.popleft()
            self._running += 1  # the instances wait meanwhile
        if self._gone(item, time.monotonic(), "in the queue"):
            self._release()
        else:
            self._execute([item])

    def _delivery(self, loop: asyncio.AbstractEventLoop) -> _Delivery:
        delivery = self._deliveries.get(loop)
        if delivery is None:
            # Tests run one loop after another; forget the closed ones.
            self._deliveries = {k: v for k, v in self._deliveries.items() if not k.is_closed()}
            delivery = self._deliveries[loop] = _Delivery(loop)
        return delivery

    def _start_threads(self) -> None:
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"dli-batch-{self.name}-{i}", daemon=True)
            for i in range(self.instances)
        ]
        for thread in self._threads:
            thread.start()

    async def close(self) -> None:
        """Stop the threads once the running batches end; queued requests are refused."""
        with self._ready:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._ready.notify_all()
        for item in left:
            _resolve(item, error=ResourceExhausted(f"model {self.name!r} is being unloaded"))
        threads, self._threads = self._threads, []
        await asyncio.to_thread(lambda: [t.join(30) for t in threads])

    def _work(self) -> None:
        busy = False  # requests arrived while this instance ran its last batch
        while True:
            with self._ready:
                self._waiting += 1
                while (not self._queue or self._running >= self.instances) and not self._closed:
                    self._ready.wait()
                self._waiting -= 1
                if self._closed:
                    return
                self._running += 1
                if busy:
                    self._wait_for_rows()
                batch = self._take()
                if not batch:
                    self._running -= 1
            busy = self._execute(batch) if batch else False

    def _wait_for_rows(self) -> None:
        """With a queue delay, give concurrent clients a moment to fill the batch.

        Only under load (requests queued while the instance ran): a request that finds the
        model idle runs at once, so the delay adds no latency when traffic is light. The
        delay counts from when the oldest queued request arrived, as in Triton's dynamic
        batcher: requests that already waited that long behind a running batch run as soon
        as the instance is free (lock held).
        """
        if self.delay <= 0:
            return
        self._waiting += 1
        while self._queue and not self._formed() and not self._closed:
            left = self._queue[0].queued_at + self.delay - time.monotonic()
            if left <= 0:
                break
            self._ready.wait(left)
        self._waiting -= 1

    def _take(self) -> list[_Pending]:
        """The oldest live request and the compatible ones behind it (lock held)."""
        now = time.monotonic()
        live: collections.deque[_Pending] = collections.deque()
        while self._queue:
            item = self._queue.popleft()
            if self._gone(item, now, "in the queue"):
                continue
            live.append(item)
            if not self.merge:
                break
        batch = self._select(live)
        taken = {id(item) for item in batch}
        self._queue.extendleft(reversed([item for item in live if id(item) not in taken]))
        return batch

    def _select(self, queued: Iterable[_Pending]) -> list[_Pending]:
        """The batch ``queued`` makes, oldest first: compatible requests up to ``limit``
        rows, cut at the largest preferred size they reach (all of them when none)."""
        batch: list[_Pending] = []
        rows = 0
        preferred_at = 0  # requests in the batch when its rows last made a preferred size
        for item in queued:
            if batch and not (
                self.merge and item.key == batch[0].key and rows + item.rows <= self.limit
            ):
                continue
            batch.append(item)
            rows += item.rows
            if rows in self.preferred:
                preferred_at = len(batch)
            if not self.merge or rows >= self.limit:
                break
        return batch[:preferred_at] if preferred_at else batch

    def _formed(self) -> bool:
        """Whether the queue makes a batch worth running before the delay is over: a full
        one, or one of a preferred size (lock held)."""
        # A copy (taken at once): submit() may append while the batch is looked for.
        batch = self._select(list(self._queue))
        rows = sum(item.rows for item in batch)
        return rows >= self.limit or rows in self.preferred

    def _execute(self, batch: list[_Pending]) -> bool:
        """Run one batch and resolve its callers; returns whether requests queued meanwhile.

        That is read before any caller gets its result, so a client's next request (sent
        on receiving this one's) does not count as load.
        """
        rows = sum(item.rows for item in batch)
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.largest = max(self.stats.largest, rows)
        self.stats.sizes[rows] += 1
        error: Exception | None = None
        started = time.monotonic()
        try:
            outputs = self._run_batch(batch)
        except Exception as exc:
            error = exc
        took = time.monotonic() - started
        recent = self._recent_s
        self._recent_s = took if recent == math.inf else max(took, recent * _RECENT_DECAY)
        queued = bool(self._queue)
        if error is None:
            # Free before its callers hear: a client's next request finds the model idle.
            self._release()
            self._deliver(batch, outputs)
            return queued
        try:
            if self._isolable(batch, error):
                # Outside the except block: the reruns' errors must not chain onto this
                # one (each would hold the frames, and so the inputs, of every failure
                # before it).
                self._isolate(batch, error)
            else:
                _fail(batch, error)
        finally:
            self._release()
        return queued

    def _release(self) -> None:
        """One execution ended: an instance is free for what queued meanwhile."""
        with self._ready:
            self._running -= 1
            if self._queue and self._waiting:
                self._ready.notify()

    def _run_batch(self, batch: list[_Pending]) -> Any:
        """One execution of ``batch``: merged outputs, or one result per listed request."""
        if self._run_requests is not None:
            return self._run_listed(batch)
        return self._run_merged(batch)

    def _run_listed(self, batch: list[_Pending]) -> list[Result]:
        """One execution of ``batch``'s requests handed over as a list."""
        requests = [
            InferRequest(
                self.name,
                item.inputs,
                id=_request_id(item),
                parameters=item.parameters,
                deadline=item.deadline,
            )
            for item in batch
        ]
        queued = [item.queued_at for item in batch]
        started = time.monotonic()
        try:
            assert self._run_requests is not None
            return batch[0].context.run(self._run_requests, requests, queued)
        finally:
            _record_timing(batch, started)

    def _run_merged(self, batch: list[_Pending]) -> dict[str, np.ndarray]:
        """One execution of ``batch``'s requests merged along dimension 0."""
        first = batch[0]
        if len(batch) == 1:
            inputs = first.inputs
        else:
            inputs = {n: np.concatenate([i.inputs[n] for i in batch]) for n in first.inputs}
        queued = [item.queued_at for item in batch]  # in queue order: oldest first
        started = time.monotonic()
        try:
            # The first request's context carries its request id into the model's logs.
            return first.context.run(self._run, inputs, first.parameters, queued)
        finally:
            _record_timing(batch, started)

    def _deliver(self, batch: list[_Pending], outputs: Any) -> None:
        """Split a batch's outputs back to its callers (all fail if the model broke the
        batch contract: that is the model's fault, so running parts again would not help).
        Listed requests each get their own result, or fail alone with their exception."""
        if self._run_requests is not None:
            if not isinstance(outputs, list) or len(outputs) != len(batch):
                got = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
                _fail(
                    batch,
                    BackendError(
                        f"model {self.name!r} returned {got} results for {len(batch)} "
                        "requests; return one per request, in order"
                    ),
                )
                return
            for item, result in zip(batch, outputs, strict=True):
                if isinstance(result, BaseException):
                    _resolve(item, error=result)
                else:
                    _resolve(item, result=result)
            return
        try:
            parts = _split(self.name, outputs, [item.rows for item in batch])
        except Exception as exc:
            _fail(batch, exc)
            return
        for item, part in zip(batch, parts, strict=True):
            _resolve(item, result=part)

    def _isolable(self, batch: list[_Pending], error: Exception) -> bool:
        """Whether running parts of a failed batch again could spare some of its callers.

        Not for a lone request, a passed deadline (the requests would only expire again),
        an unavailable model (an instance process that died) or a model being unloaded.
        """
        return (
            len(batch) > 1
            and not isinstance(error, DeadlineExceeded | Unavailable)
            and not self._closed
        )

    def _isolate(self, batch: list[_Pending], error: Exception) -> None:
        """Bisect a failed merged batch until each faulty request fails alone.

        Each failed part is split in two halves that run on their own; a half that
        succeeds answers its callers, a failing half of one request fails that caller with
        its own error, a failing larger half is split again. One bad request among ``n``
        costs ``2 * ceil(log2(n))`` executions (a batch of 32: 10, where running each
        request alone would cost 32).

        That is also the most a batch may cost: a model that fails everything (it
        crashed) would otherwise be run ``2n - 2`` more times. Parts still failing when
        the reruns are spent fail with their own last error; the parts are split level
        by level, so that with several bad requests those parts stay small. Callers that
        went away meanwhile are skipped, and those whose deadline passed fail with
        DEADLINE_EXCEEDED, as in the queue. Only executions that succeed reach the model's
        metrics (the runner observes them), so every answered row counts once.
        """
        self.stats.isolated += 1
        budget = 2 * (len(batch) - 1).bit_length()  # 2 * ceil(log2(n)), n >= 2
        failed = collections.deque([(batch, error)])
        while failed:
            group, error = failed.popleft()
            if not self._isolable(group, error) or budget <= 0:
                _fail(group, error)
                continue
            # Split only those still waiting: one left over runs alone, since the error
            # may have been another's.
            live = self._still_waiting(group)
            middle = len(live) // 2
            for half in (live[:middle], live[middle:]):
                half = self._still_waiting(half)  # the first half's run took a while
                if not half:
                    continue
                if budget <= 0:
                    _fail(half, error)
                    continue
                budget -= 1
                self.stats.reruns += 1
                try:
                    outputs = self._run_batch(half)
                except Exception as exc:
                    failed.append((half, exc))
                else:
                    self._deliver(half, outputs)

    def _still_waiting(self, group: list[_Pending]) -> list[_Pending]:
        """The requests of ``group`` still worth running; expired ones fail here."""
        now = time.monotonic()
        where = "while its batch ran again to set apart a request that failed it"
        return [item for item in group if not self._gone(item, now, where)]

    def _gone(self, item: _Pending, now: float, where: str) -> bool:
        """Whether ``item`` needs no run: its caller left, or its deadline passed (failed here)."""
        if item.future.done():  # the caller went away (cancelled, deadline)
            return True
        if item.deadline is not None and item.deadline <= now:
            self.stats.expired += 1
            message = f"the deadline of the request to {self.name!r} passed {where}"
            _resolve(item, error=DeadlineExceeded(message))
            return True
        return False


def _resolve(
    item: _Pending, result: dict[str, np.ndarray] | None = None, error: BaseException | None = None
) -> None:
    """Hand a result or error to the waiting coroutine, on its own event loop."""
    item.delivery.put(item, result, error)


def _request_id(item: _Pending) -> str:
    """The id the request's log lines carry: the runtime binds it in the request's context."""
    return str(item.context.run(structlog.contextvars.get_contextvars).get("request_id", ""))


def _record_timing(batch: list[_Pending], started: float) -> None:
    """Tell the requests that asked (``timing``) when this execution of theirs ran."""
    finished = 0.0
    rows = 0
    for item in batch:
        if item.timing is None:
            continue
        if not finished:
            finished, rows = time.monotonic(), sum(i.rows for i in batch)
        item.timing.record(item.queued_at, started, finished, rows)


def _fail(batch: list[_Pending], error: BaseException) -> None:
    for item in batch:
        _resolve(item, error=error)


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
