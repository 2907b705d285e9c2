"""TF Serving's signature notions, for the protocol and for backends that have SignatureDefs.

This module is public: a backend whose models carry SignatureDefs (the ``tensorflow``
backend) implements :class:`SignatureBackend` and reads :func:`current_signature`; the
``tfserving`` protocol owns everything here and imports no backend. Every other backend is
described to TF Serving clients by one synthesized ``serving_default`` predict signature.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from dl_inference_tfserving._proto import tfs_pb2

__all__ = [
    "CLASSIFY_METHOD",
    "DEFAULT_SIGNATURE",
    "PREDICT_METHOD",
    "REGRESS_METHOD",
    "SignatureBackend",
    "SignatureDefMap",
    "TensorInfo",
    "current_signature",
    "select_signature",
    "signature_scope",
]

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# TF Serving's messages as this plugin compiles them (same field numbers, our package), so a
# backend builds the SignatureDefs the protocol reports without touching generated modules.
SignatureDefMap = tfs_pb2.SignatureDefMap
TensorInfo = tfs_pb2.TensorInfo

# The signature a request addresses, announced around runtime.infer() so that a
# SignatureBackend's inputs()/outputs() - which the kernel validates a request against
# before predict() - describe that signature rather than its default one.
_requested: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dl_inference_tfserving_signature", default=None
)


@contextlib.contextmanager
def signature_scope(name: str | None) -> Iterator[None]:
    """Within this block, :func:`current_signature` is ``name`` (``None``: the default)."""
    token = _requested.set(name or None)
    try:
        yield
    finally:
        _requested.reset(token)


def select_signature(name: str | None) -> None:
    """Make :func:`current_signature` ``name`` for the rest of the running task.

    For a per-request hook (``dli_on_request``), which has no block to scope it to; the
    tensorflow plugin selects a request's ``signature_name`` parameter this way, on every
    protocol. gRPC and aiohttp run each call in its own task, so the value ends with the
    call, and a :func:`signature_scope` around the call restores what was there before.
    """
    _requested.set(name or None)


def current_signature() -> str | None:
    """The signature the request being served addresses; ``None`` outside a TF Serving call."""
    return _requested.get()


@runtime_checkable
class SignatureBackend(Protocol):
    """A backend whose models carry TF Serving SignatureDefs (the ``tensorflow`` backend).

    For such a backend the ``tfserving`` protocol reports :meth:`signature_def_map` in
    GetModelMetadata, resolves ``model_spec.signature_name`` against it (an empty one means
    :meth:`default_signature`), passes ``signature_name=<name>`` to ``predict()``, and calls
    the runtime inside :func:`signature_scope`, so that ``inputs()`` / ``outputs()`` can
    describe the addressed signature (read it with :func:`current_signature`). Other
    protocols carry a ``signature_name`` request parameter: a backend that honours it
    selects it for ``inputs()`` with :func:`select_signature` from a ``dli_on_request``
    hook, as the tensorflow plugin does.
    """

    def signature_def_map(self) -> tfs_pb2.SignatureDefMap:
        """The loaded model's SignatureDefs by name."""
        ...

    def default_signature(self) -> str:
        """The signature a request that names none runs."""
        ...
