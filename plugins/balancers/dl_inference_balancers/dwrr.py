"""The seed's dynamic weighted round robin, with effective weights that start right."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dl_inference


@dataclass
class _State:
    effective: int
    current: float = 0.0


class DynamicWeightedRoundRobin(dl_inference.Balancer):
    """Smooth weighted round robin on effective weights that follow each node's health.

    Every pick adds each node's effective weight to its current weight, chooses the node
    with the largest current weight and subtracts the total from it (nginx's smooth WRR,
    as the seed did). A failed call halves the node's effective weight (not below 1); a
    success raises it by half the distance to the configured weight, rounding up.
    Effective weights start at the configured weight, not at 0 (the seed's bug that sent
    every request to the first node). While a node warms up after returning, the kernel's
    slow-start factor scales its effective weight.
    """

    name = "dynamic_weighted_round_robin"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._states: dict[str, _State] = {}

    def _state(self, node: dl_inference.NodeView) -> _State:
        state = self._states.get(node.address)
        if state is None:
            state = self._states[node.address] = _State(effective=node.weight)
        elif state.effective > node.weight:
            state.effective = node.weight  # the configured weight was lowered
        return state

    def effective_weight(self, node: dl_inference.NodeView) -> int:
        """The node's current effective weight (its configured weight until it fails)."""
        return self._state(node).effective

    def pick(self, nodes: Sequence[dl_inference.NodeView], request: Any = None) -> Any:
        total = 0.0
        best = None
        best_state = None
        for node in nodes:
            state = self._state(node)
            weight: float = state.effective
            factor = node.slow_start_factor
            if factor < 1:
                weight = max(weight * factor, 1e-3)
            state.current += weight
            total += weight
            if best_state is None or state.current > best_state.current:
                best, best_state = node, state
        assert best is not None and best_state is not None
        best_state.current -= total
        if len(self._states) > 2 * len(nodes) + 16:
            self._forget_missing(nodes)
        return best

    def observe(
        self, node: dl_inference.NodeView, outcome: dl_inference.Outcome, latency_s: float
    ) -> None:
        state = self._state(node)
        if outcome is dl_inference.Outcome.FAILURE:
            state.effective = max(1, state.effective // 2)
        elif outcome is dl_inference.Outcome.SUCCESS and state.effective < node.weight:
            state.effective += math.ceil((node.weight - state.effective) / 2)

    def _forget_missing(self, nodes: Sequence[dl_inference.NodeView]) -> None:
        present = {node.address for node in nodes}
        for address in [a for a in self._states if a not in present]:
            del self._states[address]
