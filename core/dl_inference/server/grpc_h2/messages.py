"""gRPC message framing over a stream's DATA: the 5-byte prefix (compressed flag, length),
the size limits, and request decompression (``grpc-encoding`` gzip, deflate, identity)."""

from __future__ import annotations

import struct
import zlib

PREFIX = struct.Struct(">BI")
# What this server can decode, as answered in grpc-accept-encoding.
ACCEPT_ENCODING = b"identity, deflate, gzip"
_WBITS = {"gzip": 31, "deflate": 15}


class MessageTooLarge(Exception):
    """A request message over the receive limit (the gRPC status RESOURCE_EXHAUSTED)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Received message larger than max ({size} vs. {limit})")


class BadMessage(Exception):
    """A request message that cannot be read (the gRPC status INTERNAL)."""


def supported_encoding(name: str) -> bool:
    return name in ("", "identity") or name in _WBITS


def prefixed(message: bytes) -> bytes:
    """``message`` with its uncompressed gRPC prefix."""
    return PREFIX.pack(0, len(message)) + message


class MessageReader:
    """Cuts a stream's DATA into messages; a message's bytes are never buffered past
    ``limit`` (its prefix is checked before its body arrives)."""

    __slots__ = ("_buffer", "_encoding", "_limit")

    def __init__(self, limit: int, encoding: str) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._encoding = encoding

    @property
    def partial(self) -> bool:
        """Bytes of an incomplete message remain (a request that ended there is malformed)."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if not buffer and len(data) >= 5:
            # The common case: whole messages in one frame, no copy into the buffer.
            flag, size = PREFIX.unpack_from(data)
            if len(data) == size + 5:
                self._check(size)
                return [self._decode(flag, data[5:])]
        buffer += data
        out = []
        while len(buffer) >= 5:
            flag, size = PREFIX.unpack_from(buffer)
            self._check(size)
            if len(buffer) < size + 5:
                break
            out.append(self._decode(flag, bytes(buffer[5 : size + 5])))
            del buffer[: size + 5]
        return out

    def _check(self, size: int) -> None:
        if size > self._limit:
            raise MessageTooLarge(size, self._limit)

    def _decode(self, flag: int, body: bytes) -> bytes:
        if flag == 0:
            return body
        if flag != 1:
            raise BadMessage(f"invalid compressed flag {flag} in a message prefix")
        wbits = _WBITS.get(self._encoding)
        if wbits is None:
            raise BadMessage(
                "compressed message received without a grpc-encoding that names its algorithm"
            )
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, self._limit + 1)
        except zlib.error as exc:
            raise BadMessage(f"cannot decompress the {self._encoding} message ({exc})") from None
        if len(out) > self._limit or inflater.unconsumed_tail:
            raise MessageTooLarge(len(out) + len(inflater.unconsumed_tail), self._limit)
        return out
