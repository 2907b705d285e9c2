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
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import hdrs, web
from google.protobuf import json_format

from dl_inference import (
    Call,
    CallPath,
    InferRequest,
    InvalidInput,
    RuntimeView,
    array_from_json,
    json_datatype,
    json_error_body,
    json_leaves,
    read_body,
    read_json,
    utf8_bytes,
)
from dl_inference_tfserving import codec
from dl_inference_tfserving._proto import tfs_pb2
from dl_inference_tfserving.service import PROTOCOL, Target, TFServing

PLUGIN = "dl_inference_tfserving"

# ASCII digits only, as TF Serving's RE2 pattern (Python's \d also takes other scripts' digits).
_PATH = re.compile(
    r"^(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>predict|classify|regress)|(?P<metadata>/metadata))?$"
)
_INT64_MAX = 2**63 - 1
# The label of a request whose method is none of HTTP's own (aiohttp accepts any token).
_OTHER_METHOD = "OTHER"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _spec(request: web.Request) -> tfs_pb2.ModelSpec:
    """The ModelSpec a path the dispatcher matched names; InvalidInput for a bad version."""
    match = _PATH.match(request.match_info["tail"])
    if match is None:  # the dispatcher sends only matching paths here
        raise _malformed(request)
    spec = tfs_pb2.ModelSpec(name=match["name"])
    if match["version"]:
        digits = match["version"]
        # Length first: int() of thousands of digits is slow, and refused past 4300.
        if len(digits) > len(str(_INT64_MAX)) or int(digits) > _INT64_MAX:
            shown = digits if len(digits) <= 40 else f"{digits[:20]}...({len(digits)} digits)"
            raise InvalidInput(
                f"Failed to convert version: {shown} to numeric: a model version is an "
                f"integer from 0 to {_INT64_MAX}"
            )
        spec.version.value = int(digits)
    elif match["label"]:
        spec.version_label = match["label"]
    return spec


def _malformed(request: web.Request) -> web.HTTPNotFound:
    # TF Serving's answer to a path it has no API for (the call path renders it as JSON).
    return web.HTTPNotFound(text=f"Malformed request: {request.method} {request.path}")


def _json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class TFServingRest:
    """aiohttp handlers for the ``/v1/models`` tree, on the kernel's call path.

    One route takes the whole tree, every HTTP method (its paths contain ``:``); it picks
    the handler by the method and the path's form, and each handler is bound with its own
    label, which is what ``ctx.method`` reads (``"POST /v1/models/{name}:predict"``, ...).
    As in TF Serving, only ``POST`` of ``:predict|:classify|:regress`` and ``GET`` of a
    model's status or metadata are an API; any other method or path (``HEAD`` included)
    is a malformed request, answered through the call path like every failure.
    """

    def __init__(self, runtime: RuntimeView) -> None:
        self.runtime = runtime
        self.service = TFServing(runtime)
        self.calls = CallPath(runtime, PROTOCOL, PLUGIN)
        handlers = {
            "status": ("GET /v1/models/{name}", self.status),
            "metadata": ("GET /v1/models/{name}/metadata", self.metadata),
            "predict": ("POST /v1/models/{name}:predict", self.predict),
            "classify": ("POST /v1/models/{name}:classify", self.classify),
            "regress": ("POST /v1/models/{name}:regress", self.regress),
        }
        # Malformed requests, labelled by their method: HTTP's own methods, and one label
        # for any other token a client sends, so that clients cannot invent labels.
        for method in (*sorted(hdrs.METH_ALL), _OTHER_METHOD):
            handlers[method] = (f"{method} /v1/models/...", self.malformed)
        # Only calls that may run a model count as inference (a malformed POST failed
        # before we could tell which verb it meant); status, metadata and other methods
        # are answered with the right code and not counted.
        inference = {"predict", "classify", "regress", "POST"}
        self.handlers: dict[str, Handler] = {
            kind: self.calls.http_handler(
                label, handler, json_error_body, counted=kind in inference
            )
            for kind, (label, handler) in handlers.items()
        }

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """The handler for this method and path's form, or the malformed-request answer."""
        match = _PATH.match(request.match_info["tail"])
        kind = request.method if request.method in hdrs.METH_ALL else _OTHER_METHOD
        if match is not None:
            if request.method == "POST" and match["verb"]:
                kind = match["verb"]
            elif request.method == "GET" and not match["verb"]:
                kind = "metadata" if match["metadata"] else "status"
        return await self.handlers[kind](request)

    async def malformed(self, request: web.Request, call: Call) -> web.Response:
        raise _malformed(request)

    async def status(self, request: web.Request, call: Call) -> web.Response:
        spec = _spec(request)
        return web.json_response(_json(self.service.status(spec)))

    async def metadata(self, request: web.Request, call: Call) -> web.Response:
        spec = _spec(request)
        reply = self.service.metadata(
            tfs_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
        )
        signatures = tfs_pb2.SignatureDefMap.FromString(reply.metadata["signature_def"].value)
        body = {
            "model_spec": {
                "name": reply.model_spec.name,
                "signature_name": "",
                "version": str(reply.model_spec.version.value),
            },
            "metadata": {"signature_def": _json(signatures)},
        }
        return web.json_response(body)

    async def predict(self, request: web.Request, call: Call) -> web.Response:
        spec, body = await self._request(request, call)
        if ("instances" in body) == ("inputs" in body):
            raise InvalidInput(
                'the body needs exactly one of "instances" (row format) or "inputs" '
                "(columnar format)"
            )
        target = self.service.target(spec, call)
        specs = dict(target.signature.inputs.items())
        with call.parsing("the request body"):
            if "instances" in body:
                inputs = _row_inputs(body["instances"], specs)
            else:
                inputs = _columnar_inputs(body["inputs"], specs)
        self.service.check_input_names(target, inputs)
        outputs = (await self.service.infer(target, inputs, call)).outputs
        if "instances" in body:
            reply: dict[str, Any] = {"predictions": _row_outputs(target, outputs)}
        elif len(outputs) == 1:
            key, array = next(iter(outputs.items()))
            reply = {"outputs": _to_json(key, array)}
        else:
            reply = {"outputs": {key: _to_json(key, array) for key, array in outputs.items()}}
        return web.json_response(reply, dumps=_dumps)

    async def classify(self, request: web.Request, call: Call) -> web.Response:
        spec, body = await self._request(request, call)
        with call.parsing("the request body"):
            examples = _examples(body)
        _, result = await self.service.classify(spec, examples, call)
        rows = [
            [[c.label, c.score] for c in classifications.classes]
            for classifications in result.classifications
        ]
        return web.json_response({"results": rows}, dumps=_dumps)

    async def regress(self, request: web.Request, call: Call) -> web.Response:
        spec, body = await self._request(request, call)
        with call.parsing("the request body"):
            examples = _examples(body)
        _, values = await self.service.regress(spec, examples, call)
        return web.json_response({"results": [r.value for r in values.regressions]}, dumps=_dumps)

    async def _request(
        self, request: web.Request, call: Call
    ) -> tuple[tfs_pb2.ModelSpec, dict[str, Any]]:
        """The addressed ModelSpec and the JSON body (within the server's size limit)."""
        spec = _spec(request)
        # Failures from here on are counted against the model the path names.
        call.ctx.request = InferRequest(model_name=spec.name, inputs={})
        body = read_json(await read_body(request, call))
        if not isinstance(body, dict):
            raise InvalidInput(f"the request body must be a JSON object, not {type(body).__name__}")
        if "signature_name" in body:
            if not isinstance(body["signature_name"], str):
                raise InvalidInput('"signature_name" must be a string')
            spec.signature_name = body["signature_name"]
        return spec, body


def _dumps(value: Any) -> str:
    # TF Serving writes NaN / Infinity literals, as Python's json does.
    return json.dumps(value)


# -- JSON values -> arrays ---------------------------------------------------------------------
# read_json has bounded the nesting (MAX_JSON_DEPTH), and the kernel's json_leaves walks level
# by level rather than recursing: no JSON document reaches Python's recursion limit.

# What a string tensor takes, for messages.
_STRINGS = 'strings or {"b64": "<base64>"} objects'


def _b64(value: dict[str, Any], where: str) -> bytes:
    """The bytes of a ``{"b64": "..."}`` object; InvalidInput for any other object."""
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise InvalidInput(
            f'{where}: a JSON object inside a tensor value must be {{"b64": "<base64>"}}; '
            f"got keys {sorted(value)[:8]}"
        )
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f'{where}: "b64" value is not valid base64: {exc}') from None


def _to_array(key: str, value: Any, info: tfs_pb2.TensorInfo | None, field: str) -> np.ndarray:
    """A tensor from its JSON value, typed by the signature's input (inferred without one).

    The kernel's rules type the values (:func:`~dl_inference.array_from_json`); this
    protocol adds ``{"b64": ...}`` objects for binary values.
    """
    shape, leaves = json_leaves(key, value, field=field)
    if dict in set(map(type, leaves)):
        where = f"input {key!r}"
        leaves = [_b64(leaf, where) if type(leaf) is dict else leaf for leaf in leaves]
    datatype = codec.v2_datatype(info.dtype) if info is not None else None
    if datatype is None:
        datatype = json_datatype(key, leaves, field=field)
    return array_from_json(key, datatype, leaves, shape, field=field, strings=_STRINGS)


def _row_inputs(instances: Any, specs: dict[str, tfs_pb2.TensorInfo]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list (one entry per example)')
    named = all(isinstance(i, dict) and "b64" not in i for i in instances)
    if not named:
        return _sole_input(instances, specs, "instances", "each instance must be an object")
    keys = set(instances[0])
    for index, instance in enumerate(instances):
        if set(instance) != keys:
            raise InvalidInput(
                f"instance {index} has keys {sorted(instance)}, instance 0 has {sorted(keys)}; "
                "every instance needs the same input names"
            )
    return {
        key: _to_array(key, [i[key] for i in instances], specs.get(key), "instances")
        for key in keys
    }


def _columnar_inputs(inputs: Any, specs: dict[str, tfs_pb2.TensorInfo]) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict) and "b64" not in inputs:
        return {
            key: _to_array(key, value, specs.get(key), "inputs") for key, value in inputs.items()
        }
    return _sole_input(inputs, specs, "inputs", '"inputs" must be an object')


def _sole_input(
    value: Any, specs: dict[str, tfs_pb2.TensorInfo], field: str, needs: str
) -> dict[str, np.ndarray]:
    """Unnamed data: the signature's one input (``"inputs"`` when it names none)."""
    if len(specs) > 1:
        raise InvalidInput(
            f"the signature has {len(specs)} inputs ({', '.join(sorted(specs))}); {needs} "
            "naming them"
        )
    key = next(iter(specs)) if specs else "inputs"
    return {key: _to_array(key, value, specs.get(key), field)}


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
        at = f"{where}.{name}"
        values = [
            _b64(v, at) if isinstance(v, dict) else v
            for v in (value if isinstance(value, list) else [value])
        ]
        feature = example.features.feature[name]
        if all(isinstance(v, bytes | str) for v in values):
            feature.bytes_list.value.extend(
                utf8_bytes(v, at) if isinstance(v, str) else v for v in values
            )
        elif all(type(v) is int for v in values):
            if values and not -(2**63) <= min(values) <= max(values) <= _INT64_MAX:
                raise InvalidInput(f"{at}: integer features are int64; a value is out of range")
            feature.int64_list.value.extend(values)
        elif all(type(v) in (int, float) for v in values):
            feature.float_list.value.extend(float(v) for v in values)
        else:
            raise InvalidInput(f"{at}: values must be all numbers or all strings / b64 objects")
    return example


def http_routes(runtime: RuntimeView) -> list[web.RouteDef]:
    """The ``/v1/models/...`` route (one route for the tree: the paths contain ``:``)."""
    api = TFServingRest(runtime)
    # Every method: aiohttp would answer the others (HEAD, PUT, ...) itself, off the call path.
    return [web.route(hdrs.METH_ANY, "/v1/models/{tail:.+}", api.dispatch)]
