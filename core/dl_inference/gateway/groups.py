"""Traffic splitting and mirroring: a route's node groups, their figures and its shadow.

A route with ``split:`` holds one :class:`~dl_inference.gateway.route.Route` per group
(its own nodes, health, balancer); each call picks a group by smooth weighted round robin
(nginx's: exact proportions, evenly interleaved), then goes through the group as through
a plain route, retries included. A group whose nodes are all out (ejected, unhealthy)
takes no new call while another group has an eligible node.

A route with ``mirror:`` sends a copy of ``percent`` of its unary calls to a shadow group,
fire and forget: the client's call neither waits for it nor sees its answer. At most
``max_in_flight`` copies are outstanding; one beyond is dropped and counted, so a slow
shadow cannot grow the gateway's memory.

A group's ``version`` is written into the calls forwarded to it by the rewriters the
protocol plugins offer (:meth:`~dl_inference.Protocol.version_rewriters` per gRPC method,
:meth:`~dl_inference.Protocol.rest_version_rewriters` per REST model path):
:class:`VersionRewrites` holds them; the gateway names no protocol.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dl_inference.gateway.config import MirrorConfig
from dl_inference.gateway.nodes import app_answered, grpc_verdict
from dl_inference.kernel.metrics import LATENCY_BUCKETS
from dl_inference.spi.balancer import Outcome
from dl_inference.spi.errors import ConfigError
from dl_inference.spi.protocol import Protocol, RestVersionRewriter, VersionRewriter

if TYPE_CHECKING:
    from dl_inference.gateway.route import Route

log = structlog.get_logger("dl_inference.gateway")

# What a shadow's copy carries, so the shadow's logs can tell copies from real calls.
SHADOW_HEADER = "x-dli-shadow"


class VersionRewrites:
    """The protocols' version rewriters: what a ``version:`` group writes into its calls."""

    def __init__(self, protocols: Iterable[Protocol | type[Protocol]] = ()) -> None:
        self.grpc: dict[str, VersionRewriter] = {}
        self.rest: dict[str, RestVersionRewriter] = {}
        # Protocol name -> its gRPC rewriters, for those offering any rewriter.
        self.protocols: dict[str, dict[str, VersionRewriter]] = {}
        for protocol in protocols:
            instance = protocol() if isinstance(protocol, type) else protocol
            grpc_rewriters = dict(instance.version_rewriters())
            rest_rewriters = instance.rest_version_rewriters()
            self.grpc.update(grpc_rewriters)
            self.rest.update(rest_rewriters)
            if grpc_rewriters or rest_rewriters:
                self.protocols[instance.name] = grpc_rewriters

    def check(self, where: str, protocols: Iterable[str], version: str) -> None:
        """ConfigError unless every one of ``protocols`` can name ``version``."""
        cannot = sorted(set(protocols) - set(self.protocols))
        if cannot:
            raise ConfigError(
                f"{where}.version: the gateway cannot write a model version into "
                f"{', '.join(cannot)} calls; protocols whose calls carry one: "
                f"{', '.join(sorted(self.protocols)) or 'none installed'} (list only those "
                "in the route's protocols)"
            )
        for protocol in sorted(set(protocols)):
            for method, rewrite in self.protocols[protocol].items():
                try:
                    rewrite(b"", version)
                except ValueError as exc:
                    raise ConfigError(f"{where}.version: {version!r} for {method}: {exc}") from None

    def grpc_body(self, method: str, body: bytes, version: str | None) -> bytes:
        """``body`` naming ``version`` when ``method`` has a rewriter; else unchanged."""
        rewrite = self.grpc.get(method)
        return body if version is None or rewrite is None else rewrite(body, version)

    def rest_path(self, path_qs: str, version: str | None) -> str:
        """A REST path (and query) naming ``version``; paths without a rewriter unchanged."""
        if version is None:
            return path_qs
        path, sep, query = path_qs.partition("?")
        for prefix, rewrite in self.rest.items():
            if path.startswith(prefix):
                rewritten = rewrite(path, version)
                if rewritten is not None:
                    return f"{rewritten}{sep}{query}"
        return path_qs


class GroupStats:
    """A group's calls as its clients saw them: count, errors, latency histogram."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency_sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: +Inf

    def observe(self, latency_s: float, ok: bool) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        self.latency_sum += latency_s
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus histogram buckets: (upper bound, calls at or below it)."""
        out, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class SmoothWeighted:
    """nginx's smooth weighted round robin over named items: over any run of ``sum(w)``
    picks each is chosen exactly ``w`` times, spread evenly."""

    def __init__(self) -> None:
        self.current: dict[str, int] = {}

    def pick(self, items: Sequence[tuple[str, int]]) -> str:
        total = 0
        best: str | None = None
        for name, weight in items:
            value = self.current.get(name, 0) + weight
            self.current[name] = value
            total += weight
            if best is None or value > self.current[best]:
                best = name
        assert best is not None, "pick needs at least one item"
        self.current[best] -= total
        return best


class Mirror:
    """A route's shadow group: copies of calls, bounded, answers discarded."""

    def __init__(self, config: MirrorConfig, group: Route) -> None:
        self.config = config
        self.group = group
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self.in_flight = 0
        self._credit = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def update(self, config: MirrorConfig) -> None:
        self.config = config

    def wanted(self) -> bool:
        """Whether this call is copied: exactly ``percent`` of calls, evenly spread."""
        self._credit += self.config.percent
        if self._credit < 100.0:
            return False
        self._credit -= 100.0
        return True

    def _admit(self) -> bool:
        if self.in_flight >= self.config.max_in_flight:
            self.dropped += 1
            return False
        return True

    def copy_grpc(self, method: str, body: bytes, metadata: Sequence[tuple[str, Any]]) -> None:
        """Send ``body`` to a shadow node unless this call is not copied or too many are out."""
        if not self.wanted() or not self._admit():
            return
        body = self.group.versioned_grpc(method, body)
        self._spawn(self._grpc(method, body, (*metadata, (SHADOW_HEADER, "1"))))

    def copy_rest(
        self,
        session: aiohttp.ClientSession,
        http_method: str,
        path_qs: str,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        """The REST form of :meth:`copy_grpc`."""
        if not self.wanted() or not self._admit():
            return
        path_qs = self.group.versioned_rest(path_qs)
        headers = {**headers, SHADOW_HEADER: "1"}
        self._spawn(self._rest(session, http_method, path_qs, body, headers))

    def _spawn(self, work: Any) -> None:
        self.in_flight += 1
        self.sent += 1
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        if task.cancelled() or task.exception() is not None:
            self.failed += 1

    async def _grpc(self, method: str, body: bytes, metadata: Sequence[tuple[str, Any]]) -> None:
        node = self.group.pick(set())
        if node is None:
            raise LookupError("no shadow node")
        node.in_flight += 1
        sent = time.monotonic()
        try:
            await node.unary_stub(method)(
                body, timeout=self.config.timeout_ms / 1000, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            answered = app_answered(exc.trailing_metadata())
            verdict = grpc_verdict(exc.code(), exc.details(), None, answered)
            detail = f"{exc.code().name}: {exc.details()}"
            self.group.record(node, verdict.outcome, time.monotonic() - sent, error=detail)
            log.debug(
                "shadow call failed",
                model=self.group.model,
                group=self.group.group,
                node=node.address,
                error=detail,
            )
            raise
        finally:
            self.group.release(node)
        self.group.record(node, Outcome.SUCCESS, time.monotonic() - sent)

    async def _rest(
        self,
        session: aiohttp.ClientSession,
        http_method: str,
        path_qs: str,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        node = self.group.pick(
            {n.address for n in self.group.nodes.values() if n.http_address is None}
        )
        if node is None:
            raise LookupError("no shadow node with a REST address")
        scheme = "http" if self.group.config.tls is None else "https"
        node.in_flight += 1
        try:
            async with session.request(
                http_method,
                f"{scheme}://{node.http_address}{path_qs}",
                data=body,
                headers=headers,
                ssl=self.group.rest_ssl(),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_ms / 1000),
            ) as reply:
                await reply.read()
                if reply.status >= 400:
                    raise RuntimeError(f"shadow answered HTTP {reply.status}")
        finally:
            self.group.release(node)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class GroupCollector(Collector):
    """Prometheus families per route group: calls, errors and latency as clients saw
    them (``group`` empty for a route without ``split``), split weights, and each shadow
    group's copies sent, dropped (over ``max_in_flight``) and failed."""

    def __init__(self, routes: Callable[[], Iterable[Route]]) -> None:
        self.routes = routes

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "group"]
        requests = CounterMetricFamily(
            "dli_gateway_group_requests", "Calls the gateway forwarded to the group.", labels=labels
        )
        errors = CounterMetricFamily(
            "dli_gateway_group_errors",
            "Forwarded calls of the group that did not end OK (gRPC) / below 400 (REST).",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "dli_gateway_group_duration_seconds",
            "Time to answer a forwarded call, retries included, by group.",
            labels=labels,
        )
        weight = GaugeMetricFamily(
            "dli_gateway_group_weight", "The group's configured split weight.", labels=labels
        )
        mirror = {
            name: CounterMetricFamily(f"dli_gateway_mirror_{name}", text, labels=labels)
            for name, text in (
                ("sent", "Copies of calls sent to the shadow group."),
                ("dropped", "Copies not sent: max_in_flight copies were outstanding."),
                ("failed", "Copies the shadow group did not answer OK (discarded)."),
            )
        }
        for route in self.routes():
            for group in route.groups.values() or [route]:
                key = [route.model, group.group]
                stats = group.stats
                requests.add_metric(key, stats.requests)
                errors.add_metric(key, stats.errors)
                latency.add_metric(key, stats.cumulative(), stats.latency_sum)
                if route.groups:
                    weight.add_metric(key, route.weights.get(group.group, 0))
            if route.mirror is not None:
                key = [route.model, route.mirror.group.group]
                mirror["sent"].add_metric(key, route.mirror.sent)
                mirror["dropped"].add_metric(key, route.mirror.dropped)
                mirror["failed"].add_metric(key, route.mirror.failed)
        yield from (requests, errors, latency, weight, *mirror.values())
