"""One client connection on the lane: plain requests answered in order, the rest handed
to aiohttp with the connection."""

from __future__ import annotations

import asyncio
import logging

from dl_inference.server.http1.head import RequestHead, parse_head
from dl_inference.server.http1.lane import Lane, PlainHandler, PlainRequest, serialize

log = logging.getLogger(__name__)

# A head longer than this goes to aiohttp (whose own limit then answers it).
MAX_HEAD_BYTES = 16 * 1024
# Bytes of requests pipelined behind a running one read before reading pauses.
PIPELINED_BYTES = 1024 * 1024
_END_OF_HEAD = b"\r\n\r\n"
_ERROR_BODY = b'{"error":"internal error: see the server log"}'
_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_ERROR_BODY), _ERROR_BODY)
)


class LaneConnection(asyncio.Protocol):
    """An HTTP/1.1 connection served by the lane until a request needs aiohttp.

    Requests are answered one at a time, in order (HTTP/1.1 pipelining allows no
    other order): bytes that arrive while one runs wait in the buffer.
    """

    __slots__ = (
        "_buffer",
        "_busy",
        "_closed",
        "_eof",
        "_lane",
        "_last_active",
        "_loop",
        "_pending",
        "_queue_full",
        "_remote",
        "_task",
        "_transport",
        "_write_blocked",
    )

    def __init__(self, lane: Lane) -> None:
        self._lane = lane
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        # The parsed head of a request whose body is still arriving, with its handler.
        self._pending: tuple[RequestHead, PlainHandler, dict[str, str], int] | None = None
        self._busy = False
        self._remote: str | None = None
        self._last_active = self._loop.time()
        self._closed = False
        self._eof = False
        self._write_blocked = False  # the client does not read its replies
        self._queue_full = False  # too much pipelined behind the running request
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps weak references

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None
        self._lane.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._last_active = self._loop.time()
        if not self._busy:
            self._next()
        elif len(self._buffer) > PIPELINED_BYTES and not self._queue_full:
            # Requests pipelined behind a running one: past this much, stop reading until
            # they are answered, so a client cannot fill memory by never waiting.
            self._queue_full = True
            self._sync_reading()

    def eof_received(self) -> bool:
        # A half-closed client may still read the reply being computed; close after it.
        self._eof = True
        return self._busy

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lane.connections.discard(self)

    def pause_writing(self) -> None:
        # A client that does not read its replies stops being read from.
        self._write_blocked = True
        self._sync_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._sync_reading()

    def _sync_reading(self) -> None:
        """Read from the client unless its replies or its pipelined requests pile up."""
        transport = self._transport
        if transport is None or self._closed:
            return
        paused = self._write_blocked or self._queue_full
        if paused and transport.is_reading():
            transport.pause_reading()
        elif not paused and not transport.is_reading():
            transport.resume_reading()

    # -- the lane's own ----------------------------------------------------------------------

    def close_if_idle(self, idle_since: float) -> None:
        """Close the connection when no request is running and none has started arriving
        since ``idle_since`` (loop time)."""
        if not self._busy and self._last_active <= idle_since and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _next(self) -> None:
        """Start the next buffered request, if it has fully arrived."""
        if self._pending is None:
            buffer = self._buffer
            end = buffer.find(_END_OF_HEAD)
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    self._hand_off()
                return
            head = parse_head(bytes(buffer[:end]))
            if head is None or head.content_length > self._lane.max_body:
                self._hand_off()
                return
            found = self._lane.routes.match(head.method, head.path)
            if found is None:
                self._hand_off()
                return
            handler, match_info = found
            self._pending = (head, handler, match_info, end + len(_END_OF_HEAD))
        head, handler, match_info, start = self._pending
        stop = start + head.content_length
        if len(self._buffer) < stop:
            return  # the body is still arriving
        body = bytes(self._buffer[start:stop])
        del self._buffer[:stop]
        self._pending = None
        self._busy = True
        request = PlainRequest(head.method, head.path, match_info, head.fields, self._remote, body)
        self._task = self._loop.create_task(self._answer(handler, request, head.keep_alive))

    async def _answer(self, handler: PlainHandler, request: PlainRequest, keep_alive: bool) -> None:
        try:
            reply = await handler(request)
            # A server stopping meanwhile says so in the reply, then closes.
            keep_alive = keep_alive and not self._lane.closing
            data = serialize(reply, request, keep_alive)
        except Exception:
            # Plain handlers answer their own errors; this is a bug in one of them.
            log.exception("the HTTP lane's handler failed")
            data = _INTERNAL_ERROR
            keep_alive = False
        transport = self._transport
        self._busy = False
        if transport is None or self._closed:
            return
        transport.write(data)
        if not keep_alive or self._lane.closing:
            transport.close()
            return
        if self._buffer and not transport.is_closing():
            self._next()
        if self._queue_full and (not self._busy or len(self._buffer) <= PIPELINED_BYTES):
            # Idle means waiting for the rest of a request: read, whatever is buffered.
            self._queue_full = False
            self._sync_reading()
        if self._eof and not self._busy and self._transport is transport:
            transport.close()  # the client is done sending and everything is answered

    def _hand_off(self) -> None:
        """Give the connection, from the buffered request on, to aiohttp for good."""
        transport = self._transport
        assert transport is not None
        self._write_blocked = self._queue_full = False
        self._sync_reading()  # aiohttp gets the connection reading
        self._transport = None  # aiohttp's from now on
        self._lane.connections.discard(self)
        protocol = self._lane.aiohttp_server()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data = bytes(self._buffer)
        self._buffer.clear()
        if data:
            protocol.data_received(data)
