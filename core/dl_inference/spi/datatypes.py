"""Open Inference Protocol (KServe V2) datatype names and their numpy equivalents."""

from __future__ import annotations

import numpy as np

from dl_inference.spi.errors import InvalidInput

# V2 name -> numpy dtype. BYTES is an object array holding `bytes`; BF16 has no numpy type.
_V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_NUMPY_TO_V2: dict[np.dtype, str] = {dtype: name for name, dtype in _V2_TO_NUMPY.items()}

DATATYPES: tuple[str, ...] = tuple(_V2_TO_NUMPY)
"""Every V2 datatype dl-inference can carry, in protocol order."""


def to_numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a V2 datatype name; InvalidInput names the valid ones otherwise."""
    try:
        return _V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(
            f"unsupported datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        ) from None


def input_dtype(name: str, datatype: str) -> np.dtype:
    """:func:`to_numpy_dtype` for a request tensor: the InvalidInput names the input."""
    try:
        return _V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(
            f"input {name!r}: unsupported datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        ) from None


def from_numpy_dtype(dtype: np.dtype) -> str:
    """The V2 datatype name for a numpy dtype (strings and object arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NUMPY_TO_V2[dtype]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def is_datatype(datatype: str) -> bool:
    """Whether ``datatype`` is a V2 datatype name dl-inference supports."""
    return datatype in _V2_TO_NUMPY


def as_bytes_array(array: np.ndarray) -> np.ndarray:
    """An object array of ``bytes`` for a BYTES tensor given as str/bytes/object values."""
    if array.dtype == np.object_ and all(isinstance(v, bytes) for v in array.flat):
        return array
    out = np.empty(array.shape, dtype=np.object_)
    for index, value in np.ndenumerate(array):
        if isinstance(value, bytes):
            out[index] = bytes(value)
        elif isinstance(value, str):
            out[index] = value.encode("utf-8")
        else:
            out[index] = str(value).encode("utf-8")
    return out
