"""The ``torchserve`` wire protocol: TorchServe's inference REST API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dl_inference import Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from dl_inference import RuntimeView


class TorchServeProtocol(Protocol):
    """``/predictions/{model}[/{version}]`` and ``/ping`` as TorchServe 0.12 answers them
    (its gRPC ``InferenceAPIsService`` is not served yet)."""

    name = "torchserve"

    def http_routes(self, runtime: RuntimeView) -> Sequence[web.RouteDef]:
        from dl_inference_torchserve.rest import http_routes

        return http_routes(runtime)

    def rest_model_paths(self) -> Sequence[str]:
        return ("/predictions/",)
