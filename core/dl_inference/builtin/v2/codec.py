"""Conversions between V2 wire tensors (raw bytes, typed contents, JSON) and numpy arrays,
and between ``ModelInferRequest``/``ModelInferResponse`` and the kernel's types.

Raw tensor bytes become arrays with ``np.frombuffer`` (no copy; such arrays are
read-only). Every decoding error is an :class:`InvalidInput` naming the tensor and saying
what was expected, so the client can fix the request.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.builtin.v2.binary import deserialize_bytes, serialize_bytes
from dl_inference.spi.datatypes import (
    DATATYPES,
    as_bytes_array,
    from_numpy_dtype,
    input_dtype,
)
from dl_inference.spi.errors import BackendError, InvalidInput
from dl_inference.spi.tensor_limits import check_raw_size, check_value_count
from dl_inference.spi.typed_values import array_from_json, json_leaves, narrow_array
from dl_inference.spi.types import InferRequest, InferResponse
from dl_inference.spi.wire import len_field_header

# The InferTensorContents field that carries each datatype, and the numpy type to read it as.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_WIDE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
# Parameters that steer the HTTP binary extension; they are transport, not model, parameters.
TRANSPORT_PARAMETERS = frozenset({"binary_data_output", "binary_data", "binary_data_size"})
# Triton's scheduling options (tritonclient's infer(priority=, timeout=, sequence_id=...))
# and its stream option. Triton takes them out of what a model sees, and acts on them only
# in its priority and sequence batchers and decoupled streams, which dl-inference does not
# have: they are dropped here too.
SCHEDULING_PARAMETERS = frozenset(
    {
        "priority",
        "timeout",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "triton_enable_empty_final_response",
    }
)
# Triton reserves parameter names with this prefix and refuses the others it does not know.
RESERVED_PREFIX = "triton_"


# Triton marks each ModelStreamInfer response as the last one for its request, the
# parameter clients of decoupled streams (perf_analyzer --streaming) wait for. Appended to
# a serialized ModelInferResponse, this map entry adds it.
FINAL_RESPONSE_PARAMETER: bytes = pb.ModelInferResponse(
    parameters={"triton_final_response": pb.InferParameter(bool_param=True)}
).SerializeToString()


# -- shapes and datatypes ------------------------------------------------------------------


_LITTLE_ENDIAN_MACHINE = sys.byteorder == "little"


def _little_endian(dtype: np.dtype) -> np.dtype:
    little = _LITTLE_ENDIAN.get(dtype)
    if little is None:
        little = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
        _LITTLE_ENDIAN[dtype] = little
    return little


# dtype -> its little-endian form: newbyteorder() makes a new dtype on each call, and every
# tensor in and out asks (the V2 datatypes' dtypes, so a handful of entries).
_LITTLE_ENDIAN: dict[np.dtype, np.dtype] = {}


def output_array(model: str, name: str, value: Any) -> tuple[np.ndarray, str]:
    """A model's output as an array with a V2 datatype; BackendError if it has none."""
    array = np.asarray(value)
    if array.dtype.kind in ("U", "S", "O"):
        return as_bytes_array(array), "BYTES"
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return array, from_numpy_dtype(array.dtype)
    except InvalidInput:
        raise BackendError(
            f"model {model!r} returned output {name!r} with numpy dtype {array.dtype}, which has "
            f"no Open Inference Protocol datatype; return one of {', '.join(DATATYPES)}"
        ) from None


# -- raw bytes -----------------------------------------------------------------------------


def raw_to_array(
    name: str, datatype: str, shape: Sequence[Any], buffer: bytes | memoryview
) -> np.ndarray:
    """An array viewing ``buffer`` (no copy) after checking its length against the shape."""
    dtype = input_dtype(name, datatype)
    dims = check_raw_size(name, datatype, shape, memoryview(buffer).nbytes)
    if datatype == "BYTES":
        return deserialize_bytes(buffer, math.prod(dims), name).reshape(dims)
    return np.frombuffer(buffer, dtype=_little_endian(dtype)).reshape(dims)


def array_to_raw(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """The row-major little-endian bytes of ``array`` (a view when it is already laid out so)."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    if (
        _LITTLE_ENDIAN_MACHINE
        and array.ndim
        and array.size
        and array.dtype.isnative
        and array.flags.c_contiguous
    ):
        return memoryview(array).cast("B")  # what a model returns, most often: no numpy calls
    flat = np.ascontiguousarray(array).reshape(-1)
    flat = flat.astype(_little_endian(flat.dtype), copy=False)
    return memoryview(flat.view(np.uint8))


# -- typed contents ------------------------------------------------------------------------


def contents_to_array(
    name: str, datatype: str, shape: Sequence[Any], contents: pb.InferTensorContents
) -> np.ndarray:
    """An array from ``InferTensorContents``, checking field, count and value range."""
    dtype = input_dtype(name, datatype)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input {name!r}: {datatype} has no typed contents field; send it in "
            "raw_input_contents (little-endian bytes, one entry per input)"
        )
    for descriptor, _ in contents.ListFields():
        if descriptor.name != field:
            raise InvalidInput(
                f"input {name!r}: datatype {datatype} carries its values in contents.{field}, "
                f"but contents.{descriptor.name} is set"
            )
    values = getattr(contents, field)
    dims = check_value_count(name, datatype, shape, len(values), field=f"contents.{field}")
    count = len(values)
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(dims)
    wide = np.fromiter(values, dtype=_WIDE[field], count=count)
    return narrow_array(name, wide, dtype, field=f"contents.{field}").reshape(dims)


# -- JSON ----------------------------------------------------------------------------------


def json_to_array(name: str, datatype: str, shape: Sequence[Any], data: Any) -> np.ndarray:
    """An array from a REST tensor's ``data`` (flat or nested, row-major) and its shape."""
    input_dtype(name, datatype)  # an unknown datatype is the first thing to say
    # Nested lists only order the values: the declared shape is the tensor's.
    _, leaves = json_leaves(name, data if isinstance(data, list) else [data])
    dims = check_value_count(name, datatype, shape, len(leaves), field="data")
    return array_from_json(name, datatype, leaves, dims)


def array_to_json(name: str, array: np.ndarray, datatype: str) -> list[Any]:
    """Flat row-major JSON values; BYTES must be UTF-8 (else ask for binary_data)."""
    flat = array.reshape(-1)
    if datatype != "BYTES":
        return flat.tolist()
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"output {name!r} holds bytes that are not UTF-8 text; request it with "
            'parameters {"binary_data": true}'
        ) from None


# -- parameters ----------------------------------------------------------------------------


def flag(value: Any, what: str) -> bool:
    """A JSON true / false; InvalidInput for anything else (a string "false" is not false)."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false, got {json.dumps(value)[:40]}")
    return value


def model_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A request's parameters as the model gets them: without Triton's scheduling options;
    InvalidInput for another name in Triton's reserved ``triton_`` namespace."""
    out = {}
    for key, value in parameters.items():
        if key in SCHEDULING_PARAMETERS:
            continue
        if key.startswith(RESERVED_PREFIX):
            raise InvalidInput(
                f"request parameter {key!r}: names starting with {RESERVED_PREFIX!r} are "
                "reserved for Triton's own options (as Triton answers); choose another name"
            )
        out[key] = value
    return out


def params_from_proto(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """Python values of a ``map<string, InferParameter>``."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, choice) if choice else None
    return out


def params_to_proto(values: Mapping[str, Any], target: MutableMapping[str, Any]) -> None:
    """Fill a ``map<string, InferParameter>`` from python values (others as strings)."""
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int | np.integer):
            if value > np.iinfo(np.int64).max:
                param.uint64_param = int(value)
            else:
                param.int64_param = int(value)
        elif isinstance(value, float | np.floating):
            param.double_param = float(value)
        else:
            param.string_param = value if isinstance(value, str) else str(value)


# -- whole messages ------------------------------------------------------------------------


def decode_infer_request(
    message: pb.ModelInferRequest,
    raw: Sequence[bytes | memoryview],
    *,
    deadline: float | None = None,
) -> InferRequest:
    """An InferRequest from a ModelInferRequest whose raw contents were cut out into ``raw``."""
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"the request has {len(message.inputs)} inputs but {len(raw)} raw_input_contents "
            "entries; give exactly one raw entry per input, in the order of inputs, or none"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears more than once in the request")
        if raw:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise InvalidInput(
                    f"input {name!r} has typed contents while the request uses "
                    "raw_input_contents; use one or the other for all inputs"
                )
            inputs[name] = raw_to_array(name, tensor.datatype, tensor.shape, raw[index])
        else:
            inputs[name] = contents_to_array(name, tensor.datatype, tensor.shape, tensor.contents)
    outputs: list[str] | None = None
    if message.outputs:
        outputs = []
        for requested in message.outputs:
            if "classification" in requested.parameters:
                raise InvalidInput(
                    f"output {requested.name!r}: the classification extension is not supported; "
                    "request the output without the classification parameter"
                )
            outputs.append(requested.name)
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        inputs=inputs,
        parameters=model_parameters(params_from_proto(message.parameters))
        if message.parameters
        else {},
        outputs=outputs,
        deadline=deadline,
    )


def encode_infer_response(
    response: InferResponse,
) -> tuple[pb.ModelInferResponse, list[bytes | memoryview]]:
    """The response message (without raw contents) and each output's raw bytes, in order.

    The raw bytes are appended to the serialized message by :func:`serialize_with_raw`,
    so each output is copied once, not three times through the protobuf runtime.
    """
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
    )
    params_to_proto(response.parameters, message.parameters)
    raw: list[bytes | memoryview] = []
    for name, value in response.outputs.items():
        array, datatype = output_array(response.model_name, name, value)
        tensor = message.outputs.add(name=name, datatype=datatype)
        tensor.shape.extend(array.shape)
        raw.append(array_to_raw(array, datatype))
    return message, raw


# ModelInferResponse's field numbers that serialize_infer_response writes itself.
_RESPONSE_ID = pb.ModelInferResponse.ID_FIELD_NUMBER
RAW_OUTPUT_CONTENTS = pb.ModelInferResponse.RAW_OUTPUT_CONTENTS_FIELD_NUMBER

# (model, version) -> its responses' serialized name and version; (model, version, outputs'
# names, datatypes and shapes) -> their serialized output entries. Bounded: cleared when full.
_NAMES: dict[tuple[str, str], bytes] = {}
_OUTPUTS: dict[tuple[Any, ...], bytes] = {}
_KEPT = 256


def serialize_infer_response(response: InferResponse) -> bytes:
    """``response`` as a serialized ModelInferResponse with raw output contents.

    The bytes are those of :func:`encode_infer_response` then :func:`serialize_with_raw`
    (fields in number order), but what the responses of one model and output shapes share
    (model name and version; each output's name, datatype and shape) is serialized once by
    the protobuf runtime and reused: only the id and the tensor bytes differ per response.
    """
    if response.parameters:
        reply, raw = encode_infer_response(response)
        return serialize_with_raw(reply.SerializeToString(), RAW_OUTPUT_CONTENTS, raw)
    model, version = response.model_name, response.model_version
    arrays = []
    shapes: list[Any] = [model, version]
    for name, value in response.outputs.items():
        array, datatype = output_array(model, name, value)
        arrays.append((array, datatype))
        shapes.append((name, datatype, array.shape))
    names = _NAMES.get((model, version))
    if names is None:
        names = pb.ModelInferResponse(model_name=model, model_version=version).SerializeToString()
        _keep(_NAMES, (model, version), names)
    key = tuple(shapes)
    outputs = _OUTPUTS.get(key)
    if outputs is None:
        message = pb.ModelInferResponse()
        for name, datatype, shape in key[2:]:
            message.outputs.add(name=name, datatype=datatype).shape.extend(shape)
        outputs = message.SerializeToString()
        _keep(_OUTPUTS, key, outputs)
    if response.id:
        encoded = response.id.encode("utf-8")
        head = b"".join((names, len_field_header(_RESPONSE_ID, len(encoded)), encoded, outputs))
    else:
        head = names + outputs
    raw = [array_to_raw(array, datatype) for array, datatype in arrays]
    return serialize_with_raw(head, RAW_OUTPUT_CONTENTS, raw)


def _keep(cache: dict[Any, bytes], key: Any, value: bytes) -> None:
    if len(cache) >= _KEPT:
        cache.clear()
    cache[key] = value


def serialize_with_raw(head: bytes, field: int, raw: Iterable[bytes | memoryview]) -> bytes:
    """``head`` plus one length-delimited field entry per buffer (repeated bytes field)."""
    parts: list[bytes | memoryview] = [head]
    for buffer in raw:
        size = buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)
        parts.append(len_field_header(field, size))
        parts.append(buffer)
    return b"".join(parts)
