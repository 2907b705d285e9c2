"""The V2 REST API (``/v2/...``) as aiohttp routes, with Triton's binary-tensor extension.

A request may be plain JSON, or a JSON header of ``Inference-Header-Content-Length`` bytes
followed by the inputs whose ``parameters.binary_data_size`` says how many bytes each
takes, in order. Outputs are returned as binary when asked for (per output
``parameters.binary_data``; request-wide ``parameters.binary_data_output`` only when the
request lists no outputs, as Triton does: a listed output without ``binary_data`` is JSON).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from dl_inference.builtin.v2.binary import HEADER_LENGTH, split_body
from dl_inference.builtin.v2.codec import (
    array_to_json,
    array_to_raw,
    flag,
    json_to_array,
    model_parameters,
    output_array,
    raw_to_array,
)
from dl_inference.builtin.v2.generate import Generate
from dl_inference.builtin.v2.model_config import (
    config_document,
    repository_elsewhere,
    statistics_document,
)
from dl_inference.spi.call_path import (
    Call,
    CallPath,
    HttpRequest,
    RuntimeView,
    json_error_body,
    read_body,
)
from dl_inference.spi.errors import (
    DlInferenceError,
    InvalidInput,
    ModelNotFound,
    StreamingOnly,
    Unavailable,
)
from dl_inference.spi.json_body import read_json
from dl_inference.spi.types import InferRequest, InferResponse

# What Triton 2.51 answers (501) to POST .../infer of a decoupled model.
DECOUPLED_HTTP = "HTTP end point doesn't support models with decoupled transaction policy"

PROTOCOL = "v2"
# Responses shorter than this go out uncompressed even to clients that accept gzip.
MIN_COMPRESSED_BYTES = 1024
# json.dumps with separators builds a new encoder on every call: one, made once.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


class V2Rest:
    """Handlers of the V2 REST endpoints, on the kernel's call path."""

    def __init__(self, runtime: RuntimeView) -> None:
        self.runtime = runtime
        self.calls = CallPath(runtime, PROTOCOL, "dl_inference.builtin.v2")

    async def live(self, request: web.Request, call: Call) -> web.Response:
        live = self.runtime.live()
        return web.json_response({"live": live}, status=200 if live else 503)

    async def ready(self, request: web.Request, call: Call) -> web.Response:
        ready = self.runtime.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request, call: Call) -> web.Response:
        return web.json_response(
            {
                "name": self.runtime.server_name,
                "version": self.runtime.server_version,
                "extensions": self.runtime.extensions(),
            }
        )

    async def model_metadata(self, request: web.Request, call: Call) -> web.Response:
        name, version = _model(request)
        meta = self.runtime.model_metadata(name, version)
        return web.json_response(
            {
                "name": meta.name,
                "versions": meta.versions,
                "platform": meta.platform,
                "inputs": [spec.as_dict() for spec in meta.inputs],
                "outputs": [spec.as_dict() for spec in meta.outputs],
            }
        )

    async def model_ready(self, request: web.Request, call: Call) -> web.Response:
        name, version = _model(request)
        if not self.runtime.model_ready(name, version):
            # Tell an unknown model (404, with the list of models) from one not ready (503).
            try:
                self.runtime.model_metadata(name, version)
            except ModelNotFound:
                raise
            except DlInferenceError:
                pass
            return web.json_response({"name": name, "ready": False}, status=503)
        return web.json_response({"name": name, "ready": True})

    async def model_config(self, request: web.Request, call: Call) -> web.Response:
        name, version = _model(request)
        return web.json_response(config_document(self.runtime.resolve_model(name, version)))

    async def model_statistics(self, request: web.Request, call: Call) -> web.Response:
        name = request.match_info.get("model", "")
        version = request.match_info.get("version", "")
        return web.json_response(statistics_document(self.runtime.model_statistics(name, version)))

    async def repository(self, request: web.Request, call: Call) -> web.Response:
        raise Unavailable(repository_elsewhere(self.runtime.management))

    async def infer(self, request: HttpRequest, call: Call) -> web.Response:
        name, version = _model(request)
        call.ctx.request = InferRequest(model_name=name, model_version=version, inputs={})
        body = await read_body(request, call)
        with call.parsing("the request body"):
            infer_request, binary_outputs = decode_rest_request(
                name, version, body, request.headers.get(HEADER_LENGTH)
            )
        try:
            response = await self.runtime.infer(infer_request, call.ctx)
        except StreamingOnly as exc:
            raise StreamingOnly(f"{DECOUPLED_HTTP} ({exc})") from None  # Triton's words, 501
        reply = encode_rest_response(response, binary_outputs)
        if request.headers.get("Accept-Encoding") and len(reply.body) >= MIN_COMPRESSED_BYTES:
            # For clients that ask (aiohttp and requests always do): a small body costs
            # more to deflate and inflate than it saves.
            reply.enable_compression()
        return reply


def _model(request: HttpRequest) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


class _BinaryChoice:
    """Which outputs go back as binary: per output, else the request-wide default."""

    def __init__(self, default: bool, per_output: dict[str, bool]) -> None:
        self.default = default
        self.per_output = per_output

    def __call__(self, name: str) -> bool:
        return self.per_output.get(name, self.default)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def decode_rest_request(
    model: str, version: str, body: bytes, header_length: str | None
) -> tuple[InferRequest, _BinaryChoice]:
    """An InferRequest from a JSON (or JSON + binary) V2 body, and the binary-output choice."""
    header, binary = split_body(body, header_length)
    hint = "" if header_length else f" (binary tensors need the {HEADER_LENGTH} header)"
    document = _object(read_json(header, hint=hint), "the request body")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput('the request needs "inputs": a non-empty list of tensors')
    inputs = {}
    offset = 0
    for index, tensor in enumerate(raw_inputs):
        tensor = _object(tensor, f"inputs[{index}]")
        name = tensor.get("name")
        datatype = tensor.get("datatype")
        shape = tensor.get("shape")
        valid = isinstance(name, str) and isinstance(datatype, str) and isinstance(shape, list)
        if not valid:
            raise InvalidInput(
                f'inputs[{index}] needs "name" (string), "datatype" (string) and "shape" (list)'
            )
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears more than once in the request")
        size = _object(tensor.get("parameters"), f"inputs[{index}].parameters").get(
            "binary_data_size"
        )
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be an integer >= 0")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} binary bytes left)"
                )
            inputs[name] = raw_to_array(name, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            inputs[name] = json_to_array(name, datatype, shape, tensor["data"])
        else:
            raise InvalidInput(f'input {name!r} has neither "data" nor parameters.binary_data_size')
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data follow the JSON header but no input's "
            "binary_data_size accounts for them"
        )
    parameters = dict(_object(document.get("parameters"), "parameters"))
    default_binary = flag(parameters.pop("binary_data_output", False), "binary_data_output")
    outputs: list[str] | None = None
    per_output: dict[str, bool] = {}
    if document.get("outputs") is not None:
        if not isinstance(document["outputs"], list):
            raise InvalidInput('"outputs" must be a list of {"name": ...} objects')
        outputs = []
        for index, entry in enumerate(document["outputs"]):
            entry = _object(entry, f"outputs[{index}]")
            name = entry.get("name")
            if not isinstance(name, str):
                raise InvalidInput(f'outputs[{index}] needs "name" (string)')
            options = _object(entry.get("parameters"), f"outputs[{index}].parameters")
            if "classification" in options:
                raise InvalidInput(
                    f"output {name!r}: the classification extension is not supported"
                )
            if "binary_data" in options:
                per_output[name] = flag(options["binary_data"], f"output {name!r}: binary_data")
            outputs.append(name)
        outputs = outputs or None
    request_id = document.get("id", "")
    request = InferRequest(
        model_name=model,
        model_version=version,
        id=request_id if isinstance(request_id, str) else str(request_id),
        inputs=inputs,
        parameters=model_parameters(parameters),
        outputs=outputs,
    )
    return request, _BinaryChoice(default_binary and outputs is None, per_output)


def encode_rest_response(response: InferResponse, binary: _BinaryChoice) -> web.Response:
    """JSON, or JSON header + binary tensors when any output is sent as binary."""
    outputs = []
    blobs: list[bytes | memoryview] = []
    for name, value in response.outputs.items():
        array, datatype = output_array(response.model_name, name, value)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary(name):
            blob = array_to_raw(array, datatype)
            entry["parameters"] = {"binary_data_size": memoryview(blob).nbytes}
            blobs.append(blob)
        else:
            entry["data"] = array_to_json(name, array, datatype)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    header = _COMPACT_JSON.encode(document).encode("utf-8")
    if not blobs:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join([header, *blobs]),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def http_routes(runtime: RuntimeView) -> list[web.RouteDef]:
    """Route definitions for every V2 REST endpoint."""
    api = V2Rest(runtime)
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"

    def on_path(label: str, handler: Any, counted: bool = False, plain: bool = False) -> Any:
        # Only inference is counted as a request (see dl_inference.spi.call_path).
        return api.calls.http_handler(label, handler, json_error_body, counted=counted, plain=plain)

    # Plain (dl_inference.HttpRequest): served on the HTTP/1.1 lane when it runs.
    infer = on_path("POST /v2/models/{name}/infer", api.infer, counted=True, plain=True)
    metadata = on_path("GET /v2/models/{name}", api.model_metadata)
    ready = on_path("GET /v2/models/{name}/ready", api.model_ready)
    config = on_path("GET /v2/models/{name}/config", api.model_config)
    stats = on_path("GET /v2/models/{name}/stats", api.model_statistics)
    repository = on_path("POST /v2/repository", api.repository)
    generating = Generate(runtime, api.calls.plugin)
    generate = on_path("POST /v2/models/{name}/generate", generating.generate, counted=True)
    stream = on_path(
        "POST /v2/models/{name}/generate_stream", generating.generate_stream, counted=True
    )
    return [
        # The hot path first: aiohttp tries a prefix's routes in this order.
        web.post(f"{model}/infer", infer),
        web.post(f"{versioned}/infer", infer),
        # The generate extension (dl_inference.builtin.v2.generate).
        web.post(f"{model}/generate", generate),
        web.post(f"{versioned}/generate", generate),
        web.post(f"{model}/generate_stream", stream),
        web.post(f"{versioned}/generate_stream", stream),
        web.get("/v2/health/live", on_path("GET /v2/health/live", api.live)),
        web.get("/v2/health/ready", on_path("GET /v2/health/ready", api.ready)),
        web.get("/v2", on_path("GET /v2", api.server_metadata)),
        # Before {model}: "stats" is not a model's name here, as in Triton.
        web.get("/v2/models/stats", on_path("GET /v2/models/stats", api.model_statistics)),
        web.get(model, metadata),
        web.get(versioned, metadata),
        web.get(f"{model}/ready", ready),
        web.get(f"{versioned}/ready", ready),
        web.get(f"{model}/config", config),
        web.get(f"{versioned}/config", config),
        web.get(f"{model}/stats", stats),
        web.get(f"{versioned}/stats", stats),
        # The repository extension is the management listener's: say so, not 404.
        web.post("/v2/repository/index", repository),
        web.post("/v2/repository/models/{model}/load", repository),
        web.post("/v2/repository/models/{model}/unload", repository),
    ]
