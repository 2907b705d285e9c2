"""TF Serving's requests for ``dl-inference bench --protocol tfserving``.

gRPC: a ``PredictionService/Predict`` ``PredictRequest``, each tensor encoded by
:func:`dl_inference_tfserving.codec.from_numpy` with ``tensor_content=True`` (numbers in
``tensor_content``, strings in ``string_val``), as ``tf.make_tensor_proto`` sends them. REST: ``POST
/v1/models/<name>[/versions/<v>]:predict`` with the columnar ``{"inputs": {...}}`` body,
values written as this plugin's REST API writes them (text, or ``{"b64": ...}`` for bytes
that are not UTF-8). Options: ``signature_name``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import numpy as np

from dl_inference import BenchRequest, BenchTransport, ConfigError, InvalidInput
from dl_inference_tfserving import codec
from dl_inference_tfserving._proto import tfs_pb2
from dl_inference_tfserving.protocol import PREDICTION_SERVICE, REST_MODEL_PATH

PREDICT_METHOD = f"/{PREDICTION_SERVICE}/Predict"
OPTIONS = ("signature_name",)
_INT64_MAX = 2**63 - 1


def bench_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    transport: BenchTransport,
    *,
    version: str = "",
    **options: str,
) -> BenchRequest:
    """The Predict request for ``inputs``; ConfigError says what cannot be sent and why."""
    BenchRequest.check_options("tfserving", options, OPTIONS)
    signature = options.get("signature_name", "")
    if version and not (re.fullmatch("[0-9]+", version) and int(version) <= _INT64_MAX):
        raise ConfigError(
            f"--model-version {version!r}: TF Serving names versions by number (e.g. 3)"
        )
    try:
        if transport == "grpc":
            body = _predict_request(model, inputs, version, signature)
            return BenchRequest("grpc", PREDICT_METHOD, body)
        return _rest_request(model, inputs, version, signature)
    except InvalidInput as exc:
        raise ConfigError(f"the tfserving protocol cannot carry these inputs: {exc}") from None


def _predict_request(
    model: str, inputs: Mapping[str, np.ndarray], version: str, signature: str
) -> bytes:
    request = tfs_pb2.PredictRequest()
    request.model_spec.name = model
    if version:
        request.model_spec.version.value = int(version)
    if signature:
        request.model_spec.signature_name = signature
    for name, array in inputs.items():
        codec.from_numpy(array, request.inputs[name], tensor_content=True)
    return request.SerializeToString()


def _rest_request(
    model: str, inputs: Mapping[str, np.ndarray], version: str, signature: str
) -> BenchRequest:
    # The REST API's own writer: one rule for the JSON form of a tensor, here and in replies.
    from dl_inference_tfserving.rest import _to_json

    payload: dict[str, object] = {"inputs": {name: _to_json(name, a) for name, a in inputs.items()}}
    if signature:
        payload["signature_name"] = signature
    path = f"{REST_MODEL_PATH}{model}" + (f"/versions/{version}" if version else "") + ":predict"
    headers = (("Content-Type", "application/json"),)
    return BenchRequest("http", path, json.dumps(payload).encode(), headers)
