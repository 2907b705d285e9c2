"""Typing request values: JSON leaves and wide protobuf values to arrays of a V2 datatype.

Wire formats carry numbers in fewer types than a tensor has: JSON has integers, floats,
booleans and strings; protobuf carries int8 ... uint16 in an int32 field and Seldon's
numbers are all doubles. Turning them into a tensor of the declared datatype is where a
value can silently change (``300`` wrapped to ``44`` in INT8, ``1.5`` truncated to ``1``,
``true`` taken as ``1``) or escape as a server error (an ``OverflowError`` for an integer
too large for any float). Every protocol decoder calls these helpers for that step, so the
rules, and the messages, are the same on every protocol:

- BOOL takes true/false; integer datatypes take integers (not true/false, not ``1.0``)
  within the datatype's range; floating-point datatypes take any number (rounded to the
  datatype's precision, as every inference server does); BYTES takes strings (as UTF-8)
  and bytes (a protocol's decoded base64).
- Narrowing an array read at a wider type refuses values the cast would change: integers
  out of range, and for integer or boolean datatypes fractions, NaN and infinities.

Each refusal is an :class:`~dl_inference.InvalidInput` naming the tensor, where the value
was (``field``), the value, and what the datatype takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from dl_inference.spi.datatypes import from_numpy_dtype, input_dtype
from dl_inference.spi.errors import InvalidInput
from dl_inference.spi.json_body import utf8_bytes

# The JSON value types each numpy kind takes (bool is an int in Python: told apart by type).
_ACCEPTED: dict[str, tuple[str, frozenset[type]]] = {
    "b": ("true/false", frozenset({bool})),
    "i": ("integers", frozenset({int})),
    "u": ("integers", frozenset({int})),
    "f": ("numbers", frozenset({int, float})),
    "O": ("strings", frozenset({str, bytes})),
}


def _out_of_range(
    name: str, field: str, value: Any, type_name: str, low: int, high: int
) -> InvalidInput:
    return InvalidInput(
        f"input {name!r}: {field} holds {value}, out of range for {type_name} ({low}..{high}); "
        "send values that fit the datatype"
    )


def json_leaves(name: str, value: Any, *, field: str = "data") -> tuple[tuple[int, ...], list[Any]]:
    """The shape of nested JSON lists and their leaves in row-major order.

    ``[[1, 2], [3, 4]]`` gives ``((2, 2), [1, 2, 3, 4])``; a value that is not a list is
    one leaf of shape ``()``. Anything that is not a list is a leaf (objects too: a
    protocol may give them a meaning, e.g. TF Serving's ``{"b64": ...}``). Lists at one
    depth must all have the same length and hold lists or leaves alike, else
    :class:`~dl_inference.InvalidInput` naming ``field``. The walk goes level by level, so
    no nesting reaches Python's recursion limit. The shape comes from lists present in
    memory, so it is bounded by the bytes the client sent.
    """
    shape: list[int] = []
    level = [value]
    while level and type(level[0]) is list:
        width = len(level[0])
        if any(type(item) is not list or len(item) != width for item in level):
            raise _ragged(name, field)
        shape.append(width)
        level = list(chain.from_iterable(level))
    if list in set(map(type, level)):  # a list beside a leaf at the deepest level
        raise _ragged(name, field)
    return tuple(shape), level


def _ragged(name: str, field: str) -> InvalidInput:
    return InvalidInput(
        f"input {name!r}: {field} is a ragged nested list, not a rectangular array: lists at "
        "one depth must all have the same length and hold lists or values alike; give a "
        "flat list or equal-length rows"
    )


def json_datatype(name: str, leaves: Sequence[Any], *, field: str = "data") -> str:
    """The V2 datatype of JSON values no datatype is declared for.

    ``BYTES`` for strings (and bytes), ``BOOL`` for true/false, ``INT64`` for integers,
    ``FP64`` for numbers (and for no values at all); mixed kinds, nulls and objects are
    :class:`~dl_inference.InvalidInput`.
    """
    kinds = set(map(type, leaves))
    if not kinds:
        return "FP64"  # numpy's default for no values; any set would contain the empty one
    for datatype, accepted in (
        ("BYTES", {str, bytes}),
        ("BOOL", {bool}),
        ("INT64", {int}),
        ("FP64", {int, float}),
    ):
        if kinds <= accepted:
            return datatype
    raise InvalidInput(
        f"input {name!r}: the values of {field} must be all numbers, all true/false or all "
        "strings (no nulls, no objects, no mixing)"
    )


def array_from_json(
    name: str,
    datatype: str,
    leaves: Sequence[Any],
    shape: Sequence[int],
    *,
    field: str = "data",
    strings: str = "strings",
) -> np.ndarray:
    """An array of V2 ``datatype`` and ``shape`` from JSON ``leaves`` in row-major order.

    The caller has matched the leaves to the shape (the shape of :func:`json_leaves`, or
    :func:`~dl_inference.check_value_count` against a declared shape). Values must be of a
    kind the datatype takes (see the module's rules) and integers within its range;
    otherwise :class:`~dl_inference.InvalidInput` names the tensor, ``field``, the element
    and what the datatype takes. BYTES strings become UTF-8 bytes (a lone surrogate is
    refused); ``strings`` says in messages what a protocol accepts for BYTES (e.g.
    ``'strings or {"b64": "<base64>"} objects'``).
    """
    dtype = input_dtype(name, datatype)
    wanted, accepted = _ACCEPTED[dtype.kind]
    if dtype.kind == "O":
        wanted = strings
    if not set(map(type, leaves)) <= accepted:
        index = next(i for i, leaf in enumerate(leaves) if type(leaf) not in accepted)
        raise InvalidInput(
            f"input {name!r}: {field} element {index} is {leaves[index]!r:.40}, but {datatype} "
            f"takes {wanted}"
        )
    if dtype.kind == "O":
        array = np.empty(len(leaves), dtype=np.object_)
        array[:] = [
            utf8_bytes(leaf, f"input {name!r}, element {index}") if type(leaf) is str else leaf
            for index, leaf in enumerate(leaves)
        ]
        return array.reshape(shape)
    if dtype.kind in "iu" and leaves:
        info = np.iinfo(dtype)
        low, high = min(leaves), max(leaves)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise _out_of_range(name, field, bad, datatype, int(info.min), int(info.max))
    try:
        array = np.array(leaves, dtype=dtype)
    except OverflowError:
        # An integer past any float's range (JSON allows integers of thousands of digits).
        bits = max(v.bit_length() for v in leaves if type(v) is int)
        raise InvalidInput(
            f"input {name!r}: {field} holds an integer of {bits} bits, beyond the range of any "
            f"{datatype} number; send values that fit the datatype"
        ) from None
    return array.reshape(shape)


def narrow_array(
    name: str,
    values: np.ndarray,
    dtype: np.dtype | str,
    *,
    field: str = "values",
    type_name: str | None = None,
) -> np.ndarray:
    """``values`` cast to ``dtype`` (a numpy dtype or a V2 datatype name), refusing changes.

    For values read at a wider type than the tensor's: protobuf's int32 field for an INT8
    tensor, Seldon's doubles for an INT64 input. Integers out of the target's range, and for
    an integer or BOOL target fractions, NaN and infinities, are
    :class:`~dl_inference.InvalidInput` naming the tensor, ``field``, the value and the
    range; ``type_name`` names the type in messages (default: its V2 datatype name; a
    protocol may use its own, e.g. ``DT_UINT8``). A floating-point target takes any number.
    No copy when ``values`` already has the dtype.
    """
    target = input_dtype(name, dtype) if isinstance(dtype, str) else np.dtype(dtype)
    if target.kind not in "biuf" or values.dtype.kind not in "biuf":
        raise TypeError(f"narrow_array casts numbers, not {values.dtype} to {target}")
    if values.dtype == target or not values.size or target.kind == "f":
        return values.astype(target, copy=False)
    if type_name is None:
        type_name = from_numpy_dtype(target)
    # From here the target is BOOL or an integer type.
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.trunc(values))
        if not whole.all():
            bad = values[~whole][0]
            raise InvalidInput(
                f"input {name!r}: {field} holds the non-integer number {bad}, but {type_name} "
                "takes integers; send whole numbers"
            )
    if target.kind == "b":
        low, high = 0, 1
    else:
        info = np.iinfo(target)
        low, high = int(info.min), int(info.max)
    # Python scalars compare exactly: float(2**63) is not taken for int64's maximum.
    least, most = values.min().item(), values.max().item()
    if least < low or most > high:
        raise _out_of_range(name, field, least if least < low else most, type_name, low, high)
    return values.astype(target, copy=False)
