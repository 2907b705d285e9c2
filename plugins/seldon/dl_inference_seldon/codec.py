"""Conversions between Seldon's ``SeldonMessage`` and the kernel's named numpy arrays.

Requests: ``data.tensor`` (doubles + shape), ``data.ndarray`` (nested JSON lists),
``data.tftensor`` (TensorFlow's TensorProto), ``binData`` (bytes), ``strData`` (text),
``jsonData`` (any JSON value; an object maps input names to values).

Seldon's message carries one tensor, with no tensor name, so:

- a model declaring exactly one input gets the data under that input's name, cast to its
  declared datatype when the wire form is untyped (tensor, ndarray and JSON numbers are
  doubles);
- a model declaring several inputs needs ``jsonData`` as an object ``{input: value}``;
- a model declaring none gets it as ``input__0``, untouched (float64 for numbers).

Replies use the request's kind: tensor -> tensor, ndarray -> ndarray, tftensor -> tftensor,
jsonData -> jsonData. As Seldon's own wrapper does, a ``binData`` / ``strData`` request is
answered in kind when the model returns one string (BYTES with one element) and with
``data.ndarray`` otherwise; a BYTES output asked for as a tensor comes back as ndarray
too. Data replies carry one output: the one named by ``meta.tags.output``, else the first;
an object ``jsonData`` request gets every output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2

from dl_inference import InvalidInput, TensorSpec, from_numpy_dtype, to_numpy_dtype
from dl_inference_seldon._proto import seldon_pb2 as pb

DEFAULT_INPUT = "input__0"

# TensorFlow DataType number -> numpy dtype, for the types a model tensor can have here.
TF_TO_NUMPY: dict[int, np.dtype] = {
    pb.DT_FLOAT: np.dtype(np.float32),
    pb.DT_DOUBLE: np.dtype(np.float64),
    pb.DT_INT32: np.dtype(np.int32),
    pb.DT_UINT8: np.dtype(np.uint8),
    pb.DT_INT16: np.dtype(np.int16),
    pb.DT_INT8: np.dtype(np.int8),
    pb.DT_STRING: np.dtype(np.object_),
    pb.DT_INT64: np.dtype(np.int64),
    pb.DT_BOOL: np.dtype(np.bool_),
    pb.DT_UINT16: np.dtype(np.uint16),
    pb.DT_HALF: np.dtype(np.float16),
    pb.DT_UINT32: np.dtype(np.uint32),
    pb.DT_UINT64: np.dtype(np.uint64),
}
NUMPY_TO_TF: dict[np.dtype, int] = {dtype: number for number, dtype in TF_TO_NUMPY.items()}
# The typed repeated field that carries each TensorFlow type when tensor_content is empty.
TF_VALUE_FIELD: dict[int, str] = {
    pb.DT_FLOAT: "float_val",
    pb.DT_DOUBLE: "double_val",
    pb.DT_INT32: "int_val",
    pb.DT_UINT8: "int_val",
    pb.DT_INT16: "int_val",
    pb.DT_INT8: "int_val",
    pb.DT_UINT16: "int_val",
    pb.DT_STRING: "string_val",
    pb.DT_INT64: "int64_val",
    pb.DT_BOOL: "bool_val",
    pb.DT_HALF: "half_val",
    pb.DT_UINT32: "uint32_val",
    pb.DT_UINT64: "uint64_val",
}


def data_kind(message: pb.SeldonMessage) -> str:
    """``tensor``, ``ndarray``, ``tftensor``, ``binData``, ``strData`` or ``jsonData``."""
    which = message.WhichOneof("data_oneof")
    if which == "data":
        inner = message.data.WhichOneof("data_oneof")
        if inner is None:
            raise InvalidInput(
                "the SeldonMessage's data holds no tensor, ndarray or tftensor; set one of them"
            )
        return inner
    if which in ("binData", "strData", "jsonData"):
        return which
    if which == "customData":
        raise InvalidInput(
            "customData (google.protobuf.Any) is not supported; send data.tensor, "
            "data.ndarray, data.tftensor, binData, strData or jsonData"
        )
    raise InvalidInput(
        "the SeldonMessage carries no data; set data.tensor, data.ndarray, data.tftensor, "
        "binData, strData or jsonData"
    )


def value_to_python(value: struct_pb2.Value) -> Any:
    """A ``google.protobuf.Value`` as plain Python (numbers are floats)."""
    return json_format.MessageToDict(value)


def tags_to_dict(meta: pb.Meta) -> dict[str, Any]:
    """``meta.tags`` as plain Python values."""
    return {key: value_to_python(value) for key, value in meta.tags.items()}


# -- requests ------------------------------------------------------------------------------


def decode_inputs(
    message: pb.SeldonMessage, kind: str, specs: Sequence[TensorSpec] | None
) -> dict[str, np.ndarray]:
    """The request's data as named arrays for a model with input ``specs`` (None: unknown)."""
    specs = list(specs or [])
    if kind == "jsonData":
        value = value_to_python(message.jsonData)
        if isinstance(value, dict) and (len(specs) != 1 or specs[0].name in value):
            by_name = {spec.name: spec for spec in specs}
            return {
                name: _cast(name, _json_array(name, item), by_name.get(name))
                for name, item in value.items()
            }
        return _single(specs, lambda name: _json_array(name, value), typed=False)
    if len(specs) > 1:
        names = ", ".join(spec.name for spec in specs)
        raise InvalidInput(
            f"the model takes {len(specs)} inputs ({names}), and Seldon's {kind} carries one "
            "tensor; send jsonData as an object {input name: value, ...}"
        )
    if kind == "tensor":
        return _single(specs, lambda name: _tensor_array(name, message.data.tensor), typed=False)
    if kind == "ndarray":
        lists = json_format.MessageToDict(message.data.ndarray)
        return _single(specs, lambda name: _json_array(name, lists), typed=False)
    if kind == "tftensor":
        return _single(
            specs, lambda name: tftensor_to_array(name, message.data.tftensor), typed=True
        )
    raw = message.binData if kind == "binData" else message.strData.encode("utf-8")
    return _single(specs, lambda name: _scalar_bytes(raw, specs), typed=True)


def _single(specs: list[TensorSpec], make: Any, *, typed: bool) -> dict[str, np.ndarray]:
    spec = specs[0] if specs else None
    name = spec.name if spec else DEFAULT_INPUT
    array = make(name)
    return {name: array if typed else _cast(name, array, spec)}


def _scalar_bytes(raw: bytes, specs: list[TensorSpec]) -> np.ndarray:
    # One element, shaped like the declared input when that holds exactly one element
    # (e.g. [-1, 1] with batching), so that validation accepts a single string.
    out = np.empty(1, dtype=np.object_)
    out[0] = raw
    if specs:
        shape = tuple(1 if dim == -1 else dim for dim in specs[0].shape)
        if math.prod(shape) == 1:
            return out.reshape(shape)
    return out


def _tensor_array(name: str, tensor: pb.Tensor) -> np.ndarray:
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input {name!r}: tensor.shape {list(shape)} has a negative dimension")
    values = np.asarray(tensor.values, dtype=np.float64)
    if not shape:
        shape = values.shape
    if math.prod(shape) != values.size:
        raise InvalidInput(
            f"input {name!r}: tensor.shape {list(shape)} needs {math.prod(shape)} values, "
            f"tensor.values holds {values.size}"
        )
    return values.reshape(shape)


def _json_array(name: str, value: Any) -> np.ndarray:
    """Nested JSON lists (numbers, booleans or strings) as an array; strings become BYTES."""
    try:
        array = np.asarray(value)
    except ValueError as exc:
        raise InvalidInput(
            f"input {name!r}: the nested lists are ragged (rows of different lengths): {exc}"
        ) from None
    if array.dtype.kind in "US":
        return (
            np.vectorize(_utf8, otypes=[np.object_])(array) if array.size else array.astype(object)
        )
    if array.dtype.kind not in "biuf":
        raise InvalidInput(
            f"input {name!r}: values must be all numbers, all booleans or all strings, in "
            "rectangular nested lists (no nulls, no objects, no ragged rows)"
        )
    return array


def _utf8(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _cast(name: str, array: np.ndarray, spec: TensorSpec | None) -> np.ndarray:
    """Untyped wire numbers -> the declared datatype (refusing what would change values)."""
    if spec is None or from_numpy_dtype(array.dtype) == spec.datatype:
        return array
    if spec.datatype == "BYTES" or array.dtype == np.object_:
        raise InvalidInput(
            f"input {name!r} is {spec.datatype}; the request sent "
            f"{'strings' if array.dtype == np.object_ else 'numbers'}"
        )
    target = to_numpy_dtype(spec.datatype)
    if target.kind in "iub" and array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InvalidInput(
                f"input {name!r} is {spec.datatype}; the request holds non-integer numbers"
            )
        if target.kind in "iu":
            info = np.iinfo(target)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise InvalidInput(
                    f"input {name!r} is {spec.datatype}; a value is out of its range "
                    f"[{info.min}, {info.max}]"
                )
    return array.astype(target)


def tftensor_to_array(name: str, tensor: pb.TensorProto) -> np.ndarray:
    """A TensorFlow TensorProto (tensor_content or typed values) as a numpy array."""
    dtype = TF_TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        type_name = (
            pb.DataType.Name(tensor.dtype)
            if tensor.dtype in pb.DataType.values()
            else str(tensor.dtype)
        )
        supported = ", ".join(pb.DataType.Name(d) for d in TF_TO_NUMPY)
        raise InvalidInput(
            f"input {name!r}: tftensor dtype {type_name} is not supported; use {supported}"
        )
    if tensor.tensor_shape.unknown_rank:
        raise InvalidInput(f"input {name!r}: tftensor has unknown rank; give its dimensions")
    shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input {name!r}: tftensor shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if tensor.tensor_content and dtype != np.object_:
        wire = dtype.newbyteorder("<")
        if len(tensor.tensor_content) != count * wire.itemsize:
            raise InvalidInput(
                f"input {name!r}: tftensor shape {list(shape)} of {pb.DataType.Name(tensor.dtype)} "
                f"needs {count * wire.itemsize} bytes of tensor_content, got "
                f"{len(tensor.tensor_content)}"
            )
        return (
            np.frombuffer(tensor.tensor_content, dtype=wire)
            .astype(dtype, copy=False)
            .reshape(shape)
        )
    field = TF_VALUE_FIELD[tensor.dtype]
    values = getattr(tensor, field)
    if dtype == np.object_:
        array = np.empty(len(values), dtype=np.object_)
        array[:] = list(values)
    elif tensor.dtype == pb.DT_HALF:
        array = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.asarray(values).astype(dtype)
    if array.size == count:
        return array.reshape(shape)
    if array.size == 1 and count > 1:
        # TensorFlow's rule: a single value fills the whole tensor.
        return np.full(shape, array[0], dtype=dtype)
    raise InvalidInput(
        f"input {name!r}: tftensor shape {list(shape)} needs {count} values, {field} holds "
        f"{array.size}"
    )


def array_to_tftensor(array: np.ndarray, out: pb.TensorProto) -> None:
    """Fill ``out`` with ``array``: raw little-endian tensor_content, string_val for BYTES."""
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        out.dtype = pb.DT_STRING
        out.string_val.extend(_utf8(v) if isinstance(v, str) else bytes(v) for v in array.flat)
    else:
        number = NUMPY_TO_TF.get(array.dtype)
        if number is None:
            raise InvalidInput(f"numpy dtype {array.dtype} has no TensorFlow DataType here")
        out.dtype = number
        out.tensor_content = np.ascontiguousarray(
            array, dtype=array.dtype.newbyteorder("<")
        ).tobytes()
    out.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=d) for d in array.shape)


# -- replies -------------------------------------------------------------------------------


def encode_reply(
    kind: str,
    outputs: Mapping[str, np.ndarray],
    reply: pb.SeldonMessage,
    *,
    json_object: bool = False,
) -> None:
    """Write ``outputs`` into ``reply`` in the request's ``kind`` (see the module docstring)."""
    if not outputs:
        raise InvalidInput("the model returned no outputs")
    if kind == "jsonData":
        if json_object:
            value: Any = {name: _to_json(array) for name, array in outputs.items()}
        else:
            value = _to_json(next(iter(outputs.values())))
        json_format.ParseDict(value, reply.jsonData)
        return
    array = np.asarray(next(iter(outputs.values())))
    is_bytes = array.dtype.kind in "OSU"
    if kind in ("binData", "strData"):
        if is_bytes and array.size == 1:
            raw = _utf8(array.reshape(-1)[0])
            if kind == "strData":
                try:
                    reply.strData = bytes(raw).decode("utf-8")
                    return
                except UnicodeDecodeError:
                    pass  # not text: the bytes as they are
            reply.binData = bytes(raw)
            return
        kind = "ndarray"
    if kind == "tensor" and is_bytes:
        kind = "ndarray"
    if kind == "tensor":
        reply.data.tensor.shape.extend(array.shape)
        reply.data.tensor.values.extend(array.astype(np.float64, copy=False).ravel().tolist())
    elif kind == "tftensor":
        array_to_tftensor(array, reply.data.tftensor)
    else:
        data = _to_json(array)
        reply.data.ndarray.extend(data if isinstance(data, list) else [data])


def _to_json(array: np.ndarray) -> Any:
    array = np.asarray(array)
    if array.dtype.kind in "OS" and array.size:
        # JSON has no bytes: text as text, other bytes with backslash escapes.
        return np.vectorize(_text, otypes=[np.object_])(array).tolist()
    return array.tolist()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def status_message(code: int, info: str, reason: str) -> pb.SeldonMessage:
    """A failure reply as Seldon writes one: ``status`` filled, no data."""
    message = pb.SeldonMessage()
    message.status.code = code
    message.status.info = info
    message.status.reason = reason
    message.status.status = pb.Status.FAILURE
    return message
