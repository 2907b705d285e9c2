"""The ``tensorflow`` backend: serves a SavedModel with every signature it exports.

TensorFlow is imported in :meth:`TensorFlowBackend.load`, never at module import, so listing
plugins stays fast and works without the framework.
"""

from __future__ import annotations

import gc
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from pydantic import Field, field_validator

from dl_inference import (
    Backend,
    BackendError,
    BackendSettings,
    ConfigError,
    InferRequest,
    InvalidInput,
    TensorSpec,
    count_parameter,
    wire,
)
from dl_inference_tfserving import codec
from dl_inference_tfserving.signatures import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    SignatureDefMap,
    TensorInfo,
    current_signature,
)

log = structlog.get_logger("dl_inference.tensorflow")

# TF Serving's warm-up file in a version folder, and the most records it reads from it.
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

# Signatures TF writes for its own use; they take no inputs and are never served.
_INTERNAL_SIGNATURES = frozenset({"__saved_model_init_op"})


class TensorFlowSettings(BackendSettings):
    """The tensorflow backend's keys in a model's config.yaml.

    ``device``: ``cpu``, ``gpu`` or ``gpu:N`` (``cuda`` is accepted for ``gpu``).
    ``op_libraries``: custom-op ``.so`` files loaded before the model, relative to the
    version folder or, failing that, to the model folder. Threads: 0 keeps TensorFlow's
    default; they are process-wide, so the first model loaded sets them.
    """

    signature: str = DEFAULT_SIGNATURE
    tags: list[str] = Field(default_factory=lambda: ["serve"])
    op_libraries: list[str] = Field(default_factory=list)
    intra_op_threads: int = Field(default=0, ge=0)
    inter_op_threads: int = Field(default=0, ge=0)
    gpu_memory_growth: bool = True

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        parse_device(value)
        return value


def parse_device(device: str) -> tuple[str, int]:
    """``("CPU", 0)`` or ``("GPU", n)`` for a config device string; ValueError otherwise."""
    kind, _, index = device.strip().lower().partition(":")
    if kind not in ("cpu", "gpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"device {device!r} is not one of cpu, gpu, gpu:N (N = GPU index)")
    return ("CPU" if kind == "cpu" else "GPU"), int(index or 0)


_runtime_lock = threading.Lock()
_runtime_settings: tuple[int, int, bool] | None = None


def _configure_runtime(tf: Any, settings: TensorFlowSettings) -> None:
    """Apply process-wide TF options once, before TF initialises its runtime."""
    global _runtime_settings
    wanted = (settings.intra_op_threads, settings.inter_op_threads, settings.gpu_memory_growth)
    with _runtime_lock:
        if _runtime_settings is not None:
            if wanted != _runtime_settings:
                log.warning(
                    "TensorFlow runtime options are process-wide and already set; "
                    "this model's differing values are ignored",
                    applied=_runtime_settings,
                    ignored=wanted,
                )
            return
        try:
            if settings.intra_op_threads:
                tf.config.threading.set_intra_op_parallelism_threads(settings.intra_op_threads)
            if settings.inter_op_threads:
                tf.config.threading.set_inter_op_parallelism_threads(settings.inter_op_threads)
            if settings.gpu_memory_growth:
                for gpu in tf.config.list_physical_devices("GPU"):
                    tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:
            # TF was initialised by someone else first (another plugin, user code).
            log.warning("could not apply TensorFlow runtime options", error=str(exc))
        _runtime_settings = wanted


class TensorFlowBackend(Backend):
    """A SavedModel (``<version>/saved_model.pb`` + ``variables/``) with all its signatures.

    ``predict(inputs, signature_name=...)`` runs the named signature (default: the
    ``signature`` setting); inputs are keyed by the signature's input keys. It is a
    :class:`~dl_inference_tfserving.signatures.SignatureBackend`, so TF Serving clients see
    the SignatureDefs saved_model.pb records and address each signature by name.
    """

    name = "tensorflow"
    Settings = TensorFlowSettings
    # the SavedModel only computes: a request alone may run on the event loop (Backend docs).
    self_contained = True
    model_files = ("saved_model.pb", "saved_model.pbtxt")
    # Triton's tensorflow backend: a config.pbtxt naming it (or tensorflow_savedmodel) is
    # served here with Triton's rules (<version>/model.savedmodel/, see _load_triton).
    triton_platforms = ("tensorflow", "tensorflow_savedmodel")
    settings: TensorFlowSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signature_defs = SignatureDefMap()
        self._functions: dict[str, Any] = {}
        self._model: Any = None
        self._device = "/CPU:0"
        # The SavedModel's folder: the version folder, or Triton's <version>/model.savedmodel.
        self.model_dir = self.path
        self._triton = False

    @property
    def platform(self) -> str:
        return "tensorflow_savedmodel"

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        import tensorflow as tf

        triton = self.triton_config()
        if triton is not None:
            self._triton_settings(tf, triton)
        _configure_runtime(tf, self.settings)
        for library in self.settings.op_libraries:
            self._load_op_library(tf, library)
        kind, index = parse_device(self.settings.device)
        if kind == "GPU":
            gpus = tf.config.list_physical_devices("GPU")
            if index >= len(gpus):
                raise BackendError(
                    f"model {self.model_name!r}: device {self.settings.device!r} asked for, but "
                    f"TensorFlow sees {len(gpus)} GPU(s); set device: cpu or fix the GPU setup"
                )
        self._device = f"/{kind}:{index}"
        with tf.device(self._device):
            self._model = tf.saved_model.load(str(self.model_dir), tags=self.settings.tags)
        self._functions = {
            name: fn
            for name, fn in self._model.signatures.items()
            if name not in _INTERNAL_SIGNATURES
        }
        self.signature_defs = self._read_signature_defs(tf)
        if not self._functions:
            raise BackendError(
                f"model {self.model_name!r}: the SavedModel in {self.model_dir} exports no "
                "signatures; save it with signatures={'serving_default': ...}"
            )
        if self.settings.signature not in self._functions:
            raise BackendError(
                f"model {self.model_name!r}: signature {self.settings.signature!r} (setting "
                "`signature`) is not in the SavedModel; it has: "
                f"{', '.join(sorted(self._functions))}"
            )
        if self._triton:
            self._check_triton_tensors()

    # -- Triton repositories ---------------------------------------------------------------

    def _triton_settings(self, tf: Any, triton: dict[str, Any]) -> None:
        """Triton's tensorflow backend rules for a model configured by config.pbtxt: the
        SavedModel is ``<version>/model.savedmodel/`` (or ``default_model_filename``); its
        ``TF_SIGNATURE_DEF``, ``TF_GRAPH_TAG``, ``TF_NUM_INTRA_THREADS`` and
        ``TF_NUM_INTER_THREADS`` parameters choose the signature, tag and threads; a
        ``KIND_GPU`` instance group runs on the CPU, with a warning, where no GPU is visible
        (as the onnx backend falls back; Triton refuses to load it there)."""
        self._triton = True
        self.model_dir = self.path / (triton.get("default_model_filename") or "model.savedmodel")
        if not (self.model_dir / "saved_model.pb").is_file():
            raise ConfigError(
                f"{self.model_dir / 'saved_model.pb'} does not exist: a Triton "
                "tensorflow_savedmodel model is the folder <version>/model.savedmodel/ (what "
                "tf.saved_model.save writes), or the folder config.pbtxt's "
                "default_model_filename names"
            )
        parameters = self.config.parameters
        update: dict[str, Any] = {}
        if parameters.get("TF_SIGNATURE_DEF"):
            update["signature"] = parameters["TF_SIGNATURE_DEF"]
        if parameters.get("TF_GRAPH_TAG"):
            update["tags"] = [parameters["TF_GRAPH_TAG"]]
        for key, setting in (
            ("TF_NUM_INTRA_THREADS", "intra_op_threads"),
            ("TF_NUM_INTER_THREADS", "inter_op_threads"),
        ):
            count = count_parameter(parameters, key)
            if count is not None:
                update[setting] = count
        kind, _ = parse_device(self.settings.device)
        if kind == "GPU" and not tf.config.list_physical_devices("GPU"):
            log.warning(
                "instance_group asks for KIND_GPU and no GPU is visible; the model runs on "
                "the CPU (Triton would refuse to load it)",
                model=self.model_name,
                version=self.version,
            )
            update["device"] = "cpu"
        self.settings = self.settings.model_copy(update=update)

    def _check_triton_tensors(self) -> None:
        """config.pbtxt's tensors against the signature, as Triton checks them at load:
        inputs are the signature's input keys, all of them; outputs some of its output keys;
        each of the signature's datatype and rank, with no fixed dimension differing (the
        batch dimension, with max_batch_size > 0, must be variable in the signature)."""
        batched = self.config.max_batch_size > 0
        for which, declared in (("inputs", self.config.inputs), ("outputs", self.config.outputs)):
            if declared is None:
                continue  # auto-complete: the signature's own
            kind = which[:-1]
            model = {spec.name: spec for spec in self._specs(which) or []}
            if not model:
                continue  # not describable as V2 specs: TensorFlow checks each request
            described = ", ".join(
                f"{s.name} ({s.datatype} {list(s.shape)})" for s in model.values()
            )
            signature = self.settings.signature
            if kind == "input" and {t.name for t in declared} != set(model):
                raise ConfigError(
                    f"config.pbtxt declares inputs {', '.join(t.name for t in declared)}, but "
                    f"signature {signature!r} takes {described}; declare each of its input "
                    "keys (or no input [...] to take them from the signature)"
                )
            for tensor in declared:
                spec = model.get(tensor.name)
                if spec is None:
                    raise ConfigError(
                        f"config.pbtxt declares {kind} {tensor.name!r}, which signature "
                        f"{signature!r} does not have; its {which} are: {described}"
                    )
                shape = ((-1,) if batched else ()) + tuple(tensor.shape)
                where = (
                    f"config.pbtxt declares {kind} {tensor.name!r} as {tensor.datatype} "
                    f"{list(shape)}, but signature {signature!r} has {spec.datatype} "
                    f"{list(spec.shape)}"
                )
                if tensor.datatype != spec.datatype or len(shape) != len(spec.shape):
                    raise ConfigError(where)
                if batched and spec.shape[0] != -1:
                    raise ConfigError(f"{where}: max_batch_size needs a variable first dimension")
                if any(
                    a != -1 and b != -1 and a != b for a, b in zip(shape, spec.shape, strict=True)
                ):
                    raise ConfigError(where)

    def _load_op_library(self, tf: Any, library: str) -> None:
        candidates = (
            [Path(library)]
            if Path(library).is_absolute()
            else [
                self.path / library,
                self.path.parent / library,
            ]
        )
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise BackendError(
                f"model {self.model_name!r}: op library {library!r} not found (looked at "
                f"{', '.join(str(p) for p in candidates)}); fix op_libraries in config.yaml"
            )
        try:
            tf.load_op_library(str(found))
        except Exception as exc:
            raise BackendError(
                f"model {self.model_name!r}: op library {found} failed to load: {exc}"
            ) from exc
        log.info("op library loaded", model=self.model_name, library=str(found))

    def _read_signature_defs(self, tf: Any) -> SignatureDefMap:
        """The SignatureDefs as saved_model.pb records them (what TF Serving reports)."""
        from tensorflow.core.protobuf import saved_model_pb2

        result = SignatureDefMap()
        pb = self.model_dir / "saved_model.pb"
        if not pb.is_file():
            return self._signature_defs_from_functions(tf)
        saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
        tags = set(self.settings.tags)
        for meta_graph in saved.meta_graphs:
            if set(meta_graph.meta_info_def.tags) == tags:
                for name, signature in meta_graph.signature_def.items():
                    if name in self._functions:
                        # Same field numbers, our package: a byte-level copy is exact.
                        result.signature_def[name].ParseFromString(signature.SerializeToString())
                break
        return result

    def _signature_defs_from_functions(self, tf: Any) -> SignatureDefMap:
        result = SignatureDefMap()
        for name, fn in self._functions.items():
            signature = result.signature_def[name]
            signature.method_name = PREDICT_METHOD
            for key, spec in fn.structured_input_signature[1].items():
                _tensor_info(signature.inputs[key], spec)
            for key, spec in fn.structured_outputs.items():
                _tensor_info(signature.outputs[key], spec)
        return result

    def warmup_samples(self) -> list[InferRequest]:
        """TF Serving's warm-up file, ``<version>/assets.extra/tf_serving_warmup_requests``.

        A TFRecord file of ``tensorflow.serving.PredictionLog`` records, at most
        :data:`MAX_WARMUP_RECORDS`, as TF Serving reads it; each ``predict_log`` request
        becomes one warm-up request for the signature its ``model_spec`` names (the
        ``signature`` setting when it names none), replayed once by the kernel before the
        version turns ready. Classify, Regress and MultiInference records are skipped
        (logged). A file that cannot be read fails the load, as on TF Serving.
        """
        path = self.model_dir / WARMUP_FILE
        if not path.is_file():
            return []
        import tensorflow as tf

        records: list[bytes] = []
        try:
            for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                if len(records) == MAX_WARMUP_RECORDS:
                    raise BackendError(
                        f"{path} holds more than {MAX_WARMUP_RECORDS} warm-up records, the most "
                        "TF Serving reads; keep the first ones"
                    )
                records.append(record)
        except tf.errors.OpError as exc:
            raise BackendError(
                f"{path} is not a readable TFRecord file: {_first_line(exc)}"
            ) from exc
        requests, skipped = warmup_requests(records, label=WARMUP_FILE.name)
        log.info(
            "TF Serving warm-up file read",
            model=self.model_name,
            version=self.version,
            records=len(records),
            predict_requests=len(requests),
            **({"skipped": skipped} if skipped else {}),
        )
        return requests

    def unload(self) -> None:
        self._functions = {}
        self._model = None
        gc.collect()

    # -- metadata --------------------------------------------------------------------------

    def signature_names(self) -> list[str]:
        return sorted(self._functions)

    def signature_def_map(self) -> SignatureDefMap:
        """The SignatureDefs of the loaded SavedModel (SignatureBackend)."""
        return self.signature_defs

    def default_signature(self) -> str:
        """The ``signature`` setting: what a request that names no signature runs."""
        return self.settings.signature

    def _current_signature(self) -> str:
        return current_signature() or self.default_signature()

    def model_inputs(self) -> list[TensorSpec] | None:
        if self.declared_inputs() is not None:
            return super().model_inputs()
        return self._specs("inputs")

    def model_outputs(self) -> list[TensorSpec] | None:
        if self.declared_outputs() is not None:
            return super().model_outputs()
        return self._specs("outputs")

    def _specs(self, which: str) -> list[TensorSpec] | None:
        name = self._current_signature()
        if name not in self.signature_defs.signature_def:
            # Unknown signature: skip the kernel's check, predict() names the valid ones.
            return None
        infos = getattr(self.signature_defs.signature_def[name], which)
        specs = []
        for key in sorted(infos):
            info = infos[key]
            datatype = codec.v2_datatype(info.dtype)
            if datatype is None or info.tensor_shape.unknown_rank:
                return None  # not expressible as a V2 spec: let TensorFlow check it
            shape = tuple(int(d.size) if d.size >= 0 else -1 for d in info.tensor_shape.dim)
            specs.append(TensorSpec(key, datatype, shape))
        return specs

    # -- inference -------------------------------------------------------------------------

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        """Run the signature ``signature_name`` names (default: the ``signature`` setting).

        The kernel has validated ``inputs`` against :meth:`inputs` for that signature (see
        :func:`dl_inference_tensorflow.dli_on_request`); where the signature cannot be
        described as V2 specs (unknown rank, bfloat16), TensorFlow checks them, and what it
        refuses is the client's InvalidInput too.
        """
        import tensorflow as tf

        signature = parameters.get("signature_name") or self.settings.signature
        if not isinstance(signature, str):
            raise InvalidInput(
                f"parameter signature_name must be a string naming a signature of model "
                f"{self.model_name!r}: {', '.join(self.signature_names())}"
            )
        function = self._functions.get(signature)
        if function is None:
            raise InvalidInput(
                f"model {self.model_name!r} has no signature {signature!r}; its signatures are: "
                f"{', '.join(self.signature_names())}"
            )
        try:
            # No dtype forced: the function refuses a tensor of another dtype rather than
            # casting it (1.5 is not an int32), for inputs the kernel could not check.
            tensors = {key: tf.convert_to_tensor(array) for key, array in inputs.items()}
            with tf.device(self._device):
                result = function(**tensors)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise InvalidInput(
                f"model {self.model_name!r} signature {signature!r} rejected the inputs: "
                f"{tf_message(exc)}"
            ) from exc
        wanted = self.config.outputs if self._triton else None
        # A Triton model answers the outputs config.pbtxt declares (all when it names none).
        keys = [t.name for t in wanted] if wanted else list(result)
        return {key: result[key].numpy() for key in keys}

    def client_error(self, exc: BaseException) -> InvalidInput | None:
        """InvalidInput for TensorFlow's ``InvalidArgumentError`` (an op given a shape, size
        or dtype it cannot take) raised in processor.py's ``preprocess()`` or ``run_model()``,
        in one line (:func:`tf_message`); other errors are the model's."""
        import tensorflow as tf

        if not isinstance(exc, tf.errors.InvalidArgumentError):
            return None
        return InvalidInput(f"model {self.model_name!r} rejected the input: {tf_message(exc)}")


# PredictionLog's field numbers (tensorflow_serving/apis/prediction_log.proto and the
# messages it holds), read with the kernel's wire reader: the plugin needs no copy of
# TF Serving's Python package for a file it only reads.
_LOG_TYPES = {2: "classify_log", 3: "regress_log", 4: "multi_inference_log", 5: "session_run_log",
              6: "predict_log", 7: "predict_streamed_log"}  # fmt: skip
_PREDICT_LOG = 6
_PREDICT_LOG_REQUEST = 1
_REQUEST_MODEL_SPEC, _REQUEST_INPUTS = 1, 2
_MODEL_SPEC_SIGNATURE = 3
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
# A short *_val list TensorFlow fills out with its last value: allowed up to this many bytes.
_WARMUP_FILL_LIMIT = 64 * 1024 * 1024


def warmup_requests(records: list[bytes], label: str) -> tuple[list[InferRequest], list[str]]:
    """The predict requests of serialized ``PredictionLog`` records, and what was skipped.

    Each request's inputs are decoded with the tfserving plugin's TensorProto codec; its
    ``id`` names the record (``<label> record N``), and its ``signature_name`` parameter
    the signature its ``model_spec`` names, when it names one. BackendError names the
    record that is not a valid PredictionLog.
    """
    from tensorflow.core.framework import tensor_pb2

    requests: list[InferRequest] = []
    skipped: list[str] = []
    for index, record in enumerate(records):
        name = f"{label} record {index}"
        try:
            kinds = {number: (start, end) for number, _, start, end in wire.iter_fields(record)}
            log_types = [_LOG_TYPES[n] for n in kinds if n in _LOG_TYPES]
            if _PREDICT_LOG not in kinds:
                skipped.append(f"{name}: {', '.join(log_types) or 'no log'}")
                continue
            start, end = kinds[_PREDICT_LOG]
            request = _field(record[start:end], _PREDICT_LOG_REQUEST)
            tensors: dict[str, Any] = {}
            signature = ""
            for number, wire_type, begin, finish in wire.iter_fields(request):
                if wire_type != wire.LEN:
                    continue
                payload = request[begin:finish]
                if number == _REQUEST_MODEL_SPEC:
                    signature = wire.read_string_field(payload, _MODEL_SPEC_SIGNATURE) or ""
                elif number == _REQUEST_INPUTS:
                    key = wire.read_string_field(payload, _ENTRY_KEY) or ""
                    value = _field(payload, _ENTRY_VALUE)
                    tensors[key] = tensor_pb2.TensorProto.FromString(value)
            inputs = codec.tensors_to_numpy(tensors, fill_limit_bytes=_WARMUP_FILL_LIMIT)
        except (wire.WireError, InvalidInput, ValueError) as exc:
            raise BackendError(f"{name} is not a valid PredictionLog: {exc}") from exc
        parameters = {"signature_name": signature} if signature else {}
        requests.append(InferRequest("", inputs, id=name, parameters=parameters))
    return requests, skipped


def _field(message: bytes, number: int) -> bytes:
    """The payload of length-delimited field ``number`` (empty when absent; the last wins)."""
    found = b""
    for field, wire_type, start, end in wire.iter_fields(message):
        if field == number and wire_type == wire.LEN:
            found = message[start:end]
    return found


def _tensor_info(info: TensorInfo, spec: Any) -> None:
    info.name = getattr(spec, "name", "") or ""
    info.dtype = spec.dtype.as_datatype_enum
    if spec.shape.rank is None:
        info.tensor_shape.unknown_rank = True
        return
    for dim in spec.shape.as_list():
        info.tensor_shape.dim.add().size = -1 if dim is None else dim


# Lines of a TensorFlow message that are not its reason: the graph error's head, where the
# failing node was defined (a stack naming server files), the node marker under the reason.
_TF_CONTEXT = re.compile(
    r"^(Graph execution error:|Detected at node .*|<stack traces unavailable>|File \".*)$"
)
_TF_FUNCTION_NODE = re.compile(r"^\{\{function_node [^}]*\}\}\s*")
_TF_OP = re.compile(r"\s*\[Op:[^\]]*\](\s*name:.*)?$")
# A message's part for clients is at most this many characters.
_MESSAGE_CHARS = 240


def tf_message(exc: BaseException) -> str:
    """TensorFlow's reason in one line, for clients: ``Matrix size-incompatible: In[0]:
    [1,5], In[1]: [4,3]``, without the "Graph execution error:" head, the stack of where the
    node was defined (server paths), the ``{{function_node ...}}`` and ``[Op:...]`` marks."""
    text = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last_context = max((i for i, line in enumerate(lines) if _TF_CONTEXT.match(line)), default=-1)
    reasons = [line for line in lines[last_context + 1 :] if not line.startswith("[[")]
    if not reasons:
        return _first_line(exc)
    line = _TF_OP.sub("", _TF_FUNCTION_NODE.sub("", reasons[0]))
    return line if len(line) <= _MESSAGE_CHARS else line[: _MESSAGE_CHARS - 3] + "..."


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
