"""Round robin and weighted random."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import dl_inference


class RoundRobin(dl_inference.Balancer):
    """Each eligible node in turn, ignoring weights (use ``dynamic_weighted_round_robin``
    for weighted rotation)."""

    name = "round_robin"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._next = 0

    def pick(self, nodes: Sequence[dl_inference.NodeView], request: Any = None) -> Any:
        node = nodes[self._next % len(nodes)]
        self._next += 1
        return node


class RandomBalancer(dl_inference.Balancer):
    """A node drawn at random in proportion to its weight (times its slow-start factor).

    Option ``seed`` makes the draws reproducible.
    """

    name = "random"

    def __init__(self, *, seed: int | None = None, **options: Any) -> None:
        super().__init__(seed=seed, **options)
        self._rng = random.Random(seed)

    def pick(self, nodes: Sequence[dl_inference.NodeView], request: Any = None) -> Any:
        weights = [node.weight * node.slow_start_factor for node in nodes]
        return self._rng.choices(nodes, weights=weights, k=1)[0]
