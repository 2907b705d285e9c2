"""The ``inference.GRPCInferenceService`` servicer, bound with grpc.aio generic handlers.

ModelInfer and ModelStreamInfer take and return serialized bytes: the raw tensor fields
are cut out of (and appended to) the message around the protobuf runtime, so tensor data
is viewed in place on the way in and copied once on the way out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.errors import DlInferenceError, InvalidInput
from dl_inference.protocols.v2.codec import (
    decode_infer_request,
    encode_infer_response,
    serialize_with_raw,
)
from dl_inference.runtime import Runtime
from dl_inference.status import grpc_code, public_message
from dl_inference.types import RequestContext
from dl_inference.wire import WireError, len_field_header, split_len_field

SERVICE = "inference.GRPCInferenceService"
PROTOCOL = "v2"

# Field numbers in ModelInferRequest / ModelInferResponse / ModelStreamInferResponse.
_RAW_INPUT_CONTENTS = 7
_RAW_OUTPUT_CONTENTS = 6
_STREAM_ERROR_MESSAGE = 1
_STREAM_INFER_RESPONSE = 2


def request_metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """Invocation metadata with lower-cased keys (binary ``-bin`` entries left out)."""
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        # `-bin` values are bytes; RequestContext.metadata promises strings.
        if isinstance(value, str):
            metadata[key.lower()] = value
    return metadata


def request_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant, or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class V2GrpcServicer:
    """Answers the V2 gRPC methods over a :class:`~dl_inference.Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def server_live(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.runtime.live())

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.runtime.ready())

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        # As Triton does: an unknown model is simply not ready (no error status).
        return pb.ModelReadyResponse(ready=self.runtime.model_ready(request.name, request.version))

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self.runtime.server_name,
            version=self.runtime.server_version,
            extensions=self.runtime.extensions(),
        )

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            meta = self.runtime.model_metadata(request.name, request.version)
        except Exception as exc:
            await _abort(context, exc)
        reply = pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform
        )
        for specs, target in ((meta.inputs, reply.inputs), (meta.outputs, reply.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return reply

    async def model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        ctx = self._context(context)
        request_id = (("x-request-id", ctx.request_id),)
        try:
            reply = await self._infer(data, context, ctx)
        except Exception as exc:
            await _abort(context, exc, request_id)
            raise  # unreachable: abort raises
        context.set_trailing_metadata(request_id)
        return reply

    def _context(self, context: grpc.aio.ServicerContext) -> RequestContext:
        return RequestContext(
            protocol=PROTOCOL,
            method=f"/{SERVICE}/ModelInfer",
            metadata=request_metadata(context),
            peer=context.peer() or "",
        )

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        # As Triton does, a failed request is reported in the stream and the stream goes on.
        async for data in requests:
            try:
                reply = await self._infer(data, context, self._context(context))
            except Exception as exc:
                message = public_message(exc).encode("utf-8")
                yield len_field_header(_STREAM_ERROR_MESSAGE, len(message)) + message
                continue
            yield len_field_header(_STREAM_INFER_RESPONSE, len(reply)) + reply

    async def _infer(
        self, data: bytes, context: grpc.aio.ServicerContext, ctx: RequestContext
    ) -> bytes:
        model_name = ""
        try:
            try:
                rest, raw = split_len_field(data, _RAW_INPUT_CONTENTS)
                message = pb.ModelInferRequest.FromString(rest)
            except (WireError, DecodeError) as exc:
                raise InvalidInput(f"the ModelInferRequest could not be parsed: {exc}") from None
            model_name = message.model_name
            if not model_name:
                raise InvalidInput("model_name is empty; name the model to run")
            request = decode_infer_request(message, raw, deadline=request_deadline(context))
        except Exception as exc:
            self.runtime.report_failure(ctx, exc, model_name)
            raise
        response = await self.runtime.infer(request, ctx)
        reply, outputs = encode_infer_response(response)
        return serialize_with_raw(reply.SerializeToString(), _RAW_OUTPUT_CONTENTS, outputs)


async def _abort(
    context: grpc.aio.ServicerContext,
    exc: BaseException,
    trailing: tuple[tuple[str, str], ...] = (),
) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    plugin = "" if isinstance(exc, DlInferenceError) else "dl_inference.protocols.v2"
    await context.abort(grpc_code(exc), public_message(exc, plugin), trailing)


SEED_SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"


def grpc_handlers(runtime: Runtime) -> list[grpc.GenericRpcHandler]:
    """One generic handler binding every V2 method path to a :class:`V2GrpcServicer`."""
    servicer = V2GrpcServicer(runtime)

    def unary(
        method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], request_type: Any
    ) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=request_type.FromString,
            response_serializer=lambda reply: reply.SerializeToString(),
        )

    methods = {
        "ServerLive": unary(servicer.server_live, pb.ServerLiveRequest),
        "ServerReady": unary(servicer.server_ready, pb.ServerReadyRequest),
        "ModelReady": unary(servicer.model_ready, pb.ModelReadyRequest),
        "ServerMetadata": unary(servicer.server_metadata, pb.ServerMetadataRequest),
        "ModelMetadata": unary(servicer.model_metadata, pb.ModelMetadataRequest),
        # Bytes in, bytes out: the codec handles (de)serialization around raw contents.
        "ModelInfer": grpc.unary_unary_rpc_method_handler(servicer.model_infer),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(servicer.model_stream_infer),
    }
    # The seed's unified service took Triton (V2) requests on TisPredict: same bytes.
    seed = {"TisPredict": grpc.unary_unary_rpc_method_handler(servicer.model_infer)}
    return [
        grpc.method_handlers_generic_handler(SERVICE, methods),
        grpc.method_handlers_generic_handler(SEED_SERVICE, seed),
    ]
