"""Hostile HTTP/2 input against the asyncio engine, over raw sockets: the connection ends
with GOAWAY and the error's code (RFC 9113), and the server goes on serving others."""

from __future__ import annotations

import socket
import struct

import grpc
import pytest
from hpack import Encoder

from .conftest import HandlersServer
from .raw_h2 import PREFACE, SETTINGS, frame, header_blocks

PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x1, 0x3, 0x6
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB


def request_headers(path: str = "/test.T/Echo", extra: tuple = ()) -> bytes:
    return Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
    )


def goaway_code(address: str, data: bytes) -> int | None:
    """Send ``data`` on a fresh connection; the error code of the GOAWAY the server sends."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
        pos = 0
        while pos + 9 <= len(received):
            length = int.from_bytes(received[pos : pos + 3], "big")
            ftype = received[pos + 3]
            if ftype == 7:
                return struct.unpack_from(">I", received, pos + 13)[0]
            pos += 9 + length
    return None


CASES = {
    "bad preface": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PROTOCOL_ERROR),
    "first frame not SETTINGS": (PREFACE + frame(6, 0, 0, b"12345678"), PROTOCOL_ERROR),
    # The header announces 2 MiB; the server refuses on the header alone. (Sending the whole
    # payload races the server's close: the client's write then fails with a broken pipe.)
    "oversized frame": (
        PREFACE
        + SETTINGS
        + struct.pack(">BHBBI", (2 << 20) >> 16, 0, 0, 0, 1)  # DATA, stream 1, 2 MiB
        + b"x" * 16,
        FRAME_SIZE_ERROR,
    ),
    "bad SETTINGS length": (PREFACE + frame(4, 0, 0, b"12345"), FRAME_SIZE_ERROR),
    "even stream id": (PREFACE + SETTINGS + frame(1, 4, 2, request_headers()), PROTOCOL_ERROR),
    "garbage HPACK": (
        PREFACE + SETTINGS + frame(1, 4, 1, b"\xff\xff\xff\xff\xff"),
        COMPRESSION_ERROR,
    ),
    "HPACK bomb": (
        PREFACE
        + SETTINGS
        + frame(1, 4, 1, request_headers(extra=tuple((f"k{i}", "v" * 4000) for i in range(20)))),
        ENHANCE_YOUR_CALM,
    ),
    "connection window overflow": (
        PREFACE + SETTINGS + frame(8, 0, 0, struct.pack(">I", 2**31 - 1)) * 2,
        FLOW_CONTROL_ERROR,
    ),
    "window update of zero": (PREFACE + SETTINGS + frame(8, 0, 0, b"\0\0\0\0"), PROTOCOL_ERROR),
    "DATA on an idle stream": (PREFACE + SETTINGS + frame(0, 0, 5, b"abc"), PROTOCOL_ERROR),
    "decreasing stream ids": (
        PREFACE + SETTINGS + frame(1, 4, 5, request_headers()) + frame(1, 4, 3, request_headers()),
        PROTOCOL_ERROR,
    ),
    "interrupted header block": (
        PREFACE + SETTINGS + frame(1, 0, 1, request_headers()[:3]) + frame(6, 0, 0, b"8 bytes!"),
        PROTOCOL_ERROR,
    ),
    "CONTINUATION flood": (
        PREFACE + SETTINGS + frame(1, 0, 1, b"") + frame(9, 0, 1, b"\x00" * 16000) * 4,
        ENHANCE_YOUR_CALM,
    ),
    "PUSH_PROMISE from a client": (
        PREFACE + SETTINGS + frame(5, 4, 1, b"\0\0\0\2"),
        PROTOCOL_ERROR,
    ),
    "RST_STREAM on stream 0": (PREFACE + SETTINGS + frame(3, 0, 0, b"\0\0\0\0"), PROTOCOL_ERROR),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_ends_the_connection_with_goaway(
    asyncio_handlers: HandlersServer, case: str
) -> None:
    data, code = CASES[case]
    assert goaway_code(asyncio_handlers.address, data) == code
    with grpc.insecure_channel(asyncio_handlers.address) as channel:
        assert channel.unary_unary("/test.T/Echo")(b"still serving", timeout=10) == b"still serving"


def test_a_stream_reset_burst_is_refused(asyncio_handlers: HandlersServer) -> None:
    # "Rapid reset": open and reset streams without end; the server stops the connection.
    encoder = Encoder()
    block = encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/test.T/Slow"),
            ("content-type", "application/grpc"),
        ]
    )
    data = PREFACE + SETTINGS
    for i in range(1500):
        sid = 2 * i + 1
        # The same header list again: indexed from the table, so one encoder works.
        data += frame(
            1,
            4,
            sid,
            block
            if i == 0
            else encoder.encode(
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", "/test.T/Slow"),
                    ("content-type", "application/grpc"),
                ]
            ),
        ) + frame(3, 0, sid, b"\0\0\0\x08")
    assert goaway_code(asyncio_handlers.address, data) == ENHANCE_YOUR_CALM


def reply_headers(address: str, extra: tuple = (), content_type: str = "application/grpc") -> dict:
    """One call over a raw connection: the headers of the server's reply, merged."""
    from hpack import Decoder

    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/test.T/Echo"),
        (":authority", "localhost"),
        ("content-type", content_type),
        *extra,
    ]
    body = b"\0\0\0\0\2hi"
    data = PREFACE + SETTINGS + frame(1, 4, 1, Encoder().encode(fields)) + frame(0, 1, 1, body)
    host, port = address.rsplit(":", 1)
    decoder = Decoder()
    seen: dict = {}
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while b"grpc-status" not in str(seen).encode():
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection without a status"
            blocks, received = header_blocks(received + chunk)
            for _, block in blocks:
                seen.update(dict(decoder.decode(block)))
    return seen


def test_unknown_request_encoding_is_unimplemented(asyncio_handlers: HandlersServer) -> None:
    seen = reply_headers(asyncio_handlers.address, (("grpc-encoding", "snappy"),))
    assert seen["grpc-status"] == "12"
    assert "gzip" in seen["grpc-accept-encoding"]


def test_a_non_grpc_content_type_is_refused(asyncio_handlers: HandlersServer) -> None:
    seen = reply_headers(asyncio_handlers.address, content_type="application/json")
    assert seen[":status"] == "415"
    assert seen["grpc-status"] != "0"


def test_a_plain_call_over_a_raw_connection(asyncio_handlers: HandlersServer) -> None:
    seen = reply_headers(asyncio_handlers.address, (("te", "trailers"),))
    assert seen[":status"] == "200"
    assert seen["content-type"] == "application/grpc"
    assert seen["grpc-status"] == "0"
