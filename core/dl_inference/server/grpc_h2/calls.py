"""Running a call's handler as grpc.aio runs it: the four kinds (unary or streaming request
and reply), async generators or ``context.write``, and the status each outcome ends with."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from dl_inference.server.grpc_h2.context import (
    DeserializeError,
    SerializeError,
    ServicerContext,
    _deserialize,
    _serialize,
)
from dl_inference.server.grpc_h2.stream import MessageOverLimit, Stream
from dl_inference.server.grpc_h2.sync_handlers import (
    SyncRequests,
    call_sync,
    is_sync,
    sync_replies,
)

log = logging.getLogger(__name__)
_OK = grpc.StatusCode.OK


async def run_call(stream: Stream, handler: grpc.RpcMethodHandler, request: bytes | None) -> None:
    """Run ``handler`` for ``stream`` (``request``: the one message of a unary request)."""
    context = stream.context
    assert context is not None
    context.request_deserializer = handler.request_deserializer
    context.response_serializer = serializer = handler.response_serializer
    try:
        behavior = _behavior(handler)
        sync = is_sync(behavior)
        if handler.request_streaming:
            argument: Any = (
                SyncRequests(context, asyncio.get_running_loop()) if sync else _requests(context)
            )
        else:
            assert request is not None
            argument = _deserialize(handler.request_deserializer, request)
        # A synchronous handler runs in the default executor, as grpc.aio runs it, so that
        # it cannot stall the event loop.
        if sync:
            result = await call_sync(behavior, argument, context)
        else:
            result = behavior(argument, context)
        if inspect.isawaitable(result):
            result = await result
        if not handler.response_streaming:
            if context._code is None or context._code is _OK:
                await stream.send_message(_serialize(serializer, result), False)
        elif result is not None:
            replies = result if hasattr(result, "__aiter__") else sync_replies(result)
            async for reply in replies:
                await stream.send_message(_serialize(serializer, reply), True)
    except grpc.aio.AbortError:
        pass
    except asyncio.CancelledError:
        context._cancelled = True
        # Cancelled by the client (RST_STREAM), its deadline or the server's stop: the
        # stream has been ended already, unless the handler cancelled itself.
        stream.finish(grpc.StatusCode.CANCELLED, "Cancelled")
        return
    except DeserializeError as exc:
        context._code = grpc.StatusCode.INTERNAL
        context._details = "Exception deserializing request!"
        log.debug("cannot deserialize a request of %s: %s", stream.method, exc)
    except SerializeError as exc:
        context._code, context._details = grpc.StatusCode.INTERNAL, "Failed to serialize response!"
        log.error("cannot serialize a reply of %s: %s", stream.method, exc)
    except MessageOverLimit as exc:
        context._code, context._details = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    except Exception as exc:
        log.exception("unexpected error in the handler of %s", stream.method)
        context._code = grpc.StatusCode.UNKNOWN
        context._details = f"Unexpected {type(exc)}: {exc}"
    code = context._code or _OK
    details = context._details if code is not _OK or context._details else ""
    # This task is the one ending: closing the stream need not look for a task to cancel.
    stream.task = None
    stream.finish(code, details, context._trailing)


def _behavior(handler: grpc.RpcMethodHandler) -> Any:
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


async def _requests(context: ServicerContext) -> AsyncIterator[Any]:
    stream = context._stream
    while True:
        message = await stream.next_request()
        if message is None:
            return
        yield _deserialize(context.request_deserializer, message)
