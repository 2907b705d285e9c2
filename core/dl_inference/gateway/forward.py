"""Byte-for-byte forwarding of one unary gRPC call to a route's upstream nodes.

The request bytes go upstream exactly as they came and the reply bytes come back exactly
as the node sent them: no tensor is decoded or re-encoded. The client's remaining
deadline, its metadata and its cancellation travel with the call; the node's status code,
message and metadata travel back unchanged. Only calls that provably reached no model are
retried (no connection could be made; a dl-inference node's own UNAVAILABLE: draining, a
model version not ready), on another node, within the deadline, the route's retry count
and its retry budget; a call whose connection broke after it was sent ("Stream removed")
may have run and is not. When no retry is left, the last answer a node gave comes back as
it was; "no upstream node answered" only when none answered at all. What counts against a
node is :func:`~dl_inference.gateway.nodes.grpc_verdict`'s rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import structlog

from dl_inference.gateway.nodes import app_answered, grpc_verdict
from dl_inference.gateway.route import Route
from dl_inference.spi.balancer import Outcome
from dl_inference.spi.types import AttemptTrace, ForwardTrace, InferRequest, RequestContext

log = structlog.get_logger("dl_inference.gateway")

# Transport-level headers that gRPC sets per hop; everything else is the client's to forward.
_HOP_HEADERS = frozenset(
    {
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "user-agent",
        "content-type",
        "te",
        "host",
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
    }
)


def forwardable(metadata: Sequence[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    """The client's metadata minus per-hop transport headers."""
    if not metadata:
        return ()
    return tuple(
        (key, value)
        for key, value in metadata
        if not key.startswith(":") and key.lower() not in _HOP_HEADERS
    )


def client_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The client's own deadline as a ``time.monotonic()`` instant (None: it set none)."""
    left = context.time_remaining()
    return None if left is None else time.monotonic() + left


def trace_call(
    trace: Callable[..., Any] | None, protocol: str, method: str, model: str, metadata: Any
) -> ForwardTrace | None:
    """Ask ``dli_gateway_call`` (``trace``, None when no plugin implements it) to watch a
    forwarded call; ``metadata`` is (name, value) pairs or None, binary values left out."""
    if trace is None:
        return None
    ctx = RequestContext(
        protocol,
        method,
        metadata={k.lower(): v for k, v in metadata or () if isinstance(v, str)},
        request=InferRequest(model_name=model, inputs={}),
    )
    return trace(ctx=ctx)


def with_attempt(
    metadata: tuple[tuple[str, Any], ...], attempt: AttemptTrace | None
) -> tuple[tuple[str, Any], ...]:
    """``metadata`` with the attempt's headers in place of the client's same-named ones."""
    if attempt is None or not attempt.headers:
        return metadata
    names = {name.lower() for name in attempt.headers}
    kept = tuple((k, v) for k, v in metadata if k.lower() not in names)
    return kept + tuple(attempt.headers.items())


@contextlib.contextmanager
def observed_call(group: Any, trace: ForwardTrace | None, context: Any) -> Iterator[None]:
    """Counts the client call run inside it in ``group``'s figures and ends its ``trace``
    with the call's status: OK, CANCELLED (the client left: a cancelled task or a closed
    stream), or the gRPC status the call ended with."""
    started = time.monotonic()
    status = "UNKNOWN"
    try:
        yield
        status = "OK"
    except (asyncio.CancelledError, GeneratorExit):
        status = "CANCELLED"
        raise
    except BaseException:
        code = context.code()
        status = code.name if isinstance(code, grpc.StatusCode) else status
        raise
    finally:
        group.stats.observe(time.monotonic() - started, status == "OK")
        if trace is not None:
            trace.finish(status)


class Forwarder:
    """Sends raw request bytes to a route's nodes and relays the outcome to the client.

    ``trace`` is the ``dli_gateway_call`` hook (None when no plugin implements it).
    """

    def __init__(self, trace: Callable[..., Any] | None = None) -> None:
        self._trace = trace

    async def forward(
        self, route: Route, method: str, body: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        """The reply of the node of ``route`` (of the group :meth:`Route.choose` picks)
        that took the call; a copy goes to the route's shadow group, if it has one."""
        group = route.choose()
        if route.mirror is not None:
            route.mirror.copy_grpc(method, body, forwardable(context.invocation_metadata()))
        body = group.versioned_grpc(method, body)
        trace = trace_call(self._trace, "grpc", method, route.model, context.invocation_metadata())
        with observed_call(group, trace, context):
            return await self._forward(group, method, body, context, trace)

    async def _forward(
        self,
        route: Route,
        method: str,
        body: bytes,
        context: grpc.aio.ServicerContext,
        trace: ForwardTrace | None = None,
    ) -> bytes:
        started = time.monotonic()
        deadline = own_deadline = client_deadline(context)
        if route.timeout_s is not None:
            deadline = min(
                deadline if deadline is not None else float("inf"), started + route.timeout_s
            )
        metadata = forwardable(context.invocation_metadata())
        route.budget.on_request()
        tried: list[str] = []
        exclude: set[str] = set()
        retries = 0
        answer: grpc.aio.AioRpcError | None = None  # the last one a node's application gave
        while True:
            node = route.pick(exclude)
            if node is None:
                break
            exclude.add(node.address)
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the deadline for model {route.model!r} passed in the gateway"
                    + (f" after trying {'; '.join(tried)}" if tried else ""),
                )
            attempt = None if trace is None else trace.attempt(node.address, len(tried) + 1)
            outcome = ("CANCELLED", "")
            call = node.unary_stub(method)(
                body, timeout=timeout, metadata=with_attempt(metadata, attempt)
            )
            node.in_flight += 1
            sent = time.monotonic()
            try:
                reply = await call
                outcome = ("OK", "")
            except asyncio.CancelledError:
                # The client went away: stop the upstream work too.
                call.cancel()
                raise
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                detail = f"{code.name}: {exc.details()}"
                outcome = (code.name, detail)
                answered = app_answered(exc.trailing_metadata())
                verdict = grpc_verdict(code, exc.details(), own_deadline, answered)
                route.record(node, verdict.outcome, time.monotonic() - sent, error=detail)
                if not verdict.retry and verdict.outcome is Outcome.FAILURE and not answered:
                    # gRPC core's words ("Stream removed") name neither model nor node.
                    await context.abort(
                        code,
                        f"model {route.model!r}: node {node.address} failed: {detail}; not "
                        "retried on another node, as the call may have run there",
                    )
                if not verdict.retry:
                    await _relay(context, exc)
                if answered:
                    answer = exc
                tried.append(f"{node.address} ({detail})")
                if not route.retry_allowed(retries, deadline, tried):
                    break
                retries += 1
                continue
            finally:
                route.release(node)
                if attempt is not None:
                    attempt.finish(*outcome)
            route.record(node, Outcome.SUCCESS, time.monotonic() - sent)
            await _relay_metadata(
                context, await call.initial_metadata(), await call.trailing_metadata()
            )
            return reply
        log.warning("forwarding failed", model=route.model, method=method, tried=tried)
        if answer is not None:
            await _relay(context, answer)
        await context.abort(grpc.StatusCode.UNAVAILABLE, no_node_answered(route, tried))
        raise AssertionError("unreachable")  # abort raises


def no_node_answered(
    route: Route,
    tried: list[str],
    check: str = "the nodes are running and reachable from the gateway",
) -> str:
    """The message when no node of ``route`` took a call (``tried``: why not)."""
    if not route.nodes:
        return (
            f"model {route.model!r} has no upstream nodes (its discovery found none); "
            "check the route's node list"
        )
    return (
        f"model {route.model!r} is unavailable: no upstream node answered; tried "
        f"{'; '.join(tried) or 'nothing'}; nodes: {route.describe_nodes()}. Check that {check}"
    )


async def _relay(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
    """End the call with a node's error: its status, message and metadata, unchanged."""
    await _relay_metadata(context, error.initial_metadata(), error.trailing_metadata())
    await context.abort(error.code(), error.details() or "")


async def _relay_metadata(context: grpc.aio.ServicerContext, initial: Any, trailing: Any) -> None:
    initial = forwardable(tuple(initial) if initial else ())
    if initial:
        await context.send_initial_metadata(initial)
    trailing = forwardable(tuple(trailing) if trailing else ())
    if trailing:
        context.set_trailing_metadata(trailing)
