"""TorchServe's gRPC inference API: ``org.pytorch.serve.grpc.inference.InferenceAPIsService``
``Ping``, ``Predictions`` and ``StreamPredictions`` (``StreamPredictions2``, for TorchServe's
sequence batching, is not bound: UNIMPLEMENTED).

``Predictions``: each ``input`` map entry is one field of the handler's row (bytes, no
content type, so a ``bytearray``; no request headers), as TorchServe 0.12 hands them; the
answer's bytes come back in ``prediction`` (a streaming handler's first answer, as
TorchServe answers it). ``StreamPredictions``: the same request, each of a streaming
handler's answers (``send_intermediate_predict_response``, then the final one) as one
``PredictionResponse``; a failure after some ends the stream with its error status, as
TorchServe's does. Errors carry TorchServe's message and its Java
exception name on a second line; the status codes follow TorchServe where the project's
rule allows (a failed prediction is UNAVAILABLE, as TorchServe answers), but an unknown
model or version is NOT_FOUND where TorchServe answers INTERNAL: a client's mistake is
never INTERNAL here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf import empty_pb2

from dl_inference import (
    BackendError,
    Call,
    CallPath,
    ConfigError,
    DeadlineExceeded,
    DlInferenceError,
    InferRequest,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    PermissionDenied,
    ResourceExhausted,
    RuntimeView,
    Unauthenticated,
    Unavailable,
)
from dl_inference_torchserve._proto import torchserve_pb2 as pb
from dl_inference_torchserve.backend import HandlerFailed
from dl_inference_torchserve.protocol import SERVICE
from dl_inference_torchserve.requests import BODY, FIELDS_BOUNDARY, HEADERS, form_body
from dl_inference_torchserve.rest import PLUGIN, PROTOCOL, TorchServeError, served_version

_JAVA = {
    "ModelNotFoundException": "org.pytorch.serve.archive.model.ModelNotFoundException",
    "ModelVersionNotFoundException": (
        "org.pytorch.serve.archive.model.ModelVersionNotFoundException"
    ),
    "ServiceUnavailableException": "org.pytorch.serve.http.ServiceUnavailableException",
    "InternalServerException": "org.pytorch.serve.http.InternalServerException",
    "DownloadArchiveException": "org.pytorch.serve.archive.DownloadArchiveException",
}


class _NotFound(ModelNotFound):
    pass


class _Unavailable(Unavailable):
    pass


class _Exhausted(ResourceExhausted):
    pass


class _Failed(BackendError):
    pass


class _Invalid(InvalidInput):
    pass


class _Unauthenticated(Unauthenticated):
    pass


class _Denied(PermissionDenied):
    pass


class _Deadline(DeadlineExceeded):
    pass


class _Precondition(ConfigError):
    """A handler's 4xx that TorchServe answers FAILED_PRECONDITION (the kernel's table gives
    that code to ConfigError: no other class of ours carries it)."""


# A handler's HTTP status -> the error class whose gRPC code TorchServe 0.12 answers
# (FAILED_PRECONDITION for the other 4xx, INTERNAL for the other 5xx). 409 (ABORTED), 416
# (OUT_OF_RANGE), 499 (CANCELLED) and 501 (UNIMPLEMENTED) have no class here: the other
# 4xx / 5xx answer.
_BY_STATUS: dict[int, type[DlInferenceError]] = {
    400: _Invalid,
    401: _Unauthenticated,
    403: _Denied,
    404: _NotFound,
    413: _Exhausted,
    429: _Exhausted,
    503: _Unavailable,
    504: _Deadline,
}


def _detail(message: str, kind: str) -> str:
    return f"{message}\n{_JAVA.get(kind, 'org.pytorch.serve.http.' + kind)}"


def grpc_refusal(status: int, message: str, kind: str) -> DlInferenceError:
    """TorchServe 0.12's gRPC answer to what its REST API refuses with HTTP ``status`` and
    the exception ``kind`` (``"BadRequestException"``, ...): ``message`` and the Java
    exception's full name on a second line, as the error of the class whose gRPC code
    TorchServe gives ``status`` (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403
    PERMISSION_DENIED, 404 NOT_FOUND, 413 / 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504
    DEADLINE_EXCEEDED, another 4xx FAILED_PRECONDITION, another 5xx INTERNAL). The one rule
    of the inference service (a handler's status) and the management service."""
    cls = _BY_STATUS.get(status) or (_Precondition if 400 <= status < 500 else _Failed)
    return cls(_detail(message, kind))


def _translated(error: BaseException) -> BaseException:
    """TorchServe's gRPC answer for ``error``: its message and exception name, its code
    (but NOT_FOUND for an unknown model or version, which TorchServe answers INTERNAL)."""
    if isinstance(error, TorchServeError):
        detail = _detail(error.message, error.kind)
        if isinstance(error, ModelNotFound):
            return _NotFound(detail)
        if isinstance(error, ModelNotReady):
            return _Unavailable(detail)
        return _Failed(detail)
    if isinstance(error, HandlerFailed):
        return grpc_refusal(error.status, error.message, "InternalServerException")
    return error


def grpc_handlers(runtime: RuntimeView) -> Sequence[grpc.GenericRpcHandler]:
    calls = CallPath(runtime, PROTOCOL, PLUGIN)

    async def ping(message: empty_pb2.Empty, call: Call) -> pb.TorchServeHealthResponse:
        healthy = "Healthy" if runtime.ready() else "Unhealthy"
        return pb.TorchServeHealthResponse(health=json.dumps({"status": healthy}, indent=2))

    def prepared(message: pb.PredictionsRequest, call: Call) -> InferRequest:
        """The request to run: authorized, its version resolved, its fields a form."""
        call.ctx.request = InferRequest(model_name=message.model_name, inputs={})
        runtime.authorize(call.ctx)
        served = served_version(runtime, message.model_name, message.model_version)
        body, boundary = form_body(dict(message.input))
        meta = {"headers": {}, "id": call.ctx.request_id, FIELDS_BOUNDARY: boundary}
        inputs = {BODY: _one(body), HEADERS: _one(json.dumps(meta).encode())}
        return InferRequest(message.model_name, inputs, model_version=served)

    async def predictions(message: pb.PredictionsRequest, call: Call) -> pb.PredictionResponse:
        first: bytes | None = None
        try:
            stream = runtime.infer_stream(prepared(message, call), call.ctx)
            async with contextlib.aclosing(stream) as answers:
                async for response in answers:
                    if first is None:
                        first = _prediction(response.outputs)
        except (TorchServeError, HandlerFailed) as exc:
            if first is None:
                raise _translated(exc) from None
        # A streaming handler's first answer, as TorchServe 0.12 answers Predictions (what
        # follows runs to its end but is not sent).
        return pb.PredictionResponse(prediction=first or b"")

    stream_path = f"/{SERVICE}/StreamPredictions"

    async def stream_predictions(
        data: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        call = calls.grpc_call(stream_path, context)
        try:
            with call.parsing("the PredictionsRequest"):
                message = pb.PredictionsRequest.FromString(data)
            stream = runtime.infer_stream(prepared(message, call), call.ctx)
            async with contextlib.aclosing(stream) as answers:
                async for response in answers:
                    reply = pb.PredictionResponse(prediction=_prediction(response.outputs))
                    yield reply.SerializeToString()
        except Exception as exc:
            error = _translated(exc) if isinstance(exc, (TorchServeError, HandlerFailed)) else exc
            await calls.grpc_abort(call, context, error)
            return
        call.succeed()
        context.set_trailing_metadata((("x-request-id", call.ctx.request_id),))

    # StreamPredictions2 (TorchServe's sequence batching) is not bound: gRPC answers it
    # UNIMPLEMENTED.
    methods = {
        "Ping": calls.grpc_unary(SERVICE, "Ping", ping, empty_pb2.Empty, counted=False),
        "Predictions": calls.grpc_unary(SERVICE, "Predictions", predictions, pb.PredictionsRequest),
        "StreamPredictions": grpc.unary_stream_rpc_method_handler(stream_predictions),
    }
    return [grpc.method_handlers_generic_handler(SERVICE, methods)]


def _prediction(outputs: dict[str, Any]) -> bytes:
    return bytes(np.asarray(outputs[BODY]).reshape(-1)[0])


def _one(value: bytes) -> np.ndarray:
    array = np.empty(1, dtype=object)
    array[0] = value
    return array
