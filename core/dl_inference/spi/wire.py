"""A minimal protobuf wire-format reader for routing without decoding tensors.

The gateway must learn a request's model name from its serialized bytes without parsing
(and copying) megabytes of tensor data, and without knowing the message type's generated
class. Length-delimited fields are skipped by jumping over them, so the cost depends on
the number of top-level fields, not on the payload size.

Public as ``dl_inference.wire`` (listed in ``dl_inference.__all__``): protocol plugins read
their routing keys (:meth:`dl_inference.Protocol.routing_keys`) with it.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = [
    "END_GROUP",
    "FIXED32",
    "FIXED64",
    "LEN",
    "START_GROUP",
    "VARINT",
    "WireError",
    "encode_varint",
    "iter_fields",
    "len_field_header",
    "read_string_field",
    "read_varint",
    "split_len_field",
]

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``pos``; returns (value, position after it)."""
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise WireError("varint longer than 10 bytes")


def iter_fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field number, wire type, start, end)`` of every top-level field's value.

    For length-delimited fields ``data[start:end]`` is the payload; for varints and fixed
    fields it is the encoded value. Groups (deprecated) are refused rather than guessed at.
    """
    for number, wire_type, _, start, end in _walk(data):
        yield number, wire_type, start, end


def _walk(data: bytes | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """Like :func:`iter_fields`, plus where each field's tag begins (to cut fields out)."""
    pos = 0
    end = len(data)
    while pos < end:
        tag_start = pos
        # One-byte varints (field numbers under 16, short lengths) inline: this walk runs
        # on every request's bytes, and a call per varint was most of its cost.
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0 is invalid")
        start = pos
        if wire_type == LEN:
            if pos < end and data[pos] < 0x80:
                length, start = data[pos], pos + 1
            else:
                length, start = read_varint(data, pos)
            pos = start + length
        elif wire_type == VARINT:
            _, pos = read_varint(data, pos)
        elif wire_type == FIXED64:
            pos += 8
        elif wire_type == FIXED32:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type} (field {number})")
        if pos > end:
            raise WireError(f"field {number} runs past the end of the message")
        yield number, wire_type, tag_start, start, pos


def read_string_field(data: bytes | memoryview, number: int) -> str | None:
    """The string in top-level field ``number`` (the last one wins, as protobuf parses).

    Returns ``None`` when the field is absent, is not length-delimited, is not UTF-8, or
    the bytes are malformed: a router then falls back to its default instead of failing.
    """
    found: tuple[int, int] | None = None
    try:
        for field, wire_type, start, end in iter_fields(data):
            if field == number:
                found = (start, end) if wire_type == LEN else None
    except WireError:
        return None
    if found is None:
        return None
    try:
        return bytes(data[found[0] : found[1]]).decode("utf-8")
    except UnicodeDecodeError:
        return None


def encode_varint(value: int) -> bytes:
    """The base-128 varint encoding of ``value`` (negative: 10-byte two's complement)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def len_field_header(number: int, length: int) -> bytes:
    """Tag and length prefix of a length-delimited field, to append payloads without copying."""
    if number < 16 and length < 128:  # one byte each: what most fields and short values take
        return _SHORT_LEN_HEADERS[number][length]
    return encode_varint(number << 3 | LEN) + encode_varint(length)


# _SHORT_LEN_HEADERS[number][length]: a field number below 16 and a length below 128.
_SHORT_LEN_HEADERS = [[bytes((n << 3 | LEN, size)) for size in range(128)] for n in range(16)]


def split_len_field(data: bytes, number: int) -> tuple[bytes, list[memoryview]]:
    """Cut every occurrence of length-delimited field ``number`` out of a message.

    Returns the message without that field (to parse normally) and zero-copy views of
    each occurrence's payload, in order. Used for ``raw_input_contents`` so tensor bytes
    are not copied by the protobuf runtime (twice: into its arena, then out as ``bytes``).
    Raises :class:`WireError` on malformed bytes.
    """
    view = memoryview(data)
    rest: list[memoryview] = []
    payloads: list[memoryview] = []
    kept_from = 0
    for field, wire_type, tag_start, start, end in _walk(view):
        if field != number:
            continue
        if wire_type != LEN:
            raise WireError(f"field {number} is not length-delimited")
        rest.append(view[kept_from:tag_start])
        payloads.append(view[start:end])
        kept_from = end
    if not payloads:
        return data, []
    rest.append(view[kept_from:])
    return b"".join(rest), payloads
