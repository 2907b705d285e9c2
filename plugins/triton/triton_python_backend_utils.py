"""Triton's python-backend utilities, for ``model.py`` files written for Triton.

A Triton python model imports ``triton_python_backend_utils`` (usually as ``pb_utils``) and
builds its answers with it. dl-inference's ``triton_python`` backend (the
``dl-inference-triton`` plugin) serves such models unchanged; this module is that API,
written from Triton's documentation of the python backend: tensors, requests, responses,
errors, the model-configuration helpers and the type tables.

Not provided (a model using them fails to load or gets a clear error): business-logic
scripting (``InferenceRequest(...).exec()``), decoupled response senders, DLPack and GPU
tensors, metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

# Triton's config type names -> numpy types (TYPE_STRING: object arrays of bytes).
TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

# TRITONSERVER_DataType numbers, as triton_to_numpy_type / numpy_to_triton_type use them.
TRITONSERVER_TYPE_INVALID = 0
_TRITON_NUMBERS: dict[int, Any] = {
    1: np.bool_,
    2: np.uint8,
    3: np.uint16,
    4: np.uint32,
    5: np.uint64,
    6: np.int8,
    7: np.int16,
    8: np.int32,
    9: np.int64,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    13: np.object_,
}

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

_log = logging.getLogger("triton_python_backend_utils")


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """The numpy type of a config type name (``"TYPE_FP32"`` -> ``np.float32``)."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> Any:
    """The numpy type of a TRITONSERVER data type number (11 -> ``np.float32``)."""
    return _TRITON_NUMBERS.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """The TRITONSERVER data type number of a numpy type (``np.float32`` -> 11); strings,
    bytes and objects are TYPE_STRING (13); ``None`` for a type Triton has no number for."""
    dtype = np.dtype(data_type)
    if dtype.kind in "OSU":
        return 13
    for number, numpy_type in _TRITON_NUMBERS.items():
        if number != 13 and np.dtype(numpy_type) == dtype:
            return number
    return None


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray | None:
    """BYTES elements as Triton lays them out: a 4-byte little-endian length before each
    element's bytes (str elements as UTF-8), flattened in C order; a uint8 array."""
    if input_tensor.size == 0:
        return None
    parts = []
    for item in np.asarray(input_tensor).reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(len(data).to_bytes(4, "little") + data)
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor: bytes | np.ndarray) -> np.ndarray:
    """The inverse of :func:`serialize_byte_tensor`: a 1-D object array of bytes."""
    data = bytes(encoded_tensor)
    items, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        items.append(data[offset : offset + length])
        offset += length
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


class TritonError:
    """An error a model returns in an :class:`InferenceResponse` (``error=``) for one
    request; ``code`` chooses what the client sees (INVALID_ARG: 400 / INVALID_ARGUMENT,
    the default INTERNAL: 500 / INTERNAL; the plugin's README lists them all)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = str(message)
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self._code})"


class TritonModelException(Exception):
    """What a model may raise (Triton raises it for failed utility calls too)."""

    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


def _as_array(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind in "SU":
        # Fixed-width strings travel as BYTES: object arrays of bytes, as Triton hands out.
        out = np.empty(array.shape, dtype=np.object_)
        flat = out.reshape(-1)
        for i, item in enumerate(array.reshape(-1)):
            flat[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        return out
    return array


class Tensor:
    """A named numpy array: an input of a request or an output of a response."""

    def __init__(self, name: str, data: Any, *_: Any) -> None:
        if not isinstance(name, str):
            raise TritonModelException(f"tensor name must be a string, not {type(name).__name__}")
        self._name = name
        self._array = _as_array(data)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._array.dtype)

    def is_cpu(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._array.dtype}, {list(self._array.shape)})"


class InferenceRequest:
    """One client request as ``execute`` receives it."""

    def __init__(
        self,
        inputs: Iterable[Tensor] = (),
        request_id: str = "",
        parameters: dict[str, Any] | str | None = None,
        requested_output_names: Iterable[str] = (),
        model_name: str = "",
        model_version: int = -1,
        **_: Any,
    ) -> None:
        self._inputs = list(inputs)
        self._request_id = request_id
        self._parameters = (
            parameters if isinstance(parameters, str) else json.dumps(parameters or {})
        )
        self._requested = list(requested_output_names)
        self._model_name = model_name
        self._model_version = model_version

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def parameters(self) -> str:
        """The request's parameters as one JSON object (a string)."""
        return self._parameters

    def requested_output_names(self) -> list[str]:
        return self._requested

    def correlation_id(self) -> int:
        return 0

    def flags(self) -> int:
        return 0

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self) -> Any:
        raise TritonModelException(
            "decoupled models (response senders) are not supported by dl-inference"
        )

    def exec(self, *_: Any, **__: Any) -> Any:
        raise TritonModelException(
            "business-logic scripting (InferenceRequest.exec) is not supported by dl-inference"
        )

    async_exec = exec


class InferenceResponse:
    """The answer to one request: output tensors, or an error for that request only."""

    def __init__(
        self,
        output_tensors: Iterable[Tensor] = (),
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors)
        self._error = error
        self._parameters = parameters

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input ``name``; ``None`` when it does not carry one."""
    return next((t for t in inference_request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output ``name``; ``None`` when it has none."""
    return next((t for t in inference_response.output_tensors() if t.name() == name), None)


def _config_by_name(model_config: dict[str, Any], key: str, name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get(key, []) if t.get("name") == name), None)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """Input ``name`` of a model configuration (``json.loads(args["model_config"])``)."""
    return _config_by_name(model_config, "input", name)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """Output ``name`` of a model configuration (``json.loads(args["model_config"])``)."""
    return _config_by_name(model_config, "output", name)


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    """Whether the configuration asks for a decoupled model (dl-inference serves none)."""
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class ModelConfig:
    """The configuration ``auto_complete_config`` receives and returns: what config.pbtxt
    says, to which the model may add inputs, outputs and its batch size."""

    def __init__(self, model_config: dict[str, Any] | str) -> None:
        self._config = json.loads(model_config) if isinstance(model_config, str) else model_config

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def max_batch_size(self) -> int:
        return int(self._config.get("max_batch_size", 0))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if max_batch_size < 0:
            raise ValueError("max_batch_size must be >= 0")
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input)

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output)

    def _add(self, key: str, tensor: dict[str, Any]) -> None:
        missing = [k for k in ("name", "data_type", "dims") if k not in tensor]
        if missing:
            raise ValueError(f"{key} {tensor!r} lacks {', '.join(missing)}")
        tensors = self._config.setdefault(key, [])
        known = next((t for t in tensors if t.get("name") == tensor["name"]), None)
        if known is None:
            tensors.append(dict(tensor))
            return
        for field in ("data_type", "dims"):
            if field in known and _same(known[field]) != _same(tensor[field]):
                raise ValueError(
                    f"{key} {tensor['name']!r}: {field} {tensor[field]!r} given, the "
                    f"configuration has {known[field]!r}"
                )
            known[field] = tensor[field]


def _same(value: Any) -> Any:
    # dims compare as numbers whether they came as JSON numbers or strings.
    return [int(v) for v in value] if isinstance(value, list) else value


class Logger:
    """Triton's model logger (``pb_utils.Logger.log_info(...)``), onto Python logging."""

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        _log.info(message)

    @staticmethod
    def log_info(message: str) -> None:
        _log.info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning(message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug(message)
