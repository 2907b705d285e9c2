"""Decoupled models: several responses for one request, delivered as they are produced.

A model is *decoupled* (Triton's word) when its ``predict`` (a backend's, or the
``python`` backend's user ``predict``) or its ``processor.py`` ``run_model`` is a
generator, sync or async: each value it yields is one response. Such a model never merges
requests, and clients reach it through a streaming method (V2 ``ModelStreamInfer``,
``POST /v2/models/{m}/generate_stream``); the unary methods refuse it.

A sync generator runs in the model's own threads (``instances`` of them), never on the
event loop; what it yields crosses to the loop through a bounded hand-off of
:data:`STREAM_DEPTH` values, so a slow client pauses the generator instead of piling up
its output. When the client goes away (a cancelled gRPC stream, a closed HTTP
connection), the stream is closed: the generator is closed in its thread
(``generator.close()``: ``GeneratorExit`` is raised in the model's code at its ``yield``,
so ``try/finally`` there releases what it holds). An async generator runs on the loop
and is closed with ``aclose()``.

The requests of one stream (V2 ``ModelStreamInfer``) run concurrently, as Triton runs
them: :func:`interleave` merges their responses as they come, each request's in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Values a generator may run ahead of its client: small, so a slow client holds the model
# back at once, yet the next value is ready when the client asks.
STREAM_DEPTH = 2
# Requests of one stream that run at once; the stream's next request is read only when
# one of them has answered. More than a model's usual instances, so one stream keeps them
# busy, yet bounded: a client writing requests faster than they are answered meets gRPC
# flow control instead of growing the server's memory (each holds its decoded tensors).
STREAM_REQUESTS_IN_FLIGHT = 16
# How often a producer blocked on a full hand-off looks whether the client went away.
_POLL_S = 0.05

_ITEM, _ERROR, _END = 0, 1, 2
_DONE = object()  # what _take returns at _END: a producer's value may be None


async def _take(values: asyncio.Queue[tuple[int, Any]]) -> Any:
    """The next value a producer queued, ``_DONE`` at its end; raises its exception."""
    kind, value = await values.get()
    if kind == _ERROR:
        raise value
    return value if kind == _ITEM else _DONE


def is_generator_function(function: Any) -> bool:
    """Whether calling ``function`` returns a generator (sync or async), bound methods too."""
    return inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)


async def iterate(produced: Any, executor: Executor) -> AsyncIterator[Any]:
    """The values of ``produced`` (a generator or an async generator) on the event loop.

    A sync generator is advanced in ``executor``'s threads (see :func:`thread_stream`);
    closing the returned iterator closes ``produced``.
    """
    if inspect.isasyncgen(produced):
        async with contextlib.aclosing(produced) as values:
            async for value in values:
                yield value
        return
    async with contextlib.aclosing(thread_stream(lambda: produced, executor)) as values:
        async for value in values:
            yield value


async def thread_stream(
    make: Callable[[], Iterator[T]], executor: Executor, depth: int = STREAM_DEPTH
) -> AsyncIterator[T]:
    """Run the iterator ``make()`` returns in one of ``executor``'s threads; yield its values.

    At most ``depth`` values wait for the consumer; the producer blocks beyond. Closing
    this async generator (its consumer stopped, was cancelled) stops the producer: after
    the value it is computing, the generator is closed in its own thread. Exceptions of
    the generator are raised here, in order after the values before them.
    """
    loop = asyncio.get_running_loop()
    handoff = _Handoff(loop, depth)
    context = contextvars.copy_context()  # the request's log fields reach the model's thread
    loop.run_in_executor(executor, context.run, handoff.produce, make)
    try:
        while (value := await _take(handoff.values)) is not _DONE:
            handoff.room.release()
            yield value
    finally:
        handoff.stop.set()


async def interleave(
    items: AsyncIterable[T],
    run: Callable[[T], AsyncIterator[R]],
    limit: int = STREAM_REQUESTS_IN_FLIGHT,
) -> AsyncIterator[R]:
    """The values of ``run(item)`` for every item, the items run concurrently.

    Each item's values come in their order, interleaved with the others' as produced; at
    most ``limit`` items run at once (the next item is read when one ends) and at most
    :data:`STREAM_DEPTH` values wait for the consumer, so a slow consumer pauses every
    producer. Ends when ``items`` and every run have ended; an exception of ``items`` or
    of a run is raised here. Closing this async generator (its consumer stopped, was
    cancelled) cancels every run, which closes each ``run(item)`` iterator.
    """
    values: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=STREAM_DEPTH)
    slots = asyncio.Semaphore(limit)
    running: set[asyncio.Task[None]] = set()

    async def one(item: T) -> None:
        try:
            async with contextlib.aclosing(run(item)) as produced:
                async for value in produced:
                    await values.put((_ITEM, value))
        finally:
            slots.release()

    async def feed() -> None:
        try:
            async for item in items:
                await slots.acquire()
                task = asyncio.create_task(one(item))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*running)
        except Exception as exc:
            await values.put((_ERROR, exc))
        else:
            await values.put((_END, None))

    feeder = asyncio.create_task(feed())
    try:
        while (value := await _take(values)) is not _DONE:
            yield value
    finally:
        tasks = [feeder, *running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Handoff:
    """Values from one producer thread to the event loop, at most ``depth`` ahead."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int) -> None:
        self.loop = loop
        self.values: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.room = threading.Semaphore(depth)
        self.stop = threading.Event()

    def produce(self, make: Callable[[], Iterator[Any]]) -> None:
        """In the model's thread: run the generator until it ends or the consumer leaves."""
        try:
            produced = make()
            try:
                for value in produced:
                    while not self.room.acquire(timeout=_POLL_S):
                        if self.stop.is_set():
                            break
                    if self.stop.is_set():
                        break  # the client went away: close the generator, below
                    self._send(_ITEM, value)
            finally:
                close = getattr(produced, "close", None)
                if close is not None:
                    close()  # GeneratorExit at the model's yield
        except BaseException as exc:
            self._send(_ERROR, exc)
        else:
            self._send(_END, None)

    def _send(self, kind: int, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self.loop.call_soon_threadsafe(self.values.put_nowait, (kind, value))
