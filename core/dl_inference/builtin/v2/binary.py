"""Byte layouts shared by gRPC raw contents and Triton's HTTP binary-tensor extension.

BYTES elements travel as a 4-byte little-endian length followed by the element's bytes,
concatenated in row-major order. An HTTP request or response using the extension is a
JSON header of ``Inference-Header-Content-Length`` bytes followed by the tensors' bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from dl_inference.spi.errors import InvalidInput

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


def serialize_bytes(array: np.ndarray) -> bytes:
    """Length-prefixed concatenation of a BYTES tensor's elements (row-major)."""
    parts: list[bytes] = []
    for value in array.reshape(-1):
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Parse ``count`` length-prefixed elements; InvalidInput when the layout does not fit.

    Elements are collected as they are read, so memory follows the bytes present, not the
    ``count`` claimed (callers check that first with ``check_raw_size``, for a clearer
    message, but this parser stays bounded without it).
    """
    view = memoryview(buffer)
    elements: list[bytes] = []
    pos = 0
    for index in range(count):
        if pos + 4 > len(view):
            raise InvalidInput(
                f"input {name!r}: BYTES data ends after {index} of {count} elements; each "
                "element needs a 4-byte little-endian length followed by that many bytes"
            )
        (length,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if pos + length > len(view):
            raise InvalidInput(
                f"input {name!r}: BYTES element {index} claims {length} bytes but only "
                f"{len(view) - pos} remain"
            )
        elements.append(bytes(view[pos : pos + length]))
        pos += length
    if pos != len(view):
        raise InvalidInput(
            f"input {name!r}: {len(view) - pos} bytes left over after {count} BYTES elements; "
            "the shape and the data disagree"
        )
    out = np.empty(count, dtype=np.object_)
    out[:] = elements
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes | memoryview, memoryview]:
    """Split a request body into its JSON header and the binary tensor data after it."""
    view = memoryview(body)
    if header_length is None:
        return body, view[len(view) :]
    try:
        size = int(header_length)
    except ValueError:
        size = -1
    if not 0 <= size <= len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH} is {header_length!r} but the body has {len(body)} bytes; it must "
            "be the byte length of the JSON header that starts the body"
        )
    return view[:size], view[size:]
