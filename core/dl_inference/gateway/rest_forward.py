"""Forwarding of REST calls for routed models to the nodes' HTTP ports, bytes unchanged.

The model name comes from the path: V2 ``/v2/models/<name>/...``, and the prefixes
protocols list in ``rest_model_paths`` (TF Serving's ``/v1/models/<name>...``); for paths
that name none (Seldon's), from a protocol's ``rest_routing_keys`` reader (see
:meth:`Gateway.http_middleware`). A route with
``http_port`` (or nodes with ``http_address``) sends them to the REST listener of the
node its balancer picks, with the same node list, health and retry budget as gRPC. Body,
status, headers and reply travel unchanged but for per-hop headers: a compressed body
goes on compressed, with its ``Content-Encoding`` (the HTTP listeners keep bodies as they
came), and the node decodes it and answers for it. Only failures where the node did no
work are retried on another node: the connection could not be made, or the node answered
503 (draining, not ready); when no retry is left, the last node's own answer comes back.
What counts against a node is :func:`~dl_inference.gateway.nodes.http_verdict`'s rule.
A ``text/event-stream`` answer (V2 ``generate_stream``) is relayed as it comes.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from dl_inference.gateway.forward import no_node_answered, trace_call
from dl_inference.gateway.nodes import (
    CONNECT_FAILED,
    CONNECTION_LOST,
    app_answered,
    http_verdict,
)
from dl_inference.gateway.route import Route
from dl_inference.spi.types import AttemptTrace, ForwardTrace

log = structlog.get_logger("dl_inference.gateway")

# The kernel's own model path prefix -> its protocol (for routes[].protocols); protocol
# plugins add theirs with Protocol.rest_model_paths().
BUILTIN_MODEL_PATHS: dict[str, str] = {"/v2/models/": "v2"}
# The model's name: the path segment after the prefix, up to "/" or ":" (as in ":predict").
MODEL_NAME = re.compile(r"[^/:]+")
# A streamed answer (server-sent events): relayed as it comes instead of read whole.
EVENT_STREAM = "text/event-stream"
# Connection-level headers (RFC 9110 7.6.1) and those aiohttp sets for each hop itself.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "date",
        "server",
    }
)


def routed_model(
    path: str, prefixes: Mapping[str, str] = BUILTIN_MODEL_PATHS
) -> tuple[str, str] | None:
    """(protocol, model name) of a REST path under one of ``prefixes`` (prefix -> protocol);
    None for other paths."""
    for prefix, protocol in prefixes.items():
        if path.startswith(prefix):
            match = MODEL_NAME.match(path, len(prefix))
            if match:
                return protocol, match.group()
    return None


def forwardable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers minus per-hop ones (``headers``: the request's or the reply's multidict)."""
    return {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}


def with_attempt_headers(headers: dict[str, str], attempt: AttemptTrace | None) -> dict[str, str]:
    """``headers`` with the attempt's in place of the client's same-named ones."""
    if attempt is None or not attempt.headers:
        return headers
    names = {name.lower() for name in attempt.headers}
    return {k: v for k, v in headers.items() if k.lower() not in names} | dict(attempt.headers)


async def _relay_events(request: web.Request, reply: aiohttp.ClientResponse) -> web.StreamResponse:
    """A node's ``text/event-stream`` answer (V2 ``generate_stream``) relayed as it comes,
    chunk by chunk, not once it ends. A client that goes away closes the connection to the
    node (which closes the model's generator there); a node that breaks off midway ends
    the stream with an ``error`` event, as the generate extension reports late errors."""
    relayed = web.StreamResponse(status=reply.status, headers=forwardable_headers(reply.headers))
    await relayed.prepare(request)
    try:
        async for chunk in reply.content.iter_any():
            await relayed.write(chunk)
    except ConnectionError:  # the client went away
        reply.close()
        return relayed
    except (aiohttp.ClientError, OSError) as exc:
        message = json.dumps({"error": f"the node's event stream broke off: {exc}"})
        with contextlib.suppress(ConnectionError):
            await relayed.write(f"data: {message}\n\n".encode())
    await relayed.write_eof()
    return relayed


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class RestForwarder:
    """Sends a REST request to a route's nodes and returns the answer of the one that took it."""

    def __init__(self, trace: Callable[..., Any] | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._trace = trace  # the dli_gateway_call hook; None: no plugin implements it

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Bodies pass as they are: compressed only if the client asked, never unpacked.
            self._session = aiohttp.ClientSession(
                auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent")
            )
        return self._session

    async def forward(self, route: Route, request: web.Request, body: bytes) -> web.StreamResponse:
        """The answer of the node that took ``request``, whose ``body`` (as it came) the
        server read: a node of the group :meth:`Route.choose` picks; a copy goes to the
        route's shadow group, if it has one."""
        group = route.choose()
        if route.mirror is not None:
            route.mirror.copy_rest(
                self._client(),
                request.method,
                request.path_qs,
                body,
                forwardable_headers(request.headers),
            )
        trace = trace_call(
            self._trace,
            "http",
            f"{request.method} {request.path}",
            route.model,
            request.headers.items(),
        )
        started = time.monotonic()
        ok = False
        status = "CANCELLED"
        try:
            reply = await self._forward(group, request, body, trace)
            ok = reply.status < 400
            status = str(reply.status)
            return reply
        finally:
            group.stats.observe(time.monotonic() - started, ok)
            if trace is not None:
                trace.finish(status)

    async def _forward(
        self, route: Route, request: web.Request, body: bytes, trace: ForwardTrace | None = None
    ) -> web.StreamResponse:
        headers = forwardable_headers(request.headers)
        tls_config = route.config.tls
        server_name = tls_config.server_name if tls_config is not None else None
        if server_name:
            headers["Host"] = server_name
        started = time.monotonic()
        deadline = None if route.timeout_s is None else started + route.timeout_s
        route.budget.on_request()
        tried: list[str] = []
        # Nodes without a REST address (a discovered node on a route without http_port).
        exclude = {node.address for node in route.nodes.values() if node.http_address is None}
        retries = 0
        answer: web.Response | None = None  # the last one a node gave (retried)
        scheme = "http" if tls_config is None else "https"
        tls = route.rest_ssl()
        path_qs = route.versioned_rest(request.path_qs)
        while (node := route.pick(exclude)) is not None:
            exclude.add(node.address)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return _error(504, f"the deadline for model {route.model!r} passed in the gateway")
            url = f"{scheme}://{node.http_address}{path_qs}"
            attempt = None if trace is None else trace.attempt(node.http_address, len(tried) + 1)
            outcome = ("CANCELLED", "")
            node.in_flight += 1
            sent = time.monotonic()
            try:
                async with self._client().request(
                    request.method,
                    url,
                    data=body,
                    headers=with_attempt_headers(headers, attempt),
                    ssl=tls,
                    timeout=aiohttp.ClientTimeout(total=left),
                    server_hostname=server_name,
                ) as reply:
                    if reply.status == 200 and reply.content_type == EVENT_STREAM:
                        outcome = ("200", "")
                        route.record(node, http_verdict(200, True).outcome, time.monotonic() - sent)
                        return await _relay_events(request, reply)
                    payload = await reply.read()
                    status, reply_headers = reply.status, forwardable_headers(reply.headers)
                    answered = app_answered(reply.headers)
                    outcome = (str(status), "")
            except TimeoutError:
                outcome = ("504", "timeout")
                route.record(
                    node, CONNECTION_LOST.outcome, time.monotonic() - sent, error="timeout"
                )
                return _error(
                    504, f"model {route.model!r}: node {node.address} did not answer in time"
                )
            except aiohttp.ClientConnectorError as exc:  # no connection: the node did nothing
                detail = f"cannot connect ({exc.os_error or exc})"
                outcome = ("503", detail)
                route.record(node, CONNECT_FAILED.outcome, time.monotonic() - sent, error=detail)
                tried.append(f"{node.address} ({detail})")
                if not route.retry_allowed(retries, deadline, tried):
                    break
                retries += 1
                continue
            except (aiohttp.ClientError, OSError) as exc:  # it may have run: do not repeat
                detail = f"{type(exc).__name__}: {exc}"
                outcome = ("502", detail)
                route.record(node, CONNECTION_LOST.outcome, time.monotonic() - sent, error=detail)
                return _error(502, f"model {route.model!r}: node {node.address} failed: {detail}")
            finally:
                route.release(node)
                if attempt is not None:
                    attempt.finish(*outcome)
            verdict = http_verdict(status, answered)
            route.record(node, verdict.outcome, time.monotonic() - sent, error=f"HTTP {status}")
            relayed = web.Response(status=status, body=payload, headers=reply_headers)
            if not verdict.retry:
                return relayed
            answer = relayed  # an HTTP answer, if not the application's: it says more
            tried.append(f"{node.address} (HTTP {status})")
            if not route.retry_allowed(retries, deadline, tried):
                break
            retries += 1
        log.warning("REST forwarding failed", model=route.model, path=request.path, tried=tried)
        if answer is not None:
            return answer
        check = "the nodes run and listen for HTTP at the route's http_port / http_address"
        return _error(503, no_node_answered(route, tried, check))
