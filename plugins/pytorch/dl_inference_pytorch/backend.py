"""The ``pytorch`` backend: TorchScript, torch.export, state_dicts with ``model.py`` (TorchServe's
eager pattern) and whole-module pickles (trusted only).

A version folder holds one model file (``model.pt2``, ``model.pt`` or ``model.pth``), or
``model.py`` defining the module's class beside its state_dict (``model.pth``, ``.pt`` or
``.bin``; built with config.yaml's ``model_args`` and loaded with ``load_state_dict``).
A model's ``processor.py`` (the seed's ``preprocess`` / ``run_model`` / ``postprocess``) is
the kernel's, with the rules every backend shares (:class:`dl_inference.ProcessorAdapter`); this
backend's :class:`TorchAdapter` keeps the hooks in torch terms:

- data for the model (the request's arrays, or what ``preprocess`` returned: arrays,
  tensors, dicts/tuples/lists of them) becomes tensors on the model's device; floating
  inputs whose datatype config.yaml does not declare are cast to the model's ``dtype`` (so
  Seldon's float64 reaches a float32 model as float32);
- ``run_model(model, x)`` receives the module itself; without it the model is called as
  ``model(x)`` (``model(*x)`` for a dict or tuple of inputs), or ``model(x, **tags)``
  when the kernel says so (:meth:`~dl_inference.ProcessorAdapter.call_with_tags`); tags
  ``forward()`` cannot take are the client's error;
- results (tensor, array, list, dict of them, tuple of them, bytes, str) become numpy
  arrays named as the kernel names them: config.yaml's outputs, else ``output__0``, ...
- the whole run (hooks included) happens under ``torch.inference_mode()`` (or
  ``no_grad()``) with the model's ``threads``.

BYTES data that reaches the model itself (no ``preprocess`` turned it into tensors) is
the client's error: :class:`dl_inference.InvalidInput`. So is an error torch raises about
the sizes or types of what it was given ("mat1 and mat2 shapes cannot be multiplied"): the
client reads one line (torch's message without its TorchScript traceback or any server
path), the log keeps the whole traceback. Other errors of the model are
:class:`dl_inference.BackendError`, named by torch's message and the model's own line.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import structlog
from pydantic import Field, field_validator

from dl_inference import (
    Backend,
    BackendError,
    BackendSettings,
    ConfigError,
    DlInferenceError,
    InvalidInput,
    ProcessorAdapter,
    TensorSpec,
    count_parameter,
    from_numpy_dtype,
)

if TYPE_CHECKING:
    import torch

    from dl_inference_pytorch._loading import ModelFile

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
log = structlog.get_logger("dl_inference.pytorch")

# What torch says when the data it was given does not fit the model (sizes, ranks, dtypes,
# how many inputs): the request's fault, once the kernel let it through.
# Types by name: TorchScript re-raises as torch.jit.Error, naming the original type.
_INPUT_ERROR_TYPES = frozenset({"RuntimeError", "ValueError", "IndexError", "TypeError"})
_INPUT_ERROR = re.compile(
    "|".join(
        (
            r"shapes cannot be multiplied",
            r"size mismatch",
            r"must match the size of tensor",
            r"sizes of tensors must match",
            r"non-singleton dimension",
            r"is invalid for input of size",
            r"the expanded size of the tensor",
            r"kernel size can't be greater than actual input size",
            r"must have the same dtype",
            r"input type \(.*\) and (weight|bias) type \(.*\) should be the same",
            r"expected scalar type",
            r"not implemented for '",
            r"dimension out of range",
            r"index out of range in self",  # an embedding given an id beyond its table
            r"index -?\d+ is out of bounds for dimension",
            r"\bexpected\b.*\b(got|found|received)\b",
            # forward() given more or fewer inputs than it takes (eager and TorchScript);
            # the same TypeError from a helper the model calls is the model's own bug.
            r"^(\w+\.)?forward\(\) (takes|missing|got|expected|is missing)",
        )
    ),
    re.IGNORECASE,
)
# "class Net(nn.Module):", "class Net(torch.nn.Module, Mixin):" in a model.py.
_DEFINES_MODULE = re.compile(rb"^class\s+\w+\s*\([^)]*\bModule\b", re.MULTILINE)
# An absolute path (a server's file) in a message: never shown to clients.
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[\w.+-]+[/\\])+[\w.+-]*")
# A message's part for clients is one line of at most this many characters.
_MESSAGE_CHARS = 240


class PyTorchSettings(BackendSettings):
    """The ``pytorch`` backend's keys in a model's config.yaml."""

    device: str = "cpu"
    """``cpu``, ``cuda`` (the current GPU) or ``cuda:N``."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Parameters and undeclared floating inputs are converted to this type."""
    threads: int | None = Field(default=None, ge=1)
    """Intra-op CPU threads for this model's requests (``None``: torch's default)."""
    inference_mode: bool = True
    """Run under ``torch.inference_mode()`` (else ``torch.no_grad()``)."""
    trust_pickle: bool = False
    """Allow a pickled whole module (``model.pth``): unpickling runs code from the file."""
    model_file: str | None = None
    """The file to serve when the folder holds several (default: the one .pt2/.pt/.pth)."""
    model_class: str | None = None
    """For a state_dict: the ``torch.nn.Module`` subclass of ``model.py`` to build (needed
    when ``model.py`` defines several)."""
    model_args: dict[str, Any] = Field(default_factory=dict)
    """For a state_dict: keyword arguments of that class's constructor."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}; use cpu, cuda or cuda:N")
        return value


class PyTorchBackend(Backend):
    """Serves one PyTorch model version; ``processor.py`` hooks see torch tensors."""

    name = "pytorch"
    Settings = PyTorchSettings
    # the module only computes: a request alone may run on the event loop (Backend docs).
    self_contained = True
    model_files = ("*.pt2", "*.pt", "*.pth")
    # Triton's libtorch backend: a config.pbtxt naming it (or the platform) is served here
    # with Triton's rules (<version>/model.pt, tensors named as TritonIO describes).
    triton_platforms = ("pytorch", "pytorch_libtorch")
    settings: PyTorchSettings
    file: ModelFile  # what load() served, as it turned out to be (a .pth may be a state_dict)

    @classmethod
    def can_load(cls, path: Path) -> bool:
        """A .pt2 / .pt / .pth file, or a ``model.py`` defining a ``Module`` subclass
        beside a state_dict saved as .bin (a ``.bin`` is not torch's alone: a python
        model's own data, ONNX weights)."""
        if super().can_load(path):
            return True
        source = path / "model.py"
        if not source.is_file() or not any(path.glob("*.bin")):
            return False
        try:
            return _DEFINES_MODULE.search(source.read_bytes()) is not None
        except OSError:
            return False

    def load(self) -> None:
        import torch

        from dl_inference_pytorch import _loading

        self._torch = torch
        triton = self.triton_config()
        self._triton: TritonIO | None = None
        self._platform = "pytorch" if triton is None else "pytorch_libtorch"
        if triton is not None:
            update = triton_parameters(self.config.parameters)
            self.settings = self.settings.model_copy(update=update)
        self.device = _loading.resolve_device(self._device_setting(torch, triton))
        self.dtype = _loading.DTYPES[self.settings.dtype]
        found = (
            _loading.find_model_file(self.path, self.settings.model_file)
            if triton is None
            else _loading.triton_model_file(self.path, triton)
        )
        model, self.file = _loading.load_module(
            found,
            self.device,
            trust_pickle=self.settings.trust_pickle,
            folder=self.path,
            model_class=self.settings.model_class,
            model_args=self.settings.model_args,
            module_name="dl_inference_pytorch_models."
            + re.sub(r"\W", "_", f"{self.model_name}_v{self.version}"),
        )
        self._inferred: tuple[list[TensorSpec], list[TensorSpec]] | None = None
        if self.file.kind == "export":
            self._inferred = _export_specs(model)
            model = model.module()
        else:
            model = model.to(self.device).eval()
        if self.dtype != torch.float32:
            model = model.to(self.dtype)
        self.model = model
        if triton is not None:
            self._triton = TritonIO.of(model, self.config, self.file.path.name)
        else:
            self._check_declared_inputs()
        self._local = threading.local()
        self._adapter = TorchAdapter(self)

    def _device_setting(self, torch: Any, triton: dict[str, Any] | None) -> str:
        """The ``device`` setting; a Triton model whose ``instance_group`` asks for
        ``KIND_GPU`` runs on the CPU, with a warning, where no GPU is visible (as the onnx
        backend falls back, and the triton_python backend loads): the same repository
        serves on a machine without one (Triton refuses to load it there)."""
        device = self.settings.device
        if triton is not None and device != "cpu" and not torch.cuda.is_available():
            log.warning(
                "instance_group asks for KIND_GPU and no GPU is visible; the model runs on "
                "the CPU (Triton would refuse to load it)",
                model=self.model_name,
                version=self.version,
                device=device,
            )
            return "cpu"
        return device

    def _check_declared_inputs(self) -> None:
        """config.yaml's inputs are passed to ``forward()`` by position, in their order: a
        count ``forward()`` cannot take fails the load, not every request."""
        declared = self.declared_inputs()
        if not declared or "run_model" in self.processor_hooks:
            return
        bounds = _forward_arity(self.model)
        if bounds is None:
            return
        least, most, names = bounds
        if least <= len(declared) and (most is None or len(declared) <= most):
            return
        takes = f"{least}" if least == most else f"{least} to {most if most is not None else 'any'}"
        raise ConfigError(
            f"config.yaml declares {len(declared)} input(s) "
            f"({', '.join(t.name for t in declared)}), passed to forward() in that order, but "
            f"{self.file.path.name}'s forward({', '.join(names)}) takes {takes}; declare "
            "one input per argument of forward()"
        )

    @property
    def platform(self) -> str:
        """``pytorch``; ``pytorch_libtorch`` (Triton's) for a model configured by config.pbtxt."""
        return getattr(self, "_platform", "pytorch")

    def model_inputs(self) -> list[TensorSpec] | None:
        declared = super().model_inputs()
        inferred = getattr(self, "_inferred", None)
        return inferred[0] if declared is None and inferred is not None else declared

    def model_outputs(self) -> list[TensorSpec] | None:
        declared = super().model_outputs()
        inferred = getattr(self, "_inferred", None)
        return inferred[1] if declared is None and inferred is not None else declared

    def processor_adapter(self) -> ProcessorAdapter:
        return self._adapter

    # -- prediction ------------------------------------------------------------------------

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        # The kernel's request path with no hooks: one path with and without processor.py.
        outputs = self._adapter.run(inputs, parameters)
        if self._triton is not None:
            self._triton.check_types(self.model_name, outputs)
        return outputs

    def _cast_floats(self) -> bool:
        # A declared datatype is a contract; only guessed ones are converted.
        return self.declared_inputs() is None and self._inferred is None

    def _run_module(self, x: Any, tags: dict[str, Any] | None = None) -> Any:
        triton = self._triton
        # A dict or tuple of inputs is several positional arguments (Triton's: by name).
        if triton is not None and isinstance(x, dict):
            args = triton.arguments(x)
        elif isinstance(x, dict):
            args = tuple(x.values())
        else:
            args = tuple(x) if isinstance(x, tuple | list) else (x,)
        keywords = tags or {}
        if keywords:
            self._check_keywords(args, keywords)
        try:
            result = self.model(*args, **keywords)
        except Exception as exc:
            raise self._call_error(exc, x) from exc
        return triton.results(self.model_name, result) if triton is not None else result

    def client_error(self, exc: BaseException) -> DlInferenceError | None:
        """InvalidInput when torch refused the data it was given (:func:`is_input_error`),
        in one line without server paths; the kernel asks it for errors raised in
        processor.py's ``preprocess()`` / ``run_model()`` (which may call the module)."""
        return self._input_error(exc, None)

    def _input_error(self, exc: BaseException, x: Any) -> InvalidInput | None:
        """:meth:`client_error`'s rule; the message describes ``x`` when it is known."""
        kind, message = torch_message(exc)
        if not is_input_error(kind, message):
            return None
        given = "" if x is None else f" {_describe(x)}"
        return InvalidInput(f"model {self.model_name!r} rejected the input{given}: {message}")

    def _call_error(self, exc: Exception, x: Any) -> DlInferenceError:
        """InvalidInput when torch refused the data it was given, else BackendError; both
        one short line without server paths (the log keeps the traceback)."""
        error = self._input_error(exc, x)
        if error is not None:
            log.info(
                "model rejected the request's inputs",
                model=self.model_name,
                version=self.version,
                exc_info=exc,
            )
            return error
        kind, message = torch_message(exc)
        log.error("model raised", model=self.model_name, version=self.version, exc_info=exc)
        return BackendError(
            f"model {self.model_name!r} ({self.file.path.name}) raised "
            f"{kind}: {message}{self._where(exc)}"
        )

    def _check_keywords(self, args: tuple[Any, ...], tags: dict[str, Any]) -> None:
        """Request tags the module's ``forward()`` cannot take are the client's error."""
        try:
            signature = inspect.signature(self.model.forward)
        except (TypeError, ValueError):
            return  # unreadable (a compiled forward): the call itself decides
        try:
            signature.bind(*args, **tags)
        except TypeError as exc:
            raise InvalidInput(
                f"model {self.model_name!r} is called as model(x, **tags) (processor.py has no "
                f"run_model() and the request carries more than one tag), but its forward() "
                f"cannot take them: {exc}; send only the tags it takes, or add a run_model()"
            ) from exc

    def _where(self, exc: BaseException) -> str:
        """`` (model.py:LINE)``: the innermost line in the model's own files, if any."""
        folder = str(self.path.resolve())
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if str(Path(frame.filename).resolve()).startswith(folder):
                return f" ({Path(frame.filename).name}:{frame.lineno})"
        return ""

    def _to_torch(self, x: Any, *, cast: bool) -> Any:
        torch = self._torch
        if isinstance(x, np.ndarray) and x.dtype != np.object_:
            if cast and x.dtype.kind == "f" and x.dtype != _numpy_of(self.dtype):
                # One copy: numpy's cast (bfloat16 has no numpy type: torch casts it).
                target = _numpy_of(self.dtype)
                x = x.astype(target) if target is not None else x.copy()
            elif not x.flags.writeable:
                x = x.copy()  # torch.from_numpy needs writable memory (wire buffers are not)
            x = torch.from_numpy(x)
        if isinstance(x, torch.Tensor):
            if cast and x.is_floating_point() and x.dtype != self.dtype:
                x = x.to(self.dtype)
            return x.to(self.device, non_blocking=True)
        if isinstance(x, dict):
            return {k: self._to_torch(v, cast=cast) for k, v in x.items()}
        if isinstance(x, tuple | list):
            return type(x)(self._to_torch(v, cast=cast) for v in x)
        return x

    def _to_numpy(self, value: Any) -> Any:
        if isinstance(value, self._torch.Tensor):
            value = value.detach()
            if value.dtype == self._torch.bfloat16:
                value = value.float()  # numpy has no bfloat16
            return value.cpu().numpy()
        return value

    def unload(self) -> None:
        model = getattr(self, "model", None)
        if model is None:
            return
        self.model = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()


def _refuse_bytes(backend: PyTorchBackend, x: Any) -> None:
    if _holds_bytes(x):
        raise InvalidInput(
            f"model {backend.model_name!r} received BYTES data, which a torch model "
            "cannot take; send numbers, or add a processor.py whose preprocess() turns "
            "the bytes into tensors"
        )


def _holds_bytes(x: Any) -> bool:
    if isinstance(x, bytes | str):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype == np.object_
    if isinstance(x, dict):
        return any(_holds_bytes(v) for v in x.values())
    if isinstance(x, tuple | list):
        return any(_holds_bytes(v) for v in x)
    return False


class TorchAdapter(ProcessorAdapter):
    """The kernel's processor path in torch terms: tensors on the model's device in,
    the module itself for ``run_model``, tensors back to numpy out."""

    backend: PyTorchBackend

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        backend = self.backend
        torch = backend._torch
        threads = backend.settings.threads
        if threads and getattr(backend._local, "threads", None) != threads:
            # With OpenMP the thread count is per calling thread, so set it in each worker.
            torch.set_num_threads(threads)
            backend._local.threads = threads
        with torch.inference_mode() if backend.settings.inference_mode else torch.no_grad():
            yield

    def to_model(self, x: Any) -> Any:
        return self.backend._to_torch(x, cast=self.backend._cast_floats())

    def model(self, parameters: dict[str, Any]) -> Any:
        return self.backend.model

    def call(self, x: Any, parameters: dict[str, Any]) -> Any:
        _refuse_bytes(self.backend, x)
        return self.backend._run_module(x)

    def call_with_tags(self, x: Any, tags: dict[str, Any]) -> Any:
        _refuse_bytes(self.backend, x)
        return self.backend._run_module(x, tags)

    def to_numpy(self, value: Any) -> Any:
        return self.backend._to_numpy(value)


def torch_message(exc: BaseException) -> tuple[str, str]:
    """The error's type name and torch's message in one line, for clients.

    A TorchScript error's message is a traceback naming the server's files; its last line
    is the original error (``builtins.ValueError: ...``), whose type is the one returned.
    Server paths become ``<path>``; the line is cut short.
    """
    kind = type(exc).__name__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return kind, kind
    line = lines[0]
    if any(text.startswith("Traceback of TorchScript") for text in lines):
        line = lines[-1]
        named = re.match(r"^(?:[\w]+\.)*(\w+(?:Error|Exception)):\s*", line)
        if named:
            kind, line = named.group(1), line[named.end() :]
    # TorchScript's argument errors append the compiled signature (qualified class names).
    line = line.split(". Declaration: ", 1)[0]
    line = _PATH.sub("<path>", line)
    return kind, line if len(line) <= _MESSAGE_CHARS else line[: _MESSAGE_CHARS - 3] + "..."


def torch_reason(exc: BaseException) -> str:
    """``Type: message`` in one line, as :func:`torch_message` reads ``exc``."""
    return "{}: {}".format(*torch_message(exc))


def is_input_error(kind: str, message: str) -> bool:
    """Whether torch's error (type name and message, see :func:`torch_message`) is about
    the sizes, types or number of the data it was given. Device mix-ups ("Expected all
    tensors to be on the same device, but found ...") are the model's, never the client's."""
    return (
        kind in _INPUT_ERROR_TYPES
        and _INPUT_ERROR.search(message) is not None
        and "device" not in message.lower()
    )


def _describe(x: Any) -> str:
    """The data the model was given, for a message: ``[1, 7] (float32)``, or named."""

    def one(value: Any) -> str:
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if shape is None:
            return type(value).__name__
        return f"{list(shape)} ({str(dtype).removeprefix('torch.')})"

    if isinstance(x, dict):
        return ", ".join(f"{name} {one(value)}" for name, value in x.items())
    if isinstance(x, tuple | list):
        return ", ".join(one(value) for value in x)
    return one(x)


def _forward_arity(model: Any) -> tuple[int, int | None, list[str]] | None:
    """How many positional arguments ``forward()`` takes (least, most or ``None`` for
    any) and their names; ``None`` when its signature cannot be read."""
    schema = getattr(getattr(model, "forward", None), "schema", None)
    if schema is not None:  # TorchScript: the compiled signature, self first
        arguments = [a for a in schema.arguments[1:] if not a.kwarg_only]
        required = [a for a in arguments if not a.has_default_value()]
        return len(required), len(arguments), [a.name for a in arguments]
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in parameters if p.kind in kinds]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return len(required), None, [p.name for p in positional] + ["*args"]
    return len(required), len(positional), [p.name for p in positional]


def _numpy_of(dtype: torch.dtype) -> np.dtype | None:
    import torch

    return {torch.float32: np.dtype(np.float32), torch.float16: np.dtype(np.float16)}.get(dtype)


def _export_specs(program: Any) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
    """Input and output specs of an exported program (symbolic dimensions become -1);
    ``None`` when some input or output is not a plain tensor (then nothing is checked)."""
    import torch

    def spec(name: str, value: Any) -> TensorSpec | None:
        if not isinstance(value, torch.Tensor):
            return None
        dims = tuple(d if isinstance(d, int) else -1 for d in value.shape)
        dtype = torch.float32 if value.dtype == torch.bfloat16 else value.dtype
        try:
            datatype = from_numpy_dtype(torch.empty(0, dtype=dtype).numpy().dtype)
        except (TypeError, DlInferenceError):
            return None
        return TensorSpec(name, datatype, dims)

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    signature = program.graph_signature
    inputs = [spec(name, placeholders[name].meta.get("val")) for name in signature.user_inputs]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = [getattr(a, "meta", {}).get("val") for a in output_node.args[0]]
    outputs = [
        spec(f"output__{i}", value)
        for i, value in enumerate(values[-len(signature.user_outputs) :] if values else [])
    ]
    if not inputs or any(s is None for s in inputs + outputs):
        return None
    return [s for s in inputs if s], [s for s in outputs if s]


# -- Triton's libtorch rules -----------------------------------------------------------------

# Triton's ``<name>__<index>`` tensor names (INPUT__0, OUTPUT__1): the index after the "__".
_NAMED_INDEX = re.compile(r"^.*?__(\d+)$")


@dataclass(frozen=True)
class TritonIO:
    """How Triton 2.51's libtorch backend (``pytorch_libtorch``) maps config.pbtxt's tensors
    onto a TorchScript ``forward()``, for a model served from a Triton repository.

    Inputs, by the first rule that fits all of them: the names of ``forward()``'s arguments;
    else ``<name>__<index>`` (``INPUT__0`` is the first argument); else config.pbtxt's
    order. A ``forward()`` taking one ``Dict[str, Tensor]`` gets the inputs by their names.
    Outputs: ``<name>__<index>`` picks that item of the returned tuple (or the lone
    tensor), else config.pbtxt's order does; results config.pbtxt does not name are
    dropped, and an output of another datatype than config.pbtxt's fails the request.
    """

    positions: dict[str, int]  # config input name -> forward() argument index
    as_dict: bool  # forward(self, inputs: Dict[str, Tensor])
    outputs: tuple[tuple[str, int], ...]  # config output name -> index in the result
    datatypes: dict[str, str]  # config output name -> V2 datatype

    @classmethod
    def of(cls, model: Any, config: Any, file: str) -> TritonIO:
        """The mapping for ``model`` (a ScriptModule) and config.pbtxt's tensors, or
        ConfigError saying what does not fit, as Triton refuses such a model."""
        if not config.inputs or not config.outputs:
            raise ConfigError(
                "config.pbtxt: a pytorch_libtorch model needs its input [...] and output "
                "[...]: TorchScript does not record its tensors' names, types and shapes "
                "(Triton does not auto-complete them either)"
            )
        inputs = [t.name for t in config.inputs]
        schema = getattr(getattr(model, "forward", None), "schema", None)
        arguments = [a for a in schema.arguments[1:]] if schema is not None else None
        as_dict = (
            arguments is not None
            and len(arguments) == 1
            and str(arguments[0].type).startswith("Dict")
        )
        if as_dict:
            positions = {name: 0 for name in inputs}
        else:
            names = [a.name for a in arguments] if arguments is not None else None
            if names is not None and len(names) != len(inputs):
                raise ConfigError(
                    f"config.pbtxt declares {len(inputs)} input(s) ({', '.join(inputs)}), but "
                    f"{file}'s forward({', '.join(names)}) takes {len(names)}; Triton "
                    "passes one input per argument of forward()"
                )
            positions = _input_positions(inputs, names or [], file)
        outputs = [t.name for t in config.outputs]
        indices = _named_indices(outputs)
        return cls(
            positions=positions,
            as_dict=as_dict,
            outputs=tuple(zip(outputs, indices or range(len(outputs)), strict=True)),
            datatypes={t.name: t.datatype for t in config.outputs},
        )

    def arguments(self, named: dict[str, Any]) -> tuple[Any, ...]:
        """forward()'s positional arguments for the request's named tensors."""
        if self.as_dict:
            return (dict(named),)
        args: list[Any] = [None] * len(self.positions)
        for name, value in named.items():
            if name not in self.positions:
                raise InvalidInput(
                    f"unknown input {name!r}; the model takes {', '.join(self.positions)}"
                )
            args[self.positions[name]] = value
        return tuple(args)

    def results(self, model_name: str, result: Any) -> dict[str, Any]:
        """The returned tensor or tuple / list of tensors as config.pbtxt's named outputs."""
        values = list(result) if isinstance(result, tuple | list) else [result]
        named = {}
        for name, index in self.outputs:
            if index >= len(values):
                raise BackendError(
                    f"model {model_name!r} returned {len(values)} output(s), but config.pbtxt's "
                    f"output {name!r} is number {index} (counting from 0)"
                )
            named[name] = values[index]
        return named

    def check_types(self, model_name: str, outputs: dict[str, np.ndarray]) -> None:
        """BackendError when an output's datatype is not config.pbtxt's (Triton's check)."""
        for name, array in outputs.items():
            expected = self.datatypes.get(name)
            if expected is None or array.dtype == np.object_:
                continue
            got = from_numpy_dtype(array.dtype)
            if got != expected:
                raise BackendError(
                    f"model {model_name!r}: output {name!r} is {got}, but config.pbtxt "
                    f"declares {expected}; make the model return {expected} or fix data_type"
                )


_TRUE, _FALSE = ("true", "on", "1"), ("false", "off", "0")


def triton_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Settings from Triton libtorch's config.pbtxt ``parameters``: ``INFERENCE_MODE``
    (``true`` / ``on`` / ``1`` or ``false`` / ``off`` / ``0``) and
    ``INTRA_OP_THREAD_COUNT`` (``0``: torch's default); the others are not read."""
    update: dict[str, Any] = {}
    mode = str(parameters.get("INFERENCE_MODE", "")).strip().lower()
    if mode:
        if mode not in _TRUE + _FALSE:
            raise ConfigError(
                f"config.pbtxt: parameter INFERENCE_MODE is {mode!r}; use true or false"
            )
        update["inference_mode"] = mode in _TRUE
    threads = count_parameter(parameters, "INTRA_OP_THREAD_COUNT")
    if threads:
        update["threads"] = threads
    return update


def _named_indices(names: list[str]) -> list[int] | None:
    """Each name's ``__<index>``, when every name has one; else ``None``."""
    matches = [_NAMED_INDEX.match(name) for name in names]
    if not all(matches):
        return None
    return [int(m.group(1)) for m in matches if m]


def _input_positions(inputs: list[str], arguments: list[str], file: str) -> dict[str, int]:
    """Triton's rule for inputs (:class:`TritonIO`): forward()'s argument names, else
    ``<name>__<index>``, else config.pbtxt's order; each argument exactly once."""
    if arguments and all(name in arguments for name in inputs):
        return {name: arguments.index(name) for name in inputs}
    indices = _named_indices(inputs) or list(range(len(inputs)))
    if sorted(indices) != list(range(len(inputs))):
        raise ConfigError(
            f"config.pbtxt's inputs {', '.join(inputs)} name argument indices {indices} of "
            f"{file}'s forward(); each of 0..{len(inputs) - 1} must be named once"
        )
    return dict(zip(inputs, indices, strict=True))
