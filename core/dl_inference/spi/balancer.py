"""The base class balancer plugins subclass (the gateway calls it; node health is the kernel's)."""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol


class Outcome(enum.Enum):
    """How a call to an upstream node ended, as a balancer sees it."""

    SUCCESS = "success"
    # The node failed in a way no client can provoke (Envoy's gateway failures): no
    # connection, a reset, UNAVAILABLE / 502-504, no answer before the route's timeout.
    FAILURE = "failure"
    # The node answered with an error (INVALID_ARGUMENT, INTERNAL, HTTP 4xx/500...): a
    # client's bytes can cause any of these, so it says nothing about the node's health.
    REJECTED = "rejected"


class NodeView(Protocol):
    """What a balancer may read of a node; the kernel owns and updates it."""

    address: str
    weight: int  # configured weight
    in_flight: int  # calls now outstanding to this node
    slow_start_factor: float  # 0..1 while a returning node warms up, else 1


class Balancer(abc.ABC):
    """Chooses the node for each call among the healthy nodes of one route.

    One instance per route. ``pick`` gets the currently eligible nodes (never empty) and
    must be fast and non-blocking; ``observe`` is told how each call ended.
    """

    name: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abc.abstractmethod
    def pick(self, nodes: Sequence[NodeView], request: Any = None) -> NodeView:
        """The node for the next call."""

    def observe(self, node: NodeView, outcome: Outcome, latency_s: float) -> None:  # noqa: B027
        """Learn from a finished call (dynamic weights, latency estimates)."""
