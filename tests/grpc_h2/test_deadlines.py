"""The asyncio engine enforces ``grpc-timeout`` itself, over a raw connection whose client
never cancels: one timer per connection for the soonest deadline, so a short deadline that
arrives behind long ones still ends its call on time, and the calls that ended leave no
deadline behind."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import grpc.aio
from hpack import Decoder, Encoder

from .conftest import HandlersServer
from .raw_h2 import PREFACE, SETTINGS, call_frames, echo_connection, header_blocks

DEADLINE_EXCEEDED = "4"


def statuses(sock: socket.socket, wanted: int, started: float) -> dict[int, tuple[str, float]]:
    """Each stream's grpc-status and when it arrived (seconds after ``started``)."""
    decoder = Decoder()
    seen: dict[int, tuple[str, float]] = {}
    received = b""
    while len(seen) < wanted:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        blocks, received = header_blocks(received + chunk)
        for stream_id, block in blocks:
            fields = dict(decoder.decode(block))
            if "grpc-status" in fields:
                seen[stream_id] = (fields["grpc-status"], time.monotonic() - started)
    return seen


def test_a_short_deadline_behind_long_ones_ends_its_call_on_time(
    asyncio_handlers: HandlersServer,
) -> None:
    encoder = Encoder()
    # 200 answered calls with a 60 s deadline, one still running (a 1.5 s nap), then a
    # call with a 300 ms deadline that would sleep 30 s: the server must end it at 300 ms.
    data = PREFACE + SETTINGS
    data += b"".join(call_frames(encoder, 1 + 2 * i, "Echo", b"x", "60S") for i in range(200))
    nap, slow = 401, 403
    data += call_frames(encoder, nap, "Nap", b"1.5", "60S")
    data += call_frames(encoder, slow, "Slow", b"deadline-behind-long-ones", "300m")
    host, port = asyncio_handlers.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(data)
        seen = statuses(sock, 202, started)
    assert all(seen[1 + 2 * i][0] == "0" for i in range(200))
    status, at = seen[slow]
    assert status == DEADLINE_EXCEEDED
    assert 0.25 <= at < 1.4, f"the 300 ms deadline ended the call after {at:.2f} s"
    assert seen[nap][0] == "0" and seen[nap][1] >= 1.4  # its long deadline did not end it


def test_answered_calls_leave_no_deadline_behind() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0)
        return request

    async def run() -> tuple[int, int]:
        connection, _ = echo_connection(echo)
        encoder = Encoder()
        connection.data_received(PREFACE + SETTINGS)
        most = 0
        for i in range(2000):
            connection.data_received(call_frames(encoder, 1 + 2 * i, "Echo", b"x", "60S"))
            most = max(most, len(connection._deadlines))
            if i % 7 == 0:
                await asyncio.sleep(0.001)
        while connection.streams:
            await asyncio.sleep(0.001)
        connection.connection_lost(None)
        return most, len(connection._deadlines)

    most, left = asyncio.run(run())
    # Ended calls' deadlines are dropped once they outnumber the open calls (+64).
    assert most < 200, f"{most} deadlines held for at most a few dozen open calls"
    assert left == 0
