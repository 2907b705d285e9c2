"""Open Inference Protocol (KServe V2): gRPC and REST, with Triton's binary-data extension."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from dl_inference.spi.protocol import Protocol, RoutingKeyReader
from dl_inference.spi.wire import read_string_field

if TYPE_CHECKING:
    import grpc
    from aiohttp import web
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    from dl_inference.spi.call_path import RuntimeView

SERVICE = "inference.GRPCInferenceService"


def read_model_name(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """Field 1 of ModelInfer/ModelMetadata/ModelReady requests is the model name."""
    return read_string_field(data, 1)


class V2Protocol(Protocol):
    """The kernel's built-in V2 protocol: ``inference.GRPCInferenceService`` and ``/v2`` REST."""

    name = "v2"
    grpc_services = (SERVICE,)

    def grpc_handlers(self, runtime: RuntimeView) -> Sequence[grpc.GenericRpcHandler]:
        from dl_inference.builtin.v2.grpc_service import grpc_handlers

        return grpc_handlers(runtime)

    def http_routes(self, runtime: RuntimeView) -> Sequence[web.RouteDef]:
        from dl_inference.builtin.v2.rest import http_routes

        return http_routes(runtime)

    def reflection_files(self) -> Sequence[FileDescriptorProto]:
        from dl_inference.builtin.v2.reflection import reflection_files

        return reflection_files()

    def routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        return {
            f"/{SERVICE}/{method}": read_model_name
            for method in ("ModelInfer", "ModelMetadata", "ModelReady")
        }

    def describe(self) -> dict[str, object]:
        return {"grpc": list(self.grpc_services), "http": ["/v2"]}
