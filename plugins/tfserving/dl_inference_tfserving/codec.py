"""TensorProto <-> numpy, and TF DataType <-> V2 datatype names, without importing TensorFlow.

Decoding reads ``tensor_content`` with ``np.frombuffer`` (no copy); typed ``*_val`` fields
follow TensorFlow's rule that a shorter list is padded with its last value, within a byte
budget. Declared shapes are checked against the bytes present before any allocation.
Encoding fills the typed ``*_val`` fields, as TF Serving answers, or ``tensor_content``
on request.

Public for other plugins: :func:`to_numpy` (:func:`tensors_to_numpy` for a message's
several tensors) and :func:`from_numpy` read and write any protobuf message with
TensorProto's fields, whatever package compiled it (the seldon plugin's ``tftensor`` is
one), so TensorProto's rules live here only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dl_inference import InvalidInput, check_raw_size, check_value_count, narrow_array, wire
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


def to_numpy(proto: Any, name: str = "", *, fill_limit_bytes: int | None = None) -> np.ndarray:
    """Decode one TensorProto; InvalidInput says which tensor and what is wrong with it.

    ``proto`` is any protobuf message with TensorProto's fields (``dtype``,
    ``tensor_shape``, ``tensor_content``, the ``*_val`` fields): this plugin's
    ``tfs_pb2.TensorProto``, TensorFlow's own, or another plugin's copy such as Seldon's
    ``tftensor``; it is read in place, not converted. ``name`` names the tensor in messages.
    Sizes are checked against the bytes the message carries before anything is allocated
    (the kernel's :func:`~dl_inference.check_raw_size` / :func:`~dl_inference.check_value_count`).
    TensorFlow fills a short ``*_val`` list out with its last value (one value for a whole
    tensor): allowed up to ``fill_limit_bytes`` bytes of filled tensor (tie it to the
    server's message limit), refused when it is None. Typed values that do not fit the
    dtype (``DT_UINT8`` ``int_val`` -1) are refused (the kernel's
    :func:`~dl_inference.narrow_array`). ``tensor_content`` is viewed, not copied: the
    array is read-only. A message that carries several tensors decodes them with
    :func:`tensors_to_numpy`, whose fill limit holds for all of them together.
    """
    return _decode(_check(proto, name, fill_limit_bytes))


def tensors_to_numpy(
    tensors: Mapping[str, Any], *, fill_limit_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Decode a request's TensorProtos by name, with one fill budget for all of them.

    Each tensor is checked as :func:`to_numpy` checks it, on counts only; then the bytes
    that filling out short ``*_val`` lists would take, summed over every tensor, must fit
    ``fill_limit_bytes``; only then is anything allocated. So a request of many tiny
    tensors, each filled up to the limit, costs no more than one such tensor would.
    """
    checked = [(key, _check(proto, key, fill_limit_bytes)) for key, proto in tensors.items()]
    if fill_limit_bytes is not None:
        filled = [(key, plan.filled) for key, plan in checked if plan.filled]
        total = sum(size for _, size in filled)
        if total > fill_limit_bytes:
            shown = ", ".join(f"{key!r}: {size}" for key, size in filled[:8])
            more = f", and {len(filled) - 8} more" if len(filled) > 8 else ""
            raise InvalidInput(
                f"filling out the short value lists of {len(filled)} inputs with their last "
                f"value would take {total} bytes in all ({shown}{more}), over the "
                f"{fill_limit_bytes}-byte limit for one request; send shapes that match "
                "the values"
            )
    return {key: _decode(plan) for key, plan in checked}


@dataclass(frozen=True)
class _Checked:
    """A TensorProto whose sizes are checked: what decoding it will allocate, and how."""

    proto: Any
    label: str
    dims: tuple[int, ...]
    filled: int  # bytes of the tensor filled out from a short *_val list; 0 when not filled


def _check(proto: Any, name: str, fill_limit_bytes: int | None) -> _Checked:
    """Everything :func:`to_numpy` refuses, on counts only: nothing is allocated here."""
    label = name or "tensor"
    entry = _TABLE.get(proto.dtype)
    if entry is None:
        supported = ", ".join(dtype_name(dt) for dt in _TABLE)
        raise InvalidInput(
            f"input {label!r}: dtype {dtype_name(proto.dtype)} is not supported; use one of "
            f"{supported}"
        )
    np_dtype, datatype, field = entry
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"input {label!r}: tensor_shape has unknown_rank; send a concrete shape")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if proto.tensor_content and proto.dtype != DT.DT_STRING:
        dims = check_raw_size(
            label, datatype, shape, len(proto.tensor_content), field="tensor_content"
        )
        return _Checked(proto, label, dims, 0)
    present = len(getattr(proto, field))
    dims = check_value_count(
        label, datatype, shape, present, field=field, fill_limit_bytes=fill_limit_bytes
    )
    count = math.prod(dims)
    # The filled tensor's size as check_value_count bounds it (8 bytes an element for strings).
    return _Checked(proto, label, dims, count * np_dtype.itemsize if present < count else 0)


def _decode(plan: _Checked) -> np.ndarray:
    """The array of a checked TensorProto (allocations bounded by :func:`_check`)."""
    proto, label, dims = plan.proto, plan.label, plan.dims
    np_dtype, _, field = _TABLE[proto.dtype]
    if proto.tensor_content and proto.dtype != DT.DT_STRING:
        # Zero-copy (the array views the request's bytes, read-only): tensor_content is
        # little-endian, which is also the host's order wherever astype has nothing to do.
        wire = np_dtype.newbyteorder("<")
        return (
            np.frombuffer(proto.tensor_content, dtype=wire)
            .astype(np_dtype, copy=False)
            .reshape(dims)
        )
    values: Any = getattr(proto, field)
    if proto.dtype == DT.DT_STRING:
        array = np.empty(len(values), dtype=np.object_)
        array[:] = list(values)
    else:
        array = _typed_values(label, proto.dtype, field, values)
    count = math.prod(dims)
    if len(array) < count:
        # TensorFlow's rule; check_value_count has bounded the size of the filled tensor.
        padded = np.empty(count, dtype=array.dtype)
        padded[: len(array)] = array
        padded[len(array) :] = array[-1]
        array = padded
    return array.reshape(dims)


# Typed value fields as protobuf holds them: numpy reads them at this width, then narrows.
_WIDE: dict[str, np.dtype] = {
    "float_val": np.dtype(np.float32),
    "double_val": np.dtype(np.float64),
    "half_val": np.dtype(np.int32),
    "int_val": np.dtype(np.int32),
    "int64_val": np.dtype(np.int64),
    "uint32_val": np.dtype(np.uint32),
    "uint64_val": np.dtype(np.uint64),
    "bool_val": np.dtype(np.bool_),
}


def _typed_values(label: str, dtype: int, field: str, values: Any) -> np.ndarray:
    """``values`` of ``field`` as the dtype's array, refusing values the dtype cannot hold.

    ``int_val`` carries int8...uint16 as int32 and ``half_val`` carries float16 bit
    patterns as int32: a value outside the narrower type is the client's mistake, never
    silently wrapped.
    """
    wide = np.fromiter(values, dtype=_WIDE[field], count=len(values))
    if dtype == DT.DT_HALF:
        # DT_HALF travels as its 16 bits: range-checked as uint16, then reinterpreted.
        bits = narrow_array(
            label, wide, np.uint16, field=field, type_name="DT_HALF's float16 bit patterns"
        )
        return bits.view(np.float16)
    return narrow_array(label, wide, _TABLE[dtype][0], field=field, type_name=dtype_name(dtype))


def from_numpy(array: np.ndarray, proto: Any = None, *, tensor_content: bool = False) -> Any:
    """Encode an array as TensorFlow's ``Tensor::AsProtoField`` does, or in ``tensor_content``.

    By default numbers go to the dtype's typed field, as TF Serving answers ``Predict``
    (``float_val``, ``double_val``, ``int_val`` for int8...uint16 and int32, ``int64_val``,
    ``uint32_val``, ``uint64_val``, ``bool_val``, and ``half_val`` holding float16's 16-bit
    patterns), one value per element. ``tensor_content=True`` writes numbers as
    ``Tensor::AsProtoTensorContent`` does: their little-endian bytes in ``tensor_content``
    (one copy). Strings always go to ``string_val``. Both read back the same with
    ``tf.make_ndarray``.

    Fills ``proto`` (any empty message with TensorProto's fields, e.g. Seldon's
    ``tftensor`` in a reply) or a new ``tfs_pb2.TensorProto``, and returns it.
    """
    proto = proto if proto is not None else tfs_pb2.TensorProto()
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    proto.dtype = tf_dtype_for_numpy(array.dtype)
    for dim in array.shape:
        proto.tensor_shape.dim.add().size = dim
    if proto.dtype == DT.DT_STRING:
        proto.string_val.extend(_as_bytes(v) for v in array.reshape(-1))
    elif tensor_content:
        wire_dtype = array.dtype.newbyteorder("<")
        proto.tensor_content = np.ascontiguousarray(array, dtype=wire_dtype).tobytes()
    elif array.size:
        _fill_typed(proto, proto.dtype, array.reshape(-1))
    return proto


# Typed fields whose packed wire form is the values' own little-endian bytes (fixed32,
# fixed64, and bool's one-byte varints): written as those bytes (numpy's one copy) and
# parsed by protobuf in C, several times faster than appending Python numbers one by one.
# A message of another package gets the same field numbers: it has TensorProto's fields.
_PACKED_BYTES: dict[int, tuple[int, np.dtype]] = {
    DT.DT_FLOAT: (tfs_pb2.TensorProto.FLOAT_VAL_FIELD_NUMBER, np.dtype("<f4")),
    DT.DT_DOUBLE: (tfs_pb2.TensorProto.DOUBLE_VAL_FIELD_NUMBER, np.dtype("<f8")),
    DT.DT_BOOL: (tfs_pb2.TensorProto.BOOL_VAL_FIELD_NUMBER, np.dtype(np.uint8)),
}


def _fill_typed(proto: Any, dtype: int, flat: np.ndarray) -> None:
    """Append ``flat``'s values to the typed field of ``dtype`` (``Tensor::AsProtoField``)."""
    packed = _PACKED_BYTES.get(dtype)
    if packed is not None:
        number, wire_dtype = packed
        raw = np.ascontiguousarray(flat, dtype=wire_dtype).tobytes()
        # Merging appends to the repeated field, as extend() would: same message, any package.
        proto.MergeFromString(wire.len_field_header(number, len(raw)) + raw)
    elif dtype == DT.DT_HALF:
        # TensorFlow keeps float16 as its bit patterns in half_val (an int32 field).
        proto.half_val.extend(flat.view(np.uint16).tolist())
    else:
        # Varint fields: tolist() hands protobuf Python ints, far faster than numpy scalars.
        getattr(proto, _TABLE[dtype][2]).extend(flat.tolist())


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    return str(value).encode("utf-8")
