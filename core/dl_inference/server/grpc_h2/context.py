"""The servicer context a handler receives: what ``grpc.aio.ServicerContext`` offers, over
one :class:`~dl_inference.server.grpc_h2.stream.Stream`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from dl_inference.server.grpc_h2.stream import Stream

Metadata = tuple[tuple[str, "str | bytes"], ...]


class ServicerContext(grpc.aio.ServicerContext):
    """A call's context: its metadata, peer and deadline in; status, trailers and (for
    streams) messages out. ``abort`` raises ``grpc.aio.AbortError`` as grpc.aio does."""

    def __init__(
        self,
        stream: Stream,
        metadata: Metadata,
        peer: str,
        deadline: float | None,
        auth: dict[str, list[bytes]],
    ) -> None:
        self._stream = stream
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline
        self._auth = auth
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Any = ()
        self._callbacks: list[Callable[[Any], None]] = []
        self._cancelled = False
        self.request_deserializer: Callable[[bytes], Any] | None = None
        self.response_serializer: Callable[[Any], bytes] | None = None

    # -- what the call came with ------------------------------------------------------------

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> Sequence[bytes] | None:
        return self._auth.get("x509_common_name") or None

    def peer_identity_key(self) -> str | None:
        return "x509_common_name" if "x509_common_name" in self._auth else None

    def auth_context(self) -> dict[str, list[bytes]]:
        return dict(self._auth)

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    # -- messages ---------------------------------------------------------------------------

    async def read(self) -> Any:
        message = await self._stream.next_request()
        if message is None:
            return grpc.aio.EOF
        return _deserialize(self.request_deserializer, message)

    async def write(self, message: Any) -> None:
        await self._stream.send_message(_serialize(self.response_serializer, message), True)

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        if self._stream.headers_sent:
            raise grpc.aio.UsageError("Send initial metadata failed: already sent")
        self._stream.send_headers(initial_metadata)
        self._stream.flush()

    # -- status -----------------------------------------------------------------------------

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        if code is grpc.StatusCode.OK:
            code = grpc.StatusCode.UNKNOWN  # as grpc.aio: abort cannot end a call well
        self._code = code
        self._details = details
        if trailing_metadata:
            self._trailing = trailing_metadata
        raise grpc.aio.AbortError(f"abort: {code.name} {details}")

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = trailing_metadata

    def trailing_metadata(self) -> Any:
        return self._trailing

    def set_compression(self, compression: grpc.Compression) -> None:
        """Replies go out uncompressed; clients accept that whatever they asked for."""

    def disable_next_message_compression(self) -> None:
        """Replies go out uncompressed (see :meth:`set_compression`)."""

    # -- lifecycle --------------------------------------------------------------------------

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._stream.finished

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._stream.finished:
            callback(self)
        else:
            self._callbacks.append(callback)

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


class DeserializeError(Exception):
    """The request's bytes cannot be parsed by the method's deserializer."""


class SerializeError(Exception):
    """The handler's reply cannot be serialized by the method's serializer."""


def _deserialize(deserializer: Callable[[bytes], Any] | None, data: bytes) -> Any:
    if deserializer is None:
        return data
    try:
        return deserializer(data)
    except Exception as exc:
        raise DeserializeError(str(exc)) from exc


def _serialize(serializer: Callable[[Any], bytes] | None, message: Any) -> bytes:
    if serializer is None:
        if isinstance(message, bytes | bytearray | memoryview):
            return bytes(message)
        raise SerializeError(f"a reply of type {type(message).__name__} without a serializer")
    try:
        return serializer(message)
    except Exception as exc:
        raise SerializeError(str(exc)) from exc
