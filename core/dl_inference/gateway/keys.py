"""Routing-key readers for the standard methods, reading only the model name.

Protocol plugins provide their own readers through ``Protocol.routing_keys()`` (and
``rest_routing_keys()`` for REST paths that name no model); these built-in ones cover the
well-known services so that a gateway-only deployment forwards TF Serving and Open
Inference Protocol traffic without installing the tensorflow plugin (and without
TensorFlow). Seldon's readers come from the seldon plugin only (it needs no framework). A
protocol's own reader wins over the built-in one for the same path.
"""

from __future__ import annotations

from collections.abc import Mapping

from dl_inference.protocol import RoutingKeyReader
from dl_inference.wire import LEN, WireError, iter_fields, read_string_field

V2_SERVICE = "inference.GRPCInferenceService"
TFS_PREDICTION = "tensorflow.serving.PredictionService"
TFS_MODEL = "tensorflow.serving.ModelService"
SEED_SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"


def _sub_message(data: bytes | memoryview, number: int) -> memoryview | None:
    """The last occurrence of message field ``number`` (protobuf merges; the name wins last)."""
    found = None
    view = memoryview(data)
    try:
        for field, wire_type, start, end in iter_fields(view):
            if field == number and wire_type == LEN:
                found = view[start:end]
    except WireError:
        return None
    return found


def field_string(number: int) -> RoutingKeyReader:
    """Reader of a top-level string field (V2 ``model_name`` / ``name``)."""

    def read(data: bytes, metadata: Mapping[str, str]) -> str | None:
        return read_string_field(data, number) or None

    return read


def model_spec_name(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """TF Serving requests: ``model_spec`` (field 1) -> ``name`` (field 1)."""
    spec = _sub_message(data, 1)
    return None if spec is None else read_string_field(spec, 1) or None


def multi_inference_name(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """MultiInferenceRequest: ``tasks`` (1, repeated) -> ``model_spec`` (1) -> ``name`` (1)."""
    task = _sub_message(data, 1)
    return None if task is None else model_spec_name(task, metadata)


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
    for method in ("Predict", "Classify", "Regress", "GetModelMetadata"):
        keys[f"/{TFS_PREDICTION}/{method}"] = model_spec_name
    keys[f"/{TFS_PREDICTION}/MultiInference"] = multi_inference_name
    keys[f"/{TFS_MODEL}/GetModelStatus"] = model_spec_name
    # The seed's unified service takes the framework's own messages under its own paths.
    keys[f"/{SEED_SERVICE}/Predict"] = model_spec_name
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
    if service in (TFS_PREDICTION, TFS_MODEL):
        return "tfserving"
    if service == SEED_SERVICE:
        return "seed"
    return ""
