"""Request bodies for TF Serving and Seldon, encoded by hand so the bench needs neither
TensorFlow nor a Seldon client library.

Field numbers come from the published ``tensorflow_serving/apis/predict.proto``,
``model.proto``, ``tensorflow/core/framework/tensor.proto`` / ``tensor_shape.proto`` and
Seldon Core's ``prediction.proto``; only the fields a benchmark request needs are written.
Wire compatibility depends on field numbers and wire types alone, so these bytes parse as
the real messages in any client or server.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

import numpy as np

from dl_inference.spi.datatypes import from_numpy_dtype
from dl_inference.spi.wire import encode_varint

_VARINT, _LEN = 0, 2

# TensorFlow's DataType enum (types.proto) for each V2 datatype.
TF_DTYPES: dict[str, int] = {
    "FP32": 1,
    "FP64": 2,
    "INT32": 3,
    "UINT8": 4,
    "INT16": 5,
    "INT8": 6,
    "BYTES": 7,
    "INT64": 9,
    "BOOL": 10,
    "UINT16": 17,
    "FP16": 19,
    "UINT32": 22,
    "UINT64": 23,
}

# predict.proto: PredictRequest.model_spec = 1, inputs = 2 (map<string, TensorProto>).
# model.proto: ModelSpec.name = 1, version = 2 (google.protobuf.Int64Value), signature_name = 3.
# tensor.proto: dtype = 1, tensor_shape = 2, tensor_content = 4, string_val = 8.
# tensor_shape.proto: TensorShapeProto.dim = 2; Dim.size = 1.
# prediction.proto (Seldon): SeldonMessage.meta = 2, data = 3; DefaultData.tftensor = 4;
# Meta.tags = 2 (map<string, google.protobuf.Value>); Value.string_value = 3.


varint = encode_varint


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message, packed repeated)."""
    return key(number, _LEN) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return key(number, _VARINT) + varint(value)


def tf_tensor_proto(array: np.ndarray) -> bytes:
    """``tensorflow.TensorProto``: dtype, shape and the data (``tensor_content`` or strings)."""
    datatype = from_numpy_dtype(array.dtype)
    if datatype not in TF_DTYPES:
        raise ValueError(f"datatype {datatype} has no TensorFlow equivalent")
    dims = b"".join(len_field(2, varint_field(1, int(size))) for size in array.shape)
    body = varint_field(1, TF_DTYPES[datatype]) + len_field(2, dims)
    if datatype == "BYTES":
        body += b"".join(len_field(8, _as_bytes(item)) for item in array.reshape(-1))
    else:
        body += len_field(
            4, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        )
    return body


def tfs_predict_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: str = "",
    signature: str = "",
) -> bytes:
    """A serialized ``tensorflow.serving.PredictRequest``."""
    spec = len_field(1, model.encode())
    if version:
        spec += len_field(2, varint_field(1, int(version)))
    if signature:
        spec += len_field(3, signature.encode())
    body = len_field(1, spec)
    for name, array in inputs.items():
        entry = len_field(1, name.encode()) + len_field(2, tf_tensor_proto(array))
        body += len_field(2, entry)
    return body


def seldon_message(model: str, array: np.ndarray, *, tags: Iterable[tuple[str, str]] = ()) -> bytes:
    """A serialized ``seldon.protos.SeldonMessage``: one ``data.tftensor`` plus model tags.

    ``tftensor`` keeps the datatype and passes the data as raw bytes, the cheapest form
    the Seldon protocol has for a numeric tensor.
    """
    tag_bytes = b""
    for name, value in (("model", model), *tags):
        entry = len_field(1, name.encode()) + len_field(2, len_field(3, value.encode()))
        tag_bytes += len_field(2, entry)
    data = len_field(4, tf_tensor_proto(array))
    return len_field(2, tag_bytes) + len_field(3, data)


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return str(item).encode()


def v2_bytes_raw(array: np.ndarray) -> bytes:
    """A BYTES tensor in V2 raw form: each element as a 4-byte little-endian length + bytes."""
    parts = []
    for item in array.reshape(-1):
        data = _as_bytes(item)
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)
