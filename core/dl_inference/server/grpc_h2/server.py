"""The gRPC server on asyncio: what ``grpc.aio.Server`` offers to dl-inference (generic and
registered handlers, ports, TLS, start, graceful stop), serving HTTP/2 connections with
:class:`~dl_inference.server.grpc_h2.connection.H2Connection`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc

from dl_inference.server.engines import chosen_engine
from dl_inference.server.grpc_h2.connection import H2Connection, Limits

ENGINES = ("grpcio", "asyncio")

_DEFAULT_RECEIVE = 4 * 1024 * 1024  # grpc's default for grpc.max_receive_message_length
_UNLIMITED = 2**31 - 1


class _CallDetails(grpc.HandlerCallDetails):
    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, invocation_metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


class Server:
    """A gRPC server speaking HTTP/2 itself, on the running event loop.

    Takes grpc.aio's ``options`` (``grpc.max_receive_message_length``,
    ``grpc.max_send_message_length``, ``grpc.so_reuseport``,
    ``grpc.max_concurrent_streams``; others are ignored) and hosts the same handlers.
    ``add_secure_port`` takes an ``ssl.SSLContext`` (ALPN "h2" is added to it).
    """

    def __init__(self, options: Sequence[tuple[str, Any]] = ()) -> None:
        values = dict(options)
        receive = int(values.get("grpc.max_receive_message_length", _DEFAULT_RECEIVE))
        send = int(values.get("grpc.max_send_message_length", -1))
        self.limits = Limits(
            max_receive=_UNLIMITED if receive < 0 else receive,
            max_send=_UNLIMITED if send < 0 else send,
            max_concurrent_streams=int(values.get("grpc.max_concurrent_streams", 1000)),
        )
        self._reuse_port = bool(values.get("grpc.so_reuseport", 1))
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._sockets: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        self._listeners: list[asyncio.Server] = []
        self._connections: set[H2Connection] = set()
        self._stopped: asyncio.Event | None = None

    # -- handlers --------------------------------------------------------------------------

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        for method, handler in method_handlers.items():
            self._registered[f"/{service_name}/{method}"] = handler

    def resolve(self, method: str, metadata: Any) -> grpc.RpcMethodHandler | None:
        """The handler of ``method`` (a call's ``:path``), None when no service has it."""
        handler = self._registered.get(method)
        if handler is not None:
            return handler
        details = _CallDetails(method, metadata)
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    # -- ports -----------------------------------------------------------------------------

    def add_insecure_port(self, address: str) -> int:
        return self._bind(address, None)

    def add_secure_port(self, address: str, server_credentials: ssl.SSLContext) -> int:
        if not isinstance(server_credentials, ssl.SSLContext):
            raise TypeError("the asyncio gRPC engine takes an ssl.SSLContext for TLS")
        server_credentials.set_alpn_protocols(["h2"])
        return self._bind(address, server_credentials)

    def _bind(self, address: str, context: ssl.SSLContext | None) -> int:
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]") or None
        port = int(port_text)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise RuntimeError(f"Failed to bind to address {address}: {exc}") from None
        bound: list[socket.socket] = []
        seen: set[Any] = set()
        for family, kind, proto, _, sockaddr in infos:
            if (family, sockaddr[0]) in seen:
                continue
            seen.add((family, sockaddr[0]))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self._reuse_port and hasattr(socket, "SO_REUSEPORT"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and sockaddr[0] == "::":
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
                sock.listen(1024)
            except OSError as exc:
                sock.close()
                for other in bound:
                    other.close()
                raise RuntimeError(f"Failed to bind to address {address}: {exc}") from None
            sock.setblocking(False)
            bound.append(sock)
            port = sock.getsockname()[1]  # port 0: the others take the same one
        self._sockets += [(sock, context) for sock in bound]
        return port

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        for sock, context in self._sockets:
            listener = await loop.create_server(
                lambda: H2Connection(self), sock=sock, ssl=context, backlog=1024
            )
            self._listeners.append(listener)

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls (GOAWAY); let running ones finish for ``grace`` seconds, then
        end them (UNAVAILABLE) and close every connection."""
        for listener in self._listeners:
            listener.close()
        for sock, _ in self._sockets:
            sock.close()  # bound but never served (a start that failed after binding)
        self._sockets = []
        connections = list(self._connections)
        for connection in connections:
            connection.begin_shutdown()
        if grace:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._calls_finished(), grace)
        for connection in list(self._connections):
            connection.abort_streams()
        waits = [c.closed_future for c in connections if not c.closed_future.done()]
        if waits:
            await asyncio.wait(waits, timeout=1.0)
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener.wait_closed()
        self._listeners = []
        if self._stopped is not None:
            self._stopped.set()

    async def _calls_finished(self) -> None:
        while any(c.streams for c in self._connections):
            await asyncio.sleep(0.02)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        if self._stopped is None:
            return True
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            return False
        return True


def grpc_engine(configured: str) -> str:
    """The engine to run: ``DLI_GRPC_ENGINE`` when set (for tests), else ``configured``."""
    return chosen_engine("DLI_GRPC_ENGINE", configured, ENGINES, "gRPC")


def grpc_server(engine: str, options: Sequence[tuple[str, Any]]) -> Any:
    """A gRPC server of ``engine`` ("grpcio": ``grpc.aio.server``; "asyncio": :class:`Server`)."""
    if engine == "asyncio":
        return Server(options)
    return grpc.aio.server(options=list(options))
