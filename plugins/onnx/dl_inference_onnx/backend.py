"""The ``onnx`` backend: serves ``.onnx`` models with ONNX Runtime.

A version folder holds one ``.onnx`` file (plus its external-data files, if any). Inputs,
outputs, datatypes and shapes come from the graph, so ``config.yaml`` needs no
``inputs``/``outputs``; when it declares them they are checked against the graph and may
narrow a dynamic dimension. With ``max_batch_size > 0`` the first dimension of every input
and output must be dynamic, since the kernel merges requests along it.

Execution providers are chosen per model (``providers: [tensorrt, cuda, cpu]``). One that
is not available is dropped with a logged reason and the model runs on the next one, CPU
last; ``provider_fallback: false`` refuses to load instead.

BYTES tensors are ONNX ``string`` tensors, which onnxruntime's Python API carries as
``str``. Requests whose BYTES values are all valid UTF-8 are decoded as UTF-8, so text
operators see the real characters. A request holding any other bytes is mapped byte for
byte through Latin-1 instead, which byte-preserving operators (Identity, Gather, Concat,
Reshape, Equal, ...) return unchanged; string outputs are encoded back the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from pydantic import Field, field_validator

from dl_inference import (
    Backend,
    BackendError,
    BackendSettings,
    ConfigError,
    InvalidInput,
    TensorConfig,
    TensorSpec,
    count_parameter,
    to_numpy_dtype,
)
from dl_inference_onnx import _providers

log = structlog.get_logger("dl_inference.onnx")

_DEVICE = re.compile(r"^(cpu|cuda(:(\d+))?)$")

# onnxruntime's type strings -> V2 datatypes. bfloat16, float8 and friends have no numpy
# type that the kernel carries, so a model using them at its boundary is refused at load.
ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

# Fragments of onnxruntime's messages that mean "the request does not fit the graph" rather
# than "the model failed"; the kernel validates first, so these reach us only when a backend
# is used directly, config.yaml declared looser shapes than the graph enforces, or
# processor.py's preprocess() made the model's inputs.
_CLIENT_MESSAGES = (
    "Got invalid dimensions for input",
    "Unexpected input data type",
    "Invalid input name",
    "Invalid rank for input",
)


class OnnxSettings(BackendSettings):
    """The ``onnx`` backend's keys in a model's config.yaml."""

    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``: shorthand for ``providers`` and ``device_id``."""
    providers: list[Literal["cpu", "cuda", "tensorrt"]] | None = Field(default=None, min_length=1)
    """Execution providers in order of preference (default: from ``device``)."""
    device_id: int | None = Field(default=None, ge=0)
    """The GPU for CUDA/TensorRT (default: N of ``cuda:N``, else 0)."""
    provider_fallback: bool = True
    """Run on the next provider (CPU last) when one is unavailable; ``false`` fails the load."""
    trt_fp16: bool = False
    """Let TensorRT build FP16 engines."""
    trt_engine_cache: str | None = None
    """Folder for TensorRT's built engines (relative to the model's folder); off when unset."""
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    """onnxruntime's graph optimisations."""
    intra_op_threads: int | None = Field(default=None, ge=1)
    """Threads inside one operator (default: onnxruntime's, one per core)."""
    inter_op_threads: int | None = Field(default=None, ge=1)
    """Threads running independent operators at once; setting it enables parallel execution."""
    allow_spinning: bool | None = None
    """Whether idle intra-op threads spin (onnxruntime's default) or sleep. ``false`` leaves
    the cores to the server's own request handling when a small model runs under load."""
    model_file: str | None = None
    """The file to serve when the version folder holds several ``.onnx`` files."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}; use cpu, cuda or cuda:N")
        return value

    def provider_names(self) -> list[str]:
        """The short provider names, from ``providers`` or else from ``device``."""
        if self.providers is not None:
            return list(self.providers)
        return ["cpu"] if self.device == "cpu" else ["cuda", "cpu"]

    def gpu_id(self) -> int:
        if self.device_id is not None:
            return self.device_id
        match = _DEVICE.match(self.device)
        return int(match.group(3)) if match and match.group(3) else 0


class OnnxBackend(Backend):
    """Serves one ``.onnx`` model version with an onnxruntime ``InferenceSession``."""

    name = "onnx"
    Settings = OnnxSettings
    # onnxruntime only computes: a request alone may run on the event loop (Backend docs).
    self_contained = True
    model_files = ("*.onnx",)
    # Triton's onnxruntime backend: a config.pbtxt naming it (or the platform) is served
    # here, its version folder laid out as Triton's (see triton_model_file).
    triton_platforms = ("onnxruntime", "onnxruntime_onnx")
    settings: OnnxSettings

    def load(self) -> None:
        import onnxruntime as ort

        triton = self.triton_config()
        # Where inputs / outputs were declared, for messages.
        self._declared_in = "config.pbtxt" if triton is not None else "config.yaml"
        if triton is not None:
            update = triton_parameters(self.config.parameters)
            self.settings = self.settings.model_copy(update=update)
        self.file = (
            triton_model_file(self.path, triton)
            if triton is not None
            else find_model_file(self.path, self.settings.model_file)
        )
        options = self._session_options(ort)
        cache = self._engine_cache()
        plan = _providers.plan(
            self.settings.provider_names(),
            ort.get_available_providers(),
            device_id=self.settings.gpu_id(),
            trt_fp16=self.settings.trt_fp16,
            trt_engine_cache=cache,
        )
        dropped = dict(plan.dropped)
        session = self._create_session(ort, options, plan, dropped)
        self.running_providers: list[str] = session.get_providers()
        dropped.update(_providers.not_started(plan, self.running_providers))
        self.dropped_providers = dropped
        if dropped:
            self._fall_back(dropped)
        self._session = session
        graph_in = [_graph_spec(self.file, "input", arg) for arg in session.get_inputs()]
        graph_out = [_graph_spec(self.file, "output", arg) for arg in session.get_outputs()]
        if self.config.max_batch_size > 0:
            _require_batch_axis(self.file, graph_in, graph_out, self.config.max_batch_size)
        batched = self.config.max_batch_size > 0
        declared_in = self._declared_in
        self._inputs = _merge(
            self.file, "input", graph_in, self.declared_inputs(), batched, declared_in
        )
        self._outputs = _merge(
            self.file, "output", graph_out, self.declared_outputs(), batched, declared_in
        )
        self._input_types = {spec.name: spec.datatype for spec in self._inputs}
        self._output_names = [spec.name for spec in self._outputs]
        log.info(
            "onnx model loaded",
            model=self.model_name,
            version=self.version,
            file=self.file.name,
            providers=",".join(self.running_providers),
        )

    def _session_options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        level = OPTIMIZATION_LEVELS[self.settings.graph_optimization_level]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        if self.settings.intra_op_threads is not None:
            options.intra_op_num_threads = self.settings.intra_op_threads
        if self.settings.inter_op_threads is not None:
            # onnxruntime ignores inter-op threads unless operators may run in parallel.
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
            options.inter_op_num_threads = self.settings.inter_op_threads
        if self.settings.allow_spinning is not None:
            spin = "1" if self.settings.allow_spinning else "0"
            options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        return options

    def _engine_cache(self) -> Path | None:
        if self.settings.trt_engine_cache is None:
            return None
        folder = Path(self.settings.trt_engine_cache)
        if not folder.is_absolute():
            folder = self.path.parent / folder
        return folder

    def _create_session(
        self, ort: Any, options: Any, plan: _providers.ProviderPlan, dropped: dict[str, str]
    ) -> Any:
        if dropped and not self.settings.provider_fallback:
            self._refuse_fallback(dropped)
        cache = self._engine_cache()
        if cache is not None and _providers.PROVIDERS["tensorrt"] in plan.names:
            cache.mkdir(parents=True, exist_ok=True)
        names = [name for name, _ in plan.providers]
        provider_options = [opts for _, opts in plan.providers]
        try:
            return ort.InferenceSession(
                str(self.file), options, providers=names, provider_options=provider_options
            )
        except Exception as exc:
            if names == [_providers.CPU]:
                raise BackendError(_load_error(self.file, exc)) from exc
            # A GPU provider that fails hard (rather than being left out) gets the same
            # treatment as one that is missing: CPU, with the reason, unless refused.
            reason = (
                f"creating the session with {', '.join(names[:-1])} failed: {_ort_message(exc)}"
            )
            for name in names[:-1]:
                dropped[name] = reason
            if not self.settings.provider_fallback:
                self._refuse_fallback(dropped)
        try:
            return ort.InferenceSession(str(self.file), options, providers=[_providers.CPU])
        except Exception as exc:
            raise BackendError(_load_error(self.file, exc)) from exc

    def _refuse_fallback(self, dropped: dict[str, str]) -> None:
        reasons = "; ".join(dropped.values())
        raise BackendError(
            f"model {self.model_name!r} version {self.version}: {reasons}. "
            "Set provider_fallback: true to run on the next provider instead"
        )

    def _fall_back(self, dropped: dict[str, str]) -> None:
        if not self.settings.provider_fallback:
            self._refuse_fallback(dropped)
        for name, reason in dropped.items():
            log.warning(
                "onnx provider fallback",
                model=self.model_name,
                version=self.version,
                asked_for=name,
                running_on=self.running_providers[0],
                reason=reason,
            )

    @property
    def platform(self) -> str:
        return "onnxruntime_onnx"

    def model_inputs(self) -> list[TensorSpec] | None:
        return getattr(self, "_inputs", None) or super().model_inputs()

    def model_outputs(self) -> list[TensorSpec] | None:
        return getattr(self, "_outputs", None) or super().model_outputs()

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        session = getattr(self, "_session", None)
        if session is None:
            raise BackendError(f"model {self.model_name!r} version {self.version} is not loaded")
        missing = sorted(set(self._input_types) - set(inputs))
        unknown = sorted(set(inputs) - set(self._input_types))
        if missing or unknown:
            raise InvalidInput(
                f"model {self.model_name!r} takes inputs {', '.join(self._input_types)}; "
                f"missing: {', '.join(missing) or 'none'}, unknown: {', '.join(unknown) or 'none'}"
            )
        feed, latin1 = {}, False
        for name, array in inputs.items():
            if self._input_types[name] == "BYTES":
                feed[name], used_latin1 = encode_strings(array)
                latin1 |= used_latin1
            else:
                feed[name] = _numeric(self.model_name, name, array, self._input_types[name])
        try:
            results = session.run(self._output_names, feed)
        except Exception as exc:
            error = self.client_error(exc)
            if error is not None:
                raise error from exc
            raise BackendError(
                f"model {self.model_name!r} version {self.version} ({self.file.name}): "
                f"onnxruntime failed: {_ort_message(exc)}"
            ) from exc
        outputs = {}
        for name, value in zip(self._output_names, results, strict=True):
            value = np.asarray(value)
            outputs[name] = decode_strings(value, latin1) if value.dtype == np.object_ else value
        return outputs

    def client_error(self, exc: BaseException) -> InvalidInput | None:
        """InvalidInput, in one line, when onnxruntime says the data does not fit the graph
        (:data:`_CLIENT_MESSAGES`: dimensions, rank, datatype, input names)."""
        message = " ".join(_ort_message(exc).split())
        if not any(fragment in message for fragment in _CLIENT_MESSAGES):
            return None
        return InvalidInput(f"model {self.model_name!r}: {message}")

    def unload(self) -> None:
        # Dropping the last reference frees the session's memory (GPU arenas included).
        self._session = None


# -- files and graph -------------------------------------------------------------------------


def find_model_file(folder: Path, chosen: str | None) -> Path:
    """The ``.onnx`` file to serve: ``chosen``, else the only one in ``folder``."""
    if chosen is not None:
        path = folder / chosen
        if not path.is_file():
            raise ConfigError(f"model_file {chosen!r}: no such file in {folder}")
        return path
    found = sorted(folder.glob("*.onnx"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"{folder} holds no .onnx file")
    names = ", ".join(p.name for p in found)
    raise ConfigError(
        f"{folder} holds several .onnx files ({names}); name one with model_file: in config.yaml"
    )


def triton_model_file(folder: Path, triton: dict[str, Any]) -> Path:
    """The model Triton's onnxruntime backend serves from the version folder ``folder``:
    config.pbtxt's ``default_model_filename``, else ``model.onnx``; a folder of that name
    (a model with external data) holds its ``model.onnx``."""
    name = triton.get("default_model_filename") or "model.onnx"
    path = folder / name
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: a Triton onnxruntime model is <version>/model.onnx "
            "(a file, or a folder holding model.onnx and its external data), or the file "
            "config.pbtxt's default_model_filename names"
        )
    return path


def triton_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Settings from Triton onnxruntime's config.pbtxt ``parameters``:
    ``intra_op_thread_count``, and ``inter_op_thread_count`` with ``execution_mode`` ``1``
    (parallel; onnxruntime ignores it otherwise); ``0`` keeps onnxruntime's default. The
    others are not read."""
    intra = count_parameter(parameters, "intra_op_thread_count")
    inter = count_parameter(parameters, "inter_op_thread_count")
    update = {}
    if intra:
        update["intra_op_threads"] = intra
    parallel = str(parameters.get("execution_mode", "")).strip() == "1"
    if inter and parallel:
        update["inter_op_threads"] = inter
    return update


def _graph_spec(file: Path, kind: str, arg: Any) -> TensorSpec:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None:
        hint = (
            " (scikit-learn exports: convert with options={'zipmap': False})"
            if "map" in arg.type or "seq" in arg.type
            else ""
        )
        raise ConfigError(
            f"{file.name}: {kind} {arg.name!r} has type {arg.type}, which dl-inference cannot "
            f"carry; use one of {', '.join(sorted(ORT_TYPES))}{hint}"
        )
    shape = arg.shape
    dims = () if shape is None else tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
    return TensorSpec(arg.name, datatype, dims)


def _require_batch_axis(
    file: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch_size: int
) -> None:
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            if not spec.shape or spec.shape[0] != -1:
                first = (
                    f"a fixed first dimension {spec.shape[0]}" if spec.shape else "no dimensions"
                )
                raise ConfigError(
                    f"{file.name}: {kind} {spec.name!r} has {first} (shape {list(spec.shape)}), "
                    f"but max_batch_size: {max_batch_size} needs a dynamic batch dimension first. "
                    "Export with a dynamic batch axis (torch.onnx.export(..., dynamic_axes="
                    "{name: {0: 'batch'}}) or `dl-inference convert`), or set max_batch_size: 0"
                )


def _merge(
    file: Path,
    kind: str,
    graph: list[TensorSpec],
    declared: list[TensorConfig] | None,
    batched: bool,
    source: str = "config.yaml",
) -> list[TensorSpec]:
    """The graph's tensors, narrowed by the declarations of ``source`` (config.yaml or
    Triton's config.pbtxt) where it has any.

    Every declared tensor must exist in the graph with the same datatype and rank; a
    dimension the graph fixes must agree. Inputs must be declared all or none (the graph
    needs them all); outputs may be a subset, and then only those are computed.
    """
    if declared is None:
        return graph
    by_name = {spec.name: spec for spec in graph}

    def describe(specs: list[TensorSpec]) -> str:
        return ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in specs)

    result = []
    for tensor in declared:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise ConfigError(
                f"{source} declares {kind} {tensor.name!r}, which {file.name} does not have; "
                f"its {kind}s are: {describe(graph)}"
            )
        shape = ((-1,) if batched else ()) + tuple(tensor.shape)
        where = f"{source} declares {kind} {tensor.name!r} as {tensor.datatype} {list(shape)}"
        if tensor.datatype != spec.datatype:
            raise ConfigError(f"{where}, but {file.name} has {spec.datatype} {list(spec.shape)}")
        if len(shape) != len(spec.shape) and spec.shape != ():
            raise ConfigError(
                f"{where}, but {file.name} has rank {len(spec.shape)} {list(spec.shape)}"
                + (" (with max_batch_size > 0 leave the batch dimension out)" if batched else "")
            )
        if spec.shape == () and shape:
            merged = shape  # the graph left the rank unknown: take config's
        else:
            merged = []
            for mine, theirs in zip(shape, spec.shape, strict=True):
                if theirs != -1 and mine not in (-1, theirs):
                    raise ConfigError(f"{where}, but {file.name} has {list(spec.shape)}")
                merged.append(theirs if theirs != -1 else mine)
        result.append(TensorSpec(spec.name, spec.datatype, tuple(merged)))
    if kind == "input":
        left_out = [spec for spec in graph if spec.name not in {t.name for t in declared}]
        if left_out:
            section = "input [...]" if source == "config.pbtxt" else "`inputs:`"
            raise ConfigError(
                f"{source} leaves out input(s) {describe(left_out)} that {file.name} needs; "
                f"declare every input, or remove {section} to read them from the graph"
            )
    return result


# -- tensors ---------------------------------------------------------------------------------


def _numeric(model: str, name: str, array: np.ndarray, datatype: str) -> np.ndarray:
    expected = to_numpy_dtype(datatype)
    if array.dtype != expected:
        raise InvalidInput(
            f"input {name!r} of model {model!r}: numpy dtype {array.dtype} given, "
            f"{datatype} ({expected}) expected"
        )
    return array


def encode_strings(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """BYTES values as ``str`` for onnxruntime; True when Latin-1 had to carry raw bytes."""
    values = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.flat]
    try:
        texts, latin1 = [v.decode("utf-8") for v in values], False
    except UnicodeDecodeError:
        texts, latin1 = [v.decode("latin-1") for v in values], True
    out = np.empty(len(texts), dtype=np.object_)
    out[:] = texts
    return out.reshape(array.shape), latin1


def decode_strings(array: np.ndarray, latin1: bool) -> np.ndarray:
    """onnxruntime's ``str`` outputs as BYTES, undoing :func:`encode_strings`."""
    out = np.empty(array.shape, dtype=np.object_)
    for index, value in np.ndenumerate(array):
        text = value if isinstance(value, str) else str(value)
        if latin1:
            try:
                out[index] = text.encode("latin-1")
                continue
            except UnicodeEncodeError:
                pass  # a character the model made itself (a constant): its UTF-8 is right
        out[index] = text.encode("utf-8")
    return out


_IR_VERSION = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def _load_error(file: Path, exc: BaseException) -> str:
    """Why onnxruntime could not load ``file``, with what to do where the cause is known.

    A file written by a newer ``onnx`` package than the installed onnxruntime reads is the
    usual trap (``onnx`` writes its own newest IR version by default): say so in one line
    instead of onnxruntime's C++ signature.
    """
    message = _ort_message(exc)
    found = _IR_VERSION.search(message)
    if found is None:
        return f"onnxruntime cannot load {file.name}: {message}"
    import onnxruntime

    written, readable = found.groups()
    return (
        f"{file.name} was written with ONNX IR version {written}, newer than onnxruntime "
        f"{onnxruntime.__version__} reads (up to {readable}): write it with an older IR "
        f"version (set model.ir_version = {readable} or lower before onnx.save, or pass "
        f"ir_version= to onnx.helper.make_model) or install a newer onnxruntime"
    )


def _ort_message(exc: BaseException) -> str:
    """onnxruntime's message without its ``[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :`` head."""
    text = str(exc)
    match = re.match(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", text)
    return text[match.end() :] if match else text
