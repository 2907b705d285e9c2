"""Header blocks: HPACK decoding (PyPI ``hpack``, with limits), a stateless HPACK encoder,
and the gRPC rules on top (metadata, ``-bin`` values, ``grpc-timeout``, ``grpc-message``).

Responses are encoded as literals "without indexing" (RFC 7541 section 6.2.2): the encoder
keeps no dynamic table, so it needs no state per connection and never depends on the peer's
SETTINGS_HEADER_TABLE_SIZE; the few bytes it costs are cheaper than a table in Python.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

from dl_inference.server.grpc_h2.frames import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    H2ConnectionError,
)

# Names a server handles itself: not handed to the application as invocation metadata.
_RESERVED = frozenset(
    {
        "content-type",
        "te",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-message-type",
        "connection",
        "host",
    }
)
# Connection-specific fields are malformed in HTTP/2 (RFC 9113 section 8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
T = TypeVar("T")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class HeaderDecoder:
    """One connection's HPACK decoder, bounded: the dynamic table at ``table_size`` and a
    decoded list at ``max_list_size`` (an "HPACK bomb" ends the connection)."""

    def __init__(self, table_size: int, max_list_size: int) -> None:
        self._decoder = Decoder(max_header_list_size=max_list_size)
        self._decoder.max_allowed_table_size = table_size
        # A client repeating a call sends the same block, all of it references to the
        # dynamic table; such a block leaves the table as it is, so its decoded list is
        # reused until a block that changes the table arrives.
        self._cache: dict[bytes, list[tuple[bytes, bytes]]] = {}
        # What ``read`` made of a cached block; forgotten with the cache.
        self._read: dict[bytes, Any] = {}

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        fields = self._decode(block)
        if len(block) <= 1024 and _leaves_table(block):  # at most 64 KiB per connection
            if len(self._cache) >= 64:
                self._forget()
            self._cache[block] = fields
        else:
            self._forget()
        return fields

    def read(self, block: bytes, reader: Callable[[list[tuple[bytes, bytes]]], T]) -> T:
        """``reader(fields)`` of the decoded ``block``, computed once while the block's
        decoding is cached: a repeated call's head is read once, not field by field on
        every call. ``reader`` must depend on the fields only; what it raises is not kept."""
        result = self._read.get(block)
        if result is None:
            fields = self.decode(block)
            result = reader(fields)
            if self._cache.get(block) is fields:
                self._read[block] = result
        return result

    def _forget(self) -> None:
        self._cache.clear()
        self._read.clear()

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return self._decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "header list too large") from None
        except (HPACKError, ValueError, IndexError) as exc:
            raise H2ConnectionError(COMPRESSION_ERROR, f"bad header block: {exc}") from None


def _skip_integer(block: bytes, pos: int, prefix_bits: int) -> int:
    """The position after an HPACK integer at ``pos`` (RFC 7541 section 5.1)."""
    limit = (1 << prefix_bits) - 1
    pos += 1
    if block[pos - 1] & limit == limit:
        while block[pos] & 0x80:
            pos += 1
        pos += 1
    return pos


def _skip_string(block: bytes, pos: int) -> int:
    limit = 0x7F
    length = block[pos] & limit
    pos += 1
    if length == limit:
        shift = 0
        length = limit
        while True:
            byte = block[pos]
            pos += 1
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
    return pos + length


def _leaves_table(block: bytes) -> bool:
    """Whether decoding ``block`` cannot change the dynamic table: only indexed fields and
    literals without indexing (no incremental indexing, no table size update)."""
    pos = 0
    try:
        while pos < len(block):
            byte = block[pos]
            if byte & 0x80:
                pos = _skip_integer(block, pos, 7)
            elif byte & 0xE0 == 0 or byte & 0xF0 == 0x10:
                name_index = byte & 0x0F
                pos = _skip_integer(block, pos, 4)
                if name_index == 0:
                    pos = _skip_string(block, pos)
                pos = _skip_string(block, pos)
            else:
                return False
    except IndexError:
        return False
    return pos == len(block)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


_SHORT = [bytes((n,)) for n in range(127)]  # a string length below 127: one byte


def literal(name: bytes, value: bytes) -> bytes:
    """One header as a literal without indexing, new name, no Huffman coding."""
    n, v = len(name), len(value)
    if n < 127 and v < 127:
        return b"\x00" + _SHORT[n] + name + _SHORT[v] + value
    return b"\x00" + _integer(n, 7, 0) + name + _integer(v, 7, 0) + value


STATUS_200 = b"\x88"  # :status 200, static table entry 8
RESPONSE_HEAD = STATUS_200 + literal(b"content-type", b"application/grpc")


def encode(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(literal(name, value) for name, value in headers)


def parse_timeout(value: str) -> float | None:
    """``grpc-timeout`` in seconds (None when malformed: the call then has no deadline)."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def encode_message(details: str) -> bytes:
    """``grpc-message``: UTF-8, percent-encoding every byte outside printable ASCII and '%'."""
    raw = details.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def is_connection_specific(name: bytes, value: bytes) -> bool:
    return name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers")


def metadata_value(name: str, value: bytes) -> str | bytes | None:
    """A received value as the application sees it: ``-bin`` base64-decoded (None: invalid)."""
    if name.endswith("-bin"):
        try:
            return base64.b64decode(value + b"=" * (-len(value) % 4), validate=False)
        except (binascii.Error, ValueError):
            return None
    return value.decode("latin-1")


def is_reserved(name: str) -> bool:
    return name in _RESERVED or name.startswith(":")


def encode_metadata(metadata: Sequence[tuple[str, Any]] | None) -> list[tuple[bytes, bytes]]:
    """Application metadata as header fields: names lower-cased, ``-bin`` values base64."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in metadata or ():
        name = key.lower()
        if name.endswith("-bin"):
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            out.append((name.encode("ascii"), base64.b64encode(raw).rstrip(b"=")))
        else:
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            out.append((name.encode("ascii"), text.encode("latin-1", "replace")))
    return out
