"""Load balancers for the dl-inference gateway.

Installing ``dl-inference-balancers`` registers five balancers by name for
``routes[].balancer``: ``dynamic_weighted_round_robin`` (the seed's algorithm, the
default), ``round_robin``, ``random``, ``least_request`` and ``peak_ewma``. Node health
(ejection, probes, slow start) is the kernel's; these only choose among eligible nodes.
"""

from __future__ import annotations

import dl_inference
from dl_inference_balancers.dwrr import DynamicWeightedRoundRobin
from dl_inference_balancers.p2c import LeastRequest, PeakEwma
from dl_inference_balancers.simple import RandomBalancer, RoundRobin

DLI_HOOKSPEC_VERSION = "1.1"

BALANCERS = (DynamicWeightedRoundRobin, RoundRobin, RandomBalancer, LeastRequest, PeakEwma)

__all__ = [
    "BALANCERS",
    "DynamicWeightedRoundRobin",
    "LeastRequest",
    "PeakEwma",
    "RandomBalancer",
    "RoundRobin",
]


@dl_inference.hookimpl
def dli_register_balancers(registry: dl_inference.BalancerRegistry) -> None:
    for cls in BALANCERS:
        registry.add(cls)
