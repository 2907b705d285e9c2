"""TF Serving's gRPC services (PredictionService, ModelService) and the seed's unified Predict.

Every method is bound to its standard path through the kernel's call path
(:class:`~dl_inference.CallPath`), over our own message classes (same wire format as
``tensorflow_serving.apis``): a body that does not parse is INVALID_ARGUMENT, every failed
inference call is counted once (metrics, access log, ``dli_on_error``) and ``ctx.method``
is the path as called.
"""

from __future__ import annotations

import grpc

from dl_inference import Call, CallPath, RuntimeView
from dl_inference_tfserving._proto import tfs_pb2
from dl_inference_tfserving.protocol import MODEL_SERVICE, PREDICTION_SERVICE, SEED_SERVICE
from dl_inference_tfserving.service import PROTOCOL, TFServing, serialized_examples

PLUGIN = "dl_inference_tfserving"


class TFServingServicer:
    """Answers PredictionService, ModelService and the seed's Predict over a RuntimeView."""

    def __init__(self, runtime: RuntimeView) -> None:
        self.service = TFServing(runtime)

    async def predict(self, request: tfs_pb2.PredictRequest, call: Call) -> tfs_pb2.PredictResponse:
        return await self.service.predict(request, call)

    async def seed_predict(
        self, request: tfs_pb2.PredictRequest, call: Call
    ) -> tfs_pb2.PredictResponse:
        # The seed's clients name the model "<name>-<taskid>".
        return await self.service.predict(request, call, task_suffix=True)

    async def classify(
        self, request: tfs_pb2.ClassificationRequest, call: Call
    ) -> tfs_pb2.ClassificationResponse:
        examples = serialized_examples(request.input)
        target, result = await self.service.classify(request.model_spec, examples, call)
        reply = tfs_pb2.ClassificationResponse(result=result)
        target.model_spec(reply.model_spec)
        return reply

    async def regress(
        self, request: tfs_pb2.RegressionRequest, call: Call
    ) -> tfs_pb2.RegressionResponse:
        examples = serialized_examples(request.input)
        target, result = await self.service.regress(request.model_spec, examples, call)
        reply = tfs_pb2.RegressionResponse(result=result)
        target.model_spec(reply.model_spec)
        return reply

    async def multi_inference(
        self, request: tfs_pb2.MultiInferenceRequest, call: Call
    ) -> tfs_pb2.MultiInferenceResponse:
        return await self.service.multi_inference(request, call)

    async def get_model_metadata(
        self, request: tfs_pb2.GetModelMetadataRequest, call: Call
    ) -> tfs_pb2.GetModelMetadataResponse:
        return self.service.metadata(request)

    async def get_model_status(
        self, request: tfs_pb2.GetModelStatusRequest, call: Call
    ) -> tfs_pb2.GetModelStatusResponse:
        return self.service.status(request.model_spec)

    async def reload_config(
        self, request: tfs_pb2.ReloadConfigRequest, call: Call
    ) -> tfs_pb2.ReloadConfigResponse:
        await self.service.reload_config(request, call)
        return tfs_pb2.ReloadConfigResponse()


# What metrics, the access log and dli_on_error count: calls that run a model.
INFERENCE_METHODS = frozenset({"Predict", "Classify", "Regress", "MultiInference"})


def grpc_handlers(runtime: RuntimeView) -> list[grpc.GenericRpcHandler]:
    """Generic handlers for the three services' standard method paths, on the call path."""
    s = TFServingServicer(runtime)
    calls = CallPath(runtime, PROTOCOL, PLUGIN)
    return [
        calls.grpc_service(
            PREDICTION_SERVICE,
            {
                "Predict": (s.predict, tfs_pb2.PredictRequest),
                "Classify": (s.classify, tfs_pb2.ClassificationRequest),
                "Regress": (s.regress, tfs_pb2.RegressionRequest),
                "MultiInference": (s.multi_inference, tfs_pb2.MultiInferenceRequest),
                "GetModelMetadata": (s.get_model_metadata, tfs_pb2.GetModelMetadataRequest),
            },
            counted=INFERENCE_METHODS,
        ),
        calls.grpc_service(
            MODEL_SERVICE,
            {
                "GetModelStatus": (s.get_model_status, tfs_pb2.GetModelStatusRequest),
                "HandleReloadConfigRequest": (s.reload_config, tfs_pb2.ReloadConfigRequest),
            },
            counted=False,
        ),
        calls.grpc_service(SEED_SERVICE, {"Predict": (s.seed_predict, tfs_pb2.PredictRequest)}),
    ]
