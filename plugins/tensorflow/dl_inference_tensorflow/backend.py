"""The ``tensorflow`` backend: serves a SavedModel with every signature it exports.

TensorFlow is imported in :meth:`TensorFlowBackend.load`, never at module import, so listing
plugins stays fast and works without the framework.
"""

from __future__ import annotations

import gc
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
    InferRequest,
    InvalidInput,
    TensorSpec,
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

log = structlog.get_logger("dl_inference_tensorflow")

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
    model_files = ("saved_model.pb", "saved_model.pbtxt")
    settings: TensorFlowSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signature_defs = SignatureDefMap()
        self._functions: dict[str, Any] = {}
        self._model: Any = None
        self._device = "/CPU:0"

    @property
    def platform(self) -> str:
        return "tensorflow_savedmodel"

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        import tensorflow as tf

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
            self._model = tf.saved_model.load(str(self.path), tags=self.settings.tags)
        self._functions = {
            name: fn
            for name, fn in self._model.signatures.items()
            if name not in _INTERNAL_SIGNATURES
        }
        self.signature_defs = self._read_signature_defs(tf)
        if not self._functions:
            raise BackendError(
                f"model {self.model_name!r}: the SavedModel in {self.path} exports no signatures; "
                "save it with signatures={'serving_default': ...}"
            )
        if self.settings.signature not in self._functions:
            raise BackendError(
                f"model {self.model_name!r}: signature {self.settings.signature!r} (setting "
                "`signature`) is not in the SavedModel; it has: "
                f"{', '.join(sorted(self._functions))}"
            )

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
        pb = self.path / "saved_model.pb"
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
        path = self.path / WARMUP_FILE
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
                f"{_first_line(exc)}"
            ) from exc
        return {key: value.numpy() for key, value in result.items()}


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


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
