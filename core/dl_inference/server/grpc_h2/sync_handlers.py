"""Synchronous handlers (grpcio's sync stack), run as grpc.aio runs them: off the event loop.

A synchronous handler runs in the loop's default executor, with a context whose blocking
methods (``abort``, ``send_initial_metadata``) hand their work to the loop and wait for
it. A synchronous reply generator is advanced one reply at a time in the executor, and a
synchronous handler of a request stream reads it through an iterator that waits, in the
handler's thread, for the loop to receive each message. So a handler that blocks (a
model's computation, a ``time.sleep``) holds a thread, never the calls of other clients.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio

from dl_inference.server.grpc_h2.context import ServicerContext

_END = object()


def is_sync(behavior: Callable[..., Any]) -> bool:
    """Whether a handler is synchronous, as grpc.aio tells: not a coroutine function and
    not an async generator function."""
    return not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class SyncServicerContext:
    """What grpcio's synchronous ``ServicerContext`` offers, over a call's context, for a
    handler running in an executor thread. ``abort`` raises ``grpc.aio.AbortError`` in the
    handler's thread, ending the call with the code given."""

    def __init__(self, context: ServicerContext, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop

    def _check_thread(self) -> None:
        if _running_loop() is self._loop:
            raise RuntimeError(
                "a synchronous handler's context waits for the event loop: use it from the "
                "handler's own thread, not from a coroutine on the loop"
            )

    def _await_on_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        """Await ``function(*args)`` on the event loop; wait for its result (or exception)."""
        self._check_thread()
        return asyncio.run_coroutine_threadsafe(function(*args), self._loop).result()

    # -- what the call came with ------------------------------------------------------------

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> str | None:
        return self._context.peer_identity_key()

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._context.auth_context()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def is_active(self) -> bool:
        return not self._context.done()

    # -- status and metadata out -------------------------------------------------------------

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        self._await_on_loop(self._context.send_initial_metadata, initial_metadata)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._context.set_trailing_metadata(trailing_metadata)

    def trailing_metadata(self) -> Any:
        return self._context.trailing_metadata()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def code(self) -> grpc.StatusCode | None:
        return self._context.code()

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def details(self) -> str:
        return self._context.details()

    def set_compression(self, compression: grpc.Compression) -> None:
        self._context.set_compression(compression)

    def disable_next_message_compression(self) -> None:
        self._context.disable_next_message_compression()

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._await_on_loop(self._context.abort, code, details, trailing_metadata)

    def abort_with_status(self, status: grpc.Status) -> None:
        self.abort(status.code, status.details, status.trailing_metadata)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` when the call ends; False (and not registered) if it has."""

        async def register() -> bool:  # on the loop, which also ends the call
            if self._context.done():
                return False
            self._context.add_done_callback(lambda _: callback())
            return True

        return self._await_on_loop(register)


class SyncRequests(Iterator[Any]):
    """A request stream for a synchronous handler: each message received (and
    deserialized) by the event loop, waited for in the handler's thread."""

    def __init__(self, context: ServicerContext, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop

    def __next__(self) -> Any:
        message = asyncio.run_coroutine_threadsafe(self._context.read(), self._loop).result()
        if message is grpc.aio.EOF:
            raise StopIteration
        return message


async def call_sync(behavior: Callable[..., Any], argument: Any, context: ServicerContext) -> Any:
    """``behavior(argument, context)`` in the default executor, in a copy of the caller's
    context variables, with a :class:`SyncServicerContext`."""
    loop = asyncio.get_running_loop()
    run = contextvars.copy_context().run
    return await loop.run_in_executor(
        None, run, behavior, argument, SyncServicerContext(context, loop)
    )


async def sync_replies(replies: Any) -> AsyncIterator[Any]:
    """A synchronous handler's replies, each produced in the default executor."""
    loop = asyncio.get_running_loop()
    iterator = iter(replies)
    run = contextvars.copy_context().run
    while (reply := await loop.run_in_executor(None, run, next, iterator, _END)) is not _END:
        yield reply
