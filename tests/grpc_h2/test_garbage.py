"""An answered call leaves no reference cycle behind: its stream, context and reader are
freed by reference counting as the call ends, not left for the cyclic collector, whose
every run pauses all the calls in flight."""

from __future__ import annotations

import asyncio
import gc

import grpc
import grpc.aio
from hpack import Encoder

from dl_inference.server.grpc_h2.connection import H2Connection

from .raw_h2 import PREFACE, SETTINGS, call_frames, echo_connection

CALLS = 300


def test_answered_calls_leave_no_reference_cycles() -> None:
    answered = []

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # What handlers do with their context: read its metadata, ask for the deadline,
        # register a done callback, set trailers.
        context.invocation_metadata()
        context.time_remaining()
        context.add_done_callback(lambda _: None)
        context.set_trailing_metadata((("x-served", "1"),))
        await asyncio.sleep(0)
        answered.append(1)
        return request

    async def calls(connection: H2Connection, encoder: Encoder, first: int, count: int) -> None:
        for i in range(count):
            connection.data_received(call_frames(encoder, first + 2 * i, "Echo", b"x", "60S"))
            if i % 8 == 7:
                await asyncio.sleep(0)
        while connection.streams:
            await asyncio.sleep(0.001)

    async def run() -> tuple[int, list[str]]:
        connection, _ = echo_connection(echo)
        encoder = Encoder()
        connection.data_received(PREFACE + SETTINGS)
        await calls(connection, encoder, 1, 16)  # warm: caches filled, loop state settled
        gc.collect()
        gc.disable()
        try:
            gc.set_debug(gc.DEBUG_SAVEALL)
            await calls(connection, encoder, 33, CALLS)
            found = gc.collect()
            kinds = sorted({type(o).__name__ for o in gc.garbage})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        connection.connection_lost(None)
        return found, kinds

    found, kinds = asyncio.run(run())
    assert len(answered) == 16 + CALLS
    # Unfixed, each call left a cycle of about 7 objects (stream <-> context, with the
    # stream's reader, queue and buffers): about 1,400 here.
    assert found < CALLS // 10, f"{found} objects in reference cycles after {CALLS} calls: {kinds}"
