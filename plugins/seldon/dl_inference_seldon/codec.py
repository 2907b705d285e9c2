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

Replies take the shapes Seldon Core's Python wrapper (seldon-core 1.18) gives the value a
wrapper model would return, the outputs being that value:

- an object ``jsonData`` request gets ``jsonData``, an object holding every output (a
  wrapper model returning a dict);
- a ``binData`` request whose output is one string (BYTES with one element) gets it as
  ``binData`` (a model returning bytes), a ``strData`` or non-object ``jsonData`` request
  as ``strData`` (a model returning str; ``binData`` when it is not UTF-8 text);
- otherwise the output is an array: numbers (integers, floats; not booleans, as numpy's
  ``np.number`` says) answer a ``data`` request in the request's kind (tensor, ndarray,
  tftensor) and any other request (binData, strData, a non-object jsonData) as
  ``data.tensor``; strings and booleans answer as ``data.ndarray``. An output of two or more
  dimensions names its columns ``t:0``, ``t:1``, ... in ``data.names``, as the wrapper
  does for a model without ``class_names``.

Data replies carry one output: the one named by ``meta.tags.output``, else the first.

A ``tftensor`` is TensorFlow's TensorProto: the tfserving plugin owns its rules, and
:func:`dl_inference_tfserving.codec.to_numpy` / ``from_numpy`` read and write Seldon's copy
of the message in place. JSON values are typed by the kernel's rules
(:func:`dl_inference.json_leaves`, ``json_datatype``, ``array_from_json``) and untyped
numbers cast to a declared datatype by :func:`dl_inference.narrow_array`, as on every
protocol.

Hostile input is refused before it costs memory: declared shapes are checked against the
values or bytes present with the kernel's ``dl_inference.check_value_count`` (and, for a
``tftensor``, ``check_raw_size``) before anything is allocated; ``google.protobuf.Value``
trees (ndarray, jsonData, tags) are read to at most :data:`~dl_inference.MAX_JSON_DEPTH`
levels; typed ``tftensor`` values must fit their dtype. NaN and infinities are numbers, as
in Seldon Core's Python wrapper: they reach the model and come back (over REST as the bare
``NaN`` / ``Infinity`` Python's json writes).
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
    array_from_json,
    check_value_count,
    from_numpy_dtype,
    json_datatype,
    json_leaves,
    narrow_array,
    read_json,
)
from dl_inference_seldon._proto import seldon_pb2 as pb
from dl_inference_tfserving import codec as tensor_proto

DEFAULT_INPUT = "input__0"


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
    may grow (TensorFlow's rule, see :func:`dl_inference_tfserving.codec.to_numpy`); tie it
    to the server's message limit.
    """
    specs = list(specs or [])
    if kind == "jsonData":
        value = value_to_python(message.jsonData, "jsonData")
        if isinstance(value, dict) and (len(specs) != 1 or specs[0].name in value):
            by_name = {spec.name: spec for spec in specs}
            arrays = {}
            for name, item in value.items():
                field = f"jsonData.{name}"
                arrays[name] = _cast(name, _json_array(name, item, field), by_name.get(name), field)
            return arrays
        return _single(specs, lambda name: _json_array(name, value, "jsonData"), "jsonData")
    if len(specs) > 1:
        names = ", ".join(spec.name for spec in specs)
        raise InvalidInput(
            f"the model takes {len(specs)} inputs ({names}), and Seldon's {kind} carries one "
            "tensor; send jsonData as an object {input name: value, ...}"
        )
    if kind == "tensor":
        tensor = message.data.tensor
        return _single(specs, lambda name: _tensor_array(name, tensor), "tensor.values")
    if kind == "ndarray":
        lists = list_to_python(message.data.ndarray, "data.ndarray")
        return _single(specs, lambda name: _json_array(name, lists, "data.ndarray"), "data.ndarray")
    if kind == "tftensor":
        tensor = message.data.tftensor
        return _single(
            specs,
            lambda name: tensor_proto.to_numpy(tensor, name, fill_limit_bytes=fill_limit_bytes),
        )
    raw = message.binData if kind == "binData" else message.strData.encode("utf-8")
    return _single(specs, lambda name: _scalar_bytes(raw, specs))


def _single(
    specs: list[TensorSpec], make: Any, untyped: str | None = None
) -> dict[str, np.ndarray]:
    """The one input's array; ``untyped`` names the field when its numbers need a cast."""
    spec = specs[0] if specs else None
    name = spec.name if spec else DEFAULT_INPUT
    array = make(name)
    return {name: array if untyped is None else _cast(name, array, spec, untyped)}


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


def _json_array(name: str, value: Any, field: str) -> np.ndarray:
    """Nested JSON lists (numbers, booleans or strings) as an array; strings become BYTES.

    Typed by what the values are (numbers are doubles on this wire): FP64, BOOL or BYTES.
    """
    shape, leaves = json_leaves(name, value, field=field)
    datatype = json_datatype(name, leaves, field=field)
    return array_from_json(name, datatype, leaves, shape, field=field)


def _cast(name: str, array: np.ndarray, spec: TensorSpec | None, field: str) -> np.ndarray:
    """Untyped wire numbers -> the declared datatype (refusing what would change values)."""
    if spec is None or from_numpy_dtype(array.dtype) == spec.datatype:
        return array
    if spec.datatype == "BYTES" or array.dtype == np.object_:
        raise InvalidInput(
            f"input {name!r} is {spec.datatype}; the request sent "
            f"{'strings' if array.dtype == np.object_ else 'numbers'}"
        )
    return narrow_array(name, array, spec.datatype, field=field)


def _utf8(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


# -- replies -------------------------------------------------------------------------------


def encode_reply(
    kind: str,
    outputs: Mapping[str, np.ndarray],
    reply: pb.SeldonMessage,
    *,
    json_object: bool = False,
) -> None:
    """Write ``outputs`` into ``reply`` for a request of ``kind`` (see the module docstring).

    ``json_object``: the request was an object ``jsonData``, answered with every output.
    """
    if not outputs:
        raise InvalidInput("the model returned no outputs")
    if json_object:
        value = {name: _to_json(array) for name, array in outputs.items()}
        json_format.ParseDict(value, reply.jsonData)
        return
    array = np.asarray(next(iter(outputs.values())))
    if kind in ("binData", "strData", "jsonData") and array.dtype.kind in "OSU" and array.size == 1:
        raw = _utf8(array.reshape(-1)[0])
        if kind != "binData":
            try:
                reply.strData = bytes(raw).decode("utf-8")
                return
            except UnicodeDecodeError:
                pass  # not text: the bytes as they are
        reply.binData = bytes(raw)
        return
    encode_array(array, reply.data, kind if kind in DATA_KINDS else "tensor")


# The kinds of ``DefaultData``; a numeric reply to a data request keeps the request's.
DATA_KINDS = ("tensor", "ndarray", "tftensor")


def encode_array(array: np.ndarray, data: pb.DefaultData, kind: str) -> None:
    """One array as ``DefaultData`` of ``kind``, as the wrapper writes it: non-numbers (strings,
    booleans) as ``ndarray`` whatever ``kind`` says, and columns named ``t:0``, ``t:1``, ...
    """
    if not np.issubdtype(array.dtype, np.number):
        kind = "ndarray"
    if array.ndim > 1:
        data.names.extend(f"t:{column}" for column in range(array.shape[1]))
    if kind == "tensor":
        data.tensor.shape.extend(array.shape)
        data.tensor.values.extend(array.astype(np.float64, copy=False).ravel().tolist())
    elif kind == "tftensor":
        # tf.make_tensor_proto, which the wrapper calls, writes numbers to tensor_content.
        tensor_proto.from_numpy(array, data.tftensor, tensor_content=True)
    else:
        data.ndarray.extend(_ndarray_value(array))


def _ndarray_value(array: np.ndarray) -> list[Any]:
    value = _to_json(array)
    return value if isinstance(value, list) else [value]


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
    return message_from_json(document_from_body(body))


def document_from_body(body: bytes) -> Any:
    """A REST body's JSON (UTF-8, nested at most ``MAX_JSON_DEPTH`` deep), not yet a message."""
    try:
        return read_json(body, what="it")
    except InvalidInput as exc:
        raise InvalidInput(_not_a_message(exc)) from None


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
        # The wrapper writes "names" in every data reply, an empty list when there are none.
        body: dict[str, Any] = {"names": list(data.names)}
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


def rest_reply(
    reply: pb.SeldonMessage, outputs: Mapping[str, np.ndarray], request: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON answering a REST request (``request``, its parsed body) as the wrapper writes it.

    Beyond :func:`message_to_json`, whose numbers are the message's doubles: integer outputs
    (``outputs``, the arrays ``reply`` was encoded from) stay JSON integers, as numpy's
    ``tolist()`` writes them in the wrapper, and ``meta.tags`` come back as the client wrote
    them (the wrapper echoes the request's JSON: a tag ``1`` stays ``1``, not ``1.0``).
    """
    document = message_to_json(reply)
    meta = request.get("meta")
    tags = meta.get("tags") if isinstance(meta, dict) else None  # "meta": null is no meta
    if isinstance(tags, dict) and tags and "meta" in document:
        document["meta"]["tags"] = tags
    arrays = {name: np.asarray(array) for name, array in outputs.items()}
    integral = {name: array for name, array in arrays.items() if array.dtype.kind in "iu"}
    if not integral:
        return document
    data = document.get("data", {})
    first = next(iter(arrays))
    if first in integral and "tensor" in data:
        data["tensor"]["values"] = integral[first].ravel().tolist()
    elif first in integral and "ndarray" in data:
        data["ndarray"] = _ndarray_value(integral[first])
    elif isinstance(document.get("jsonData"), dict):
        for name, array in integral.items():
            document["jsonData"][name] = _to_json(array)
    return document


def status_message(code: int, info: str, reason: str) -> pb.SeldonMessage:
    """A failure reply as Seldon writes one: ``status`` filled, no data."""
    message = pb.SeldonMessage()
    message.status.code = code
    message.status.info = info
    message.status.reason = reason
    message.status.status = pb.Status.FAILURE
    return message
