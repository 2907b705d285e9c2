"""TF Serving's gRPC services (PredictionService, ModelService) and the seed's unified Predict.

Handlers are bound to the standard method paths with generic handlers, over our own
message classes (same wire format as ``tensorflow_serving.apis``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from dl_inference import DlInferenceError, RequestContext, Runtime, grpc_code, public_message
from dl_inference_tfserving._proto import tfs_pb2
from dl_inference_tfserving.protocol import MODEL_SERVICE, PREDICTION_SERVICE, SEED_SERVICE
from dl_inference_tfserving.service import PROTOCOL, TFServing, serialized_examples

PLUGIN = "dl_inference_tfserving"

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _context(method: str, context: grpc.aio.ServicerContext) -> RequestContext:
    metadata = {
        key.lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }
    return RequestContext(protocol=PROTOCOL, method=method, metadata=metadata, peer=context.peer())


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class TFServingServicer:
    """Answers PredictionService, ModelService and the seed's Predict over a Runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.service = TFServing(runtime)

    async def predict(
        self, request: tfs_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> tfs_pb2.PredictResponse:
        ctx = _context("Predict", context)
        return await self.service.predict(request, ctx, deadline=_deadline(context))

    async def seed_predict(
        self, request: tfs_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> tfs_pb2.PredictResponse:
        ctx = _context("WpaiDLPredictOnlineService.Predict", context)
        return await self.service.predict(
            request, ctx, deadline=_deadline(context), task_suffix=True
        )

    async def classify(
        self, request: tfs_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> tfs_pb2.ClassificationResponse:
        ctx = _context("Classify", context)
        examples = serialized_examples(request.input)
        target, result = await self.service.classify(request.model_spec, examples, ctx)
        reply = tfs_pb2.ClassificationResponse(result=result)
        target.model_spec(reply.model_spec)
        return reply

    async def regress(
        self, request: tfs_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> tfs_pb2.RegressionResponse:
        ctx = _context("Regress", context)
        examples = serialized_examples(request.input)
        target, result = await self.service.regress(request.model_spec, examples, ctx)
        reply = tfs_pb2.RegressionResponse(result=result)
        target.model_spec(reply.model_spec)
        return reply

    async def multi_inference(
        self, request: tfs_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> tfs_pb2.MultiInferenceResponse:
        return await self.service.multi_inference(request, _context("MultiInference", context))

    async def get_model_metadata(
        self, request: tfs_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> tfs_pb2.GetModelMetadataResponse:
        return self.service.metadata(request)

    async def get_model_status(
        self, request: tfs_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> tfs_pb2.GetModelStatusResponse:
        return self.service.status(request.model_spec)

    async def reload_config(
        self, request: tfs_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> tfs_pb2.ReloadConfigResponse:
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        await self.service.reload_config(request, metadata)
        return tfs_pb2.ReloadConfigResponse()


def _guard(method: Handler) -> Handler:
    """Turn errors into gRPC statuses: ours with their message, others with a reference id."""

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            plugin = "" if isinstance(exc, DlInferenceError) else PLUGIN
            await context.abort(grpc_code(exc), public_message(exc, plugin))

    return wrapper


def _unary(method: Handler, request_type: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        _guard(method),
        request_deserializer=request_type.FromString,
        response_serializer=lambda reply: reply.SerializeToString(),
    )


def grpc_handlers(runtime: Runtime) -> list[grpc.GenericRpcHandler]:
    """Generic handlers for the three services' standard method paths."""
    s = TFServingServicer(runtime)
    return [
        grpc.method_handlers_generic_handler(
            PREDICTION_SERVICE,
            {
                "Predict": _unary(s.predict, tfs_pb2.PredictRequest),
                "Classify": _unary(s.classify, tfs_pb2.ClassificationRequest),
                "Regress": _unary(s.regress, tfs_pb2.RegressionRequest),
                "MultiInference": _unary(s.multi_inference, tfs_pb2.MultiInferenceRequest),
                "GetModelMetadata": _unary(s.get_model_metadata, tfs_pb2.GetModelMetadataRequest),
            },
        ),
        grpc.method_handlers_generic_handler(
            MODEL_SERVICE,
            {
                "GetModelStatus": _unary(s.get_model_status, tfs_pb2.GetModelStatusRequest),
                "HandleReloadConfigRequest": _unary(s.reload_config, tfs_pb2.ReloadConfigRequest),
            },
        ),
        grpc.method_handlers_generic_handler(
            SEED_SERVICE, {"Predict": _unary(s.seed_predict, tfs_pb2.PredictRequest)}
        ),
    ]
