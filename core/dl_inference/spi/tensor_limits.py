"""Size checks that keep a decoder's memory bounded by the bytes the client actually sent.

A request declares a tensor's shape and then carries its data. The declared shape is
only a claim: ``[2**31, 2**31]`` with 4 bytes of data, or BYTES ``[2**24]`` with 30, must be
refused before anything is allocated for it, not after numpy has tried (an INTERNAL
"array is too big") or has already reserved 128 MiB of object pointers. Every protocol
decoder calls these checks first, then allocates; each returns the validated dimensions.

The rules, in one place for every protocol:

- dimensions are integers >= 0, at most :data:`MAX_TENSOR_RANK` of them;
- the dimensions multiply (zeros left out, so ``[0, 2**62]`` is caught too) to at most
  :data:`MAX_TENSOR_ELEMENTS`;
- raw bytes of a fixed-size datatype are exactly ``elements x itemsize``; raw BYTES need at
  least a 4-byte length prefix per element;
- a list of typed values holds exactly one value per element, unless the protocol allows
  a short list to be filled out with its last value (TF Serving's ``*_val`` fields), and
  then only up to a byte budget the caller ties to its message limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dl_inference.spi.datatypes import input_dtype
from dl_inference.spi.errors import InvalidInput

MAX_TENSOR_RANK = 32
"""Most dimensions a request tensor may have (numpy 1.x's limit; numpy 2 allows 64)."""

MAX_TENSOR_ELEMENTS = 2**40
"""Most elements the non-zero dimensions of a shape may multiply to.

Far above what any message carries (gRPC stops at 2 GiB), far below where numpy's size
arithmetic overflows (``2**63`` bytes). It matters for shapes with a zero dimension, whose
element count is 0 whatever the others claim, but which numpy still refuses to build.
"""

_INT64_MAX = 2**63 - 1

BYTES_LENGTH_PREFIX = 4
"""Bytes each raw BYTES element takes at least: its 4-byte little-endian length."""


def _dims(name: str, shape: Sequence[Any]) -> tuple[int, ...]:
    """The shape as ints; refuses non-integers, negatives and too many dimensions."""
    if len(shape) > MAX_TENSOR_RANK:  # first: the message must not quote a huge shape
        raise InvalidInput(
            f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_TENSOR_RANK} "
            "are supported"
        )
    dims: list[int] = []
    for dim in shape:
        # Plain ints (what protobuf and JSON give) skip the costlier isinstance checks.
        if type(dim) is not int:
            if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
                raise InvalidInput(_invalid_shape(name, shape))
            dim = int(dim)
        # int64 as on the gRPC wire; it also keeps products of 32 dimensions printable.
        if not 0 <= dim <= _INT64_MAX:
            raise InvalidInput(_invalid_shape(name, shape))
        dims.append(dim)
    return tuple(dims)


def _invalid_shape(name: str, shape: Sequence[Any]) -> str:
    return (
        f"input {name!r}: shape {list(shape)} is invalid; dimensions are integers from "
        "0 to 2**63 - 1 (-1 is only for model metadata, a request states the actual size)"
    )


def _check_cap(name: str, dims: tuple[int, ...]) -> None:
    # Zeros are left out: numpy sizes a (0, 2**62) array by its other dimensions too.
    claimed = math.prod(dim for dim in dims if dim)
    if claimed > MAX_TENSOR_ELEMENTS:
        raise InvalidInput(
            f"input {name!r}: shape {list(dims)} is too large: its non-zero dimensions "
            f"multiply to {claimed}, over the limit of {MAX_TENSOR_ELEMENTS} elements; send "
            "the tensor's actual shape"
        )


def check_tensor_shape(name: str, shape: Sequence[Any]) -> tuple[int, ...]:
    """Validate a request tensor's declared shape; return its dimensions as ints.

    Refuses (:class:`~dl_inference.InvalidInput`) dimensions that are not integers >= 0,
    more than :data:`MAX_TENSOR_RANK` of them, and non-zero dimensions multiplying past
    :data:`MAX_TENSOR_ELEMENTS`. Use it where the data's size is checked some other way;
    where it is not, use :func:`check_raw_size` or :func:`check_value_count`.
    """
    dims = _dims(name, shape)
    _check_cap(name, dims)
    return dims


def check_raw_size(
    name: str, datatype: str, shape: Sequence[Any], nbytes: int, *, field: str = "raw data"
) -> tuple[int, ...]:
    """Check raw tensor bytes (``nbytes`` of them) against the declared shape, before decoding.

    ``datatype`` is a V2 datatype name (``FP32``, ``BYTES``, ...). A fixed-size datatype
    needs exactly ``elements x itemsize`` bytes; BYTES needs at least
    :data:`BYTES_LENGTH_PREFIX` bytes per element (the exact layout is the parser's job,
    which can then size its output by the element count safely). Returns the dimensions;
    raises :class:`~dl_inference.InvalidInput` naming the tensor, the field holding the
    bytes (``field``, as the protocol's clients know it: ``tensor_content``, ...), the
    shape, the bytes needed and the bytes present.
    """
    itemsize = input_dtype(name, datatype).itemsize
    dims = _dims(name, shape)
    count = math.prod(dims)
    if datatype == "BYTES":
        needed = count * BYTES_LENGTH_PREFIX
        if nbytes < needed:
            raise InvalidInput(
                f"input {name!r}: BYTES shape {list(dims)} has {count} elements, each with a "
                f"{BYTES_LENGTH_PREFIX}-byte length prefix, so it needs at least {needed} bytes, "
                f"but the request carries {nbytes} in {field}; send a shape whose element count "
                "matches the elements in the data"
            )
    elif nbytes != count * itemsize:
        raise InvalidInput(
            f"input {name!r}: {field} holds {nbytes} bytes but {datatype} shape {list(dims)} "
            f"needs {count * itemsize} bytes ({count} elements x {itemsize} bytes); send a "
            "shape that matches the data"
        )
    _check_cap(name, dims)
    return dims


def check_value_count(
    name: str,
    datatype: str,
    shape: Sequence[Any],
    present: int,
    *,
    field: str = "values",
    fill_limit_bytes: int | None = None,
) -> tuple[int, ...]:
    """Check a list of ``present`` typed values (``field`` names it) against the shape.

    The list must hold one value per element. With ``fill_limit_bytes`` (TF Serving's rule:
    a short ``*_val`` list is filled out with its last value, e.g. one value for a whole
    tensor), 1 <= ``present`` < elements is allowed too, provided the filled tensor takes at
    most ``fill_limit_bytes`` bytes (elements x the datatype's numpy itemsize; tie it to the
    server's message limit, e.g. ``Runtime.max_message_bytes``). The check runs on counts
    only: call it before allocating the filled array. Returns the dimensions; raises
    :class:`~dl_inference.InvalidInput` otherwise.
    """
    itemsize = input_dtype(name, datatype).itemsize
    dims = _dims(name, shape)
    count = math.prod(dims)
    if present != count:
        if fill_limit_bytes is None or not 0 < present < count:
            fill = " (or one value, repeated to fill the shape)" if fill_limit_bytes else ""
            raise InvalidInput(
                f"input {name!r}: {field} holds {present} values but {datatype} shape "
                f"{list(dims)} needs {count}{fill}; send one value per element"
            )
        if count * itemsize > fill_limit_bytes:
            raise InvalidInput(
                f"input {name!r}: {field} holds {present} values for {datatype} shape "
                f"{list(dims)}; filling it out with the last value would take "
                f"{count * itemsize} bytes, over the {fill_limit_bytes}-byte limit; send a "
                "shape that matches the values"
            )
    _check_cap(name, dims)
    return dims
