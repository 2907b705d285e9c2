"""The tracing hooks: a SERVER span per inference call (with queue and compute children),
and, in a gateway, a SERVER span per forwarded call with a CLIENT span per upstream attempt.

Span names and attributes follow OpenTelemetry's semantic conventions where they have one
(``rpc.*``, ``http.*``, ``url.path``, ``server.*``); dl-inference's own are ``dli.*``.
Times come from the kernel's ``time.monotonic()`` instants, turned into wall-clock ones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import dl_inference
from dl_inference import (
    AttemptTrace,
    ExecutionTiming,
    ForwardTrace,
    RequestContext,
    StepExecution,
)
from dl_inference_otel.settings import DLI_HOOKSPEC_VERSION

SPAN_KEY = "otel.span"  # ctx.extras: the call's SERVER span, between the hooks
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent / tracestate
# Read once, so that every span of the process converts instants the same way: reading
# both clocks per span would shift each conversion by the time between the two reads.
_EPOCH_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def wall_ns(monotonic: float | None = None) -> int:
    """A ``time.monotonic()`` instant (default: now) as nanoseconds since the epoch."""
    if monotonic is None:
        return time.monotonic_ns() + _EPOCH_OFFSET_NS
    return int(monotonic * 1e9) + _EPOCH_OFFSET_NS


def call_attributes(protocol: str, method: str) -> tuple[str, dict[str, Any]]:
    """(span name, attributes) of a call: gRPC ``/pkg.Service/Method`` -> ``rpc.*``, an
    HTTP ``VERB /route`` label -> ``http.*`` (``url_path``: the route is a real path)."""
    if method.startswith("/"):
        service, _, name = method[1:].partition("/")
        return method[1:], {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    verb, _, path = method.partition(" ")
    if not path:
        return method, {"dli.protocol": protocol}
    if protocol == "http":  # the gateway: a client's path, names the model (cardinality)
        return verb, {"http.request.method": verb, "url.path": path}
    return method, {"http.request.method": verb, "http.route": path}


def set_status(span: Span, attributes: Mapping[str, Any], status: str, error: str = "") -> None:
    """Record a call's outcome (a gRPC code name or an HTTP status as text) on ``span``."""
    if "rpc.system" in attributes:
        code = getattr(grpc.StatusCode, status, grpc.StatusCode.UNKNOWN)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        failed = code is not grpc.StatusCode.OK
    elif status.isdigit():
        span.set_attribute("http.response.status_code", int(status))
        failed = int(status) >= 400 if span_kind(span) is SpanKind.CLIENT else int(status) >= 500
    else:
        failed = status != "OK"
    if failed:
        span.set_status(Status(StatusCode.ERROR, error or status))


def span_kind(span: Span) -> SpanKind | None:
    return getattr(span, "kind", None)


class Tracing:
    """The plugin while tracing is on (see :func:`dl_inference_otel.build`).

    The tracer provider is made on first use in the serving process, so that a process
    that only imports the plugin (``dl-inference plugins``) starts no export thread.
    """

    DLI_HOOKSPEC_VERSION = DLI_HOOKSPEC_VERSION

    def __init__(self, environ: Mapping[str, str], protocol: str = "http/protobuf") -> None:
        self._environ = environ
        self.protocol = protocol  # grpc or http/protobuf (settings.export_protocol)
        self._tracer: Tracer | None = None
        self._provider: Any = None

    @property
    def tracer(self) -> Tracer:
        if self._tracer is None:
            self._tracer = self._make_tracer()
        return self._tracer

    def _make_tracer(self) -> Tracer:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win; the SDK's default name says less.
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "dl-inference"}))
        # The sampler (OTEL_TRACES_SAMPLER), the exporter's endpoint, headers and timeout
        # (OTEL_EXPORTER_OTLP_*) and the batching (OTEL_BSP_*) are the SDK's to read.
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(self._exporter()))
        return self._provider.get_tracer("dl_inference_otel", dl_inference.__version__)

    def _exporter(self) -> Any:
        """The OTLP span exporter of :attr:`protocol`; each reads its endpoint (a gRPC one:
        ``http://`` for plaintext, ``https://`` for TLS), headers and timeout itself."""
        if self.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        return OTLPSpanExporter()

    # -- lifecycle ---------------------------------------------------------------------------

    @dl_inference.hookimpl
    def dli_server_started(self) -> None:
        _ = self.tracer  # the export thread starts now, not on the first call

    @dl_inference.hookimpl
    def dli_server_stopping(self) -> None:
        if self._provider is not None:
            self._provider.force_flush(5000)

    # -- a worker's inference calls ------------------------------------------------------------

    @dl_inference.hookimpl
    def dli_on_request(self, ctx: RequestContext) -> None:
        ctx.extras[SPAN_KEY] = self._server_span(ctx)

    @dl_inference.hookimpl
    def dli_on_response(self, ctx: RequestContext) -> None:
        span = ctx.extras.pop(SPAN_KEY, None)
        if span is None:
            return
        if ctx.response is not None:
            span.set_attribute("dli.model_version", ctx.response.model_version)
        self._execution(span, ctx)
        grpc_call = ctx.method.startswith("/")
        set_status(span, {"rpc.system": "grpc"} if grpc_call else {}, "OK" if grpc_call else "200")
        span.end(end_time=wall_ns())

    @dl_inference.hookimpl
    def dli_on_error(self, ctx: RequestContext, error: BaseException) -> None:
        span = ctx.extras.pop(SPAN_KEY, None)
        if span is None:  # refused before dli_on_request (authorization, an unreadable body)
            span = self._server_span(ctx)
        self._execution(span, ctx)
        span.set_attribute("error.type", type(error).__name__)
        if ctx.method.startswith("/"):
            code = dl_inference.grpc_code(error)
            set_status(span, {"rpc.system": "grpc"}, code.name, str(error))
        else:
            set_status(span, {}, str(dl_inference.http_status(error)), str(error))
        span.end(end_time=wall_ns())

    def _server_span(self, ctx: RequestContext) -> Span:
        name, attributes = call_attributes(ctx.protocol, ctx.method)
        attributes["dli.protocol"] = ctx.protocol
        attributes["dli.request_id"] = ctx.request_id
        if ctx.request is not None:
            attributes["dli.model"] = ctx.request.model_name
            if ctx.request.model_version:
                attributes["dli.model_version"] = ctx.request.model_version
        return self.tracer.start_span(
            name,
            context=_PROPAGATOR.extract(ctx.metadata),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=wall_ns(ctx.started),
        )

    def _execution(self, span: Span, ctx: RequestContext) -> None:
        """The request's queue wait and compute as children of ``span``, once it ran, and
        one ``step`` span per call its model (an ensemble) made to another model."""
        if ctx.execution is not None:
            self._timing(span, ctx.execution)

    def _timing(self, span: Span, timing: ExecutionTiming) -> None:
        parent = trace.set_span_in_context(span)
        for step in timing.steps:
            self._step(parent, step)
        if not timing.started:
            return
        queue_ms = (timing.started - timing.queued) * 1000
        span.set_attribute("dli.queue_ms", round(queue_ms, 3))
        span.set_attribute("dli.batch_size", timing.batch_size)
        queue = self.tracer.start_span("queue", context=parent, start_time=wall_ns(timing.queued))
        queue.end(end_time=wall_ns(timing.started))
        compute = self.tracer.start_span(
            "compute",
            context=parent,
            attributes={"dli.batch_size": timing.batch_size},
            start_time=wall_ns(timing.started),
        )
        compute.end(end_time=wall_ns(timing.finished))

    def _step(self, parent: Context, step: StepExecution) -> None:
        """A step's span (its own queue, compute and steps as children), under ``parent``."""
        attributes: dict[str, Any] = {"dli.model": step.model, "dli.model_version": step.version}
        if step.timing.batch_size:
            attributes["dli.batch_size"] = step.timing.batch_size
        span = self.tracer.start_span(
            "step", context=parent, attributes=attributes, start_time=wall_ns(step.started)
        )
        if step.error is not None:
            span.set_attribute("error.type", type(step.error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(step.error)))
        self._timing(span, step.timing)
        span.end(end_time=wall_ns(step.finished or None))

    # -- a gateway's forwarded calls -------------------------------------------------------------

    @dl_inference.hookimpl
    def dli_gateway_call(self, ctx: RequestContext) -> ForwardTrace:
        return GatewayCall(self.tracer, ctx)


class GatewayCall(ForwardTrace):
    """A forwarded call: its SERVER span, parent of one CLIENT span per upstream attempt."""

    def __init__(self, tracer: Tracer, ctx: RequestContext) -> None:
        self.tracer = tracer
        self.name, self.attributes = call_attributes(ctx.protocol, ctx.method)
        attributes = dict(self.attributes)
        if ctx.request is not None:
            attributes["dli.model"] = ctx.request.model_name
        self.span = tracer.start_span(
            self.name,
            context=_PROPAGATOR.extract(ctx.metadata),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=wall_ns(ctx.started),
        )
        self.context: Context = trace.set_span_in_context(self.span)

    def attempt(self, node: str, attempt: int) -> AttemptTrace:
        host, _, port = node.rpartition(":")
        attributes: dict[str, Any] = {**self.attributes, "dli.attempt": attempt}
        attributes["server.address"] = host or node
        if port.isdigit():
            attributes["server.port"] = int(port)
        span = self.tracer.start_span(
            self.name,
            context=self.context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=wall_ns(),
        )
        return UpstreamAttempt(span, self.attributes)

    def finish(self, status: str, error: str = "") -> None:
        set_status(self.span, self.attributes, status, error)
        self.span.end(end_time=wall_ns())


class UpstreamAttempt(AttemptTrace):
    """One attempt's CLIENT span; its ``traceparent`` goes to the node."""

    def __init__(self, span: Span, attributes: Mapping[str, Any]) -> None:
        self.span = span
        self.attributes = attributes
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        self.headers = carrier

    def finish(self, status: str, error: str = "") -> None:
        set_status(self.span, self.attributes, status, error)
        self.span.end(end_time=wall_ns())
