"""One HTTP/2 connection (RFC 9113) as an ``asyncio.Protocol``: frame parsing, settings,
flow control both ways, stream lifecycle, PING and GOAWAY, and the checks that end a
connection which breaks the protocol (with GOAWAY and the error's code), never the server."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from dl_inference.server.grpc_h2 import frames as f
from dl_inference.server.grpc_h2 import headers as hdr
from dl_inference.server.grpc_h2.calls import run_call
from dl_inference.server.grpc_h2.context import ServicerContext
from dl_inference.server.grpc_h2.frames import H2ConnectionError, H2StreamError
from dl_inference.server.grpc_h2.messages import (
    ACCEPT_ENCODING,
    BadMessage,
    MessageReader,
    MessageTooLarge,
    supported_encoding,
)
from dl_inference.server.grpc_h2.stream import Stream

if TYPE_CHECKING:
    from dl_inference.server.grpc_h2.server import Server

log = logging.getLogger(__name__)
_SHUTDOWN_PING = b"dli-stop"
_STREAM_ID_LIMIT = 2**31 - 1
# Frames (and frame parts) waiting for the transport that are written at once: about 8
# unary replies. MLP over gRPC at C=32 (one loadgen connection), each second alternating
# between this and writing once per loop turn in one server: 9-12% more calls answered.
FLUSH_PARTS = 32


@dataclass(frozen=True)
class Limits:
    """What one connection accepts and advertises."""

    max_receive: int = 4 * 1024 * 1024
    max_send: int = 2**31 - 1
    max_concurrent_streams: int = 1000
    max_header_list: int = 16 * 1024
    header_table: int = 4096
    max_frame: int = 1 << 20
    stream_window: int = 16 << 20
    connection_window: int = 64 << 20
    # Window updates go out once this much arrived (fewer frames than one per DATA). Large
    # windows: a 100 MB message took twice as long with 4 MiB / 16 MiB ones.
    refund_at: int = 1 << 20
    # RST_STREAMs a client may send per second (sustained) before it is told to calm down.
    resets_per_s: float = 200.0
    reset_burst: float = 1000.0


class H2Connection(asyncio.Protocol):
    """The server side of one connection; its calls run as tasks on the loop."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.limits: Limits = server.limits
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.peer = ""
        self.auth: dict[str, list[bytes]] = {}
        self._buffer = b""
        self._parts: list[bytes] = []  # an incomplete frame's pieces, self._needed bytes in all
        self._parts_size = 0
        self._needed = 0
        self._preface = False
        self._settings_seen = False
        self._decoder = hdr.HeaderDecoder(self.limits.header_table, self.limits.max_header_list)
        self._header_block: bytearray | None = None
        self._header_stream = 0
        self._header_end_stream = False
        # Flow control: what the peer lets us send, and what we have not refunded yet.
        self.send_window = f.DEFAULT_WINDOW
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_FRAME_SIZE
        self.recv_window = self.limits.connection_window
        self._recv_unrefunded = 0
        self._window_waiters: list[asyncio.Future[None]] = []
        self._writable: asyncio.Future[None] | None = None
        self._reset_budget = self.limits.reset_burst
        self._reset_time = time.monotonic()
        self.going_away = False  # GOAWAY sent: no new streams
        self._final_goaway = False
        self.closed = False
        self.closed_future: asyncio.Future[None] = self.loop.create_future()
        self._pending: list[Any] = []
        self._flush_scheduled = False
        # Calls' deadlines, soonest first, and one timer for the soonest: a timer per call
        # costs a TimerHandle and Python-level heap comparisons on the loop's scheduler.
        self._deadlines: list[tuple[float, int, Stream]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = _peer_name(transport.get_extra_info("peername"))
        self.auth = _auth_context(transport)
        transport.set_write_buffer_limits(high=4 << 20)
        limits = self.limits
        transport.write(
            f.settings_frame(
                {
                    f.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                    f.INITIAL_WINDOW_SIZE: limits.stream_window,
                    f.MAX_FRAME_SIZE: limits.max_frame,
                    f.MAX_HEADER_LIST_SIZE: limits.max_header_list,
                    f.ENABLE_PUSH: 0,
                }
            )
            + f.window_update(0, limits.connection_window - f.DEFAULT_WINDOW)
        )
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines = []
        for stream in list(self.streams.values()):
            if stream.context is not None:
                stream.context._cancelled = True
            stream.close()
        self._wake_writers()
        self.resume_writing()  # streams waiting for the transport to drain end too
        self.server._connections.discard(self)
        if not self.closed_future.done():
            self.closed_future.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except H2ConnectionError as exc:
            self.fail(exc.code, str(exc))
        except Exception:  # a bug here must end this connection, not the server
            log.exception("HTTP/2 connection from %s failed", self.peer)
            self.fail(f.INTERNAL_ERROR, "internal error")

    # -- writing ---------------------------------------------------------------------------

    # Frames written during one turn of the loop (the replies of every call a batch of
    # frames completed) go out in one system call at its end, not one call each; but once
    # FLUSH_PARTS frames wait, they go out at once, so that a client whose 32 calls a batch
    # answered starts on the first answers while the last are still being encoded.

    def write(self, data: bytes) -> None:
        if not self.closed:
            self._pending.append(data)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self.flush)

    def write_many(self, parts: list[Any]) -> None:
        if not self.closed:
            self._pending.extend(parts)
            if len(self._pending) >= FLUSH_PARTS:
                self.flush()
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand what was written to the transport now."""
        self._flush_scheduled = False
        pending = self._pending
        if pending and self.transport is not None and not self.transport.is_closing():
            self._pending = []
            if len(pending) == 1:
                self.transport.write(pending[0])
            else:
                self.transport.writelines(pending)

    def _close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()

    async def drained(self) -> None:
        """Wait while the transport holds too much unsent data (a slow reader)."""
        while self._writable is not None and not self.closed:
            await asyncio.shield(self._writable)

    async def wait_for_window(self) -> None:
        """Wait for a WINDOW_UPDATE or SETTINGS that may let a stream send again."""
        waiter = self.loop.create_future()
        self._window_waiters.append(waiter)
        await waiter

    def _wake_writers(self) -> None:
        """Wake the streams waiting for flow-control window (a window opened)."""
        if self._window_waiters:
            waiters, self._window_waiters = self._window_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def fail(self, code: int, message: str) -> None:
        """End the connection for a protocol error: GOAWAY(``code``), then close."""
        if self.closed:
            return
        log.info("closing HTTP/2 connection from %s: %s", self.peer, message)
        self.write(f.goaway(self.last_stream_id, code, message.encode("utf-8")[:256]))
        self._close()
        self.closed = True

    # -- parsing ---------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self.closed:
            return
        if self._parts:
            # A large frame arriving in pieces is joined once, when it is complete, instead
            # of copying the growing prefix at every read.
            self._parts.append(data)
            self._parts_size += len(data)
            if self._parts_size < self._needed:
                return
            data = b"".join(self._parts)
            self._parts = []
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        if not self._preface:
            if len(buffer) < 24:
                if not f.PREFACE.startswith(buffer):
                    raise H2ConnectionError(f.PROTOCOL_ERROR, "bad connection preface")
                self._buffer = buffer
                return
            if buffer[:24] != f.PREFACE:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "bad connection preface")
            self._preface = True
            pos = 24
        end = len(buffer)
        max_frame = self.limits.max_frame
        while end - pos >= 9:
            length = (buffer[pos] << 16) | (buffer[pos + 1] << 8) | buffer[pos + 2]
            if length > max_frame:
                raise H2ConnectionError(f.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - pos < 9 + length:
                break
            ftype = buffer[pos + 3]
            flags = buffer[pos + 4]
            sid = f.U32.unpack_from(buffer, pos + 5)[0] & 0x7FFFFFFF
            payload = buffer[pos + 9 : pos + 9 + length]
            pos += 9 + length
            try:
                self._frame(ftype, flags, sid, payload)
            except H2StreamError as exc:
                stream = self.streams.get(exc.stream_id)
                if stream is not None:
                    stream.reset(exc.code)
                else:
                    self.write(f.rst_stream(exc.stream_id, exc.code))
            if self.closed:
                return
        self._buffer = b""
        if pos < end:
            rest = buffer[pos:]
            if len(rest) >= 9:
                self._needed = 9 + ((rest[0] << 16) | (rest[1] << 8) | rest[2])
                self._parts = [rest]
                self._parts_size = len(rest)
            else:
                self._buffer = rest
        if self._recv_unrefunded >= self.limits.refund_at:
            self.write(f.window_update(0, self._recv_unrefunded))
            self.recv_window += self._recv_unrefunded
            self._recv_unrefunded = 0

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._header_block is not None and ftype != f.CONTINUATION:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "header block interrupted")
        if not self._settings_seen and ftype != f.SETTINGS:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if ftype == f.DATA:
            self._data(flags, sid, payload)
        elif ftype == f.HEADERS:
            self._headers(flags, sid, payload)
        elif ftype == f.CONTINUATION:
            self._continuation(flags, sid, payload)
        elif ftype == f.SETTINGS:
            self._settings(flags, sid, payload)
        elif ftype == f.WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif ftype == f.PING:
            self._ping(flags, sid, payload)
        elif ftype == f.RST_STREAM:
            self._rst_stream(sid, payload)
        elif ftype == f.PRIORITY:
            if sid == 0:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise H2StreamError(sid, f.FRAME_SIZE_ERROR)
        elif ftype == f.GOAWAY:
            self._goaway(sid, payload)
        elif ftype == f.PUSH_PROMISE:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # Unknown frame types are ignored (section 4.1).

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        self.recv_window -= length
        if self.recv_window < 0:
            raise H2ConnectionError(f.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._recv_unrefunded += length
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_stream_id:
                raise H2ConnectionError(f.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream already ended here: counted for the connection, dropped
        if stream.remote_closed:
            raise H2StreamError(sid, f.STREAM_CLOSED)
        stream.recv_window -= length
        if stream.recv_window < 0:
            raise H2StreamError(sid, f.FLOW_CONTROL_ERROR)
        stream.unrefunded += length
        data = f.strip_padding(payload, flags)
        if data:
            try:
                messages = stream.reader.feed(data)
            except MessageTooLarge as exc:
                stream.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                return
            except BadMessage as exc:
                stream.finish(grpc.StatusCode.INTERNAL, str(exc))
                return
            for message in messages:
                if stream.handler.request_streaming:
                    stream.deliver(message)
                elif stream.request_count:
                    stream.finish(grpc.StatusCode.INTERNAL, "more than one request message")
                    return
                else:
                    stream.request_count = 1
                    stream.requests.append(message)
        if flags & f.END_STREAM:
            self._end_of_request(stream)
        else:
            stream.refund()

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = f.strip_padding(payload, flags)
        if flags & f.PRIORITY_FLAG:
            if len(block) < 5:
                raise H2ConnectionError(f.FRAME_SIZE_ERROR, "HEADERS too short for priority")
            block = block[5:]
        if flags & f.END_HEADERS:
            self._header_block_done(sid, block, bool(flags & f.END_STREAM))
        else:
            self._header_block = bytearray(block)
            self._header_stream = sid
            self._header_end_stream = bool(flags & f.END_STREAM)

    def _continuation(self, flags: int, sid: int, payload: bytes) -> None:
        block = self._header_block
        if block is None or sid != self._header_stream:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "unexpected CONTINUATION")
        block += payload
        # A header block larger than any list we accept is refused before it is decoded.
        if len(block) > 2 * self.limits.max_header_list:
            raise H2ConnectionError(f.ENHANCE_YOUR_CALM, "header block too large")
        if flags & f.END_HEADERS:
            self._header_block = None
            self._header_block_done(sid, bytes(block), self._header_end_stream)

    def _header_block_done(self, sid: int, block: bytes, end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: they must end its request
            # Always decoded, even when unused: the HPACK table must stay in step.
            self._decoder.decode(block)
            if not end_stream or stream.remote_closed:
                raise H2StreamError(sid, f.PROTOCOL_ERROR)
            self._end_of_request(stream)
            return
        if sid % 2 == 0 or sid <= self.last_stream_id:
            self._decoder.decode(block)
            raise H2ConnectionError(f.PROTOCOL_ERROR, f"stream id {sid} cannot open a stream")
        self.last_stream_id = sid
        if (self.going_away and self._final_goaway) or len(
            self.streams
        ) >= self.limits.max_concurrent_streams:
            self._decoder.decode(block)
            self.write(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        self._open(sid, block, end_stream)

    def _open(self, sid: int, block: bytes, end_stream: bool) -> None:
        try:
            head = self._decoder.read(block, _read_head)
        except _Malformed:
            raise H2StreamError(sid, f.PROTOCOL_ERROR) from None
        method, path, content_type, timeout, encoding = head.fields
        stream = Stream(self, sid, path, MessageReader(0, ""))
        stream.remote_closed = end_stream
        self.streams[sid] = stream
        if method != b"POST":
            stream.finish(grpc.StatusCode.UNIMPLEMENTED, "only POST is allowed", None, b"405")
            return
        if not _is_grpc(content_type):
            stream.finish(
                grpc.StatusCode.UNKNOWN, "invalid gRPC request content-type", None, b"415"
            )
            return
        if not supported_encoding(encoding):
            stream.finish(
                grpc.StatusCode.UNIMPLEMENTED,
                f"Compression algorithm '{encoding}' is not supported",
                (("grpc-accept-encoding", ACCEPT_ENCODING.decode()),),
            )
            return
        stream.reader = MessageReader(self.limits.max_receive, encoding)
        deadline = None if timeout is None else time.monotonic() + timeout
        stream.context = ServicerContext(stream, head.metadata, self.peer, deadline, self.auth)
        try:
            handler = self.server.resolve(stream.method, stream.context._metadata)
        except Exception as exc:
            log.exception("finding the handler of %s failed", stream.method)
            stream.finish(grpc.StatusCode.UNKNOWN, f"Exception servicing handler: {exc}")
            return
        if handler is None:
            stream.finish(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        stream.handler = handler
        if deadline is not None:
            self._watch_deadline(deadline, stream)
        if handler.request_streaming:
            stream.task = self.loop.create_task(run_call(stream, handler, None))
        elif end_stream:
            self._end_of_request(stream)

    def _end_of_request(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.finished:
            return
        if stream.reader.partial:
            stream.finish(grpc.StatusCode.INTERNAL, "the request ended inside a message")
        elif stream.handler.request_streaming:
            stream.wake()
        elif stream.request_count != 1:
            stream.finish(grpc.StatusCode.INTERNAL, "a unary call needs one request message")
        else:
            request = stream.requests.popleft()
            stream.task = self.loop.create_task(run_call(stream, stream.handler, request))

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise H2ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        self._settings_seen = True
        for offset in range(0, len(payload), 6):
            key, value = f.SETTING.unpack_from(payload, offset)
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise H2ConnectionError(f.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > f.MAX_WINDOW:
                        raise H2ConnectionError(f.FLOW_CONTROL_ERROR, "stream window overflow")
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_FRAME_SIZE <= value <= f.MAX_FRAME_SIZE_LIMIT:
                    raise H2ConnectionError(f.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == f.ENABLE_PUSH and value > 1:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        self.write(f.frame(f.SETTINGS, f.ACK, 0))
        self._wake_writers()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = f.U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise H2ConnectionError(f.FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self.streams.get(sid)
            if stream is None:
                if sid > self.last_stream_id:
                    raise H2ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return
            if increment == 0:
                raise H2StreamError(sid, f.PROTOCOL_ERROR)
            stream.send_window += increment
            if stream.send_window > f.MAX_WINDOW:
                raise H2StreamError(sid, f.FLOW_CONTROL_ERROR)
        self._wake_writers()

    def _ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "PING of the wrong size")
        if flags & f.ACK:
            if payload == _SHUTDOWN_PING:
                self._send_final_goaway()
            return
        self.write(f.frame(f.PING, f.ACK, 0, payload))
        if self.transport is not None and self.transport.get_write_buffer_size() > 64 << 20:
            raise H2ConnectionError(f.ENHANCE_YOUR_CALM, "the peer does not read its replies")

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if sid > self.last_stream_id:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        now = time.monotonic()
        limits = self.limits
        self._reset_budget = min(
            limits.reset_burst, self._reset_budget + (now - self._reset_time) * limits.resets_per_s
        )
        self._reset_time = now
        self._reset_budget -= 1
        if self._reset_budget < 0:
            raise H2ConnectionError(f.ENHANCE_YOUR_CALM, "too many stream resets")
        stream = self.streams.get(sid)
        if stream is not None:
            if stream.context is not None:
                stream.context._cancelled = True
            stream.remote_closed = True
            stream.close()

    def _goaway(self, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise H2ConnectionError(f.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "GOAWAY too short")
        # The client opens no more streams; those open finish, then it closes.
        if not self.streams and self.transport is not None:
            self._close()

    # -- deadlines -------------------------------------------------------------------------

    def _watch_deadline(self, deadline: float, stream: Stream) -> None:
        deadlines = self._deadlines
        # Ended calls stay in the heap until they reach its top; past twice the open
        # streams, it is rebuilt from those still open (memory bounded by the streams).
        if len(deadlines) > 2 * len(self.streams) + 64:
            deadlines[:] = [entry for entry in deadlines if not entry[2].finished]
            heapq.heapify(deadlines)
        soonest = deadlines[0][0] if deadlines else None
        heapq.heappush(deadlines, (deadline, stream.id, stream))
        if soonest is None or deadline < soonest or self._deadline_timer is None:
            self._arm_deadline_timer()

    def _arm_deadline_timer(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].finished:
            heapq.heappop(deadlines)
        if deadlines and not self.closed:
            self._deadline_timer = self.loop.call_later(
                max(0.0, deadlines[0][0] - time.monotonic()), self._expire_due
            )

    def _expire_due(self) -> None:
        self._deadline_timer = None
        deadlines = self._deadlines
        now = time.monotonic()
        while deadlines and deadlines[0][0] <= now:
            _expire(heapq.heappop(deadlines)[2])
        self._arm_deadline_timer()

    # -- streams and shutdown --------------------------------------------------------------

    def stream_closed(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        # Whatever it had not refunded goes back to the connection's count (already done).
        if not self.streams and self._final_goaway and self.transport is not None:
            self._close()

    def begin_shutdown(self) -> None:
        """Graceful stop (as gRPC servers do it): GOAWAY with the largest id and a PING, then,
        once the client answers, GOAWAY with the last stream id actually opened."""
        if self.going_away or self.closed:
            return
        self.going_away = True
        self.write(f.goaway(_STREAM_ID_LIMIT, f.NO_ERROR) + f.frame(f.PING, 0, 0, _SHUTDOWN_PING))
        self.loop.call_later(1.0, self._send_final_goaway)

    def _send_final_goaway(self) -> None:
        if self._final_goaway or self.closed:
            return
        self._final_goaway = True
        self.write(f.goaway(self.last_stream_id, f.NO_ERROR))
        if not self.streams and self.transport is not None:
            self._close()

    def abort_streams(self) -> None:
        """The grace period is over: end every call still running, then the connection."""
        for stream in list(self.streams.values()):
            if stream.context is not None:
                stream.context._cancelled = True
            stream.finish(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        self._close()


def _expire(stream: Stream) -> None:
    if not stream.finished:
        if stream.context is not None:
            stream.context._cancelled = True
        stream.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def _is_grpc(content_type: bytes) -> bool:
    return content_type.startswith(b"application/grpc") and (
        len(content_type) == 16 or content_type[16:17] in (b"+", b";")
    )


def _peer_name(address: Any) -> str:
    """The peer as grpc writes it: ``ipv4:HOST:PORT`` or ``ipv6:[HOST]:PORT``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if host.startswith("::ffff:") and "." in host:
            return f"ipv4:{host[7:]}:{port}"
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return f"unix:{address}" if address else ""


def _auth_context(transport: asyncio.Transport) -> dict[str, list[bytes]]:
    if transport.get_extra_info("sslcontext") is None:
        return {"transport_security_type": [b"insecure"], "security_level": [b"TSI_SECURITY_NONE"]}
    auth = {"transport_security_type": [b"ssl"], "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"]}
    cert = transport.get_extra_info("peercert")
    if cert:
        for entry in cert.get("subject", ()):
            for key, value in entry:
                if key == "commonName":
                    auth["x509_common_name"] = [value.encode()]
    return auth


class _Malformed(Exception):
    """A request head that breaks HTTP/2's rules (the stream is reset: PROTOCOL_ERROR)."""


class _RequestHead:
    """What a request's header fields say, read once per distinct header block."""

    __slots__ = ("fields", "metadata")

    def __init__(
        self,
        fields: tuple[bytes, str, bytes, float | None, str],
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        self.fields = fields  # method, path, content type, timeout (s), grpc-encoding
        self.metadata = metadata


def _read_head(fields: list[tuple[bytes, bytes]]) -> _RequestHead:
    """The request head ``fields`` make; raises :class:`_Malformed` (RFC 9113 section 8.3)."""
    method = path = scheme = None
    content_type = b""
    timeout = None
    encoding = ""
    metadata: list[tuple[str, str | bytes]] = []
    regular = False
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                raise _Malformed
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":scheme":
                scheme = value
            elif name != b":authority":
                raise _Malformed
            continue
        regular = True
        if hdr.is_connection_specific(name, value) or name != name.lower():
            raise _Malformed
        try:
            key = name.decode("ascii")
        except UnicodeDecodeError:
            raise _Malformed from None
        if key == "content-type":
            content_type = value
        elif key == "grpc-timeout":
            timeout = hdr.parse_timeout(value.decode("latin-1"))
        elif key == "grpc-encoding":
            encoding = value.decode("latin-1")
        elif not hdr.is_reserved(key):
            converted = hdr.metadata_value(key, value)
            if converted is None:
                raise _Malformed
            metadata.append((key, converted))
    if method is None or path is None or scheme is None or not path:
        raise _Malformed
    return _RequestHead(
        (method, path.decode("latin-1"), content_type, timeout, encoding), tuple(metadata)
    )
