"""TF Serving's REST API: ``/v1/models/<m>[/versions/<v>|/labels/<l>][:verb|/metadata]``.

Bodies and errors follow TF Serving: ``{"error": "..."}`` with the HTTP status of the
failure, ``{"b64": ...}`` for binary values, row (``instances``) and columnar (``inputs``)
request forms answered with ``predictions`` and ``outputs`` respectively.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from dl_inference import (
    DlInferenceError,
    InvalidInput,
    RequestContext,
    Runtime,
    http_status,
    public_message,
    to_numpy_dtype,
)
from dl_inference_tfserving import codec
from dl_inference_tfserving._proto import tfs_pb2
from dl_inference_tfserving.service import PROTOCOL, Target, TFServing

PLUGIN = "dl_inference_tfserving"

_PATH = re.compile(
    r"^(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>predict|classify|regress)|(?P<metadata>/metadata))?$"
)


def error_response(exc: BaseException) -> web.Response:
    plugin = "" if isinstance(exc, DlInferenceError) else PLUGIN
    return web.json_response({"error": public_message(exc, plugin)}, status=http_status(exc))


def _spec(match: re.Match[str]) -> tfs_pb2.ModelSpec:
    spec = tfs_pb2.ModelSpec(name=match["name"])
    if match["version"]:
        spec.version.value = int(match["version"])
    elif match["label"]:
        spec.version_label = match["label"]
    return spec


def _json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class TFServingRest:
    """aiohttp handlers for the ``/v1/models`` tree."""

    def __init__(self, runtime: Runtime) -> None:
        self.service = TFServing(runtime)

    async def get(self, request: web.Request) -> web.Response:
        match = _PATH.match(request.match_info["tail"])
        if match is None or match["verb"]:
            return _malformed(request)
        try:
            spec = _spec(match)
            if match["metadata"]:
                reply = self.service.metadata(
                    tfs_pb2.GetModelMetadataRequest(
                        model_spec=spec, metadata_field=["signature_def"]
                    )
                )
                signatures = tfs_pb2.SignatureDefMap.FromString(
                    reply.metadata["signature_def"].value
                )
                body = {
                    "model_spec": {
                        "name": reply.model_spec.name,
                        "signature_name": "",
                        "version": str(reply.model_spec.version.value),
                    },
                    "metadata": {"signature_def": _json(signatures)},
                }
                return web.json_response(body)
            return web.json_response(_json(self.service.status(spec)))
        except Exception as exc:
            return error_response(exc)

    async def post(self, request: web.Request) -> web.Response:
        match = _PATH.match(request.match_info["tail"])
        if match is None or not match["verb"]:
            return _malformed(request)
        ctx = RequestContext(
            protocol=PROTOCOL,
            method=f"REST {match['verb']}",
            metadata={k.lower(): v for k, v in request.headers.items()},
            peer=request.remote or "",
        )
        try:
            body = _parse_body(await request.read())
            spec = _spec(match)
            if "signature_name" in body:
                spec.signature_name = str(body["signature_name"])
            if match["verb"] == "predict":
                return web.json_response(await self._predict(spec, body, ctx), dumps=_dumps)
            examples = _examples(body)
            if match["verb"] == "classify":
                _, result = await self.service.classify(spec, examples, ctx)
                rows = [
                    [[c.label, c.score] for c in classifications.classes]
                    for classifications in result.classifications
                ]
                return web.json_response({"results": rows}, dumps=_dumps)
            _, values = await self.service.regress(spec, examples, ctx)
            return web.json_response(
                {"results": [r.value for r in values.regressions]}, dumps=_dumps
            )
        except Exception as exc:
            return error_response(exc)

    async def _predict(
        self, spec: tfs_pb2.ModelSpec, body: dict[str, Any], ctx: RequestContext
    ) -> dict[str, Any]:
        if ("instances" in body) == ("inputs" in body):
            raise InvalidInput(
                'the body needs exactly one of "instances" (row format) or "inputs" '
                "(columnar format)"
            )
        target = self.service.target(spec)
        specs = {key: info for key, info in target.signature.inputs.items()}
        if "instances" in body:
            inputs = _row_inputs(body["instances"], specs)
        else:
            inputs = _columnar_inputs(body["inputs"], specs)
        response = await self.service.infer(target, inputs, ctx)
        outputs = response.outputs
        if "instances" in body:
            return {"predictions": _row_outputs(target, outputs)}
        if len(outputs) == 1:
            key, array = next(iter(outputs.items()))
            return {"outputs": _to_json(key, array)}
        return {"outputs": {key: _to_json(key, array) for key, array in outputs.items()}}


def _malformed(request: web.Request) -> web.Response:
    return web.json_response(
        {"error": f"Malformed request: {request.method} {request.path}"}, status=404
    )


def _dumps(value: Any) -> str:
    # TF Serving writes NaN / Infinity literals, as Python's json does.
    return json.dumps(value)


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"JSON Parse error: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


# -- JSON values -> arrays ---------------------------------------------------------------------


def _decode_b64(value: Any) -> Any:
    """Replace ``{"b64": "..."}`` objects by their bytes, recursively."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise InvalidInput(
                'a JSON object inside a tensor value must be {"b64": "<base64>"}; '
                f"got keys {sorted(value)}"
            )
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f'"b64" value is not valid base64: {exc}') from None
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _to_array(key: str, value: Any, info: tfs_pb2.TensorInfo | None) -> np.ndarray:
    value = _decode_b64(value)
    datatype = codec.v2_datatype(info.dtype) if info is not None else None
    try:
        if datatype == "BYTES" or (datatype is None and _is_text(value)):
            raw = np.array(value, dtype=np.object_)
            array = np.empty(raw.shape, dtype=np.object_)
            for index, item in np.ndenumerate(raw):
                if not isinstance(item, bytes | str):
                    raise ValueError(f"{item!r} is not a string")
                array[index] = item.encode("utf-8") if isinstance(item, str) else item
            return array
        if datatype is None:
            return np.asarray(value)
        dtype = to_numpy_dtype(datatype)
        if _has_text(value):
            raise ValueError("strings given for a numeric tensor")
        return np.array(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        want = datatype or "a uniform type"
        raise InvalidInput(
            f"input {key!r}: the JSON value is not a rectangular array of {want} ({exc})"
        ) from None


def _is_text(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str | bytes)


def _has_text(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_text(v) for v in value)
    return isinstance(value, str | bytes)


def _row_inputs(instances: Any, specs: dict[str, tfs_pb2.TensorInfo]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list (one entry per example)')
    named = all(isinstance(i, dict) and "b64" not in i for i in instances)
    if not named:
        if len(specs) > 1:
            raise InvalidInput(
                f"the signature has {len(specs)} inputs ({', '.join(sorted(specs))}); each "
                "instance must be an object naming them"
            )
        key = next(iter(specs)) if specs else "inputs"
        return {key: _to_array(key, instances, specs.get(key))}
    keys = set(instances[0])
    for index, instance in enumerate(instances):
        if set(instance) != keys:
            raise InvalidInput(
                f"instance {index} has keys {sorted(instance)}, instance 0 has {sorted(keys)}; "
                "every instance needs the same input names"
            )
    return {key: _to_array(key, [i[key] for i in instances], specs.get(key)) for key in keys}


def _columnar_inputs(inputs: Any, specs: dict[str, tfs_pb2.TensorInfo]) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict) and "b64" not in inputs:
        return {key: _to_array(key, value, specs.get(key)) for key, value in inputs.items()}
    if len(specs) > 1:
        raise InvalidInput(
            f'the signature has {len(specs)} inputs ({", ".join(sorted(specs))}); "inputs" must '
            "be an object naming them"
        )
    key = next(iter(specs)) if specs else "inputs"
    return {key: _to_array(key, inputs, specs.get(key))}


# -- arrays -> JSON ----------------------------------------------------------------------------


def _to_json(key: str, array: np.ndarray) -> Any:
    array = np.asarray(array)
    if array.dtype.kind in ("O", "S", "U"):
        binary = key.endswith("_bytes")

        def convert(item: Any) -> Any:
            if isinstance(item, str):
                return item
            data = bytes(item)
            if not binary:
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(data).decode("ascii")}

        flat = [convert(item) for item in array.reshape(-1)]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    if array.dtype == np.float32:
        return _floats(array.tolist())
    return array.tolist()


def _floats(value: Any) -> Any:
    # float32 values printed with their own precision, as TF Serving does (0.1, not 0.10000000149).
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    return value


def _row_outputs(target: Target, outputs: dict[str, np.ndarray]) -> list[Any]:
    arrays = {key: np.asarray(value) for key, value in outputs.items()}
    batch = {key: (a.shape[0] if a.ndim else None) for key, a in arrays.items()}
    sizes = set(batch.values())
    if len(sizes) != 1 or None in sizes:
        raise InvalidInput(
            f"signature {target.signature_name!r} returned outputs with different batch sizes "
            f'({batch}); use the columnar form ("inputs") for this model'
        )
    if len(arrays) == 1:
        key, array = next(iter(arrays.items()))
        return _to_json(key, array) if array.ndim else []
    count = sizes.pop() or 0
    return [
        {key: _to_json(key, array[row]) for key, array in arrays.items()} for row in range(count)
    ]


# -- tf.Example from JSON ------------------------------------------------------------------


def _examples(body: dict[str, Any]) -> list[bytes]:
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise InvalidInput('"examples" must be a non-empty list of objects (feature -> value)')
    context = _example(body["context"], "context") if "context" in body else None
    result = []
    for index, features in enumerate(examples):
        example = _example(features, f"examples[{index}]")
        if context is not None:
            merged = tfs_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            example = merged
        result.append(example.SerializeToString())
    return result


def _example(features: Any, where: str) -> tfs_pb2.Example:
    if not isinstance(features, dict):
        raise InvalidInput(f"{where} must be an object mapping feature names to values")
    example = tfs_pb2.Example()
    for name, value in features.items():
        values = _decode_b64(value if isinstance(value, list) else [value])
        feature = example.features.feature[name]
        if all(isinstance(v, bytes | str) for v in values):
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            feature.int64_list.value.extend(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            feature.float_list.value.extend(float(v) for v in values)
        else:
            raise InvalidInput(
                f"{where}.{name}: values must be all numbers or all strings / b64 objects"
            )
    return example


def http_routes(runtime: Runtime) -> list[web.RouteDef]:
    """The ``/v1/models/...`` routes (one regex route: paths contain ``:``)."""
    api = TFServingRest(runtime)
    return [
        web.get("/v1/models/{tail:.+}", api.get),
        web.post("/v1/models/{tail:.+}", api.post),
    ]
