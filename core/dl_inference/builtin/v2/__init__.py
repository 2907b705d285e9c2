"""Open Inference Protocol (KServe V2): gRPC and REST, with Triton's binary-data extension."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from dl_inference.spi.protocol import (
    BenchRequest,
    BenchTransport,
    Protocol,
    RestVersionRewriter,
    RoutingKeyReader,
    VersionRewriter,
)
from dl_inference.spi.wire import len_field_header, read_string_field

if TYPE_CHECKING:
    import grpc
    import numpy as np
    from aiohttp import web
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    from dl_inference.spi.call_path import RuntimeView

SERVICE = "inference.GRPCInferenceService"


# Requests whose field 1 is the model name (``model_name`` or ``name``).
_NAMED_BY_FIELD_1 = (
    "ModelInfer",
    "ModelStreamInfer",  # read from the stream's first message
    "ModelMetadata",
    "ModelReady",
    "ModelConfig",
    "ModelStatistics",
)
# Repository requests: field 1 is the repository, field 2 the model.
_NAMED_BY_FIELD_2 = ("RepositoryModelLoad", "RepositoryModelUnload")


# Requests naming a model carry its version in field 2 (ModelInferRequest.model_version,
# ModelMetadataRequest.version, ...).
_VERSION_FIELD = 2
REST_MODEL_PATH = "/v2/models/"
# /v2/models/<name>[/versions/<v>][/rest]: the REST form of the same requests.
_REST_VERSIONED = re.compile(r"^(/v2/models/[^/]+)(?:/versions/[^/]+)?(/.*)?$")


def with_version(body: bytes, version: str) -> bytes:
    """A request naming a model (field 1) with ``version`` in field 2: protobuf keeps the
    last occurrence of a scalar field, so the field is appended, the tensors untouched."""
    value = version.encode()
    return body + len_field_header(_VERSION_FIELD, len(value)) + value


def rest_with_version(path: str, version: str) -> str | None:
    """``/v2/models/<name>[/versions/<v>][/...]`` naming ``version``; None for other paths."""
    match = _REST_VERSIONED.match(path)
    if match is None:
        return None
    return f"{match[1]}/versions/{version}{match[2] or ''}"


def read_model_name(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """The model name in field 1 (ModelInfer, ModelMetadata, ModelReady, ...); None when
    the field is absent, empty or unreadable (the call is then served where it arrived)."""
    return read_string_field(data, 1) or None


def read_repository_model_name(data: bytes, metadata: Mapping[str, str]) -> str | None:
    """The model name in field 2 of RepositoryModelLoad / RepositoryModelUnload requests."""
    return read_string_field(data, 2) or None


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
        """Every V2 method that names a model, ``ModelStreamInfer`` (by its first message)
        and the seed's ``TisPredict`` (V2's own ModelInferRequest under the seed's path).

        The repository methods are listed too (served here only on the management
        listener): the gateway forwards them to upstream nodes that serve them on their
        main port, such as Triton.
        """
        from dl_inference.builtin.v2.grpc_service import SEED_SERVICE

        keys: dict[str, RoutingKeyReader] = {
            f"/{SERVICE}/{method}": read_model_name for method in _NAMED_BY_FIELD_1
        }
        keys.update({f"/{SERVICE}/{m}": read_repository_model_name for m in _NAMED_BY_FIELD_2})
        keys[f"/{SEED_SERVICE}/TisPredict"] = read_model_name
        return keys

    def upstream_paths(self) -> Mapping[str, str]:
        """The seed's ``TisPredict`` goes upstream as ``ModelInfer`` (the same bytes), as
        the seed's gateway sent it to Triton."""
        from dl_inference.builtin.v2.grpc_service import SEED_SERVICE

        return {f"/{SEED_SERVICE}/TisPredict": f"/{SERVICE}/ModelInfer"}

    def version_rewriters(self) -> Mapping[str, VersionRewriter]:
        """Every V2 request that names a model in field 1 takes the version in field 2."""
        return {f"/{SERVICE}/{method}": with_version for method in _NAMED_BY_FIELD_1}

    def rest_version_rewriters(self) -> Mapping[str, RestVersionRewriter]:
        """``/v2/models/<name>/...`` takes ``/versions/<v>`` after the name."""
        return {REST_MODEL_PATH: rest_with_version}

    def bench_request(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        transport: BenchTransport,
        *,
        version: str = "",
        **options: str,
    ) -> BenchRequest:
        """ModelInfer with raw tensors (gRPC), or Triton's binary-tensor extension (REST)."""
        from dl_inference.builtin.v2.bench import bench_request

        return bench_request(model, inputs, transport, version=version, **options)

    def describe(self) -> dict[str, object]:
        return {"grpc": list(self.grpc_services), "http": ["/v2"]}
