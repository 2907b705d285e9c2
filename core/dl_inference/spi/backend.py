"""The base classes backend plugins subclass: :class:`Backend` and :class:`BackendSettings`."""

from __future__ import annotations

import abc
import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from dl_inference.spi.types import InferRequest, ModelVersionInfo, TensorSpec

if TYPE_CHECKING:
    from dl_inference.kernel.config.model_config import ModelConfig, TensorConfig
    from dl_inference.kernel.processor import ProcessorAdapter
    from dl_inference.spi.errors import DlInferenceError


class BackendSettings(BaseModel):
    """Backend-specific keys of a model's config; subclass it to add yours.

    Unknown keys are errors, so a typo in config.yaml never passes silently.
    """

    model_config = ConfigDict(extra="forbid")

    device: str = "cpu"


class ModelRunner(Protocol):
    """The server's models as a backend that composes them sees them (``Backend.models``):
    Triton's ensembles run their steps through it, in process.

    Calls go to a model's scheduler as a client's request does (its inputs validated, its
    batch admitted, its statistics counted), without the per-request hooks, authorization,
    metrics or access log of a client's call.
    """

    def versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of ``name`` with its state, oldest first; ModelNotFound if unknown."""
        ...

    def resolve(self, name: str, version: str = "") -> ModelVersionInfo:
        """The version a call would run (``""``: the newest ready one); ModelNotFound /
        ModelNotReady otherwise."""
        ...

    async def infer(
        self, name: str, version: str, inputs: dict[str, np.ndarray], parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """Run ``name`` (``version`` ``""``: the newest ready one) on ``inputs``; every output
        it returns. Must be awaited on the server's event loop."""
        ...


class Backend(abc.ABC):
    """One loaded model version, served by a backend plugin.

    Subclasses set ``name`` (what config.yaml's ``backend:`` names), optionally ``Settings``
    and ``model_files`` (glob patterns that identify their model files for auto-detection),
    and implement :meth:`load` and :meth:`predict`. Both run in a worker thread, never on
    the event loop, so they may block (a ``self_contained`` backend's :meth:`predict` may
    run on the loop's thread for a request alone: see that attribute). Import your
    framework inside :meth:`load`.

    A backend reports what its model takes (:meth:`model_inputs`, :meth:`model_outputs`);
    the kernel decides what clients send and get (:meth:`inputs`, :meth:`outputs`), and
    runs a model's ``processor.py`` for every backend (:mod:`dl_inference.kernel.processor`). A
    backend whose framework has tensors of its own returns a
    :class:`~dl_inference.ProcessorAdapter` from :meth:`processor_adapter` so the hooks
    see those tensors (torch tensors on the model's device).
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[BackendSettings]] = BackendSettings
    model_files: ClassVar[tuple[str, ...]] = ()
    # Triton ``backend`` / ``platform`` names this backend serves: a model folder configured
    # by a Triton config.pbtxt is served by the installed backend that claims its backend or
    # platform (e.g. ``("python",)``, ``("onnxruntime", "onnxruntime_onnx")``).
    triton_platforms: ClassVar[tuple[str, ...]] = ()
    # False: the kernel never merges requests into one predict() call, even with dynamic
    # batching (for models that answer each request on its own: each predict() gets one
    # request, as the client sent it; see takes_request_lists for lists of them).
    merges_requests: ClassVar[bool] = True
    # True: every execution's requests reach predict_requests() as a list, each with its
    # own tensors and parameters, never concatenated; with dynamic batching the kernel
    # gathers up to max_batch_size rows of them (as Triton's python backend does).
    # predict() then serves only processor.py's hooks.
    takes_request_lists: ClassVar[bool] = False
    # True when predict() is a generator (sync or async) yielding one dict of outputs per
    # response: a decoupled model (see dl_inference.kernel.streaming). The kernel also
    # finds a generator predict() itself; a backend that wraps one (the python backend)
    # sets this in load().
    decoupled: bool = False
    # True: predict() only computes on what it is given and never waits for this server (a
    # call back to it, over the network or through ``models``). A request that finds such a
    # model idle, alone, then runs on the event loop's thread while the model's executions
    # stay short (see dl_inference.kernel.batching), with no thread hand-off; a model with
    # processor.py hooks never does. The framework backends set it; the python backend
    # takes it from the user's class (PythonModel.self_contained). A predict() that waits
    # for this server on the loop it blocks would wait forever: leave it False then.
    self_contained: bool = False
    # The server's other models (see ModelRunner), set by the kernel before load(); None
    # outside a server. A backend that composes models (an ensemble) calls them through it,
    # from an ``async def predict``.
    models: ModelRunner | None = None

    def __init__(
        self,
        model_name: str,
        version: str,
        path: Path,
        config: ModelConfig,
        settings: BackendSettings,
    ) -> None:
        self.model_name = model_name
        self.version = version
        self.path = path
        self.config = config
        self.settings = settings
        # The processor.py hooks the kernel runs around this model, set before load().
        self.processor_hooks: frozenset[str] = frozenset()

    @classmethod
    def can_load(cls, path: Path) -> bool:
        """Whether the version folder ``path`` holds files this backend serves."""
        names = [p.name for p in path.iterdir()] if path.is_dir() else []
        return any(fnmatch.fnmatch(n, pattern) for pattern in cls.model_files for n in names)

    @property
    def platform(self) -> str:
        """The ``platform`` string metadata reports (Triton style, e.g. ``pytorch_libtorch``)."""
        return self.name

    def load(self) -> None:  # noqa: B027 - loading is optional for trivial backends
        """Load the model from ``self.path``. Raise to report a failed load."""

    @abc.abstractmethod
    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        """Run the model on named arrays; return named arrays.

        An ``async def predict`` runs on the server's event loop instead of the model's
        threads (it must not block: it awaits, e.g. other models through :attr:`models`);
        its requests are never merged and processor.py does not apply to it.

        With ``max_batch_size > 0`` every input carries the batch as its first dimension.
        ``parameters`` are the request's parameters (protocol-neutral, JSON-like values),
        passed only when ``predict`` takes ``**parameters``; keep ``inputs`` positional-only
        (the ``/``) so that a parameter of any name, ``inputs`` included, reaches you.
        Inputs may be read-only views of the request's bytes: copy before writing to them.
        """

    def predict_requests(
        self, requests: list[InferRequest], /
    ) -> list[dict[str, np.ndarray] | Exception]:
        """Run the model once on several requests (a backend that sets
        ``takes_request_lists``); return one result per request, in order: its outputs, or
        an exception that fails that request alone (the others get their answers).

        Each :class:`~dl_inference.InferRequest` carries its own ``inputs`` (with the batch
        as the first dimension when ``max_batch_size > 0``: the rows of all requests add up
        to at most ``max_batch_size``), ``parameters``, ``id`` (the request id of the
        server's log lines) and ``deadline``. Without dynamic batching the list holds one
        request. Requests of one call have the same input names, dtypes and trailing
        dimensions; their parameters may differ. An exception raised by the call fails
        every request of it, and the kernel runs parts of the list again to set a faulty
        request apart (as for a merged batch). Runs in the model's threads (never ``async``).
        """
        raise NotImplementedError(
            f"the {self.name} backend sets takes_request_lists without predict_requests()"
        )

    def unload(self) -> None:  # noqa: B027 - nothing to release by default
        """Release what :meth:`load` took (GPU memory, sessions)."""

    def warmup_samples(self) -> list[InferRequest]:
        """Warm-up requests the model files carry (TF Serving's
        ``assets.extra/tf_serving_warmup_requests``, for one), read after :meth:`load`.

        The kernel runs each once, after config.yaml's ``warmup:`` samples and before the
        version turns ready, through the model's scheduler and :meth:`predict` with the
        request's ``inputs`` and ``parameters`` (``id``, when set, names it in logs and
        errors). Inputs are not checked against :meth:`inputs`: the backend knows what its
        samples address (a signature, say) and refuses what does not fit. Raise to fail the
        load. The default: none.
        """
        return []

    def triton_config(self) -> dict[str, Any] | None:
        """The model's Triton ``config.pbtxt`` in Triton's JSON form (as
        :func:`dl_inference.read_config_pbtxt` gives it) when that file configures this
        model (its folder has no config.yaml), else ``None``. A backend claiming Triton
        platforms (``triton_platforms``) reads Triton's own rules from it: the
        ``default_model_filename``, the ``platform``, the backend's ``parameters``."""
        # Kernel modules imported here: the types plugins build on import no kernel module.
        from dl_inference.kernel.config.triton_config import read_config_pbtxt
        from dl_inference.kernel.repository import configured_by_config_pbtxt

        folder = self.path.parent
        return read_config_pbtxt(folder) if configured_by_config_pbtxt(folder) else None

    # -- what the model takes (a backend overrides these) ----------------------------------

    def declared_inputs(self) -> list[TensorConfig] | None:
        """config.yaml's ``inputs`` where they describe the model's own tensors.

        ``None`` when absent, or when processor.py's ``preprocess()`` sits in front of the
        model: then they describe what clients send, not what the model takes.
        """
        return None if "preprocess" in self.processor_hooks else _as_model_sees(self.config.inputs)

    def declared_outputs(self) -> list[TensorConfig] | None:
        """config.yaml's ``outputs`` where they describe the model's own tensors (``None``
        when absent, or when processor.py's ``postprocess()`` makes the responses)."""
        return (
            None if "postprocess" in self.processor_hooks else _as_model_sees(self.config.outputs)
        )

    def model_inputs(self) -> list[TensorSpec] | None:
        """What the model takes; ``None`` when unknown. Override it when the model file
        knows (read it in :meth:`load`, return the stored list: it is called per request).
        The default is :meth:`declared_inputs` as specs."""
        return tensor_specs(self.declared_inputs(), self.config.max_batch_size)

    def model_outputs(self) -> list[TensorSpec] | None:
        """What the model returns; ``None`` when unknown (see :meth:`model_inputs`)."""
        return tensor_specs(self.declared_outputs(), self.config.max_batch_size)

    # -- what clients send and get (the kernel's rule: do not override) --------------------

    def inputs(self) -> list[TensorSpec] | None:
        """What requests carry, for metadata and validation; ``None``: unknown (no checks).

        The model's inputs, or config.yaml's ``inputs`` when processor.py's
        ``preprocess()`` turns request data into model inputs.
        """
        if "preprocess" in self.processor_hooks:
            return tensor_specs(self.config.inputs, self.config.max_batch_size)
        return _as_clients_see(self.model_inputs(), self.config.inputs, self.config.max_batch_size)

    def outputs(self) -> list[TensorSpec] | None:
        """What responses carry: the model's outputs, or config.yaml's ``outputs`` when
        processor.py's ``postprocess()`` makes the responses; ``None`` when unknown."""
        if "postprocess" in self.processor_hooks:
            return tensor_specs(self.config.outputs, self.config.max_batch_size)
        return _as_clients_see(
            self.model_outputs(), self.config.outputs, self.config.max_batch_size
        )

    def processor_adapter(self) -> ProcessorAdapter:
        """How processor.py's hooks meet this backend's tensors; called once after
        :meth:`load`. The default hands the hooks numpy arrays and calls :meth:`predict`;
        return a :class:`~dl_inference.ProcessorAdapter` subclass to keep your own tensors."""
        # The adapter is the kernel's request path: imported here, so the types plugins
        # build on never import the kernel at module level.
        from dl_inference.kernel.processor import ProcessorAdapter

        return ProcessorAdapter(self)

    def client_error(self, exc: BaseException) -> DlInferenceError | None:
        """The error a client gets for ``exc``, an exception your framework raised while
        running a request, when it says the request's data does not fit the model (sizes,
        ranks, dtypes, how many inputs); ``None`` (the default): the model failed.

        The kernel asks wherever code it does not own raises: :meth:`predict`, and
        processor.py's ``preprocess()`` and ``run_model()`` (which may call the model itself,
        e.g. a torch module). Return a :class:`~dl_inference.InvalidInput` whose message is
        one short line without server paths or tracebacks (the kernel logs the traceback);
        what returns ``None`` becomes :class:`~dl_inference.BackendError` (INTERNAL / 500)
        naming the ``file:line`` it came from. Called in a worker thread; never raise.
        """
        return None


def tensor_specs(
    tensors: list[TensorConfig] | None, max_batch_size: int
) -> list[TensorSpec] | None:
    """config.yaml's tensors as specs, with the batch dimension (-1) when batching."""
    if tensors is None:
        return None
    batch = (-1,) if max_batch_size > 0 else ()
    return [TensorSpec(t.name, t.datatype, batch + tuple(t.shape), t.optional) for t in tensors]


def _as_model_sees(tensors: list[TensorConfig] | None) -> list[TensorConfig] | None:
    """config's tensors with each ``reshape`` as the shape: what the model itself takes and
    gives (the kernel reshapes between that and what clients send and receive)."""
    if tensors is None:
        return None
    return [
        t if t.reshape is None else t.model_copy(update={"shape": t.reshape, "reshape": None})
        for t in tensors
    ]


def _as_clients_see(
    specs: list[TensorSpec] | None, tensors: list[TensorConfig] | None, max_batch_size: int
) -> list[TensorSpec] | None:
    """The model's own specs as clients see them: config's ``shape`` where it declares a
    ``reshape``, and its ``optional`` flags."""
    if specs is None or not tensors:
        return specs
    declared = {t.name: t for t in tensors}
    batch = (-1,) if max_batch_size > 0 else ()
    seen = []
    for spec in specs:
        tensor = declared.get(spec.name)
        if tensor is not None and (tensor.reshape is not None or tensor.optional):
            shape = batch + tuple(tensor.shape) if tensor.reshape is not None else spec.shape
            spec = TensorSpec(spec.name, spec.datatype, shape, spec.optional or tensor.optional)
        seen.append(spec)
    return seen
