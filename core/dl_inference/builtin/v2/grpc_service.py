"""The ``inference.GRPCInferenceService`` servicer, bound with grpc.aio generic handlers.

ModelInfer and ModelStreamInfer take and return serialized bytes: the raw tensor fields
are cut out of (and appended to) the message around the protobuf runtime, so tensor data
is viewed in place on the way in and copied once on the way out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.builtin.v2 import SERVICE
from dl_inference.builtin.v2.codec import (
    FINAL_RESPONSE_PARAMETER,
    decode_infer_request,
    serialize_infer_response,
)
from dl_inference.builtin.v2.model_config import (
    config_document,
    config_message,
    repository_elsewhere,
    statistics_document,
    statistics_message,
)
from dl_inference.kernel.streaming import interleave
from dl_inference.spi.call_path import Call, CallPath, RuntimeView
from dl_inference.spi.errors import InvalidInput, StreamingOnly, Unavailable
from dl_inference.spi.status import public_message
from dl_inference.spi.types import InferRequest
from dl_inference.spi.wire import WireError, len_field_header, split_len_field

PROTOCOL = "v2"

# What Triton 2.51 says to a unary call of a decoupled model (UNIMPLEMENTED).
DECOUPLED_GRPC = "ModelInfer RPC doesn't support models with decoupled transaction policy"
# Field numbers in ModelInferRequest / ModelInferResponse / ModelStreamInferResponse.
_RAW_INPUT_CONTENTS = 7
_STREAM_ERROR_MESSAGE = 1
_STREAM_INFER_RESPONSE = 2
# triton_final_response false: more responses to the same request follow.
_NOT_FINAL_PARAMETER: bytes = pb.ModelInferResponse(
    parameters={"triton_final_response": pb.InferParameter(bool_param=False)}
).SerializeToString()


class V2GrpcServicer:
    """Answers the V2 gRPC methods over the runtime, through the kernel's call path."""

    def __init__(self, runtime: RuntimeView) -> None:
        self.runtime = runtime
        self.calls = CallPath(runtime, PROTOCOL, "dl_inference.builtin.v2")
        # ModelInfer on the call path, callable as ``model_infer(data, context)``.
        self.model_infer = self.calls.grpc_unary(SERVICE, "ModelInfer", self._infer).unary_unary

    async def server_live(self, request: pb.ServerLiveRequest, call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.runtime.live())

    async def server_ready(
        self, request: pb.ServerReadyRequest, call: Call
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.runtime.ready())

    async def model_ready(self, request: pb.ModelReadyRequest, call: Call) -> pb.ModelReadyResponse:
        # As Triton does: an unknown model is simply not ready (no error status).
        return pb.ModelReadyResponse(ready=self.runtime.model_ready(request.name, request.version))

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, call: Call
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self.runtime.server_name,
            version=self.runtime.server_version,
            extensions=self.runtime.extensions(),
        )

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, call: Call
    ) -> pb.ModelMetadataResponse:
        meta = self.runtime.model_metadata(request.name, request.version)
        reply = pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform
        )
        for specs, target in ((meta.inputs, reply.inputs), (meta.outputs, reply.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return reply

    async def model_config(
        self, request: pb.ModelConfigRequest, call: Call
    ) -> pb.ModelConfigResponse:
        info = self.runtime.resolve_model(request.name, request.version)
        return config_message(config_document(info))

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest, call: Call
    ) -> pb.ModelStatisticsResponse:
        stats = self.runtime.model_statistics(request.name, request.version)
        return statistics_message(statistics_document(stats))

    async def repository(self, request: object, call: Call) -> bytes:
        raise Unavailable(repository_elsewhere(self.runtime.management))

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Each request's responses, in order: one for most models; a decoupled model's
        as it yields them. As Triton does, the stream's requests run concurrently (at most
        :data:`~dl_inference.kernel.streaming.STREAM_REQUESTS_IN_FLIGHT` at once), their
        responses interleaved as they come, each carrying its request's id; a failed
        request is reported in the stream and the stream goes on; a client that cancels
        the stream closes every running request's generator (the handler is cancelled)."""
        method = f"/{SERVICE}/ModelStreamInfer"

        def run(data: bytes) -> AsyncIterator[bytes]:
            return self._stream(data, self.calls.grpc_call(method, context))

        async with contextlib.aclosing(interleave(requests, run)) as replies:
            async for reply in replies:
                yield reply

    async def _stream(self, data: bytes, call: Call) -> AsyncIterator[bytes]:
        """One request's ModelStreamInferResponses, each marked ``triton_final_response``
        as Triton marks them: true on a model's one response, false on each of a decoupled
        model's; after those, when the request sets ``triton_enable_empty_final_response``,
        an empty response (the request's id, model name and version) marked true. A failure
        is an ``error_message``; one after a decoupled model's first response is followed
        by that empty response too, as Triton follows a decoupled model's error."""
        message: pb.ModelInferRequest | None = None
        final = False
        sent = 0
        try:
            message, request = self._decode(data, call)
            stream = self.runtime.infer_stream(request, call.ctx)
            async with contextlib.aclosing(stream) as answers:
                async for response in answers:
                    body = serialize_infer_response(response)
                    body += FINAL_RESPONSE_PARAMETER if response.final else _NOT_FINAL_PARAMETER
                    final = response.final
                    sent += 1
                    yield len_field_header(_STREAM_INFER_RESPONSE, len(body)) + body
        except Exception as exc:
            call.fail(exc)
            text = public_message(exc, self.calls.plugin).encode("utf-8")
            yield len_field_header(_STREAM_ERROR_MESSAGE, len(text)) + text
            if not sent:
                return  # refused before the model answered: no final response follows
        else:
            call.succeed()
        assert message is not None
        wanted = message.parameters.get("triton_enable_empty_final_response")
        if not final and wanted is not None and wanted.bool_param:
            empty = pb.ModelInferResponse(
                model_name=message.model_name, model_version=message.model_version, id=message.id
            ).SerializeToString()
            body = empty + FINAL_RESPONSE_PARAMETER
            yield len_field_header(_STREAM_INFER_RESPONSE, len(body)) + body

    async def _infer(self, data: bytes, call: Call) -> bytes:
        _, request = self._decode(data, call)
        try:
            response = await self.runtime.infer(request, call.ctx)
        except StreamingOnly as exc:
            # Triton's words first (UNIMPLEMENTED), so clients that look for them find them.
            raise StreamingOnly(f"{DECOUPLED_GRPC} ({exc})") from None
        return serialize_infer_response(response)

    def _decode(self, data: bytes, call: Call) -> tuple[pb.ModelInferRequest, InferRequest]:
        """The ModelInferRequest (without its raw contents) and the request it carries."""
        with call.parsing("the ModelInferRequest"):
            try:
                rest, raw = split_len_field(data, _RAW_INPUT_CONTENTS)
                message = pb.ModelInferRequest.FromString(rest)
            except (WireError, DecodeError) as exc:
                raise InvalidInput(f"the ModelInferRequest could not be parsed: {exc}") from None
            if not message.model_name:
                raise InvalidInput("model_name is empty; name the model to run")
            try:
                request = decode_infer_request(message, raw, deadline=call.deadline)
            except Exception:
                # The failure is counted under the model the request named (the runtime
                # sets ctx.request itself once decoding succeeds).
                call.ctx.request = InferRequest(model_name=message.model_name, inputs={})
                raise
        return message, request


SEED_SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"


def grpc_handlers(runtime: RuntimeView) -> list[grpc.GenericRpcHandler]:
    """Generic handlers binding every V2 method path (and the seed's TisPredict)."""
    servicer = V2GrpcServicer(runtime)
    calls = servicer.calls
    unary = {
        "ServerLive": (servicer.server_live, pb.ServerLiveRequest),
        "ServerReady": (servicer.server_ready, pb.ServerReadyRequest),
        "ModelReady": (servicer.model_ready, pb.ModelReadyRequest),
        "ServerMetadata": (servicer.server_metadata, pb.ServerMetadataRequest),
        "ModelMetadata": (servicer.model_metadata, pb.ModelMetadataRequest),
        "ModelConfig": (servicer.model_config, pb.ModelConfigRequest),
        "ModelStatistics": (servicer.model_statistics, pb.ModelStatisticsRequest),
        # The repository extension is the management listener's: say so, not UNIMPLEMENTED.
        "RepositoryIndex": (servicer.repository, pb.RepositoryIndexRequest),
        "RepositoryModelLoad": (servicer.repository, pb.RepositoryModelLoadRequest),
        "RepositoryModelUnload": (servicer.repository, pb.RepositoryModelUnloadRequest),
    }
    # Not inference: their failures are answered but not counted as requests.
    methods = {
        name: calls.grpc_unary(SERVICE, name, *pair, counted=False) for name, pair in unary.items()
    }
    # Bytes in, bytes out: the codec handles (de)serialization around raw contents.
    methods["ModelInfer"] = calls.grpc_unary(SERVICE, "ModelInfer", servicer._infer)
    methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(servicer.model_stream_infer)
    # The seed's unified service took Triton (V2) requests on TisPredict: same bytes.
    seed = {"TisPredict": calls.grpc_unary(SEED_SERVICE, "TisPredict", servicer._infer)}
    return [
        grpc.method_handlers_generic_handler(SERVICE, methods),
        grpc.method_handlers_generic_handler(SEED_SERVICE, seed),
    ]
