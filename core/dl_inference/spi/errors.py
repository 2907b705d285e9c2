"""The public error hierarchy.

Errors carry no transport codes: each protocol layer maps them to gRPC / HTTP statuses
(see :mod:`dl_inference.spi.status`). Messages say what was wrong and how to fix it.
"""

from __future__ import annotations


class DlInferenceError(Exception):
    """Base class of every error dl-inference raises on purpose."""


class ConfigError(DlInferenceError):
    """The server configuration or a model's config.yaml is invalid."""


class PluginError(DlInferenceError):
    """A plugin failed to load, registered something invalid, or is missing."""


class ModelNotFound(DlInferenceError):
    """The requested model or version is not served here."""


class ModelNotReady(DlInferenceError):
    """The model exists but is not (yet, or any more) ready to serve."""


class InvalidInput(DlInferenceError):
    """The request is malformed: wrong tensor name, datatype, shape, size or encoding."""


class BackendError(DlInferenceError):
    """The model or its backend failed while loading or predicting."""


class Unavailable(DlInferenceError):
    """The service cannot answer now (draining, upstream down); a retry may succeed."""


class DeadlineExceeded(DlInferenceError):
    """The request's deadline passed before it could be answered."""


class ResourceExhausted(DlInferenceError):
    """A limit was hit: queue full, payload too large, too many concurrent requests."""


class Unauthenticated(DlInferenceError):
    """The request carries no valid credentials."""


class PermissionDenied(DlInferenceError):
    """The caller is known but not allowed to do this."""


class PayloadTooLarge(ResourceExhausted):
    """The request body or message is larger than the server accepts (HTTP 413)."""


class StreamingOnly(InvalidInput):
    """A unary call of a decoupled model, which answers streaming calls only (UNIMPLEMENTED,
    HTTP 501, as Triton answers it); an ``InvalidInput``, so handlers of bad input catch it
    too."""


class UnsupportedEncoding(InvalidInput):
    """The request body arrived in a ``Content-Encoding`` the server does not decode (HTTP
    415, INVALID_ARGUMENT); an ``InvalidInput``, so handlers of bad input catch it too."""
