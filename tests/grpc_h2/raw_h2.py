"""HTTP/2 by hand for the asyncio engine's tests: frames, gRPC calls as a client writes them,
the header blocks a server sent, a transport that records what a connection writes, and a
connection object on it (no socket) to a server with one method."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import grpc
from hpack import Encoder

from dl_inference.server.grpc_h2.connection import H2Connection
from dl_inference.server.grpc_h2.server import Server

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


SETTINGS = frame(4, 0, 0)


def call_frames(encoder: Encoder, stream_id: int, method: str, body: bytes, timeout: str) -> bytes:
    """A unary call of ``/test.T/<method>`` with ``grpc-timeout``: HEADERS, then DATA."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", f"/test.T/{method}"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", timeout),
    ]
    message = b"\0" + len(body).to_bytes(4, "big") + body
    return frame(1, 4, stream_id, encoder.encode(fields)) + frame(0, 1, stream_id, message)


def header_blocks(received: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The (stream id, header block) of each HEADERS frame complete in ``received``, and
    the bytes after the last complete frame."""
    blocks = []
    pos = 0
    while pos + 9 <= len(received):
        length = int.from_bytes(received[pos : pos + 3], "big")
        if pos + 9 + length > len(received):
            break
        if received[pos + 3] == 1:
            stream_id = int.from_bytes(received[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            blocks.append((stream_id, received[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return blocks, received[pos:]


class RecordingTransport(asyncio.Transport):
    """What a connection object needs of a transport; ``writes`` holds how many frames
    (or parts of frames) each write handed over: one system call each on a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: Any) -> None:
        self.writes.append(1)

    def writelines(self, parts: Any) -> None:
        self.writes.append(len(list(parts)))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def echo_connection(echo: Callable[..., Any]) -> tuple[H2Connection, RecordingTransport]:
    """A connection object on a :class:`RecordingTransport` (from a running event loop) to a
    server whose ``/test.T/Echo`` is the unary handler ``echo``."""
    server = Server()
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.T", {"Echo": handler})]
    )
    connection = H2Connection(server)
    transport = RecordingTransport()
    connection.connection_made(transport)
    return connection, transport
