"""The one table from dl-inference errors to gRPC status codes and HTTP statuses.

Protocol layers use :func:`grpc_code` / :func:`http_status`; an error that is not a
:class:`~dl_inference.DlInferenceError` is INTERNAL / 500 with a reference id whose
details go to the log, except a cancelled request: CANCELLED / 499.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import structlog

from dl_inference.spi import errors

log = structlog.get_logger("dl_inference.errors")

_TABLE: list[tuple[type[errors.DlInferenceError], grpc.StatusCode, int]] = [
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (errors.ModelNotReady, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.UnsupportedEncoding, grpc.StatusCode.INVALID_ARGUMENT, 415),
    (errors.StreamingOnly, grpc.StatusCode.UNIMPLEMENTED, 501),
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (errors.BackendError, grpc.StatusCode.INTERNAL, 500),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (errors.PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, 403),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION, 400),
    (errors.PluginError, grpc.StatusCode.FAILED_PRECONDITION, 500),
]


def _lookup(error: BaseException) -> tuple[grpc.StatusCode, int] | None:
    for cls, code, http in _TABLE:
        if isinstance(error, cls):
            return code, http
    if isinstance(error, asyncio.CancelledError):
        # The client went away (or its deadline passed): not a server failure. 499 is
        # the "client closed request" status proxies log.
        return grpc.StatusCode.CANCELLED, 499
    return None


def grpc_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code for ``error`` (INTERNAL when it is not one of ours)."""
    found = _lookup(error)
    return found[0] if found else grpc.StatusCode.INTERNAL


def http_status(error: BaseException) -> int:
    """The HTTP status for ``error`` (500 when it is not one of ours)."""
    found = _lookup(error)
    return found[1] if found else 500


def public_message(error: BaseException, plugin: str = "") -> str:
    """What the client may read: our errors' own message; for others a reference id only."""
    if isinstance(error, errors.DlInferenceError):
        return str(error)
    reference = uuid.uuid4().hex[:12]
    log.error(
        "unexpected error",
        reference=reference,
        plugin=plugin or None,
        error=f"{type(error).__name__}: {error}",
        exc_info=error,
    )
    return f"internal error (reference {reference}; details are in the server log)"
