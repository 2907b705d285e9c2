"""The ``tfserving`` wire protocol: TF Serving's gRPC and REST APIs plus the seed's Predict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from dl_inference import Protocol, RoutingKeyReader

if TYPE_CHECKING:
    import grpc
    from aiohttp import web
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    from dl_inference import Runtime

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
SEED_SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"

# Where each request message keeps the model name: the field-number path to
# ModelSpec.name (MultiInference: the first task's model_spec).
_NAME_PATHS: dict[str, tuple[int, ...]] = {
    f"/{PREDICTION_SERVICE}/Predict": (1, 1),
    f"/{PREDICTION_SERVICE}/Classify": (1, 1),
    f"/{PREDICTION_SERVICE}/Regress": (1, 1),
    f"/{PREDICTION_SERVICE}/GetModelMetadata": (1, 1),
    f"/{PREDICTION_SERVICE}/MultiInference": (1, 1, 1),
    f"/{MODEL_SERVICE}/GetModelStatus": (1, 1),
    f"/{SEED_SERVICE}/Predict": (1, 1),
}


def read_nested_string(data: bytes, path: tuple[int, ...]) -> str | None:
    """The string at a path of length-delimited field numbers (first occurrence of each
    message on the way, the last of the final string, as protobuf parses); ``None`` if absent
    or malformed. Tensor payloads are skipped, never copied."""
    from dl_inference.wire import LEN, WireError, iter_fields, read_string_field

    view = memoryview(data)
    try:
        for number in path[:-1]:
            found = next(
                (view[s:e] for n, w, s, e in iter_fields(view) if n == number and w == LEN), None
            )
            if found is None:
                return None
            view = found
    except WireError:
        return None
    return read_string_field(view, path[-1])


def _reader(path: tuple[int, ...]) -> RoutingKeyReader:
    def read(data: bytes, metadata: Mapping[str, str]) -> str | None:
        return read_nested_string(data, path)

    return read


class TFServingProtocol(Protocol):
    """TF Serving: PredictionService + ModelService over gRPC, ``/v1/models`` over REST,
    and the seed dl_inference's unified ``WpaiDLPredictOnlineService/Predict``."""

    name = "tfserving"
    grpc_services = (PREDICTION_SERVICE, MODEL_SERVICE, SEED_SERVICE)

    def grpc_handlers(self, runtime: Runtime) -> Sequence[grpc.GenericRpcHandler]:
        from dl_inference_tfserving.grpc_api import grpc_handlers

        return grpc_handlers(runtime)

    def http_routes(self, runtime: Runtime) -> Sequence[web.RouteDef]:
        from dl_inference_tfserving.rest import http_routes

        return http_routes(runtime)

    def routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        return {method: _reader(path) for method, path in _NAME_PATHS.items()}

    def reflection_files(self) -> Sequence[FileDescriptorProto]:
        """PredictionService and ModelService under TF Serving's package names."""
        from dl_inference_tfserving.reflection import reflection_files

        return reflection_files()

    def describe(self) -> dict[str, object]:
        return {"grpc": list(self.grpc_services), "http": ["/v1/models/..."]}
