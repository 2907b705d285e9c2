"""The gateway role: route each request by model name to upstream nodes, forwarding bytes.

``routes:`` in the server YAML configures it (:mod:`dl_inference.gateway.config`); the
server builds a :class:`Gateway` and puts it in front of its own gRPC handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dl_inference.gateway.config import (
    DiscoveryConfig,
    EjectionConfig,
    HealthConfig,
    NodeConfig,
    RetryBudgetConfig,
    RouteConfig,
    TlsConfig,
)

if TYPE_CHECKING:
    from dl_inference.gateway.gateway import Gateway

__all__ = [
    "DiscoveryConfig",
    "EjectionConfig",
    "Gateway",
    "HealthConfig",
    "NodeConfig",
    "RetryBudgetConfig",
    "RouteConfig",
    "TlsConfig",
]


def __getattr__(name: str) -> Any:
    # The config schema imports this package; loading grpc and the plugin host only when
    # the Gateway is used keeps that import light and free of cycles.
    if name == "Gateway":
        from dl_inference.gateway.gateway import Gateway

        return Gateway
    raise AttributeError(name)
