"""One gRPC call's HTTP/2 stream: its request messages in, its response frames out under the
peer's flow-control windows, and how it ends (trailers, trailers-only, RST_STREAM)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc

from dl_inference.server.grpc_h2 import headers as hdr
from dl_inference.server.grpc_h2.frames import (
    DATA,
    NO_ERROR,
    frame_header,
    headers_frames,
    rst_stream,
    window_update,
)
from dl_inference.server.grpc_h2.messages import ACCEPT_ENCODING, PREFIX, MessageReader

if TYPE_CHECKING:
    from dl_inference.server.grpc_h2.connection import H2Connection
    from dl_inference.server.grpc_h2.context import ServicerContext

_HEAD = hdr.RESPONSE_HEAD + hdr.literal(b"grpc-accept-encoding", ACCEPT_ENCODING)
_OK_TRAILERS = hdr.literal(b"grpc-status", b"0")


class Stream:
    """State of one call; the connection feeds it, its handler task sends through it."""

    __slots__ = (
        "backlog",
        "conn",
        "context",
        "finished",
        "handler",
        "headers_sent",
        "id",
        "method",
        "out",
        "reader",
        "recv_window",
        "remote_closed",
        "request_count",
        "requests",
        "send_window",
        "task",
        "unrefunded",
        "waiter",
    )

    def __init__(self, conn: H2Connection, stream_id: int, method: str, reader: MessageReader):
        self.conn = conn
        self.id = stream_id
        self.method = method
        self.reader = reader
        self.send_window = conn.peer_initial_window
        self.recv_window = conn.limits.stream_window
        self.unrefunded = 0
        self.backlog = 0  # bytes of received messages the handler has not read yet
        self.requests: deque[bytes] = deque()
        self.request_count = 0
        self.waiter: asyncio.Future[None] | None = None
        self.remote_closed = False
        self.finished = False
        self.headers_sent = False
        self.task: asyncio.Task[Any] | None = None
        self.context: ServicerContext | None = None
        self.handler: Any = None
        self.out: list[bytes] = []

    # -- requests --------------------------------------------------------------------------

    def deliver(self, message: bytes) -> None:
        self.requests.append(message)
        self.request_count += 1
        self.backlog += len(message)
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_request(self) -> bytes | None:
        """The next request message, None after the client's last one."""
        while not self.requests:
            if self.remote_closed or self.finished:
                return None
            self.waiter = self.conn.loop.create_future()
            await self.waiter
        message = self.requests.popleft()
        self.backlog -= len(message)
        self.refund()
        return message

    def refund(self) -> None:
        """Open the stream's receive window again for what arrived, unless the handler has
        fallen behind (then the client waits: memory stays bounded by the window)."""
        if (
            self.unrefunded >= self.conn.limits.refund_at
            and self.backlog < self.conn.limits.stream_window
            and not self.remote_closed
            and not self.finished
        ):
            self.conn.write(window_update(self.id, self.unrefunded))
            self.recv_window += self.unrefunded
            self.unrefunded = 0

    # -- responses -------------------------------------------------------------------------

    def send_headers(self, metadata: Any = None) -> None:
        if self.headers_sent or self.finished:
            return
        self.headers_sent = True
        block = _HEAD + hdr.encode(hdr.encode_metadata(metadata)) if metadata else _HEAD
        self.out.append(headers_frames(self.id, block, False, self.conn.peer_max_frame))

    async def send_message(self, message: bytes, flush: bool) -> None:
        """One response message (already serialized); ``flush`` writes it out now."""
        if self.finished:
            return
        limit = self.conn.limits.max_send
        if len(message) > limit:
            raise MessageOverLimit(len(message), limit)
        self.send_headers()
        payload = PREFIX.pack(0, len(message)) + message
        await self.send_data(payload)
        if flush:
            self.flush()

    async def send_data(self, payload: bytes) -> None:
        conn = self.conn
        n = len(payload)
        if n <= conn.send_window and n <= self.send_window and n <= conn.peer_max_frame:
            conn.send_window -= n
            self.send_window -= n
            self.out.append(frame_header(DATA, 0, self.id, n))
            self.out.append(payload)
            return
        view = memoryview(payload)
        pos = 0
        while pos < n:
            if self.finished:
                return
            size = min(n - pos, conn.send_window, self.send_window, conn.peer_max_frame)
            if size <= 0:
                self.flush()
                conn.flush()
                await conn.wait_for_window()
                continue
            conn.send_window -= size
            self.send_window -= size
            self.out.append(frame_header(DATA, 0, self.id, size))
            self.out.append(view[pos : pos + size])
            pos += size
            if len(self.out) >= 64:
                self.flush()
                conn.flush()  # large replies: to the transport now, then wait while it is full
                await conn.drained()

    def flush(self) -> None:
        if self.out:
            self.conn.write_many(self.out)
            self.out = []

    def finish(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing: Any = None,
        http_status: bytes | None = None,
    ) -> None:
        """End the call: trailers (or a trailers-only reply) with ``code``; RST_STREAM
        (NO_ERROR) when the client is still sending, so that it stops."""
        if self.finished:
            return
        if code is grpc.StatusCode.OK and not details:
            block = (
                _OK_TRAILERS + hdr.encode(hdr.encode_metadata(trailing))
                if trailing
                else _OK_TRAILERS
            )
        else:
            fields = [(b"grpc-status", b"%d" % code.value[0])]
            if details:
                fields.append((b"grpc-message", hdr.encode_message(details)))
            fields += hdr.encode_metadata(trailing)
            block = hdr.encode(fields)
        if not self.headers_sent:
            head = (
                hdr.RESPONSE_HEAD
                if http_status is None
                else (
                    hdr.literal(b":status", http_status)
                    + hdr.literal(b"content-type", b"application/grpc")
                )
            )
            block = head + block
        self.out.append(headers_frames(self.id, block, True, self.conn.peer_max_frame))
        self.headers_sent = True
        if not self.remote_closed:
            self.out.append(rst_stream(self.id, NO_ERROR))
        self.flush()
        self.close()

    def reset(self, code: int) -> None:
        """End the stream with RST_STREAM(``code``) and no status (a protocol error)."""
        if not self.finished:
            self.out = []
            self.conn.write(rst_stream(self.id, code))
            self.close()

    def close(self) -> None:
        """Forget the stream: its handler, if still running, is cancelled."""
        if self.finished:
            return
        self.finished = True
        self.wake()
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self.conn.stream_closed(self)
        context = self.context
        if context is not None:
            # The context keeps its stream (a handler may still ask it whether it is done);
            # the stream lets go of the context, so the two are freed by reference counting
            # instead of waiting, as a reference cycle, for the cyclic collector.
            self.context = None
            context._run_callbacks()


class MessageOverLimit(Exception):
    """A response message over the send limit (the gRPC status RESOURCE_EXHAUSTED)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Sent message larger than max ({size} vs. {limit})")
