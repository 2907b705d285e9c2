"""Forwarding of a bidirectional gRPC stream (V2 ``ModelStreamInfer``) to one node.

The route is chosen by the stream's first message; the whole stream then goes to the
node the balancer picked, messages both ways byte for byte. A stream is not retried on
another node: once a message is sent the node may have acted on it. The client's
deadline, metadata and cancellation travel upstream; the node's status and metadata come
back unchanged. The route's ``timeout_ms`` bounds single calls, not a stream, which may
stay open as long as its client wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from dl_inference.gateway.forward import (
    client_deadline,
    forwardable,
    no_node_answered,
    observed_call,
    trace_call,
    with_attempt,
)
from dl_inference.gateway.nodes import app_answered, grpc_verdict
from dl_inference.gateway.route import Route
from dl_inference.spi.balancer import Outcome
from dl_inference.spi.types import ForwardTrace


async def forward_stream(
    route: Route,
    method: str,
    first: bytes,
    rest: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    trace_hook: Callable[..., Any] | None = None,
) -> AsyncIterator[bytes]:
    """The node's replies to ``first`` and then to each message of ``rest``.

    A split route's stream goes to one group (:meth:`Route.choose`), each message naming
    the group's version; streams are not copied to a shadow group. ``trace_hook`` is the
    ``dli_gateway_call`` hook (None when no plugin implements it).
    """
    group = route.choose()
    trace = trace_call(trace_hook, "grpc", method, route.model, context.invocation_metadata())
    # aclosing: a client that goes away closes the upstream stream at once.
    with observed_call(group, trace, context):
        async with contextlib.aclosing(
            _forward_stream(group, method, first, rest, context, trace)
        ) as replies:
            async for reply in replies:
                yield reply


async def _forward_stream(
    route: Route,
    method: str,
    first: bytes,
    rest: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    trace: ForwardTrace | None = None,
) -> AsyncIterator[bytes]:
    route.budget.on_request()
    node = route.pick(set())
    if node is None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, no_node_answered(route, []))
        return
    own_deadline = client_deadline(context)
    attempt = None if trace is None else trace.attempt(node.address, 1)
    outcome = ("CANCELLED", "")
    call = node.get_channel().stream_stream(method)(
        timeout=None if own_deadline is None else own_deadline - time.monotonic(),
        metadata=with_attempt(forwardable(context.invocation_metadata()), attempt),
    )

    async def pump() -> None:
        await call.write(route.versioned_grpc(method, first))
        async for message in rest:
            await call.write(route.versioned_grpc(method, message))
        await call.done_writing()

    node.in_flight += 1
    sent = time.monotonic()
    first_reply: float | None = None
    writer = asyncio.create_task(pump())
    try:
        initial = forwardable(tuple(await call.initial_metadata() or ()))
        if initial:
            await context.send_initial_metadata(initial)
        async for reply in call:
            first_reply = first_reply or time.monotonic()
            yield reply
        trailing = forwardable(tuple(await call.trailing_metadata() or ()))
        if trailing:
            context.set_trailing_metadata(trailing)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        outcome = (code.name, f"{code.name}: {exc.details()}")
        answered = app_answered(exc.trailing_metadata())
        route.record(
            node,
            grpc_verdict(code, exc.details(), own_deadline, answered).outcome,
            time.monotonic() - sent,
            error=f"{code.name}: {exc.details()}",
        )
        details = exc.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE and first_reply is None and not answered:
            # The node's own words ("failed to connect") name neither model nor node.
            details = (
                f"model {route.model!r}: node {node.address} is unavailable ({details}); "
                "a stream is not moved to another node: open it again"
            )
        await context.abort(code, details)
    except (asyncio.CancelledError, GeneratorExit):
        call.cancel()  # the client went away: stop the upstream work too
        raise
    else:
        # The balancer learns the time to the first answer, not the stream's length.
        route.record(node, Outcome.SUCCESS, (first_reply or time.monotonic()) - sent)
        outcome = ("OK", "")
    finally:
        if attempt is not None:
            attempt.finish(*outcome)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
        route.release(node)
