"""OpenTelemetry tracing for dl-inference: a hook plugin, configured by ``OTEL_*`` variables.

The entry point is :data:`plugin`, decided once when the server imports it: with tracing
on (an OTLP endpoint set, not disabled), a :class:`~dl_inference_otel.hooks.Tracing` that
implements the per-request hooks; otherwise :class:`Off`, which implements none, so the
kernel's per-request path stays as it is without the plugin (see docs/tracing.md).
"""

from __future__ import annotations

import os

from dl_inference_otel.settings import DLI_HOOKSPEC_VERSION, export_protocol, tracing_enabled


class Off:
    """The plugin while tracing is off: registered, implementing no hook."""

    DLI_HOOKSPEC_VERSION = DLI_HOOKSPEC_VERSION

    def __init__(self, reason: str) -> None:
        self.reason = reason


def build(environ: dict[str, str] | os._Environ[str]) -> object:
    """The plugin object for ``environ``: tracing hooks when it turns tracing on, else Off.

    An unsupported ``OTEL_EXPORTER_OTLP_*PROTOCOL`` raises ``ConfigError`` here, so that the
    plugin is reported as failed with that reason instead of exporting nowhere.
    """
    on, reason = tracing_enabled(environ)
    if not on:
        return Off(reason)
    from dl_inference_otel.hooks import Tracing

    return Tracing(environ, export_protocol(environ))


plugin = build(os.environ)

__all__ = ["DLI_HOOKSPEC_VERSION", "Off", "build", "export_protocol", "plugin", "tracing_enabled"]
