"""Routing-key readers for the standard methods, reading only the model name.

Protocol plugins provide their own readers through ``Protocol.routing_keys()`` (and
``rest_routing_keys()`` for REST paths that name no model); these built-in ones cover the
well-known services so that a gateway-only deployment forwards TF Serving, Seldon and
Open Inference Protocol traffic without installing the tensorflow or pytorch plugins (and
without TensorFlow or torch). A protocol's own reader wins over the built-in one for the
same path.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

from dl_inference.protocol import RoutingKeyReader
from dl_inference.wire import FIXED64, LEN, VARINT, WireError, iter_fields, read_string_field

V2_SERVICE = "inference.GRPCInferenceService"
TFS_PREDICTION = "tensorflow.serving.PredictionService"
TFS_MODEL = "tensorflow.serving.ModelService"
SELDON_SERVICES = ("seldon.protos.Model", "seldon.protos.Seldon")
SEED_SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"
SELDON_REST_PATH = "/api/v1.0/predictions"

# Seldon carries no model field; the seed put a task id in meta.tags, so look there, and
# let a client name the model in metadata as Seldon Core's own router does. Tags are read
# in the order a worker's Seldon protocol reads them, so both pick the same model.
SELDON_TAG_KEYS = ("model", "model_name", "taskid", "taskId")
SELDON_METADATA_KEYS = ("model", "seldon-model", "x-model-name")


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


def _value_as_key(value: memoryview) -> str | None:
    """google.protobuf.Value: string_value (3) or a whole number_value (2) as text."""
    try:
        for field, wire_type, start, end in iter_fields(value):
            if field == 3 and wire_type == LEN:
                return bytes(value[start:end]).decode("utf-8")
            if field == 2 and wire_type == FIXED64:
                number = struct.unpack("<d", value[start:end])[0]
                return str(int(number)) if number.is_integer() else str(number)
            if field == 4 and wire_type == VARINT:
                return None
    except (WireError, UnicodeDecodeError):
        return None
    return None


def _seldon_header(metadata: Mapping[str, str]) -> str | None:
    for key in SELDON_METADATA_KEYS:
        if metadata.get(key):
            return metadata[key]
    return None


def seldon_model(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """SeldonMessage: a model header, else ``meta`` (2) -> ``tags`` (2, map) by known keys."""
    if name := _seldon_header(metadata):
        return name
    meta = _sub_message(data, 2)
    if meta is None:
        return None
    tags: dict[str, str] = {}
    try:
        for field, wire_type, start, end in iter_fields(meta):
            if field != 2 or wire_type != LEN:
                continue
            entry = meta[start:end]
            key = read_string_field(entry, 1)
            value = _sub_message(entry, 2)
            if key in SELDON_TAG_KEYS and value is not None:
                text = _value_as_key(value)
                if text:
                    tags[key] = text
    except WireError:
        return None
    for key in SELDON_TAG_KEYS:
        if key in tags:
            return tags[key]
    return None


def _json_tag_as_key(value: object) -> str | None:
    """A JSON tag value as a model name: strings as they are, whole numbers without ``.0``."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def seldon_rest_model(body: bytes, headers: Mapping[str, str]) -> str | None:
    """Seldon REST (JSON SeldonMessage): a model header, else ``meta.tags`` by known keys.

    With the header the body is not parsed; without it the JSON is, as the tags are in it.
    """
    if name := _seldon_header(headers):
        return name
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None  # served where it arrived, whose handler explains what is wrong
    meta = message.get("meta") if isinstance(message, dict) else None
    tags = meta.get("tags") if isinstance(meta, dict) else None
    if not isinstance(tags, dict):
        return None
    for key in SELDON_TAG_KEYS:
        if text := _json_tag_as_key(tags.get(key)):
            return text
    return None


def builtin_rest_routing_keys() -> dict[str, tuple[str, RoutingKeyReader]]:
    """REST path that names no model -> (its protocol, reader of the name in the request)."""
    return {SELDON_REST_PATH: ("seldon", seldon_rest_model)}


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
    for service in SELDON_SERVICES:
        keys[f"/{service}/Predict"] = seldon_model
    # The seed's unified service takes the framework's own messages under its own paths.
    keys[f"/{SEED_SERVICE}/Predict"] = model_spec_name
    keys[f"/{SEED_SERVICE}/PytorchPredict"] = seldon_model
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
    if service in SELDON_SERVICES:
        return "seldon"
    if service == SEED_SERVICE:
        return "seed"
    return ""
