"""Routing-key readers for the standard methods, reading only the model name.

Protocol plugins provide their own readers through ``Protocol.routing_keys()`` (and
``rest_routing_keys()`` for REST paths that name no model); the built-in ones here cover
only the kernel's own protocol, the Open Inference Protocol (V2), also under the seed's
``TisPredict``. TF Serving's and Seldon's readers come from the tfserving and seldon
plugins only (neither needs a framework), so each rule is kept once, by its protocol. A
protocol's own reader wins over the built-in one for the same path.
"""

from __future__ import annotations

from collections.abc import Mapping

from dl_inference.spi.protocol import RoutingKeyReader
from dl_inference.spi.wire import read_string_field

V2_SERVICE = "inference.GRPCInferenceService"
SEED_SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"


def field_string(number: int) -> RoutingKeyReader:
    """Reader of a top-level string field (V2 ``model_name`` / ``name``)."""

    def read(data: bytes, metadata: Mapping[str, str]) -> str | None:
        return read_string_field(data, number) or None

    return read


def builtin_routing_keys() -> dict[str, RoutingKeyReader]:
    """gRPC method path -> model-name reader for the well-known unary methods."""
    by_name = field_string(1)
    keys: dict[str, RoutingKeyReader] = {
        f"/{V2_SERVICE}/{method}": by_name
        for method in (
            "ModelInfer",
            "ModelReady",
            "ModelMetadata",
            "ModelConfig",
            "ModelStatistics",
        )
    }
    for method in ("RepositoryModelLoad", "RepositoryModelUnload"):
        keys[f"/{V2_SERVICE}/{method}"] = field_string(2)
    # The seed's unified service takes V2's own request under its own path.
    keys[f"/{SEED_SERVICE}/TisPredict"] = by_name
    return keys


def builtin_stream_routing_keys() -> dict[str, RoutingKeyReader]:
    """Streaming method path -> reader of the model name in the stream's first message."""
    return {f"/{V2_SERVICE}/ModelStreamInfer": field_string(1)}


def builtin_protocol_of(path: str) -> str:
    """Which protocol a built-in path belongs to, by the names protocol plugins register."""
    service = path.split("/")[1] if path.count("/") >= 2 else ""
    if service == V2_SERVICE:
        return "v2"
    if service == SEED_SERVICE:
        return "seed"
    return ""
