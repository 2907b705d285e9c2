"""The ``torchserve`` wire protocol: TorchServe's inference REST and gRPC APIs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from dl_inference import Protocol, RoutingKeyReader, wire

if TYPE_CHECKING:
    import grpc
    from aiohttp import web

    from dl_inference import ModelControl, RuntimeView

SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
_MODEL_NAME = 1  # PredictionsRequest.model_name


def model_name(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """The gateway's reader for ``Predictions`` and ``StreamPredictions`` (both take a
    ``PredictionsRequest``): ``model_name`` (the last one, as protobuf parses a repeated
    singular field); ``None`` when absent or unreadable."""
    try:
        found = [
            bytes(memoryview(data)[start:end])
            for number, wire_type, start, end in wire.iter_fields(memoryview(data))
            if number == _MODEL_NAME and wire_type == wire.LEN
        ]
        return found[-1].decode("utf-8") or None if found else None
    except (wire.WireError, UnicodeDecodeError):
        return None


class TorchServeProtocol(Protocol):
    """``/predictions/{model}[/{version}]`` and ``/ping`` over REST, ``Predictions`` and
    ``Ping`` of ``InferenceAPIsService`` over gRPC, and the management API (``/models``)
    on the management listener, as TorchServe 0.12 answers them."""

    name = "torchserve"
    grpc_services = (SERVICE,)

    def grpc_handlers(self, runtime: RuntimeView) -> Sequence[grpc.GenericRpcHandler]:
        from dl_inference_torchserve.grpc_api import grpc_handlers

        return grpc_handlers(runtime)

    def http_routes(self, runtime: RuntimeView) -> Sequence[web.RouteDef]:
        from dl_inference_torchserve.rest import http_routes

        return http_routes(runtime)

    def management_routes(
        self, runtime: RuntimeView, control: ModelControl
    ) -> Sequence[web.RouteDef]:
        from dl_inference_torchserve.management import management_routes

        return management_routes(runtime, control)

    def management_grpc_handlers(
        self, runtime: RuntimeView, control: ModelControl
    ) -> Sequence[grpc.GenericRpcHandler]:
        from dl_inference_torchserve.management import management_grpc_handlers

        return management_grpc_handlers(runtime, control)

    def routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        # The methods that name a model. Ping names none; StreamPredictions2 is not served
        # (UNIMPLEMENTED wherever it lands); the management service is never routed.
        return {
            f"/{SERVICE}/Predictions": model_name,
            f"/{SERVICE}/StreamPredictions": model_name,
        }

    def rest_model_paths(self) -> Sequence[str]:
        return ("/predictions/", "/explanations/")
