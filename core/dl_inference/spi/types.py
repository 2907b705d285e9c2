"""Framework-neutral request, response and tensor descriptions shared by every protocol."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dl_inference.spi.backend import Backend


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as metadata shows it: V2 datatype, shape (-1 = variable);
    ``optional``: an input a request may leave out (metadata does not show it, as Triton's)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ModelMetadata:
    """What a model exposes: its name, versions, platform (backend) and tensor specs."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class ModelVersionInfo:
    """One version of a served model as protocols may see it (read-only).

    ``state`` is READY, LOADING, UNAVAILABLE or UNLOADING; ``reason`` says why a version
    is not ready; ``backend`` is the loaded :class:`~dl_inference.Backend` instance.
    """

    name: str
    version: str
    state: str
    reason: str
    backend: Backend

    @property
    def ready(self) -> bool:
        return self.state == "READY"

    def inputs(self) -> list[TensorSpec] | None:
        return self.backend.inputs()

    def outputs(self) -> list[TensorSpec] | None:
        return self.backend.outputs()


@dataclass
class InferRequest:
    """One inference call, decoded from any wire protocol.

    ``inputs`` are named numpy arrays (BYTES as object arrays of ``bytes``).
    ``outputs`` lists the requested output names (``None``: all of them).
    ``deadline`` is a ``time.monotonic()`` instant, or ``None`` for no deadline.
    """

    model_name: str
    inputs: dict[str, np.ndarray]
    model_version: str = ""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] | None = None
    deadline: float | None = None

    def time_left(self) -> float | None:
        """Seconds until the deadline (may be negative), or ``None`` without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()


@dataclass
class InferResponse:
    """The answer to an :class:`InferRequest`: named numpy arrays plus echoes of the request."""

    model_name: str
    outputs: dict[str, np.ndarray]
    model_version: str = ""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    # False on the responses of a decoupled model's stream (more may follow; the stream's
    # end is the end of RuntimeView.infer_stream); True on a request's one response.
    final: bool = True


# Request ids need to be unique, not secret: os.urandom (uuid4) is a system call that
# cost ~10 us per request on a VM; this generator was seeded from it once per process.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)  # forked children must not repeat ids


def new_request_id() -> str:
    """32 random hex digits, like ``uuid.uuid4().hex``."""
    return f"{_ids.getrandbits(128):032x}"


@dataclass
class ExecutionTiming:
    """When one request ran in its model, as ``time.monotonic()`` instants.

    Filled in by the model's scheduler when the runtime asks for it (a plugin implements
    ``dli_on_response`` or ``dli_on_error``), and read from ``ctx.execution`` in those
    hooks: ``queued`` (the request entered the model's queue), ``started`` / ``finished``
    (the execution that carried it), ``batch_size`` (that execution's rows: the merged
    batch's first dimension, 1 for a model that does not batch). All 0 until it ran.

    ``steps``: the calls that a composing model (an ensemble) made to other models of the
    server for this request, one :class:`StepExecution` each, in the order they started
    (a step that is itself an ensemble holds its own steps in its ``timing``).
    """

    queued: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    batch_size: int = 0
    steps: list[StepExecution] = field(default_factory=list)

    def record(self, queued: float, started: float, finished: float, batch_size: int) -> None:
        """Set every field at once (the last execution wins when a failed batch is rerun)."""
        self.queued, self.started, self.finished = queued, started, finished
        self.batch_size = batch_size


@dataclass
class StepExecution:
    """One call that a composing model (an ensemble's step) made to another model while it
    ran a request: ``model`` and ``version`` (the version that ran), ``started`` /
    ``finished`` (the call, as ``time.monotonic()`` instants), ``timing`` (the step model's
    own queue and compute times and batch size) and ``error`` (what failed the step, a
    ``CancelledError`` when it was stopped first: another step failed, the call was
    cancelled; None when it succeeded).
    Found in ``ctx.execution.steps``.
    """

    model: str
    version: str
    started: float
    finished: float = 0.0
    timing: ExecutionTiming = field(default_factory=ExecutionTiming)
    error: BaseException | None = field(default=None, repr=False)


class AttemptTrace:
    """One upstream attempt of a gateway call, as a ``ForwardTrace`` watches it.

    ``headers`` are set on (replacing same-named ones in) the metadata / headers sent to
    the node, e.g. a W3C ``traceparent`` naming this attempt. The gateway calls
    :meth:`finish` once, with the attempt's outcome: ``status`` a gRPC code name or an
    HTTP status as text, ``error`` the failure's words ("" on success).
    """

    headers: Mapping[str, str] = {}

    def finish(self, status: str, error: str = "") -> None:
        """The attempt ended; the base class does nothing."""


class ForwardTrace:
    """A gateway call as a plugin watches it (what ``dli_gateway_call`` returns).

    The gateway calls :meth:`attempt` before each upstream attempt (``node`` its address,
    ``attempt`` counting from 1) and :meth:`finish` once when the call ends, with the
    status the client gets (a gRPC code name or an HTTP status as text).
    """

    def attempt(self, node: str, attempt: int) -> AttemptTrace:
        """Watch one upstream attempt; the base class returns one that does nothing."""
        return AttemptTrace()

    def finish(self, status: str, error: str = "") -> None:
        """The call ended; the base class does nothing."""


@dataclass
class RequestContext:
    """Per-request state handed to the per-request hooks.

    ``metadata`` holds gRPC metadata / HTTP headers with lower-cased keys. ``method`` is
    the method as the client called it (the gRPC path, or the REST route's label).
    ``deadline`` is the client's deadline as a ``time.monotonic()`` instant, or None.
    Hooks may read and rewrite ``request`` (in ``dli_on_request``) and ``response`` (in
    ``dli_on_response``), and keep their own data in ``extras``. ``finished`` turns True
    once the call was counted (metrics, access log), so the call path counts it once;
    ``authorized`` once ``dli_authorize`` allowed it. With ``deferred`` (set by the call
    path) a successful ``infer`` is counted only when the adapter has encoded the reply.
    ``execution`` holds the request's queue and compute times once its model ran, when a
    plugin implements ``dli_on_response`` or ``dli_on_error`` (None otherwise).
    """

    protocol: str
    method: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    request: InferRequest | None = None
    response: InferResponse | None = None
    request_id: str = ""
    peer: str = ""
    started: float = field(default_factory=time.monotonic)
    extras: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    finished: bool = field(default=False, repr=False)
    authorized: bool = field(default=False, repr=False)
    deferred: bool = field(default=False, repr=False)
    execution: ExecutionTiming | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.request_id:
            self.request_id = self.metadata.get("x-request-id") or new_request_id()


@dataclass(frozen=True)
class Decision:
    """What ``dli_authorize`` returns: allow, or refuse with a reason.

    ``authenticated=False`` refuses as UNAUTHENTICATED (401), otherwise PERMISSION_DENIED (403).
    """

    allowed: bool
    reason: str = ""
    authenticated: bool = True

    @classmethod
    def allow(cls) -> Decision:
        return cls(True)

    @classmethod
    def deny(cls, reason: str, *, authenticated: bool = True) -> Decision:
        return cls(False, reason, authenticated)
