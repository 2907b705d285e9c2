"""Power-of-two-choices balancers: least outstanding requests, and peak-EWMA latency."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dl_inference


class _PowerOfTwo(dl_inference.Balancer):
    """Draws two distinct nodes at random and keeps the one with the lower :meth:`load`."""

    def __init__(self, *, seed: int | None = None, **options: Any) -> None:
        super().__init__(seed=seed, **options)
        self._rng = random.Random(seed)

    def load(self, node: dl_inference.NodeView) -> float:
        raise NotImplementedError

    def pick(self, nodes: Sequence[dl_inference.NodeView], request: Any = None) -> Any:
        if len(nodes) == 1:
            return nodes[0]
        first, second = self._rng.sample(range(len(nodes)), 2)
        a, b = nodes[first], nodes[second]
        return b if self.load(b) < self.load(a) else a


def _capacity(node: dl_inference.NodeView) -> float:
    return max(node.weight * node.slow_start_factor, 1e-9)


class LeastRequest(_PowerOfTwo):
    """P2C on outstanding calls: of two random nodes, the one with fewer in flight per weight.

    With equal weights this is plain "fewer in-flight calls wins" (Envoy's least_request).
    Option ``seed`` makes the draws reproducible.
    """

    name = "least_request"

    def load(self, node: dl_inference.NodeView) -> float:
        return (node.in_flight + 1) / _capacity(node)


@dataclass
class _Ewma:
    cost_s: float
    stamp: float


class PeakEwma(_PowerOfTwo):
    """P2C on peak-EWMA latency x (in-flight + 1), as Finagle and Linkerd balance.

    Each node's latency estimate jumps up at once to any slower observation (the peak)
    and decays towards faster ones with time constant ``decay_s``. A failure counts as
    at least ``failure_penalty_s`` so a node that fails fast does not look fast. Nodes
    not yet measured are assumed as costly as the average measured node.
    """

    name = "peak_ewma"

    def __init__(
        self,
        *,
        decay_s: float = 10.0,
        failure_penalty_s: float = 1.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        if decay_s <= 0:
            raise ValueError("decay_s must be > 0")
        super().__init__(seed=seed, **options)
        self.decay_s = decay_s
        self.failure_penalty_s = failure_penalty_s
        self._clock = clock
        self._ewma: dict[str, _Ewma] = {}

    def cost(self, node: dl_inference.NodeView) -> float:
        """The node's latency estimate in seconds (the average of known nodes if unknown)."""
        known = self._ewma.get(node.address)
        if known is not None:
            return known.cost_s
        if not self._ewma:
            return 0.0
        return sum(e.cost_s for e in self._ewma.values()) / len(self._ewma)

    def load(self, node: dl_inference.NodeView) -> float:
        return self.cost(node) * (node.in_flight + 1) / _capacity(node)

    def observe(
        self, node: dl_inference.NodeView, outcome: dl_inference.Outcome, latency_s: float
    ) -> None:
        if outcome is dl_inference.Outcome.REJECTED:
            return  # a client error says nothing about the node's speed
        rtt = max(latency_s, 0.0)
        if outcome is dl_inference.Outcome.FAILURE:
            rtt = max(rtt, self.failure_penalty_s)
        now = self._clock()
        state = self._ewma.get(node.address)
        if state is None:
            self._ewma[node.address] = _Ewma(rtt, now)
            return
        if rtt > state.cost_s:
            state.cost_s = rtt
        else:
            weight = math.exp(-max(now - state.stamp, 0.0) / self.decay_s)
            state.cost_s = state.cost_s * weight + rtt * (1 - weight)
        state.stamp = now
