"""The Runtime: what every protocol calls to inspect and run models, with per-request hooks."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import structlog

from dl_inference.kernel.metrics import CallbackCollector, Metrics
from dl_inference.kernel.models import ModelRegistry, ModelVersion
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.statistics import Statistics
from dl_inference.kernel.validation import select_outputs, validate_inputs
from dl_inference.spi.call_path import ModelControl
from dl_inference.spi.errors import (
    DeadlineExceeded,
    InvalidInput,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from dl_inference.spi.statistics import VersionStatistics
from dl_inference.spi.status import grpc_code
from dl_inference.spi.types import (
    ExecutionTiming,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelVersionInfo,
    RequestContext,
    StepExecution,
)

log = structlog.get_logger("dl_inference.access")
# The timing of the request whose model runs now, while it is timed: the steps that a
# composing model's predict (on the event loop, in the request's task or tasks it starts)
# makes through the ModelRunner are added to it.
_RUNNING: contextvars.ContextVar[ExecutionTiming | None] = contextvars.ContextVar(
    "dli_running", default=None
)

SERVER_NAME = "dl-inference"


class Runtime:
    """Models, plugins and server state as seen by wire protocols.

    Protocols decode a request, then ``await runtime.infer(request, ctx)``; metadata and
    readiness come from :meth:`model_metadata`, :meth:`model_ready`, :meth:`ready`.
    """

    def __init__(
        self,
        plugins: PluginHost,
        models: ModelRegistry,
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
        access_log: bool = True,
        strict_readiness: bool = True,
    ) -> None:
        self.plugins = plugins
        self.models = models
        self.max_message_bytes = max_message_bytes
        self.access_log = access_log
        # Whether info lines are written (the server's log level): the access log's lines
        # for answered and cancelled calls are not even built when they are not.
        self.info_logged = True
        self.draining = False
        # server.strict_readiness: see ready().
        self.strict_readiness = strict_readiness
        # True while the server starts: the models it starts with are still loading.
        self.starting = False
        # The management service when management.enabled, else None (see ModelControl).
        self.management: ModelControl | None = None
        self.metrics = Metrics()
        self.statistics = Statistics()
        models.observer = self._observe_execution
        models.runner = _ModelRunner(self)
        self.metrics.add_collector(
            CallbackCollector(
                "dli_model_ready",
                "1 for each loaded model version that is ready to serve, else 0.",
                ["model", "version", "backend"],
                self._model_states,
            )
        )
        # Per-request hooks: None when no plugin implements them (checked once, here).
        self._authorize = plugins.request_hook("dli_authorize")
        self._on_request = plugins.request_hook("dli_on_request")
        self._on_response = plugins.request_hook("dli_on_response")
        # An observer: what its plugins raise is logged, never the client's answer.
        self._on_error = plugins.observer_hook("dli_on_error")
        # Queue and compute times per request, only for plugins that can read them.
        self._timed = self._on_response is not None or self._on_error is not None

    # -- server and model state ------------------------------------------------------------

    @property
    def server_name(self) -> str:
        return SERVER_NAME

    @property
    def server_version(self) -> str:
        from dl_inference import __version__

        return __version__

    def extensions(self) -> list[str]:
        """Open Inference Protocol extensions this server supports."""
        return [
            "binary_tensor_data",
            "model_metadata",
            "model_configuration",
            "statistics",
            "generate",
        ]

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Whether the server is ready, as Triton decides it.

        Never while it starts or drains. With ``strict_readiness`` (the default, Triton's
        ``--strict-readiness=true``) only when every model has a version ready to serve;
        without, whatever failed to load (Triton's ``--strict-readiness=false``: a client
        asks a model's own readiness).
        """
        if self.draining or self.starting:
            return False
        return not self.strict_readiness or self.models.all_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        return not self.draining and self.models.is_ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        return self.models.metadata(name, version)

    def model_names(self) -> list[str]:
        """Names of the models served here, sorted."""
        return self.models.names()

    def model_versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of ``name`` with its state, oldest first; ModelNotFound if unknown."""
        return [_info(v) for v in self.models.versions(name)]

    def resolve_model(self, name: str, version: str = "") -> ModelVersionInfo:
        """The version a request would run (``""`` = newest ready; labels resolve)."""
        return _info(self.models.resolve(name, version))

    def model_statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        """Statistics of every version of ``name`` (``""``: of every model) held here, or of
        one ``version`` (a number). As Triton answers, a model or version not held here is
        ``InvalidInput``, with the list of what is."""
        if not name:
            return [
                self.statistics.snapshot(v.name, v.version)
                for model in self.models.names()
                for v in self.models.versions(model)
            ]
        if not self.models.serves(name):
            raise InvalidInput(
                f"no statistics for model {name!r}: it is not served here; models served: "
                f"{', '.join(self.models.names()) or 'none'}"
            )
        versions = self.models.versions(name)
        if version:
            versions = [v for v in versions if v.version == version]
            if not versions:
                known = ", ".join(v.version for v in self.models.versions(name))
                raise InvalidInput(
                    f"no statistics for model {name!r} version {version!r}: versions served: "
                    f"{known}"
                )
        return [self.statistics.snapshot(v.name, v.version) for v in versions]

    def _observe_execution(
        self,
        model: str,
        version: str,
        rows: int,
        queued: list[float],
        started: float,
        finished: float,
    ) -> None:
        """One execution's timing (in its scheduler's thread): metrics and statistics."""
        self.metrics.observe_execution(
            model, version, rows, started - queued[0], finished - started
        )
        self.statistics.of(model, version).executed(rows, queued, started, finished)

    def _model_states(self) -> list[tuple[list[str], float]]:
        return [
            ([v.name, v.version, v.backend_name], 1.0 if v.ready else 0.0)
            for name in self.models.names()
            for v in self.models.versions(name)
        ]

    # -- inference -------------------------------------------------------------------------

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        """Authorize, run hooks, validate, predict in the model's threads, select outputs."""
        gauge = self._start(request, ctx)
        # Log lines from hooks and models carry the id (bind/reset: no context manager
        # frame on every request).
        tokens = structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
        try:
            response = await self._infer(request, ctx)
        except BaseException as exc:
            self._fail(ctx, ctx.request or request, exc)
            raise
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
            gauge.dec()
        if not ctx.deferred:
            self._finish(ctx, ctx.request or request, None)
        return response

    def _start(self, request: InferRequest, ctx: RequestContext) -> Any:
        """What every call does first: ``ctx`` holds the request, which takes the context's
        id and deadline where it has none, and the model's in-flight gauge counts it (the
        caller decrements the gauge returned when the call ends)."""
        ctx.request = request
        if not request.id:
            request.id = ctx.request_id
        if request.deadline is None:
            request.deadline = ctx.deadline
        gauge = self.metrics.in_flight_of(self.model_label(request.model_name))
        gauge.inc()
        return gauge

    def _admit(
        self, request: InferRequest, ctx: RequestContext, streaming: bool = False
    ) -> tuple[InferRequest, ModelVersion]:
        """Everything before a model runs: authorization, hooks, lookup, validation,
        deadline, admission. Returns the request (as hooks left it) and its model."""
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another instance")
        if not ctx.authorized:
            self.authorize(ctx)
        if self._on_request is not None:
            self._on_request(ctx=ctx)
            request = ctx.request or request
        model = self.models.resolve(request.model_name, request.model_version)
        # Before the inputs, as Triton refuses such a call whatever it carries.
        model.check_call(streaming=streaming)
        validate_inputs(request.model_name, request.inputs, model.inputs())
        _check_requested_outputs(request, model.outputs())
        timeout_ms = model.backend.config.timeout_ms
        if timeout_ms is not None:
            limit = ctx.started + timeout_ms / 1000
            request.deadline = limit if request.deadline is None else min(limit, request.deadline)
        left = request.time_left()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"the deadline of the request to {request.model_name!r} passed")
        model.admit(request.inputs, streaming=streaming)
        return request, model

    async def _infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        request, model = self._admit(request, ctx)
        return await self._run(request, ctx, model)

    async def _run(
        self, request: InferRequest, ctx: RequestContext, model: ModelVersion
    ) -> InferResponse:
        """Run an admitted request in its model, within its deadline; its response."""
        timeout_ms = model.backend.config.timeout_ms
        left = request.time_left()
        running = None
        if self._timed:
            ctx.execution = ExecutionTiming()
            running = _RUNNING.set(ctx.execution)
        work = model.predict(request.inputs, request.parameters, request.deadline, ctx.execution)
        try:
            if timeout_ms is None:
                # A client's own deadline needs no timer here: gRPC cancels the call when it
                # passes, and the batcher drops requests that expired in its queue.
                outputs = await work
            else:
                try:
                    outputs = await asyncio.wait_for(work, left)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"model {request.model_name!r} did not answer within the deadline "
                        f"({(time.monotonic() - ctx.started) * 1000:.0f} ms)"
                    ) from None
        except Exception:
            # The model's scheduler took it: a failure of this version (statistics' "fail").
            self.statistics.of(model.name, model.version).failed(time.monotonic() - ctx.started)
            raise
        finally:
            if running is not None:
                _RUNNING.reset(running)
        return self._respond(ctx, request, model.version, outputs)

    async def infer_stream(
        self, request: InferRequest, ctx: RequestContext
    ) -> AsyncIterator[InferResponse]:
        """:meth:`infer` for streaming methods (V2 ModelStreamInfer, generate_stream).

        A decoupled model (see :mod:`dl_inference.kernel.streaming`) answers with each
        response as it yields it, ``final`` False on each; any other model with its one
        response, ``final`` True. The call counts once (metrics, access log,
        ``dli_on_error``): when the stream ends, fails, or is closed early (the client
        went away: CANCELLED, and the model's generator is closed). ``dli_on_response``
        runs on each response.
        """
        gauge = self._start(request, ctx)
        try:
            tokens = structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
            try:
                request, model = self._admit(request, ctx, streaming=True)
            finally:
                structlog.contextvars.reset_contextvars(**tokens)
            if not model.decoupled:
                yield await self._run(request, ctx, model)
            else:
                async with contextlib.aclosing(
                    model.stream(request.inputs, request.parameters)
                ) as values:
                    async for outputs in values:
                        yield self._respond(ctx, request, model.version, outputs, final=False)
        except GeneratorExit:
            # The consumer closed the stream early: the client went away.
            self._fail(ctx, ctx.request or request, asyncio.CancelledError())
            raise
        except BaseException as exc:
            self._fail(ctx, ctx.request or request, exc)
            raise
        finally:
            gauge.dec()
        if not ctx.deferred:
            self._finish(ctx, ctx.request or request, None)

    def _respond(
        self,
        ctx: RequestContext,
        request: InferRequest,
        version: str,
        outputs: dict[str, np.ndarray],
        final: bool = True,
    ) -> InferResponse:
        """One response of ``request``: its requested outputs, through ``dli_on_response``."""
        response = InferResponse(
            model_name=request.model_name,
            model_version=version,
            id=request.id,
            outputs=select_outputs(request.model_name, outputs, request.outputs),
            final=final,
        )
        ctx.response = response
        if self._on_response is not None:
            self._on_response(ctx=ctx)
            response = ctx.response or response
        return response

    def authorize(self, ctx: RequestContext) -> None:
        """Ask ``dli_authorize`` about ``ctx`` (``ctx.request`` names the model); raise if refused.

        :meth:`infer` calls it before any model lookup. An adapter that must look a model
        up before it can decode a request (to learn its input names) calls it first, with
        ``ctx.request`` holding the model name; ``infer`` then does not ask again.
        """
        if self._authorize is not None:
            _enforce(self._authorize(ctx=ctx))
        ctx.authorized = True

    def report_failure(
        self, ctx: RequestContext, error: BaseException, model_name: str = ""
    ) -> None:
        """Record an inference call that failed outside :meth:`infer` (before it: the body
        could not be decoded; after it: the reply could not be encoded).

        Runs ``dli_on_error``, counts it in the metrics and writes the access-log line, so
        garbage is as visible as any other failure. Hooks always get a ``ctx.request``:
        without a decoded one, a request with no inputs naming ``model_name`` (the model
        the adapter could read, else ``""``). Once per call: a second report is ignored.
        """
        if ctx.request is None:
            ctx.request = InferRequest(model_name=model_name, inputs={})
        self._fail(ctx, ctx.request, error)

    def report_success(self, ctx: RequestContext) -> None:
        """Count a call whose :meth:`infer` succeeded and whose reply is now encoded.

        For contexts with ``deferred`` set (the call path sets it), so a reply that fails
        to encode is counted as the failure it is, not as a success.
        """
        if ctx.request is not None:
            self._finish(ctx, ctx.request, None)

    def model_label(self, name: str) -> str:
        """The ``model`` label of per-request metrics: ``name`` when this server holds that
        model, else ``""``, so names a client invents cannot grow the metrics."""
        return name if self.models.serves(name) else ""

    def _fail(self, ctx: RequestContext, request: InferRequest, error: BaseException) -> None:
        """``dli_on_error`` (its plugins' exceptions are logged, not raised), then count."""
        if ctx.finished:
            return
        try:
            if self._on_error is not None:
                self._on_error(ctx=ctx, error=error)
        finally:
            self._finish(ctx, request, error)

    def _finish(
        self, ctx: RequestContext, request: InferRequest, error: BaseException | None
    ) -> None:
        """Metrics and the access-log line of a call, once however many paths report it."""
        if ctx.finished:
            return
        ctx.finished = True
        latency = time.monotonic() - ctx.started
        status = "OK" if error is None else grpc_code(error).name
        version = ctx.response.model_version if ctx.response else request.model_version
        # Labels only name what this server holds: a version the client made up is "".
        model_label = self.model_label(request.model_name)
        version_label = version if model_label and self.models.serves(model_label, version) else ""
        self.metrics.observe_request(model_label, version_label, ctx.protocol, status, latency)
        if error is None and ctx.response is not None:
            self.statistics.of(request.model_name, version).succeeded(latency)
        if not self.access_log or (
            not self.info_logged and (error is None or status == "CANCELLED")
        ):
            return
        fields: dict[str, Any] = {
            "request_id": ctx.request_id,
            "protocol": ctx.protocol,
            "model": request.model_name,
            "version": version or None,
            "latency_ms": round(latency * 1000, 3),
            "status": status,
        }
        if error is None:
            log.info("request", **fields)
        elif status == "CANCELLED":
            log.info("request cancelled by the client", **fields)
        else:
            log.warning("request failed", error=str(error), **fields)


class _ModelRunner:
    """The runtime's models as composing backends call them (spi ``ModelRunner``): one
    model's call as :meth:`Runtime.infer` makes it (validated, admitted, counted in the
    model's statistics), without a client call's hooks, metrics or access-log line."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def versions(self, name: str) -> list[ModelVersionInfo]:
        return self._runtime.model_versions(name)

    def resolve(self, name: str, version: str = "") -> ModelVersionInfo:
        return self._runtime.resolve_model(name, version)

    async def infer(
        self, name: str, version: str, inputs: dict[str, np.ndarray], parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        runtime = self._runtime
        model = runtime.models.resolve(name, version)
        validate_inputs(name, inputs, model.inputs())
        model.admit(inputs)
        started = time.monotonic()
        counters = runtime.statistics.of(model.name, model.version)
        parent = _RUNNING.get()
        if parent is None:  # the request is not timed
            step, timing, running = None, None, None
        else:  # this call is one of the request's steps
            step = StepExecution(model.name, model.version, started)
            parent.steps.append(step)
            timing = step.timing
            running = _RUNNING.set(timing)  # a step that composes has steps of its own
        try:
            outputs = await model.predict(inputs, parameters, None, timing)
        except Exception as exc:
            counters.failed(time.monotonic() - started)
            if step is not None:
                step.error = exc
            raise
        except asyncio.CancelledError as exc:  # another step failed, or the call ended
            if step is not None:
                step.error = exc
            raise
        finally:
            if step is not None and running is not None:
                step.finished = time.monotonic()
                _RUNNING.reset(running)
        counters.succeeded(time.monotonic() - started)
        return outputs


def _info(model: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        model.name, model.version, model.state.value, model.reason, model.backend
    )


def _enforce(decision: Any) -> None:
    if decision is None or decision.allowed:
        return
    if not decision.authenticated:
        raise Unauthenticated(decision.reason or "credentials are missing or invalid")
    raise PermissionDenied(decision.reason or "not allowed")


def _check_requested_outputs(request: InferRequest, specs: Any) -> None:
    if request.outputs is None or specs is None:
        return
    names = {spec.name for spec in specs}
    for name in request.outputs:
        if name not in names:
            raise InvalidInput(
                f"model {request.model_name!r} has no output named {name!r}; its outputs are: "
                f"{', '.join(sorted(names))}"
            )
