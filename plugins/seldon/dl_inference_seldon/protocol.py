"""The ``seldon`` wire protocol: Seldon Core's ``SeldonMessage`` over gRPC and REST.

gRPC methods (request and reply are both ``SeldonMessage``):

- ``/seldon.protos.Model/Predict`` and ``/seldon.protos.Seldon/Predict`` (Seldon Core);
- ``/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/PytorchPredict`` (the
  seed's unified service, so existing dl_inference clients keep working).

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
like Seldon's microservices do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from google.protobuf import any_pb2, descriptor_pb2, json_format, struct_pb2

from dl_inference import (
    BackendError,
    InferRequest,
    InvalidInput,
    ModelNotFound,
    Protocol,
    RequestContext,
    RoutingKeyReader,
    grpc_code,
    http_status,
    public_message,
    rename_proto_types,
)
from dl_inference_seldon import codec, routing
from dl_inference_seldon._proto import seldon_pb2 as pb

if TYPE_CHECKING:
    from dl_inference import Runtime

MODEL_SERVICE = "seldon.protos.Model"
SELDON_SERVICE = "seldon.protos.Seldon"
SEED_SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"
PREDICT_PATHS = (
    f"/{MODEL_SERVICE}/Predict",
    f"/{SELDON_SERVICE}/Predict",
    f"/{SEED_SERVICE}/PytorchPredict",
)
REST_PATH = "/api/v1.0/predictions"
STATUS_TRAILER = "seldon-status-bin"
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
    """Decodes SeldonMessages, runs them through the runtime and encodes the replies."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def predict(
        self,
        message: pb.SeldonMessage,
        *,
        method: str,
        metadata: Mapping[str, str],
        deadline: float | None = None,
        peer: str = "",
    ) -> pb.SeldonMessage:
        """Answer one Seldon request; raises DlInferenceError subclasses on failure."""
        tags = codec.tags_to_dict(message.meta)
        name = self._model_name(metadata, tags)
        version = routing.tag_text(tags.get("model_version")) or ""
        kind = codec.data_kind(message)
        specs = self.runtime.model_metadata(name, version).inputs or None
        inputs = codec.decode_inputs(message, kind, specs)
        output = tags.get("output")
        request = InferRequest(
            model_name=name,
            model_version=version,
            inputs=inputs,
            id=message.meta.puid or uuid.uuid4().hex,
            parameters={k: v for k, v in tags.items() if k not in routing.CONTROL_TAGS},
            outputs=[output] if isinstance(output, str) and output else None,
            deadline=deadline,
        )
        ctx = RequestContext(protocol="seldon", method=method, metadata=metadata, peer=peer)
        response = await self.runtime.infer(request, ctx)
        reply = pb.SeldonMessage()
        reply.meta.puid = request.id
        for key, value in message.meta.tags.items():
            reply.meta.tags[key].CopyFrom(value)
        json_object = kind == "jsonData" and message.jsonData.HasField("struct_value")
        codec.encode_reply(kind, response.outputs, reply, json_object=json_object)
        return reply

    def _model_name(self, metadata: Mapping[str, str], tags: Mapping[str, Any]) -> str:
        name = routing.model_from(metadata, tags)
        if name:
            return name
        names = self.runtime.model_names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise ModelNotFound("no models are served here")
        raise InvalidInput(
            f"this server serves several models ({', '.join(names)}); name one with "
            "meta.tags.model or the gRPC metadata key / HTTP header `model`"
        )

    # -- gRPC ------------------------------------------------------------------------------

    def grpc_method(self, method: str) -> Any:
        """An aio unary handler for ``method`` (its full path, for logs and hooks)."""

        async def handle(
            message: pb.SeldonMessage, context: grpc.aio.ServicerContext
        ) -> pb.SeldonMessage:
            metadata = {
                key.lower(): value
                for key, value in (context.invocation_metadata() or ())
                if isinstance(value, str)
            }
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            try:
                return await self.predict(
                    message,
                    method=method,
                    metadata=metadata,
                    deadline=deadline,
                    peer=context.peer(),
                )
            except Exception as exc:
                info = public_message(exc, PLUGIN)
                status = codec.status_message(http_status(exc), info, failure_reason(exc))
                context.set_trailing_metadata(
                    ((STATUS_TRAILER, status.status.SerializeToString()),)
                )
                code, details = grpc_code(exc), info
            await context.abort(code, details)
            raise AssertionError("unreachable: abort() raises")

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=pb.SeldonMessage.FromString,
            response_serializer=pb.SeldonMessage.SerializeToString,
        )

    # -- REST ------------------------------------------------------------------------------

    async def rest_predictions(self, request: web.Request) -> web.Response:
        """``POST /api/v1.0/predictions``: JSON SeldonMessage in, JSON SeldonMessage out."""
        metadata = {key.lower(): value for key, value in request.headers.items()}
        try:
            body = await request.read()
            message = pb.SeldonMessage()
            try:
                json_format.Parse(body, message)
            except (json_format.ParseError, UnicodeDecodeError) as exc:
                raise InvalidInput(
                    f"the body is not a JSON SeldonMessage: {exc}; send e.g. "
                    '{"data": {"ndarray": [[1, 2]]}, "meta": {"tags": {"model": "name"}}}'
                ) from None
            reply = await self.predict(
                message, method=f"POST {REST_PATH}", metadata=metadata, peer=request.remote or ""
            )
            return web.Response(
                text=json_format.MessageToJson(reply, indent=None), content_type="application/json"
            )
        except Exception as exc:
            info = public_message(exc, PLUGIN)
            code = http_status(exc)
            failure = codec.status_message(code, info, failure_reason(exc))
            return web.Response(
                status=code,
                text=json_format.MessageToJson(failure, indent=None),
                content_type="application/json",
            )


class SeldonProtocol(Protocol):
    """Seldon Core's prediction protocol (and the seed's ``PytorchPredict``) for any model."""

    name = "seldon"
    grpc_services = (MODEL_SERVICE, SELDON_SERVICE, SEED_SERVICE)

    def grpc_handlers(self, runtime: Runtime) -> Sequence[grpc.GenericRpcHandler]:
        service = SeldonService(runtime)
        handlers = []
        for path in PREDICT_PATHS:
            _, service_name, method = path.split("/")
            handlers.append(
                grpc.method_handlers_generic_handler(
                    service_name, {method: service.grpc_method(path)}
                )
            )
        return handlers

    def http_routes(self, runtime: Runtime) -> Sequence[web.RouteDef]:
        return [web.post(REST_PATH, SeldonService(runtime).rest_predictions)]

    def routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        return {path: routing.seldon_routing_key for path in PREDICT_PATHS}

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
