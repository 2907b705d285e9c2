"""grpc.health.v1 for a server: ``""`` is the whole server, a model's name that model.

- ``""``: SERVING when :meth:`Runtime.ready` (``server.strict_readiness`` decides whether
  one model that failed to load makes the whole server NOT_SERVING).
- a model held here: SERVING when it has a version ready to serve, else NOT_SERVING
  (loading, failed to load, or the server drains).
- a wire protocol's gRPC service (``inference.GRPCInferenceService``, ...): SERVING until
  the server drains.
- any other name: the gRPC status NOT_FOUND, as the health protocol asks for a service the
  server does not know. A gateway's per-model probe relies on the difference.

``Check`` reads the runtime when it is asked, so it is never behind a model that changed
state; ``Watch`` streams what :meth:`ServerHealth.update` last pushed (the server pushes
after start-up, loads, unloads, reloads and repository scans).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from dl_inference.kernel.runtime import Runtime

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class ServerHealth(health.aio.HealthServicer):
    """The grpc.health.v1 servicer of a dl-inference server (see the module docstring).

    ``services`` lists the wire protocols' gRPC service names when asked.
    """

    def __init__(self, runtime: Runtime, services: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self.runtime = runtime
        self.services = services
        self._models: set[str] = set()  # the model names pushed for Watch

    def status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus | None:
        """The status of ``service`` now; None when it names nothing served here."""
        if not service:
            return SERVING if self.runtime.ready() else NOT_SERVING
        if service in set(self.services()):
            return NOT_SERVING if self.runtime.draining else SERVING
        if self.runtime.models.serves(service):
            return SERVING if self.runtime.model_ready(service) else NOT_SERVING
        return None

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no model or service {request.service!r} here; "
                f"models: {', '.join(self.runtime.model_names()) or 'none'}",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def update(self) -> None:
        """Push every status for ``Watch`` streams; a model no longer held turns
        SERVICE_UNKNOWN (what Watch reports for a name it does not know)."""
        models = set(self.runtime.model_names())
        for name in ["", *self.services(), *sorted(models)]:
            status = self.status(name)
            await self.set(name, SERVICE_UNKNOWN if status is None else status)
        for name in self._models - models:
            await self.set(name, SERVICE_UNKNOWN)
        self._models = models
