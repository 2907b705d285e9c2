"""The ``pytorch`` backend: whole-module pickles (trusted only), TorchScript, torch.export.

A version folder holds one model file (``model.pt2``, ``model.pt`` or ``model.pth``) and,
optionally, ``processor.py`` with the seed's hooks::

    def preprocess(x, **kwargs): ...         # request data -> model input
    def run_model(model, x, **kwargs): ...   # replaces model(x)
    def postprocess(y, **kwargs): ...        # model output -> response data

``kwargs`` are the request's parameters (Seldon: ``meta.tags``). A hook that does not take
``**kwargs`` is called without them. What the hooks receive:

- one input: its numpy array, except a BYTES input holding one element (Seldon's
  ``binData``/``strData``), which arrives as the ``bytes`` itself, as the seed passed it;
- several inputs: a dict name -> array, in the order config.yaml declares them.

Without ``preprocess``, numpy arrays become tensors on the model's device, and floating
inputs whose datatype config.yaml does not declare are cast to the model's ``dtype`` (so
Seldon's float64 reaches a float32 model as float32). Without ``run_model`` the model is
called as ``model(x)`` (``model(*x)`` for several inputs). Without ``postprocess`` tensors
become numpy arrays. Whatever comes out (tensor, array, list, dict of them, tuple of
them, bytes, str) becomes named outputs: the names config.yaml declares, else
``output__0``, ``output__1``, ... (a dict keeps its own names).

Errors: an exception raised by ``preprocess`` that is a ``ValueError``, ``TypeError``,
``KeyError``, ``IndexError`` or ``OSError`` (e.g. PIL's "cannot identify image file") is
the client's bad input: :class:`dl_inference.InvalidInput`. Any other exception from user
code is :class:`dl_inference.BackendError`. Both carry the user's message and the
``file:line`` in the model's folder where it was raised. Hooks may also raise
``dl_inference.InvalidInput`` themselves.
"""

from __future__ import annotations

import inspect
import re
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from dl_inference import (
    Backend,
    BackendError,
    BackendSettings,
    DlInferenceError,
    InvalidInput,
    TensorSpec,
    from_numpy_dtype,
)

if TYPE_CHECKING:
    import torch

    from dl_inference_pytorch._loading import ModelFile

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Exceptions from preprocess() that mean "this request's data is not what the model takes".
CLIENT_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError)
HOOKS = ("preprocess", "run_model", "postprocess")


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
    processor: str = "processor.py"
    """The optional hooks file beside the model."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}; use cpu, cuda or cuda:N")
        return value


class PyTorchBackend(Backend):
    """Serves one PyTorch model version, with the seed's optional ``processor.py`` hooks."""

    name = "pytorch"
    Settings = PyTorchSettings
    model_files = ("*.pt2", "*.pt", "*.pth")
    handles_processor = True  # hooks run on tensors, on the model's device
    settings: PyTorchSettings

    def load(self) -> None:
        import torch

        from dl_inference_pytorch import _loading

        self._torch = torch
        self.device = _loading.resolve_device(self.settings.device)
        self.dtype = _loading.DTYPES[self.settings.dtype]
        self.file: ModelFile = _loading.find_model_file(self.path, self.settings.model_file)
        model = _loading.load_module(
            self.file, self.device, trust_pickle=self.settings.trust_pickle, folder=self.path
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
        self.hooks = self._load_hooks()
        self._local = threading.local()

    def _load_hooks(self) -> dict[str, Any]:
        from dl_inference_pytorch._loading import import_processor

        path = self.path / self.settings.processor
        if not path.is_file():
            return {}
        module = import_processor(path, self.model_name, self.version)
        hooks = {
            name: getattr(module, name) for name in HOOKS if callable(getattr(module, name, None))
        }
        if not hooks:
            raise BackendError(
                f"{path} defines none of {', '.join(HOOKS)}; define at least one or remove it"
            )
        return hooks

    @property
    def platform(self) -> str:
        return "pytorch"

    def inputs(self) -> list[TensorSpec] | None:
        declared = super().inputs()
        inferred = getattr(self, "_inferred", None)
        return inferred[0] if declared is None and inferred is not None else declared

    def outputs(self) -> list[TensorSpec] | None:
        declared = super().outputs()
        inferred = getattr(self, "_inferred", None)
        return inferred[1] if declared is None and inferred is not None else declared

    # -- prediction ------------------------------------------------------------------------

    def predict(self, inputs: dict[str, np.ndarray], **parameters: Any) -> dict[str, np.ndarray]:
        torch = self._torch
        if self.settings.threads and getattr(self._local, "threads", None) != self.settings.threads:
            # With OpenMP the thread count is per calling thread, so set it in each worker.
            torch.set_num_threads(self.settings.threads)
            self._local.threads = self.settings.threads
        x = self._model_input(inputs)
        mode = torch.inference_mode() if self.settings.inference_mode else torch.no_grad()
        with mode:
            if "preprocess" in self.hooks:
                x = self._call("preprocess", x, parameters)
            elif _holds_bytes(x):
                raise InvalidInput(
                    f"model {self.model_name!r} received BYTES data but has no preprocess() "
                    f"in {self.settings.processor} to turn it into tensors; send numbers, or "
                    "add a processor that decodes the bytes"
                )
            x = self._to_torch(x, cast=self._cast_floats())
            if "run_model" in self.hooks:
                y = self._call("run_model", x, parameters, model=self.model)
            else:
                y = self._run_module(x)
            if "postprocess" in self.hooks:
                y = self._call("postprocess", y, parameters)
            return self._outputs(y)

    def _model_input(self, inputs: dict[str, np.ndarray]) -> Any:
        if len(inputs) == 1:
            array = next(iter(inputs.values()))
            if array.dtype == np.object_ and array.size == 1 and array.ndim <= 1:
                return array.reshape(-1)[0]
            return array
        declared = [spec.name for spec in self.inputs() or []]
        order = [n for n in declared if n in inputs] + [n for n in inputs if n not in declared]
        return {name: inputs[name] for name in order}

    def _cast_floats(self) -> bool:
        # A declared datatype is a contract with the client; only guessed ones are converted.
        return self.config.inputs is None and self._inferred is None

    def _call(self, hook: str, x: Any, parameters: dict[str, Any], model: Any = None) -> Any:
        function = self.hooks[hook]
        args = (x,) if model is None else (model, x)
        try:
            if _takes_kwargs(function):
                return function(*args, **parameters)
            return function(*args)
        except DlInferenceError:
            raise
        except Exception as exc:
            where = self._where(exc)
            if hook == "preprocess" and isinstance(exc, CLIENT_ERRORS):
                raise InvalidInput(
                    f"model {self.model_name!r} could not use the request's data: "
                    f"{self.settings.processor} preprocess() raised {where}"
                ) from exc
            raise BackendError(
                f"model {self.model_name!r}: {self.settings.processor} {hook}() raised {where}"
            ) from exc

    def _run_module(self, x: Any) -> Any:
        try:
            if isinstance(x, dict):
                return self.model(*x.values())
            if isinstance(x, tuple | list):
                return self.model(*x)
            return self.model(x)
        except Exception as exc:
            raise BackendError(
                f"model {self.model_name!r} ({self.file.path.name}) raised {self._where(exc)}"
            ) from exc

    def _where(self, exc: BaseException) -> str:
        """``Type: message (file.py:line)``, the line in the model's own files if any."""
        text = f"{type(exc).__name__}: {exc}".strip()
        frames = traceback.extract_tb(exc.__traceback__)
        folder = str(self.path.resolve())
        own = [f for f in frames if str(Path(f.filename).resolve()).startswith(folder)]
        frame = (own or frames or [None])[-1]
        if frame is not None:
            text += f" ({Path(frame.filename).name}:{frame.lineno})"
        return text

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

    def _outputs(self, y: Any) -> dict[str, np.ndarray]:
        torch = self._torch
        if isinstance(y, dict):
            named = {str(k): v for k, v in y.items()}
        else:
            if isinstance(y, tuple) or (
                isinstance(y, list) and y and all(isinstance(v, torch.Tensor) for v in y)
            ):
                values = list(y)
            else:
                values = [y]
            names = [spec.name for spec in self.outputs() or []]
            if names and len(names) != len(values):
                raise BackendError(
                    f"model {self.model_name!r} returned {len(values)} output(s), but its "
                    f"config.yaml declares {len(names)} ({', '.join(names)})"
                )
            names = names or [f"output__{i}" for i in range(len(values))]
            named = dict(zip(names, values, strict=True))
        return {name: self._to_numpy(name, value) for name, value in named.items()}

    def _to_numpy(self, name: str, value: Any) -> np.ndarray:
        torch = self._torch
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.dtype == torch.bfloat16:
                value = value.float()  # numpy has no bfloat16
            return value.cpu().numpy()
        if isinstance(value, bytes | str):
            out = np.empty(1, dtype=np.object_)
            out[0] = value.encode() if isinstance(value, str) else value
            return out
        try:
            array = np.asarray(value)
            from_numpy_dtype(array.dtype)
        except (ValueError, DlInferenceError) as exc:
            raise BackendError(
                f"model {self.model_name!r}: output {name!r} ({type(value).__name__}) is not "
                f"a tensor, array or list of numbers: {exc}"
            ) from exc
        if array.dtype.kind == "U":
            array = np.vectorize(lambda s: s.encode(), otypes=[np.object_])(array)
        return array

    def unload(self) -> None:
        model = getattr(self, "model", None)
        if model is None:
            return
        self.model = None
        self.hooks = {}
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()


def _holds_bytes(x: Any) -> bool:
    if isinstance(x, bytes | str):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype == np.object_
    if isinstance(x, dict):
        return any(_holds_bytes(v) for v in x.values())
    return False


def _numpy_of(dtype: torch.dtype) -> np.dtype | None:
    import torch

    return {torch.float32: np.dtype(np.float32), torch.float16: np.dtype(np.float16)}.get(dtype)


def _takes_kwargs(function: Any) -> bool:
    """Whether a hook takes ``**kwargs`` (request parameters are passed only then)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


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
