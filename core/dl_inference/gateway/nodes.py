"""Upstream node state: passive outcomes, active probes, ejection with back-off, slow start.

Health belongs to the kernel so every balancer benefits: a balancer only ever sees the
nodes this module considers eligible, and reads their ``weight``, ``in_flight`` and
``slow_start_factor``.

How a forwarded call's end counts is decided here, once, for the gRPC unary, stream and
REST forwarders (:func:`grpc_verdict`, :func:`http_verdict`, :data:`CONNECT_FAILED`,
:data:`CONNECTION_LOST`). Only what a client cannot provoke is a node failure: Envoy's
"gateway failure" class (no connection, a connection lost mid-call, no answer in time,
UNAVAILABLE / 502 / 503 / 504 that no application of ours vouched for). Any other answer
the node gives, an error included, shows it alive: INVALID_ARGUMENT, NOT_FOUND, INTERNAL
from a model's exception, HTTP 4xx, Triton's 500 for malformed JSON. An UNAVAILABLE / 503
that the node's application answered itself (:func:`app_answered`: a model version still
loading or failed to load, a server draining) is no failure either, and is still retried
on another node.

Only a call that provably reached no model is repeated on another node: no connection
could be made (gRPC core's "failed to connect to all addresses", a refused TCP connect),
or a dl-inference node's application refused it (UNAVAILABLE / 503 with its request id).
A call whose connection broke after it was sent ("Stream removed", "Socket closed",
a reset) may have run, and is not.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from dl_inference.gateway.config import EjectionConfig, HealthConfig, TlsConfig
from dl_inference.spi.balancer import Outcome

log = structlog.get_logger("dl_inference.gateway")

# Reconnect quickly after a node restarts: gRPC's default back-off grows to two minutes,
# which would keep a returned node dark long after its probes pass.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 0),  # the gateway retries itself, on another node
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


@dataclass(frozen=True)
class Verdict:
    """How one call to a node ended, for its health, its balancer and the retry decision.

    ``outcome`` FAILURE is a node failure: it counts towards ejection and the balancer
    learns from it (the seed's halving of the effective weight). ``retry``: the node did
    no work, so the same bytes may go to another node.
    """

    outcome: Outcome
    retry: bool = False


ANSWERED = Verdict(Outcome.SUCCESS)
# The node answered with an error of its own (INVALID_ARGUMENT, NOT_FOUND, INTERNAL,
# HTTP 400/404/500...): a client can provoke any of these with the bytes it sends, so they
# say nothing about the node's health; balancers ignore them (their latency too).
ANSWERED_ERROR = Verdict(Outcome.REJECTED)
# No connection could be made (refused, unreachable, TLS failed): nothing ran, retry.
CONNECT_FAILED = Verdict(Outcome.FAILURE, retry=True)
# The connection broke mid-call, or the node did not answer in time: it may have run the
# call, so it is not repeated.
CONNECTION_LOST = Verdict(Outcome.FAILURE)
# The node's application answered UNAVAILABLE / 503 (a client can name a version that is
# loading or failed to load): the node is alive, but nothing ran, so another node may serve.
ANSWERED_UNAVAILABLE = Verdict(Outcome.REJECTED, retry=True)

# What a dl-inference worker's call path puts on every answer, errors included (gRPC
# trailing metadata, HTTP header): gRPC core, a proxy or a dead node never send it.
REQUEST_ID = "x-request-id"

# HTTP statuses of the gateway-failure class: bad gateway, unavailable (draining, not
# ready: nothing ran, so retried), gateway timeout.
_HTTP_NODE_FAILURES = frozenset({502, 503, 504})
_HTTP_RETRYABLE = frozenset({503})
# gRPC core's words for an HTTP/2 stream the node reset (a transport error, whatever code).
_GRPC_RESET = "Received RST_STREAM"
# gRPC core's words when it found no connection to send a call on (the call never left the
# gateway): every connect attempt failed ("failed to connect to all addresses; last error:
# ... Connection refused"), or the name resolved to nothing.
_GRPC_NOT_SENT = ("failed to connect", "DNS resolution failed", "empty address list")
# The gateway's and gRPC's clocks may differ by this much about when a deadline passed.
_DEADLINE_SLACK_S = 0.005


def app_answered(metadata: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> bool:
    """Whether a reply's trailing metadata (gRPC) or headers (HTTP) say the node's
    application answered: they carry its :data:`REQUEST_ID`."""
    if metadata is None:
        return False
    keys = metadata.keys() if isinstance(metadata, Mapping) else (key for key, _ in metadata)
    return any(key.lower() == REQUEST_ID for key in keys)


def grpc_verdict(
    code: grpc.StatusCode,
    details: str | None,
    client_deadline: float | None,
    answered: bool = False,
) -> Verdict:
    """How a gRPC call that ended with ``code`` counts; ``client_deadline`` is the
    client's own deadline (``time.monotonic()``), None when it set none; ``answered``:
    the node's application answered (:func:`app_answered` of the trailing metadata).

    Node failures: UNAVAILABLE, a stream the node reset, and DEADLINE_EXCEEDED while the
    client's own deadline had not passed (the route's timeout, or the node giving up).
    Of these only an UNAVAILABLE in gRPC core's words for a call it never sent (no
    connection) is retried: "Stream removed" and the like mean the node may have run it.
    Every other code is the node's answer, and so is every code its application answered,
    UNAVAILABLE included (retried: a dl-inference node refused it before any model ran).
    """
    if answered:
        if code == grpc.StatusCode.UNAVAILABLE:
            return ANSWERED_UNAVAILABLE
        return ANSWERED if code == grpc.StatusCode.OK else ANSWERED_ERROR
    if code == grpc.StatusCode.UNAVAILABLE:
        return CONNECT_FAILED if (details or "").startswith(_GRPC_NOT_SENT) else CONNECTION_LOST
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        clients = client_deadline is not None and (
            time.monotonic() >= client_deadline - _DEADLINE_SLACK_S
        )
        return ANSWERED_ERROR if clients else CONNECTION_LOST
    if (details or "").startswith(_GRPC_RESET):
        return CONNECTION_LOST
    return ANSWERED if code == grpc.StatusCode.OK else ANSWERED_ERROR


def http_verdict(status: int, answered: bool = False) -> Verdict:
    """How a REST call the node answered with ``status`` counts (502, 503, 504: node
    failures, 503 retried; any other status is the node's answer). ``answered``: the
    node's application answered (:func:`app_answered` of the headers): no status is then a
    node failure, and 503 is still retried."""
    if answered and status in _HTTP_NODE_FAILURES:
        return ANSWERED_UNAVAILABLE if status in _HTTP_RETRYABLE else ANSWERED_ERROR
    if status in _HTTP_NODE_FAILURES:
        return Verdict(Outcome.FAILURE, retry=status in _HTTP_RETRYABLE)
    return ANSWERED if status < 400 else ANSWERED_ERROR


def _read(path: Any) -> bytes | None:
    return None if path is None else path.read_bytes()


def make_channel(
    address: str, tls: TlsConfig | None, *, separate: bool = False
) -> grpc.aio.Channel:
    """A channel to ``address``: plain, or TLS with the route's optional files.

    ``separate``: its own TCP connection (channels with equal settings share one otherwise).
    """
    options = list(CHANNEL_OPTIONS)
    if separate:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(address, credentials, options=options)


class Node:
    """One upstream node of a route, as the kernel tracks it (a :class:`~dl_inference.NodeView`)."""

    def __init__(
        self, address: str, weight: int, tls: TlsConfig | None = None, connections: int = 1
    ) -> None:
        self.address = address
        self.weight = weight
        self.tls = tls
        self.connections = connections
        self.http_address: str | None = None  # its REST listener, when the route has one
        self.in_flight = 0
        self._channels: list[grpc.aio.Channel] = []
        self._next = 0
        # (channel index, method) -> its callable; they go with the channels.
        self._stubs: dict[tuple[int, str], grpc.aio.UnaryUnaryMultiCallable] = {}
        # passive health
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0  # consecutive ejections, for the growing back-off
        self.times_ejected = 0
        # active health
        self.probe_healthy = True
        self.probe_failures = 0
        self.probe_successes = 0
        self.last_probe = ""
        # slow start: when the node (re)joined and how long it warms up
        self.returned_at = 0.0
        self.slow_start_s = 0.0
        self.draining = False
        # counters for the status page
        self.requests = 0
        self.failures = 0
        self.latency_ewma_s = 0.0
        self.last_error = ""

    # -- what balancers read ---------------------------------------------------------------

    @property
    def slow_start_factor(self) -> float:
        """Ramps linearly from 0.1 to 1 over ``slow_start_s`` after the node (re)joins."""
        if self.slow_start_s <= 0 or not self.returned_at:
            return 1.0
        elapsed = time.monotonic() - self.returned_at
        if elapsed >= self.slow_start_s:
            return 1.0
        return max(0.1, elapsed / self.slow_start_s)

    # -- state -----------------------------------------------------------------------------

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def eligible(self, now: float) -> bool:
        return not self.draining and self.probe_healthy and not self.ejected(now)

    def get_channel(self) -> grpc.aio.Channel:
        """A channel to the node; with ``connections > 1`` they take turns.

        Several connections let an upstream running ``serve --workers N`` spread the
        gateway's calls: SO_REUSEPORT balances connections, not calls.
        """
        if not self._channels:
            self._channels = [
                make_channel(self.address, self.tls, separate=self.connections > 1)
                for _ in range(self.connections)
            ]
        self._next = (self._next + 1) % len(self._channels)
        return self._channels[self._next]

    def unary_stub(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """A bytes-in, bytes-out callable for ``method`` on the next channel (cached)."""
        channel = self.get_channel()
        key = (self._next, method)
        stub = self._stubs.get(key)
        if stub is None:
            stub = self._stubs[key] = channel.unary_unary(method)
        return stub

    @property
    def channels(self) -> list[grpc.aio.Channel]:
        """The channels opened so far (none before the first call)."""
        return list(self._channels)

    async def close(self) -> None:
        self._stubs.clear()
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()

    def state(self, now: float) -> str:
        if self.draining:
            return "draining"
        if self.ejected(now):
            return "ejected"
        if not self.probe_healthy:
            return "unhealthy"
        if self.slow_start_factor < 1:
            return "warming"
        return "healthy"

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "address": self.address,
            "weight": self.weight,
            "state": self.state(now),
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "times_ejected": self.times_ejected,
            "ejected_for_s": round(max(0.0, self.ejected_until - now), 3),
            "probe": self.last_probe,
            "slow_start_factor": round(self.slow_start_factor, 3),
            "latency_ewma_ms": round(self.latency_ewma_s * 1000, 3),
            "last_error": self.last_error,
        }


class NodeHealth:
    """Applies one route's health policy to its nodes: ejection, probes, slow start."""

    def __init__(self, ejection: EjectionConfig, health: HealthConfig, model: str) -> None:
        self.ejection = ejection
        self.health = health
        self.model = model

    def record(
        self,
        node: Node,
        outcome: Outcome,
        latency_s: float,
        *,
        error: str,
        peers: Iterable[Node],
    ) -> None:
        """Account for one finished call: FAILURE (see :class:`Verdict`) counts towards
        ejection; any answer, an error included, shows the node alive."""
        node.requests += 1
        alpha = 0.2
        node.latency_ewma_s = (
            latency_s
            if not node.latency_ewma_s
            else (1 - alpha) * node.latency_ewma_s + alpha * latency_s
        )
        if outcome is not Outcome.FAILURE:
            node.consecutive_failures = 0
            if node.ejections and not node.ejected(time.monotonic()):
                # An answer after returning resets the back-off slowly: the next
                # ejection is shorter only after the node proved itself again.
                node.ejections = max(0, node.ejections - 1)
            return
        node.failures += 1
        node.last_error = error
        node.consecutive_failures += 1
        if node.consecutive_failures >= self.ejection.consecutive_failures:
            self.eject(node, list(peers), reason=error)

    def eject(self, node: Node, peers: list[Node], reason: str) -> bool:
        """Take ``node`` out for a back-off that grows with each ejection, within the cap."""
        now = time.monotonic()
        if node.ejected(now):
            return False
        live = [p for p in peers if not p.draining]
        already = sum(1 for p in live if p.ejected(now))
        allowed = max(1, math.floor(len(live) * self.ejection.max_percent / 100))
        if already + 1 > allowed:
            log.warning(
                "node not ejected: too many nodes of the route are ejected already",
                model=self.model,
                node=node.address,
                ejected=already,
                allowed=allowed,
            )
            return False
        node.ejections += 1
        node.times_ejected += 1
        duration = min(self.ejection.max_s, self.ejection.base_s * node.ejections)
        node.ejected_until = now + duration
        node.consecutive_failures = 0
        node.returned_at = node.ejected_until
        node.slow_start_s = self.ejection.slow_start_s
        log.warning(
            "node ejected", model=self.model, node=node.address, for_s=duration, reason=reason
        )
        return True

    def probe_result(self, node: Node, ok: bool, detail: str) -> None:
        """Apply an active probe's answer with the route's thresholds."""
        node.last_probe = detail
        if ok:
            node.probe_failures = 0
            node.probe_successes += 1
            if not node.probe_healthy and node.probe_successes >= self.health.healthy_threshold:
                node.probe_healthy = True
                node.returned_at = time.monotonic()
                node.slow_start_s = self.ejection.slow_start_s
                # Probes say it answers again: end a passive ejection early.
                node.ejected_until = min(node.ejected_until, time.monotonic())
                log.info("node healthy again", model=self.model, node=node.address)
            return
        node.probe_successes = 0
        node.probe_failures += 1
        if node.probe_healthy and node.probe_failures >= self.health.unhealthy_threshold:
            node.probe_healthy = False
            log.warning(
                "node failed health probes", model=self.model, node=node.address, detail=detail
            )


class RetryBudget:
    """Retries may add ``percent`` of recent requests, plus ``min_per_s`` (as Finagle does).

    Bounds the extra load retries put on a struggling group of nodes: when every node
    fails, clients see errors quickly instead of the gateway multiplying the traffic.
    """

    def __init__(self, percent: float, min_per_s: float, window_s: float = 10.0) -> None:
        self.ratio = percent / 100
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        edge = now - self.window_s
        for queue in (self._requests, self._retries):
            while queue and queue[0] < edge:
                queue.popleft()

    def on_request(self) -> None:
        self._requests.append(time.monotonic())

    def try_retry(self) -> bool:
        now = time.monotonic()
        self._trim(now)
        allowed = self.ratio * len(self._requests) + self.min_per_s * self.window_s
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True
