"""A route at run time: its nodes, their health, its balancer, retry budget and discovery."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Sequence
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2

from dl_inference.gateway.config import RouteConfig, join_address, split_address
from dl_inference.gateway.discovery import Discovery, NodeList
from dl_inference.gateway.groups import GroupStats, Mirror, SmoothWeighted, VersionRewrites
from dl_inference.gateway.nodes import Node, NodeHealth, RetryBudget
from dl_inference.spi.balancer import Balancer, Outcome

log = structlog.get_logger("dl_inference.gateway")

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Leave a little of the budget for the answer to travel back before calling again.
MIN_RETRY_BUDGET_S = 0.002


class Route:
    """One model's (or seed task's) group of upstream nodes and the policy that spreads
    calls over them. ``model`` is the route's name (:attr:`RouteConfig.name`)."""

    def __init__(
        self,
        config: RouteConfig,
        balancer: Balancer,
        *,
        group: str = "",
        version: str | None = None,
        versions: VersionRewrites | None = None,
        groups: Sequence[Route] = (),
        mirror: Mirror | None = None,
    ) -> None:
        self.config = config
        self.model = config.name
        # Traffic splitting (dl_inference.gateway.groups): a route with split: holds one
        # Route per group (``group`` its name) and has no nodes of its own.
        self.group = group
        # Written into the calls forwarded, by the protocols' rewriters (versions).
        self.version = version
        self.versions = versions or VersionRewrites()
        self.groups = {child.group: child for child in groups}
        # A group's siblings of the same version, for calls it has no node left for.
        self.fallbacks: list[Route] = []
        for child in groups:
            child.fallbacks = [g for g in groups if g is not child and g.version == child.version]
        self.weights = {g.name: g.weight for g in config.split}
        self.mirror = mirror
        self.stats = GroupStats()
        self._split = SmoothWeighted()
        self.balancer = balancer
        self.protocols = set(config.protocols) if config.protocols else None
        self.retries = config.retries
        self.nodes: dict[str, Node] = {}
        self.health = NodeHealth(config.ejection, config.health, self.model)
        self.budget = RetryBudget(config.retry_budget.percent, config.retry_budget.min_per_s)
        # A nodefile names whole routes: the gateway reads it and gives routes static nodes.
        self.discovery = (
            Discovery(self.model, config.discovery, self.set_nodes)
            if config.discovery is not None and config.nodefile is None
            else None
        )
        self._probe_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._started = False
        self._rest_ssl: ssl.SSLContext | None = None
        if config.nodes:
            self.set_nodes([(n.address, n.weight) for n in config.nodes])

    @property
    def timeout_s(self) -> float | None:
        """The route's per-call time limit (``timeout_ms``), or None for none."""
        return self.config.timeout_ms / 1000 if self.config.timeout_ms else None

    def update(self, config: RouteConfig) -> None:
        """Take ``config``, which differs from the current one in static nodes, timeout,
        split weights and mirror percent only: nodes and their state stay where the
        address stays, removed ones drain; calls under way finish where they are."""
        self.config = config  # first: the nodes read it (REST addresses)
        if config.discovery is None:
            self.set_nodes([(n.address, n.weight) for n in config.nodes])
        weights = {g.name: g.weight for g in config.split}
        if weights != self.weights:
            # New proportions start a fresh cycle: exact from the next call on.
            self.weights, self._split = weights, SmoothWeighted()
        for group in config.split:
            self.groups[group.name].update(config.group_route(group))
        if self.mirror is not None and config.mirror is not None:
            self.mirror.update(config.mirror)
            self.mirror.group.update(config.group_route(config.mirror))

    def choose(self) -> Route:
        """The route a new call goes through: this one, or for a split route the group
        smooth weighted round robin picks among those with an eligible node (among all
        groups of weight > 0 when none has one)."""
        if not self.groups:
            return self
        now = time.monotonic()
        weighted = [(name, weight) for name, weight in self.weights.items() if weight > 0]
        live = [(name, w) for name, w in weighted if self.groups[name].has_eligible(now)]
        return self.groups[self._split.pick(live or weighted)]

    def has_eligible(self, now: float) -> bool:
        """Whether a node of this route may take a new call (not ejected, healthy)."""
        return any(node.eligible(now) for node in self.nodes.values())

    def all_groups(self) -> list[Route]:
        """The routes its calls go through (itself, or its groups) and its shadow's."""
        routes = list(self.groups.values()) or [self]
        if self.mirror is not None:
            routes.append(self.mirror.group)
        return routes

    @property
    def in_flight(self) -> int:
        """Calls outstanding to this route's nodes and its groups' (shadow copies too)."""
        own = sum(node.in_flight for node in self.nodes.values())
        return own + sum(child.in_flight for child in self.all_groups() if child is not self)

    # -- node list -------------------------------------------------------------------------

    def set_nodes(self, nodes: NodeList) -> None:
        """Make the node list ``nodes``: add new ones (warming up), drain removed ones."""
        wanted = dict(nodes)
        now = time.monotonic()
        for address, weight in wanted.items():
            node = self.nodes.get(address)
            if node is None:
                node = Node(address, weight, self.config.tls, self.config.connections_per_node)
                if self._started:
                    # A node added while traffic flows warms up like a returning one.
                    node.returned_at = now
                    node.slow_start_s = self.config.ejection.slow_start_s
                self.nodes[address] = node
            else:
                node.weight = weight
                node.draining = False
            node.http_address = self._http_address_of(address)
        for address, node in self.nodes.items():
            if address not in wanted and not node.draining:
                node.draining = True
                log.info(
                    "node removed; draining",
                    model=self.model,
                    node=address,
                    in_flight=node.in_flight,
                )
        self.reap()

    def owner(self, node: Node) -> Route:
        """The route (this one, or a fallback group) whose node ``node`` is."""
        if self.nodes.get(node.address) is node:
            return self
        return next((g for g in self.fallbacks if g.nodes.get(node.address) is node), self)

    def release(self, node: Node) -> None:
        """A call to ``node`` ended: count it out, and let the node go once drained."""
        owner = self.owner(node)
        if owner is not self:
            owner.release(node)
            return
        node.in_flight -= 1
        if node.draining:
            self.reap()

    def reap(self) -> None:
        """Forget drained nodes once their last call finished."""
        for address in [a for a, n in self.nodes.items() if n.draining and n.in_flight == 0]:
            node = self.nodes.pop(address)
            if not _loop_running():
                continue
            task = asyncio.get_running_loop().create_task(node.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # -- choosing and learning -------------------------------------------------------------

    @property
    def reaches_rest(self) -> bool:
        """Whether REST calls can go upstream: an http_port, or nodes with http_address."""
        if self.groups:
            return any(child.reaches_rest for child in self.groups.values())
        return self.config.http_port is not None or any(
            node.http_address for node in self.config.nodes
        )

    def _http_address_of(self, address: str) -> str | None:
        """The REST ``host:port`` of the node at gRPC ``address``, or None without one."""
        for node in self.config.nodes:
            if node.address == address and node.http_address:
                return node.http_address
        if self.config.http_port is None:
            return None
        return join_address(split_address(address)[0], self.config.http_port)

    def rest_ssl(self) -> ssl.SSLContext | bool:
        """For REST to the nodes: True (default checks) without route TLS, else a context
        from the route's files, built once (other TLS settings make another route)."""
        tls = self.config.tls
        if tls is None:
            return True
        if self._rest_ssl is None:
            context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
            if tls.cert_file is not None and tls.key_file is not None:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            self._rest_ssl = context
        return self._rest_ssl

    def versioned_grpc(self, method: str, body: bytes) -> bytes:
        """``body`` as forwarded under ``method`` to this group: naming its version."""
        return self.versions.grpc_body(method, body, self.version)

    def versioned_rest(self, path_qs: str) -> str:
        """A REST path (and query) as forwarded to this group: naming its version."""
        return self.versions.rest_path(path_qs, self.version)

    def accepts(self, protocol: str) -> bool:
        return self.protocols is None or protocol in self.protocols

    def pick(self, exclude: set[str]) -> Node | None:
        """The balancer's choice among eligible nodes not yet tried for this call.

        When none is eligible, fail open over every live node not yet tried (Envoy's panic
        mode): a possibly-recovered node beats a certain error.
        """
        now = time.monotonic()
        candidates = [
            n for n in self.nodes.values() if n.eligible(now) and n.address not in exclude
        ]
        if not candidates:
            # A split group with no eligible node left to try: another group of the same
            # version takes the call (retries), before this group fails open.
            for sibling in self.fallbacks:
                others = [
                    n
                    for n in sibling.nodes.values()
                    if n.eligible(now) and n.address not in exclude
                ]
                if others:
                    return sibling._choose(others)
            candidates = [
                n for n in self.nodes.values() if not n.draining and n.address not in exclude
            ]
            if not candidates:
                return None
        return self._choose(candidates)

    def _choose(self, candidates: list[Node]) -> Node:
        """The balancer's pick among ``candidates`` (at random if it fails)."""
        if len(candidates) == 1:
            return candidates[0]
        try:
            chosen = self.balancer.pick(candidates, None)
        except Exception as exc:
            log.error(
                "balancer failed; picking at random",
                model=self.model,
                balancer=self.balancer.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return random.choice(candidates)
        if not isinstance(chosen, Node) or chosen not in candidates:
            log.error(
                "balancer returned a node it was not offered",
                model=self.model,
                balancer=self.balancer.name,
            )
            return random.choice(candidates)
        return chosen

    def record(
        self,
        node: Node,
        outcome: Outcome,
        latency_s: float,
        *,
        error: str = "",
    ) -> None:
        """Tell health tracking and the balancer how a call to ``node`` ended (``outcome``:
        a :class:`~dl_inference.gateway.nodes.Verdict`'s)."""
        owner = self.owner(node)
        if owner is not self:
            owner.record(node, outcome, latency_s, error=error)
            return
        self.health.record(node, outcome, latency_s, error=error, peers=self.nodes.values())
        try:
            self.balancer.observe(node, outcome, latency_s)
        except Exception as exc:
            log.error(
                "balancer observe failed",
                model=self.model,
                balancer=self.balancer.name,
                error=f"{type(exc).__name__}: {exc}",
            )

    def retry_allowed(self, retries: int, deadline: float | None, tried: list[str]) -> bool:
        """Whether a failed call may go to another node: retries, time and budget left."""
        if retries >= self.retries:
            return False
        if deadline is not None and deadline - time.monotonic() < MIN_RETRY_BUDGET_S:
            return False
        if not self.budget.try_retry():
            tried.append("retry budget exhausted")
            return False
        return True

    def describe_nodes(self) -> str:
        if self.groups:
            return "; ".join(
                f"group {name}: {child.describe_nodes()}" for name, child in self.groups.items()
            )
        now = time.monotonic()
        return ", ".join(f"{n.address} ({n.state(now)})" for n in self.nodes.values()) or "none"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        for child in self.all_groups():
            if child is not self:
                await child.start()
        self._started = True
        if self.discovery is not None:
            await self.discovery.start()
        if self.config.health.enabled and not self.groups:
            self._probe_task = asyncio.create_task(self._probe_loop(), name=f"probe:{self.model}")

    async def stop(self) -> None:
        if self.mirror is not None:
            await self.mirror.stop()
        for child in self.all_groups():
            if child is not self:
                await child.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        await asyncio.gather(
            *(n.close() for n in self.nodes.values()), *self._closing, return_exceptions=True
        )

    # -- active health ---------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        interval = self.config.health.interval_s
        while True:
            nodes = [n for n in self.nodes.values() if not n.draining]
            await asyncio.gather(*(self.probe(n) for n in nodes), return_exceptions=True)
            self.reap()
            await asyncio.sleep(interval)

    async def probe(self, node: Node) -> bool:
        """One grpc.health.v1 Check for :attr:`RouteConfig.probe_service`; an upstream
        without the service is live if it answers.

        By default a route asks for its model (:attr:`RouteConfig.probe_service`): a node
        whose other models failed to load is not taken out of this route. A node whose
        health service does not know the name (NOT_FOUND: it answers for the whole server
        only, as the grpc.health examples do) is asked for ``""`` instead; a name the
        user gave is not replaced.
        """
        service = self.config.probe_service
        ok, detail = await self._check(node, service)
        unknown = detail.startswith(grpc.StatusCode.NOT_FOUND.name)
        if unknown and service and self.config.health.service is None:
            ok, detail = await self._check(node, "")
            detail = f"{detail} (the whole server's: no health status for {service!r})"
        self.health.probe_result(node, ok, detail)
        return ok

    async def _check(self, node: Node, service: str) -> tuple[bool, str]:
        """(passed, what the node answered) of one Check of ``service``."""
        check = node.get_channel().unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = await check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.config.health.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                # TF Serving and others have no health service: answering at all is liveness.
                return True, "answers (no grpc.health.v1 service)"
            return False, f"{exc.code().name}: {exc.details()}"
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return reply.status == health_pb2.HealthCheckResponse.SERVING, status

    def snapshot(self) -> list[dict[str, Any]]:
        """One row per node (of each group, and of the shadow group, by ``group``)."""
        if self.groups or self.mirror is not None:
            return [
                row
                for child in self.all_groups()
                for row in (child._node_rows() if child is self else child.snapshot())
            ]
        return self._node_rows()

    def _node_rows(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        effective = getattr(self.balancer, "effective_weight", None)
        return [
            {
                "model": self.model,
                "group": self.group,
                "balancer": self.balancer.name,
                **node.snapshot(now),
                "effective_weight": effective(node) if effective else node.weight,
            }
            for node in self.nodes.values()
        ]


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
