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

Hostile input is refused before it costs memory: declared shapes are checked against the
values or bytes present with the kernel's ``dl_inference.check_value_count`` and
``check_raw_size`` before anything is allocated; ``google.protobuf.Value`` trees (ndarray,
jsonData, tags) are read to at most :data:`~dl_inference.MAX_JSON_DEPTH` levels; typed
``tftensor`` values must fit their dtype. NaN and infinities are numbers, as in Seldon
Core's Python wrapper: they reach the model and come back (over REST as the bare ``NaN`` /
``Infinity`` Python's json writes).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2

from dl_inference import (
    MAX_JSON_DEPTH,
    InvalidInput,
    TensorSpec,
    check_raw_size,
    check_value_count,
    from_numpy_dtype,
    read_json,
    to_numpy_dtype,
)
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


def value_to_python(value: struct_pb2.Value, what: str = "a value") -> Any:
    """A ``google.protobuf.Value`` as plain Python: numbers are floats, NaN and infinities too.

    protobuf's own ``MessageToDict`` refuses NaN and infinities (they have no proto3 JSON
    form in a Value), and recurses without a bound. Here a tree nested more than
    :data:`~dl_inference.MAX_JSON_DEPTH` levels is :class:`~dl_inference.InvalidInput`
    naming ``what``.
    """
    return _plain(value, what, 0)


def list_to_python(values: struct_pb2.ListValue, what: str = "a list") -> list[Any]:
    """A ``google.protobuf.ListValue`` (Seldon's ``data.ndarray``) as a plain Python list."""
    return _plain_list(values, what, 1)


def _plain(value: struct_pb2.Value, what: str, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        return _plain_list(value.list_value, what, depth + 1)
    if kind == "struct_value":
        _check_depth(what, depth + 1)
        return {
            key: _plain(item, what, depth + 1) for key, item in value.struct_value.fields.items()
        }
    return None  # null_value, or no kind set (protobuf writes both as null)


def _plain_list(values: struct_pb2.ListValue, what: str, depth: int) -> list[Any]:
    _check_depth(what, depth)
    return [_plain(item, what, depth) for item in values.values]


def _check_depth(what: str, depth: int) -> None:
    # Bounds the recursion of _plain (Python's stack), whatever protobuf let through.
    if depth > MAX_JSON_DEPTH:
        raise InvalidInput(
            f"{what} nests lists or objects more than {MAX_JSON_DEPTH} levels deep; send a "
            "flatter value"
        )


def tags_to_dict(meta: pb.Meta) -> dict[str, Any]:
    """``meta.tags`` as plain Python values."""
    return {key: value_to_python(value, f"meta.tags.{key}") for key, value in meta.tags.items()}


# -- requests ------------------------------------------------------------------------------


def decode_inputs(
    message: pb.SeldonMessage,
    kind: str,
    specs: Sequence[TensorSpec] | None,
    *,
    fill_limit_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """The request's data as named arrays for a model with input ``specs`` (None: unknown).

    ``fill_limit_bytes``: how large a ``tftensor`` filled out from a short ``*_val`` list
    may grow (see :func:`tftensor_to_array`); tie it to the server's message limit.
    """
    specs = list(specs or [])
    if kind == "jsonData":
        value = value_to_python(message.jsonData, "jsonData")
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
        lists = list_to_python(message.data.ndarray, "data.ndarray")
        return _single(specs, lambda name: _json_array(name, lists), typed=False)
    if kind == "tftensor":
        tensor = message.data.tftensor
        return _single(
            specs,
            lambda name: tftensor_to_array(name, tensor, fill_limit_bytes=fill_limit_bytes),
            typed=True,
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
    values = tensor.values
    # No shape: a flat list of the values, as Seldon's wrapper reads it.
    shape = list(tensor.shape) or [len(values)]
    dims = check_value_count(name, "FP64", shape, len(values), field="tensor.values")
    return np.asarray(values, dtype=np.float64).reshape(dims)


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


def tftensor_to_array(
    name: str, tensor: pb.TensorProto, *, fill_limit_bytes: int | None = None
) -> np.ndarray:
    """A TensorFlow TensorProto (tensor_content or typed values) as a numpy array.

    As TensorFlow's ``make_ndarray`` (which Seldon's wrapper calls) does, a ``*_val`` list
    shorter than the shape is filled out with its last value; the filled tensor may take
    at most ``fill_limit_bytes`` bytes (None: no filling). Sizes are checked before
    anything is allocated; typed values that do not fit the dtype are refused.
    """
    dtype = TF_TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        supported = ", ".join(pb.DataType.Name(d) for d in TF_TO_NUMPY)
        raise InvalidInput(
            f"input {name!r}: tftensor dtype {_dtype_name(tensor.dtype)} is not supported; "
            f"use {supported}"
        )
    if tensor.tensor_shape.unknown_rank:
        raise InvalidInput(f"input {name!r}: tftensor has unknown rank; give its dimensions")
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    datatype = from_numpy_dtype(dtype)
    if tensor.tensor_content and dtype != np.object_:
        dims = check_raw_size(name, datatype, shape, len(tensor.tensor_content))
        wire = dtype.newbyteorder("<")
        return (
            np.frombuffer(tensor.tensor_content, dtype=wire).astype(dtype, copy=False).reshape(dims)
        )
    field = TF_VALUE_FIELD[tensor.dtype]
    values = getattr(tensor, field)
    dims = check_value_count(
        name, datatype, shape, len(values), field=field, fill_limit_bytes=fill_limit_bytes
    )
    if dtype == np.object_:
        array = np.empty(len(values), dtype=np.object_)
        array[:] = list(values)
    else:
        array = _typed_values(name, tensor.dtype, field, values)
    count = math.prod(dims)
    if array.size < count:
        # TensorFlow's rule; check_value_count has bounded the filled tensor's size.
        filled = np.empty(count, dtype=array.dtype)
        filled[: array.size] = array
        filled[array.size :] = array[-1]
        array = filled
    return array.reshape(dims)


# The width protobuf holds each typed field at: numpy reads it so, then narrows it.
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


def _typed_values(name: str, dtype: int, field: str, values: Any) -> np.ndarray:
    """``values`` as the dtype's array; a value the dtype cannot hold is the client's error.

    ``int_val`` carries int8 ... uint16 as int32 and ``half_val`` float16 bit patterns as
    int32: a value outside the narrower type is refused, never silently wrapped.
    """
    wide = np.fromiter(values, dtype=_WIDE[field], count=len(values))
    # DT_HALF travels as its 16 bits: range-checked as uint16, then reinterpreted.
    target = np.dtype(np.uint16) if dtype == pb.DT_HALF else TF_TO_NUMPY[dtype]
    if target.kind in "iu" and target != wide.dtype and wide.size:
        info = np.iinfo(target)
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            what = "float16 bit patterns" if dtype == pb.DT_HALF else f"{_dtype_name(dtype)}"
            raise InvalidInput(
                f"input {name!r}: {field} holds {low if low < info.min else high}, out of the "
                f"range of {what} ({info.min}..{info.max}); send values that fit the dtype"
            )
    array = wide.astype(target, copy=False)
    return array.view(np.float16) if dtype == pb.DT_HALF else array


def _dtype_name(dtype: int) -> str:
    return pb.DataType.Name(dtype) if dtype in pb.DataType.values() else str(dtype)


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


# -- the JSON form (REST) ---------------------------------------------------------------------

# A SeldonMessage in JSON, for messages that tell a client what to send.
EXAMPLE = '{"data": {"ndarray": [[1, 2]]}, "meta": {"tags": {"model": "name"}}}'
# protobuf's JSON spelling of the numbers Python's json reads from NaN / Infinity / -Infinity.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def message_from_body(body: bytes) -> pb.SeldonMessage:
    """A SeldonMessage from a REST body: UTF-8 JSON, nested at most ``MAX_JSON_DEPTH`` deep."""
    try:
        document = read_json(body, what="it")
    except InvalidInput as exc:
        raise InvalidInput(_not_a_message(exc)) from None
    return message_from_json(document)


def message_from_json(document: Any) -> pb.SeldonMessage:
    """A SeldonMessage from a parsed JSON body.

    Seldon's wrapper reads ``data.tensor.values`` with numpy, so a bare ``NaN`` or
    ``Infinity`` there is a number; protobuf's JSON mapping wants them quoted in a double
    field: they are quoted before parsing. (In ``ndarray``, ``jsonData`` and tags protobuf
    takes them as they are.)
    """
    if not isinstance(document, dict):
        raise InvalidInput(_not_a_message(f"it is a JSON {type(document).__name__}, not an object"))
    data = document.get("data")
    tensor = data.get("tensor") if isinstance(data, dict) else None
    values = tensor.get("values") if isinstance(tensor, dict) else None
    if isinstance(values, list):
        tensor["values"] = [
            _NON_FINITE[str(v)] if isinstance(v, float) and not math.isfinite(v) else v
            for v in values
        ]
    message = pb.SeldonMessage()
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as exc:
        raise InvalidInput(_not_a_message(exc)) from None
    return message


def _not_a_message(reason: object) -> str:
    return f"the body is not a JSON SeldonMessage: {reason}. A SeldonMessage looks like {EXAMPLE}"


def message_to_json(message: pb.SeldonMessage) -> dict[str, Any]:
    """A reply's JSON form as Seldon Core's Python wrapper writes it (``json.dumps`` it).

    protobuf's JSON mapping refuses NaN and infinities in a Value (ndarray, jsonData, tags)
    and quotes them in a double (``"NaN"``); the wrapper (Flask's ``jsonify``) writes the
    bare ``NaN`` / ``Infinity`` / ``-Infinity`` of Python's json: so here numbers stay
    numbers.
    """
    out: dict[str, Any] = {}
    if message.HasField("status"):
        out["status"] = json_format.MessageToDict(message.status)
    if message.HasField("meta"):
        meta = pb.Meta()
        meta.CopyFrom(message.meta)
        meta.ClearField("tags")
        out["meta"] = json_format.MessageToDict(meta)
        if message.meta.tags:
            out["meta"]["tags"] = tags_to_dict(message.meta)
    which = message.WhichOneof("data_oneof")
    if which == "data":
        data = message.data
        body: dict[str, Any] = {"names": list(data.names)} if data.names else {}
        inner = data.WhichOneof("data_oneof")
        if inner == "tensor":
            body["tensor"] = {"shape": list(data.tensor.shape), "values": list(data.tensor.values)}
        elif inner == "ndarray":
            body["ndarray"] = list_to_python(data.ndarray, "data.ndarray")
        elif inner == "tftensor":
            body["tftensor"] = json_format.MessageToDict(data.tftensor)
        out["data"] = body
    elif which == "binData":
        out["binData"] = base64.b64encode(message.binData).decode("ascii")
    elif which == "strData":
        out["strData"] = message.strData
    elif which == "jsonData":
        out["jsonData"] = value_to_python(message.jsonData, "jsonData")
    elif which == "customData":
        out["customData"] = json_format.MessageToDict(message.customData)
    return out


def status_message(code: int, info: str, reason: str) -> pb.SeldonMessage:
    """A failure reply as Seldon writes one: ``status`` filled, no data."""
    message = pb.SeldonMessage()
    message.status.code = code
    message.status.info = info
    message.status.reason = reason
    message.status.status = pb.Status.FAILURE
    return message
