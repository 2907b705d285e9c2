"""How the asyncio engine hands replies to the transport: the replies one loop turn makes go
out together, in pieces of about 8 replies, not all at the end of the turn."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
from hpack import Encoder

from dl_inference.server.grpc_h2.connection import FLUSH_PARTS

from .raw_h2 import PREFACE, SETTINGS, call_frames, echo_connection


def test_a_burst_of_replies_is_written_in_pieces() -> None:
    release = asyncio.Event()

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await release.wait()  # all 32 answer in the same loop turn, as a batch's callers do
        return request

    async def run() -> tuple[list[int], int]:
        connection, transport = echo_connection(echo)
        encoder = Encoder()
        connection.data_received(
            PREFACE
            + SETTINGS
            + b"".join(call_frames(encoder, 1 + 2 * i, "Echo", b"x", "60S") for i in range(32))
        )
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(connection.streams) == 32
        transport.writes.clear()
        release.set()
        while connection.streams:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        connection.connection_lost(None)
        return transport.writes, sum(transport.writes)

    writes, parts = asyncio.run(run())
    assert parts >= 32 * 3  # every reply's frames (headers, message, trailers) went out
    assert len(writes) >= 32 * 3 // FLUSH_PARTS, f"32 replies went out in {len(writes)} write(s)"
    assert len(writes) <= 32 // 4, f"32 replies went out in {len(writes)} writes"
