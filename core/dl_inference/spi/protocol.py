"""The base class wire-protocol plugins subclass."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from dl_inference.spi.errors import ConfigError

if TYPE_CHECKING:
    import grpc
    import numpy as np
    from aiohttp import web
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    from dl_inference.spi.call_path import ModelControl, RuntimeView

RoutingKeyReader = Callable[[bytes, Mapping[str, str]], "str | None"]
"""Reads the model name from a request's serialized bytes and metadata, without decoding tensors."""

VersionRewriter = Callable[[bytes, str], bytes]
"""Returns a request's serialized bytes naming a model version, without decoding tensors."""
RestVersionRewriter = Callable[[str, str], "str | None"]
"""Returns a REST path naming a model version, or None for a path that names none."""

BenchTransport = Literal["grpc", "http"]
"""How ``dl-inference bench`` reaches the server: ``grpc://`` or ``http(s)://`` URLs."""


@dataclass(frozen=True)
class BenchRequest:
    """One request, built once, that ``dl-inference bench`` sends unchanged many times.

    The bench sends ``body`` as it is and reads only the reply's status, so a protocol
    describes a request with plain bytes and names, and the kernel needs none of its
    message classes. Instances cross to the bench's client processes (they pickle).
    """

    transport: BenchTransport
    path: str
    """gRPC: the full method path (``/package.Service/Method``). HTTP: the path of a POST,
    after the ``--url`` base (``/v1/models/mlp:predict``)."""
    body: bytes
    """The serialized request message (gRPC) or the HTTP body."""
    headers: tuple[tuple[str, str], ...] = ()
    """gRPC metadata (lower-case keys) or HTTP headers (``Content-Type`` included)."""

    @staticmethod
    def check_options(
        protocol: str, options: Mapping[str, str], allowed: Sequence[str] = ()
    ) -> None:
        """Refuse ``--option`` keys ``protocol`` does not take, naming the ones it does."""
        unknown = sorted(set(options) - set(allowed))
        if not unknown:
            return
        takes = (
            f"takes {', '.join(allowed)} (e.g. --option {allowed[0]}=...)"
            if allowed
            else "takes no request options"
        )
        raise ConfigError(f"--option {', '.join(unknown)}: the {protocol} protocol {takes}")


def rename_proto_types(file: FileDescriptorProto, renames: Mapping[str, str]) -> None:
    """Rename the type references in ``file`` in place, by package or by type.

    For :meth:`Protocol.reflection_files`: a plugin compiles the standard messages under a
    package of its own (so they never clash with a client library's in one process), and
    hands reflection clients copies that use the standard names. ``renames`` maps a full
    name (``.ours`` or ``.ours.Type``) to its standard one; a reference takes the longest
    entry that is it or encloses it. Message and enum fields, nested messages and service
    methods are renamed.
    """

    def rename(reference: str) -> str:
        best = ""
        for old in renames:
            if len(old) > len(best) and (reference == old or reference.startswith(old + ".")):
                best = old
        return renames[best] + reference[len(best) :] if best else reference

    def messages(found: Sequence[Any]) -> None:
        for message in found:
            for field in message.field:
                if field.type_name:
                    field.type_name = rename(field.type_name)
            messages(message.nested_type)

    messages(file.message_type)
    for service in file.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)


class Protocol:
    """A wire protocol: gRPC handlers and/or HTTP routes over a :class:`RuntimeView`.

    Bind every method with :class:`~dl_inference.CallPath` (``grpc_service``,
    ``grpc_unary``, ``http_handler``): the kernel then builds the request context, turns
    unreadable bodies into client errors, counts every failure once and maps errors to
    gRPC / HTTP statuses. Inside, decode the body in ``with call.parsing(...)`` into an
    :class:`~dl_inference.InferRequest`, ``await runtime.infer(request, call.ctx)``, encode
    the :class:`~dl_inference.InferResponse`.
    """

    name: ClassVar[str] = ""
    grpc_services: ClassVar[tuple[str, ...]] = ()
    """Full gRPC service names served (health and reflection list them)."""

    def grpc_handlers(self, runtime: RuntimeView) -> Sequence[grpc.GenericRpcHandler]:
        """gRPC handlers bound to the protocol's standard method paths."""
        return ()

    def http_routes(self, runtime: RuntimeView) -> Sequence[web.RouteDef]:
        """aiohttp route definitions for the protocol's REST API."""
        return ()

    def management_routes(
        self, runtime: RuntimeView, control: ModelControl
    ) -> Sequence[web.RouteDef]:
        """aiohttp routes served on the management HTTP listener, at the paths given.

        Called once at start-up when ``management.enabled``, for a protocol with a
        management API of its own (TorchServe's ``/models``). Bind every handler with
        ``control.http_handler(label, handler, error_body)``: the token is then checked
        first, on the kernel's call path, and failures render in the protocol's format;
        a route bound otherwise, or one the kernel's own routes already take, stops the
        server at start-up. ``control`` loads, unloads and annotates models in every
        worker; ``runtime`` reads what is served.
        """
        return ()

    def management_grpc_handlers(
        self, runtime: RuntimeView, control: ModelControl
    ) -> Sequence[grpc.GenericRpcHandler]:
        """gRPC services served on the management gRPC listener (TorchServe's
        ``ManagementAPIsService``), as :meth:`management_routes` for REST: bind each with
        ``control.grpc_service(service, methods)``; one bound otherwise, or a service name
        served already, stops the server at start-up."""
        return ()

    def reflection_files(self) -> Sequence[FileDescriptorProto]:
        """File descriptors under the protocol's standard package names, for server reflection.

        Dependencies come first; :func:`rename_proto_types` turns a plugin's own package
        names into the standard ones.
        """
        return ()

    def routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        """gRPC method path -> reader of the model name, for the gateway's routing."""
        return {}

    def upstream_paths(self) -> Mapping[str, str]:
        """gRPC method path the gateway takes -> the path it forwards the same bytes under.

        For services that live only in the gateway, such as the seed's unified
        ``WpaiDLPredictOnlineService``: the seed's gateway sent ``TisPredict`` upstream as
        V2's ``ModelInfer`` and ``PytorchPredict`` as Seldon's ``Model/Predict``, so real
        Triton, TF Serving and Seldon nodes answer them. Paths not listed go upstream as
        called.
        """
        return {}

    def rest_routing_keys(self) -> Mapping[str, RoutingKeyReader]:
        """REST path of a POST whose path names no model -> reader of the model name.

        The reader gets the body, decoded from its ``Content-Encoding`` (empty when it
        does not decode; the call goes on as it came), and the headers (lower-case names),
        as for gRPC. The gateway forwards the call when the name is routed and serves it
        here otherwise, so a reader returns None for a body it cannot read. Paths that
        name the model need no reader: see :meth:`rest_model_paths`.
        """
        return {}

    def rest_model_paths(self) -> Sequence[str]:
        """REST path prefixes whose next path segment names the model, for the gateway.

        A prefix such as ``"/v1/models/"`` means ``/v1/models/<name>``, followed by
        ``/...``, ``:verb`` or nothing, addresses model ``<name>``: the gateway forwards
        such calls (any method) when ``<name>`` is routed for this protocol. The kernel's
        own V2 ``/v2/models/`` needs no entry.
        """
        return ()

    def version_rewriters(self) -> Mapping[str, VersionRewriter]:
        """gRPC method path -> ``rewrite(body, version)``, for the gateway's ``version:`` groups.

        Keys are the paths calls go upstream under (after :meth:`upstream_paths`). The
        rewriter returns the body naming model version ``version`` (whatever version it
        named), without decoding tensors: protobuf merges the occurrences of a singular
        field, so appending the field after the body is enough (:mod:`dl_inference.wire`).
        It raises ValueError for a version the protocol cannot name; the gateway calls
        each rewriter once with ``b""`` when it builds a route, so such a ``version:`` is
        a config error. Methods not listed go upstream unchanged; a route whose
        ``protocols`` offer no rewriter cannot take ``version:``.
        """
        return {}

    def rest_version_rewriters(self) -> Mapping[str, RestVersionRewriter]:
        """REST model path prefix (as in :meth:`rest_model_paths`) -> ``rewrite(path, version)``.

        The rewriter gets a path under the prefix, without its query, and returns it naming
        model version ``version`` (version 2: ``/v1/models/m:predict`` becomes
        ``/v1/models/m/versions/2:predict``), or None for a path that names no model
        version (it goes upstream unchanged).
        """
        return {}

    def bench_request(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        transport: BenchTransport,
        *,
        version: str = "",
        **options: str,
    ) -> BenchRequest | None:
        """The request ``dl-inference bench --protocol <name>`` sends, or None for none.

        ``inputs`` are named arrays (BYTES as object arrays of ``bytes``); ``version`` is
        ``""`` for the server's choice; ``options`` come from ``bench --option KEY=VALUE``.
        Return None when the protocol has no request over ``transport``. Raise
        :class:`~dl_inference.ConfigError` for inputs, a version or options this protocol
        cannot send, saying what would work (the bench exits 2 with that message).
        Build the body with the protocol's own messages and encoders, as a client would.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """What ``dl-inference plugins`` shows for this protocol."""
        return {"grpc": list(self.grpc_services)}
