"""The base class wire-protocol plugins subclass."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import grpc
    from aiohttp import web
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    from dl_inference.runtime import Runtime

RoutingKeyReader = Callable[[bytes, Mapping[str, str]], "str | None"]
"""Reads the model name from a request's serialized bytes and metadata, without decoding tensors."""


class Protocol:
    """A wire protocol: gRPC handlers and/or HTTP routes that answer over the :class:`Runtime`.

    Decode the wire format into :class:`~dl_inference.InferRequest`, call
    ``await runtime.infer(request, ctx)``, encode the :class:`~dl_inference.InferResponse`.
    Map :class:`~dl_inference.DlInferenceError` subclasses with :mod:`dl_inference.status`.
    """

    name: ClassVar[str] = ""
    grpc_services: ClassVar[tuple[str, ...]] = ()
    """Full gRPC service names served (health and reflection list them)."""

    def grpc_handlers(self, runtime: Runtime) -> Sequence[grpc.GenericRpcHandler]:
        """gRPC handlers bound to the protocol's standard method paths."""
        return ()

    def http_routes(self, runtime: Runtime) -> Sequence[web.RouteDef]:
        """aiohttp route definitions for the protocol's REST API."""
        return ()

    def reflection_files(self) -> Sequence[FileDescriptorProto]:
        """File descriptors under the protocol's standard package names, for server reflection."""
        return ()

    def routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        """gRPC method path -> reader of the model name, for the gateway's routing."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What ``dl-inference plugins`` shows for this protocol."""
        return {"grpc": list(self.grpc_services)}
