"""The ``tfserving`` wire protocol: TF Serving's gRPC and REST APIs plus the seed's Predict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from dl_inference import BenchRequest, BenchTransport, Protocol, RoutingKeyReader, wire

if TYPE_CHECKING:
    import grpc
    import numpy as np
    from aiohttp import web
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    from dl_inference import RuntimeView

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
SEED_SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"
# REST: /v1/models/<name>[/versions/<v>|/labels/<l>][:verb|/metadata] names the model.
REST_MODEL_PATH = "/v1/models/"

# Every TF Serving request keeps its ModelSpec in field 1, and ModelSpec its name in field 1.
_MODEL_SPEC, _NAME = 1, 1
# MultiInferenceRequest.tasks (repeated, field 1): InferenceTask.model_spec is field 1 too.
_TASKS = 1


def _occurrences(messages: list[memoryview], number: int) -> list[memoryview]:
    """Payloads of every length-delimited field ``number`` in ``messages``, in order."""
    return [
        message[start:end]
        for message in messages
        for field, wire_type, start, end in wire.iter_fields(message)
        if field == number and wire_type == wire.LEN
    ]


def _string_at(messages: list[memoryview], path: tuple[int, ...]) -> str | None:
    """The string at ``path`` in the message whose serialized occurrences are ``messages``.

    As protobuf parses it: the occurrences of a singular message field merge, so every
    occurrence is read and the last string met wins. Tensor payloads are jumped over.
    """
    for number in path[:-1]:
        messages = _occurrences(messages, number)
    strings = _occurrences(messages, path[-1])
    return (bytes(strings[-1]).decode("utf-8") or None) if strings else None


def model_spec_name(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """The gateway's reader for every TF Serving request: ``model_spec.name``.

    ``None`` (the call is served where it arrived, which explains what is wrong) when the
    name is absent, empty or not UTF-8, or the bytes are malformed.
    """
    try:
        return _string_at([memoryview(data)], (_MODEL_SPEC, _NAME))
    except (wire.WireError, UnicodeDecodeError):
        return None


def multi_inference_name(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """MultiInferenceRequest: the first task's ``model_spec.name`` (all must name one model)."""
    try:
        tasks = _occurrences([memoryview(data)], _TASKS)
        return _string_at(tasks[:1], (_MODEL_SPEC, _NAME)) if tasks else None
    except (wire.WireError, UnicodeDecodeError):
        return None


# gRPC method path -> reader of the model name (the worker's handlers take the same paths).
ROUTING_KEYS: dict[str, RoutingKeyReader] = {
    f"/{PREDICTION_SERVICE}/Predict": model_spec_name,
    f"/{PREDICTION_SERVICE}/Classify": model_spec_name,
    f"/{PREDICTION_SERVICE}/Regress": model_spec_name,
    f"/{PREDICTION_SERVICE}/GetModelMetadata": model_spec_name,
    f"/{PREDICTION_SERVICE}/MultiInference": multi_inference_name,
    f"/{MODEL_SERVICE}/GetModelStatus": model_spec_name,
    # The seed's unified service takes TF Serving's PredictRequest under its own path.
    f"/{SEED_SERVICE}/Predict": model_spec_name,
}


class TFServingProtocol(Protocol):
    """TF Serving: PredictionService + ModelService over gRPC, ``/v1/models`` over REST,
    and the seed dl_inference's unified ``WpaiDLPredictOnlineService/Predict``."""

    name = "tfserving"
    grpc_services = (PREDICTION_SERVICE, MODEL_SERVICE, SEED_SERVICE)

    def grpc_handlers(self, runtime: RuntimeView) -> Sequence[grpc.GenericRpcHandler]:
        from dl_inference_tfserving.grpc_api import grpc_handlers

        return grpc_handlers(runtime)

    def http_routes(self, runtime: RuntimeView) -> Sequence[web.RouteDef]:
        from dl_inference_tfserving.rest import http_routes

        return http_routes(runtime)

    def routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        return dict(ROUTING_KEYS)

    def upstream_paths(self) -> Mapping[str, str]:
        """The seed's ``Predict`` goes upstream as TF Serving's own ``Predict``."""
        return {f"/{SEED_SERVICE}/Predict": f"/{PREDICTION_SERVICE}/Predict"}

    def rest_model_paths(self) -> Sequence[str]:
        return (REST_MODEL_PATH,)

    def reflection_files(self) -> Sequence[FileDescriptorProto]:
        """PredictionService and ModelService under TF Serving's package names."""
        from dl_inference_tfserving.reflection import reflection_files

        return reflection_files()

    def bench_request(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        transport: BenchTransport,
        *,
        version: str = "",
        **options: str,
    ) -> BenchRequest:
        """``Predict`` over gRPC, ``:predict`` over REST (:mod:`dl_inference_tfserving.bench`)."""
        from dl_inference_tfserving.bench import bench_request

        return bench_request(model, inputs, transport, version=version, **options)

    def describe(self) -> dict[str, object]:
        return {"grpc": list(self.grpc_services), "http": ["/v1/models/..."]}
