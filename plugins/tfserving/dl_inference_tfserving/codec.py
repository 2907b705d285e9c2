"""TensorProto <-> numpy, and TF DataType <-> V2 datatype names, without importing TensorFlow.

Decoding reads ``tensor_content`` with ``np.frombuffer`` (no copy); typed ``*_val`` fields
follow TensorFlow's rule that a shorter list is padded with its last value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dl_inference import InvalidInput
from dl_inference_tfserving._proto import tfs_pb2

DT = tfs_pb2.DataType

# TF DataType -> (numpy dtype, V2 datatype, TensorProto field for typed values).
_TABLE: dict[int, tuple[np.dtype, str, str]] = {
    DT.DT_FLOAT: (np.dtype(np.float32), "FP32", "float_val"),
    DT.DT_DOUBLE: (np.dtype(np.float64), "FP64", "double_val"),
    DT.DT_HALF: (np.dtype(np.float16), "FP16", "half_val"),
    DT.DT_INT8: (np.dtype(np.int8), "INT8", "int_val"),
    DT.DT_INT16: (np.dtype(np.int16), "INT16", "int_val"),
    DT.DT_INT32: (np.dtype(np.int32), "INT32", "int_val"),
    DT.DT_INT64: (np.dtype(np.int64), "INT64", "int64_val"),
    DT.DT_UINT8: (np.dtype(np.uint8), "UINT8", "int_val"),
    DT.DT_UINT16: (np.dtype(np.uint16), "UINT16", "int_val"),
    DT.DT_UINT32: (np.dtype(np.uint32), "UINT32", "uint32_val"),
    DT.DT_UINT64: (np.dtype(np.uint64), "UINT64", "uint64_val"),
    DT.DT_BOOL: (np.dtype(np.bool_), "BOOL", "bool_val"),
    DT.DT_STRING: (np.dtype(np.object_), "BYTES", "string_val"),
}
_BY_V2: dict[str, int] = {v2: dt for dt, (_, v2, _) in _TABLE.items()}
_BY_NUMPY: dict[np.dtype, int] = {np_dtype: dt for dt, (np_dtype, _, _) in _TABLE.items()}


def dtype_name(dtype: int) -> str:
    """``DT_FLOAT`` for 1; the number itself for values this build does not know."""
    try:
        return DT.Name(dtype)
    except ValueError:
        return str(dtype)


def v2_datatype(dtype: int) -> str | None:
    """The V2 datatype name of a TF DataType, or ``None`` when V2 has no equivalent."""
    entry = _TABLE.get(dtype)
    if entry is not None:
        return entry[1]
    return "BF16" if dtype == DT.DT_BFLOAT16 else None


def tf_dtype_for_v2(datatype: str) -> int:
    """The TF DataType of a V2 datatype name (DT_INVALID when there is none)."""
    if datatype == "BF16":
        return DT.DT_BFLOAT16
    return _BY_V2.get(datatype, DT.DT_INVALID)


def numpy_dtype(dtype: int) -> np.dtype | None:
    """The numpy dtype of a TF DataType, or ``None`` when numpy has none (bfloat16...)."""
    entry = _TABLE.get(dtype)
    return entry[0] if entry else None


def tf_dtype_for_numpy(dtype: np.dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "S", "U"):
        return DT.DT_STRING
    found = _BY_NUMPY.get(dtype)
    if found is None:
        raise InvalidInput(f"numpy dtype {dtype} has no TensorFlow DataType")
    return found


def to_numpy(proto: tfs_pb2.TensorProto, name: str = "") -> np.ndarray:
    """Decode one TensorProto; InvalidInput says which tensor and what is wrong with it."""
    label = f"input {name!r}" if name else "tensor"
    entry = _TABLE.get(proto.dtype)
    if entry is None:
        supported = ", ".join(dtype_name(dt) for dt in _TABLE)
        raise InvalidInput(
            f"{label}: dtype {dtype_name(proto.dtype)} is not supported; use one of {supported}"
        )
    np_dtype, _, field = entry
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"{label}: tensor_shape has unknown_rank; send a concrete shape")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{label}: tensor_shape {list(shape)} has a negative dimension")
    count = int(np.prod(shape, dtype=np.int64))
    if proto.tensor_content and proto.dtype != DT.DT_STRING:
        content = proto.tensor_content
        if len(content) != count * np_dtype.itemsize:
            raise InvalidInput(
                f"{label}: tensor_content holds {len(content)} bytes but shape {list(shape)} of "
                f"{dtype_name(proto.dtype)} needs {count * np_dtype.itemsize}"
            )
        # Zero-copy: the array views the request's bytes (read-only).
        return np.frombuffer(content, dtype=np_dtype).reshape(shape)
    values: Any = getattr(proto, field)
    if proto.dtype == DT.DT_STRING:
        array = np.empty(len(values), dtype=np.object_)
        array[:] = list(values)
    elif proto.dtype == DT.DT_HALF:
        array = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.asarray(values, dtype=np_dtype)
    if len(array) == count:
        return array.reshape(shape)
    if 0 < len(array) < count:
        # TensorFlow pads a short value list with its last element (e.g. one value = fill).
        padded = np.empty(count, dtype=array.dtype)
        padded[: len(array)] = array
        padded[len(array) :] = array[-1]
        return padded.reshape(shape)
    raise InvalidInput(
        f"{label}: {len(array)} values in {field} do not fit shape {list(shape)} ({count} elements)"
    )


def from_numpy(array: np.ndarray, proto: tfs_pb2.TensorProto | None = None) -> tfs_pb2.TensorProto:
    """Encode an array; numbers go to ``tensor_content`` (one copy), strings to ``string_val``."""
    proto = proto if proto is not None else tfs_pb2.TensorProto()
    array = np.asarray(array)
    proto.dtype = tf_dtype_for_numpy(array.dtype)
    for dim in array.shape:
        proto.tensor_shape.dim.add().size = dim
    if proto.dtype == DT.DT_STRING:
        proto.string_val.extend(_as_bytes(v) for v in array.reshape(-1))
    else:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    return proto


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    return str(value).encode("utf-8")
