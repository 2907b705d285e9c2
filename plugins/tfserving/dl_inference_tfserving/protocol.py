"""The ``tfserving`` wire protocol: TF Serving's gRPC and REST APIs plus the seed's Predict."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
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
# ModelSpec.version (field 2) is a google.protobuf.Int64Value, whose value is field 1.
_VERSION, _VALUE = 2, 1
# The REST path's model part, its version or label (replaced), and the rest (":predict").
_REST_VERSIONED = re.compile(r"^(/v1/models/[^/:]+)(?:/(?:versions|labels)/[^/:]+)?([:/].*)?$")


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


def _version_spec(version: str) -> bytes:
    """A serialized ModelSpec holding only ``version`` (ValueError: not an int64 >= 0)."""
    if not version.isdigit() or int(version) >= 1 << 63:
        raise ValueError(f"TF Serving model versions are integers (int64), not {version!r}")
    value = bytes([_VALUE << 3 | wire.VARINT]) + wire.encode_varint(int(version))
    return wire.len_field_header(_VERSION, len(value)) + value


def with_version(body: bytes, version: str) -> bytes:
    """A request with ``model_spec.version`` = ``version`` (any version_label dropped).

    The occurrences of a singular message field merge and setting ``version`` clears its
    oneof sibling ``version_label``, so a ModelSpec holding the version is appended.
    """
    spec = _version_spec(version)
    return body + wire.len_field_header(_MODEL_SPEC, len(spec)) + spec


def multi_inference_with_version(body: bytes, version: str) -> bytes:
    """MultiInferenceRequest: every task's ``model_spec.version`` = ``version``.

    ``tasks`` is repeated (an appended one would be a task more), so each task gets the
    spec appended inside it; the tasks are small, the input (field 2) is left as it is.
    """
    spec = _version_spec(version)
    extra = wire.len_field_header(_MODEL_SPEC, len(spec)) + spec
    rest, tasks = wire.split_len_field(body, _TASKS)
    rewritten = [wire.len_field_header(_TASKS, len(t) + len(extra)) + t + extra for t in tasks]
    return b"".join(rewritten) + rest


def rest_with_version(path: str, version: str) -> str | None:
    """``/v1/models/<name>[/versions/<v>|/labels/<l>][:verb|/metadata]`` naming ``version``."""
    _version_spec(version)  # the same versions as over gRPC
    match = _REST_VERSIONED.match(path)
    if match is None:
        return None
    return f"{match[1]}/versions/{version}{match[2] or ''}"


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


# Upstream gRPC method path -> its version rewriter (the seed's Predict goes up as Predict).
VERSION_REWRITERS: dict[str, Callable[[bytes, str], bytes]] = {
    path: multi_inference_with_version if reader is multi_inference_name else with_version
    for path, reader in ROUTING_KEYS.items()
    if not path.startswith(f"/{SEED_SERVICE}/")
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

    def version_rewriters(self) -> Mapping[str, Callable[[bytes, str], bytes]]:
        """Every request's ``model_spec.version`` (each task's, for MultiInference)."""
        return dict(VERSION_REWRITERS)

    def rest_version_rewriters(self) -> Mapping[str, Callable[[str, str], str | None]]:
        """``/v1/models/<name>`` takes ``/versions/<v>`` in place of any version or label."""
        return {REST_MODEL_PATH: rest_with_version}

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
