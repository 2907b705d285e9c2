"""Whether tracing is on, from the standard ``OTEL_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping

# The hook contract this plugin was built for (dli_gateway_call, RequestContext.execution
# and its steps).
DLI_HOOKSPEC_VERSION = "1.4"

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# The signal's own variable first, then the general one (OTLP exporter specification).
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
PROTOCOLS = ("http/protobuf", "grpc")  # the specification's default first


def tracing_enabled(environ: Mapping[str, str]) -> tuple[bool, str]:
    """(on, why): on only when an OTLP endpoint is set, ``OTEL_SDK_DISABLED`` is not
    ``true`` and ``OTEL_TRACES_EXPORTER`` (default ``otlp``) names ``otlp``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False, "OTEL_SDK_DISABLED=true"
    exporters = {
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    }
    if "otlp" not in exporters:
        return False, f"OTEL_TRACES_EXPORTER={environ.get('OTEL_TRACES_EXPORTER', '')} (not otlp)"
    if not any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES):
        return False, "no OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    return True, ""


def export_protocol(environ: Mapping[str, str]) -> str:
    """The OTLP transport of the spans: ``grpc`` or ``http/protobuf`` (the default), from
    ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``.

    Raises ``dl_inference.ConfigError`` naming the variable for any other value
    (``http/json`` has no exporter in OpenTelemetry's Python SDK).
    """
    for name in PROTOCOL_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            if value.lower() not in PROTOCOLS:
                from dl_inference import ConfigError

                raise ConfigError(f"{name}={value} is not supported: use {' or '.join(PROTOCOLS)}")
            return value.lower()
    return PROTOCOLS[0]
