"""The ``seldon`` wire protocol: Seldon Core's ``SeldonMessage`` over gRPC and REST.

gRPC methods (request and reply are both ``SeldonMessage``):

- ``/seldon.protos.Model/Predict`` and ``/seldon.protos.Seldon/Predict`` (Seldon Core);
- ``/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/PytorchPredict`` and
  ``.../CaffePredict`` (the seed's unified service, so existing dl_inference clients keep
  working; the seed forwarded both to Seldon's ``Model/Predict``).

REST: ``POST /api/v1.0/predictions`` with the JSON form of a ``SeldonMessage``.

Any model is reachable, whatever its backend. The model is chosen as
:mod:`dl_inference_seldon.routing` describes; ``meta.tags.model_version`` picks a
version; ``meta.tags.output`` picks the output a data reply carries. The other tags reach
the model as request parameters (for PyTorch: the processor hooks' ``**kwargs``). The
reply echoes ``meta.puid`` (generated when absent) and ``meta.tags``.

Errors. gRPC answers a failed call with a non-OK status (INVALID_ARGUMENT for bad data,
NOT_FOUND for an unknown model, UNAVAILABLE, INTERNAL, ... by the kernel's table) and the
message as details, so that clients, retries and the gateway's health tracking all see
the failure. The Seldon-style ``Status`` (code = HTTP status, info = message, reason,
status = FAILURE) rides along, serialized, in the trailing metadata key
``seldon-status-bin``. REST answers with the HTTP status and a body ``{"status": {...}}``
like Seldon's microservices do (``"status": 1``, as the wrapper writes the flag).

Every method runs on the kernel's call path: a body that cannot be read is
INVALID_ARGUMENT / 400 (an oversize REST body 413), ``dli_authorize`` is asked before any
model is looked up, and each failure is counted once in metrics, the access log and
``dli_on_error``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from google.protobuf import any_pb2, descriptor_pb2, json_format, struct_pb2

from dl_inference import (
    BackendError,
    BenchRequest,
    BenchTransport,
    Call,
    CallPath,
    InferRequest,
    InvalidInput,
    ModelNotFound,
    Protocol,
    RoutingKeyReader,
    RuntimeView,
    grpc_code,
    http_status,
    read_body,
    rename_proto_types,
)
from dl_inference_seldon import codec, routing
from dl_inference_seldon._proto import seldon_pb2 as pb

if TYPE_CHECKING:
    import numpy as np

MODEL_SERVICE = "seldon.protos.Model"
SELDON_SERVICE = "seldon.protos.Seldon"
SEED_SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"
# The seed's methods that carry a SeldonMessage; a gateway sends them upstream as Seldon's own.
SEED_METHODS = ("PytorchPredict", "CaffePredict")
PREDICT_PATHS = (
    f"/{MODEL_SERVICE}/Predict",
    f"/{SELDON_SERVICE}/Predict",
    *(f"/{SEED_SERVICE}/{method}" for method in SEED_METHODS),
)
REST_PATH = "/api/v1.0/predictions"
STATUS_TRAILER = "seldon-status-bin"
PROTOCOL = "seldon"
PLUGIN = "dl-inference-seldon"
STANDARD_PACKAGE = "seldon.protos"


def failure_reason(error: BaseException) -> str:
    """Seldon's ``Status.reason`` for an error: its microservice words where they exist."""
    if isinstance(error, InvalidInput):
        return "MICROSERVICE_BAD_DATA"
    if isinstance(error, BackendError) or grpc_code(error) is grpc.StatusCode.INTERNAL:
        return "MICROSERVICE_INTERNAL_ERROR"
    return grpc_code(error).name


class SeldonService:
    """Decodes SeldonMessages, runs them through the runtime and encodes the replies.

    Every method is bound on the kernel's call path (:class:`~dl_inference.CallPath`, with
    :func:`status_trailers` for failed gRPC calls), which builds the request context, turns
    unreadable bytes into INVALID_ARGUMENT / 400 and counts each failure once.
    """

    def __init__(self, runtime: RuntimeView) -> None:
        self.runtime = runtime
        self.calls = CallPath(runtime, PROTOCOL, PLUGIN, error_trailers=status_trailers)

    async def predict(self, message: pb.SeldonMessage, call: Call) -> pb.SeldonMessage:
        """Answer one Seldon request; raises DlInferenceError subclasses on failure."""
        reply, _ = await self._answer(message, call)
        return reply

    async def _answer(
        self, message: pb.SeldonMessage, call: Call
    ) -> tuple[pb.SeldonMessage, Mapping[str, np.ndarray]]:
        """The reply and the outputs it was encoded from."""
        tags = codec.tags_to_dict(message.meta)
        version = routing.tag_text(tags.get("model_version")) or ""
        named = routing.model_from(call.ctx.metadata, tags)
        served = [] if named else self.runtime.model_names()
        name = named or (served[0] if len(served) == 1 else "")
        # Authorize before any model is looked up (decoding needs the model's inputs), so a
        # caller who may not call a model cannot learn whether it exists.
        call.ctx.request = InferRequest(model_name=name, model_version=version, inputs={})
        self.runtime.authorize(call.ctx)
        if not name:
            raise _no_model_named(served)
        kind = codec.data_kind(message)
        specs = self.runtime.model_metadata(name, version).inputs or None
        with call.parsing("the SeldonMessage's data"):
            inputs = codec.decode_inputs(
                message, kind, specs, fill_limit_bytes=self.runtime.max_message_bytes
            )
        output = tags.get("output")
        request = InferRequest(
            model_name=name,
            model_version=version,
            inputs=inputs,
            id=message.meta.puid or call.ctx.request_id,
            parameters={k: v for k, v in tags.items() if k not in routing.CONTROL_TAGS},
            outputs=[output] if isinstance(output, str) and output else None,
            deadline=call.deadline,
        )
        response = await self.runtime.infer(request, call.ctx)
        reply = pb.SeldonMessage()
        reply.meta.puid = request.id
        for key, value in message.meta.tags.items():
            reply.meta.tags[key].CopyFrom(value)
        json_object = kind == "jsonData" and message.jsonData.HasField("struct_value")
        codec.encode_reply(kind, response.outputs, reply, json_object=json_object)
        return reply, response.outputs

    async def rest_predictions(self, request: web.Request, call: Call) -> web.Response:
        """``POST /api/v1.0/predictions``: JSON SeldonMessage in, JSON SeldonMessage out."""
        body = await read_body(request, call)
        with call.parsing("the request body"):
            document = codec.document_from_body(body)
            message = codec.message_from_json(document)
        reply, outputs = await self._answer(message, call)
        # Python's json, as Seldon's wrapper (Flask's jsonify): NaN and Infinity stay bare.
        text = json.dumps(codec.rest_reply(reply, outputs, document), separators=(",", ":"))
        return web.Response(text=text, content_type="application/json")


def _no_model_named(served: Sequence[str]) -> Exception:
    if not served:
        return ModelNotFound("no models are served here")
    return InvalidInput(
        f"this server serves several models ({', '.join(served)}); name one with "
        "meta.tags.model or the gRPC metadata key / HTTP header `model`"
    )


def status_trailers(error: BaseException, message: str) -> list[tuple[str, bytes]]:
    """Seldon's ``Status`` for a failed gRPC call, in the trailing metadata key
    ``seldon-status-bin`` (code = HTTP status, info = the call's details, reason, FAILURE)."""
    status = codec.status_message(http_status(error), message, failure_reason(error)).status
    return [(STATUS_TRAILER, status.SerializeToString())]


def rest_error_body(error: BaseException, message: str, status: int) -> web.Response:
    """A failure as Seldon's microservices answer one: ``{"status": {...}}``, the flag as the
    number the wrapper writes (``"status": 1``)."""
    failure = codec.status_message(status, message, failure_reason(error))
    return web.Response(
        status=status,
        text=json_format.MessageToJson(failure, indent=None, use_integers_for_enums=True),
        content_type="application/json",
    )


class SeldonProtocol(Protocol):
    """Seldon Core's prediction protocol (and the seed's ``PytorchPredict`` and
    ``CaffePredict``) for any model."""

    name = "seldon"
    grpc_services = (MODEL_SERVICE, SELDON_SERVICE, SEED_SERVICE)

    def grpc_handlers(self, runtime: RuntimeView) -> Sequence[grpc.GenericRpcHandler]:
        service = SeldonService(runtime)
        methods: dict[str, dict[str, Any]] = {}
        for path in PREDICT_PATHS:
            _, service_name, method = path.split("/")
            methods.setdefault(service_name, {})[method] = (service.predict, pb.SeldonMessage)
        return [service.calls.grpc_service(name, table) for name, table in methods.items()]

    def http_routes(self, runtime: RuntimeView) -> Sequence[web.RouteDef]:
        service = SeldonService(runtime)
        label = f"POST {REST_PATH}"
        handler = service.calls.http_handler(label, service.rest_predictions, rest_error_body)
        return [web.post(REST_PATH, handler)]

    def routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        return {path: routing.seldon_routing_key for path in PREDICT_PATHS}

    def upstream_paths(self) -> Mapping[str, str]:
        """The seed's ``PytorchPredict`` and ``CaffePredict`` go upstream as Seldon's
        ``Model/Predict``, as the seed's gateway sent them."""
        return {f"/{SEED_SERVICE}/{method}": f"/{MODEL_SERVICE}/Predict" for method in SEED_METHODS}

    def rest_routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        return {REST_PATH: routing.seldon_rest_routing_key}

    def reflection_files(self) -> Sequence[descriptor_pb2.FileDescriptorProto]:
        """Our file renamed to ``seldon.protos`` (with the well-known files it imports)."""
        files = []
        for module in (any_pb2, struct_pb2):
            proto = descriptor_pb2.FileDescriptorProto()
            module.DESCRIPTOR.CopyToProto(proto)
            files.append(proto)
        files.append(standard_file())
        return files

    def bench_request(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        transport: BenchTransport,
        *,
        version: str = "",
        **options: str,
    ) -> BenchRequest:
        """A one-tensor SeldonMessage over gRPC or REST (see :mod:`dl_inference_seldon.bench`)."""
        from dl_inference_seldon.bench import bench_request

        return bench_request(model, inputs, transport, version=version, **options)

    def describe(self) -> dict[str, Any]:
        return {"grpc": list(PREDICT_PATHS), "http": [f"POST {REST_PATH}"]}


def standard_file() -> descriptor_pb2.FileDescriptorProto:
    """``seldon.proto`` as clients know it: package ``seldon.protos``, same fields."""
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    rename_proto_types(proto, {f".{proto.package}": f".{STANDARD_PACKAGE}"})
    proto.name = "seldon/protos/prediction.proto"
    proto.package = STANDARD_PACKAGE
    return proto
