"""Opening the gRPC, HTTP and metrics listeners, with one clear error when a port cannot be bound.

A listener that cannot open is a configuration problem (exit status 2): the error names the
address, the reason and the flag and config key that change it.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import grpc
from aiohttp import web

from dl_inference.kernel.config.schema import ServerConfig
from dl_inference.server.http1 import FastLaneSite
from dl_inference.spi.errors import ConfigError

# Where each listener's port and address are set, so that an error says what to change.
_SETTINGS = {
    "gRPC": ("--grpc-port or server.grpc.port", "--host or server.grpc.host"),
    "HTTP": ("--http-port or server.http.port", "--host or server.http.host"),
    "management gRPC": ("--management-grpc-port or management.grpc_port", "management.host"),
    "management HTTP": ("--management-http-port or management.http_port", "management.host"),
    "metrics": ("--metrics-port or server.metrics.port", "server.metrics.host"),
}


def bracket(host: str) -> str:
    """``::1`` -> ``[::1]``, so that ``host:port`` stays unambiguous."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def cannot_listen(host: str, port: int, what: str, reason: str) -> ConfigError:
    """The error for a listener that cannot open, naming the settings that move it."""
    text = f"cannot listen on {bracket(host)}:{port} ({what}): {reason}"
    if what in _SETTINGS:
        port_setting, host_setting = _SETTINGS[what]
        text += f"; choose another port with {port_setting} (the address: {host_setting})"
    return ConfigError(text)


def metrics_host(config: ServerConfig) -> str:
    """The metrics listener's address: ``server.metrics.host``, or the HTTP listener's."""
    metrics = config.server.metrics
    return metrics.host if metrics.host is not None else config.server.http.host


def check_port(host: str, port: int, what: str) -> None:
    """Raise :func:`cannot_listen`'s error unless ``host:port`` can be bound right now.

    A quick look before slow work (model loads, starting workers); the listener itself
    still binds later. Port 0 always passes.
    """
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As both listeners do: a port left in TIME_WAIT by a previous run is usable.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
    except OSError as exc:
        raise cannot_listen(host, port, what, exc.strerror or str(exc)) from None


def bind_grpc(
    server: grpc.aio.Server | Any,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | ssl.SSLContext | None = None,
    what: str = "gRPC",
) -> str:
    """Add a port to ``server`` (TLS with ``credentials``); returns the bound ``host:port``.

    ``server`` is a ``grpc.aio.Server`` or the asyncio engine's
    :class:`~dl_inference.server.grpc_h2.Server` (same methods; TLS as an ``ssl.SSLContext``).
    """
    address = f"{bracket(host)}:{port}"
    try:
        if credentials is not None:
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        # gRPC's message does not say why; a plain socket on the same address does.
        check_port(host, port, what)
        raise cannot_listen(host, port, what, str(exc)) from None
    return f"{bracket(host)}:{bound}"


async def start_http(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    shutdown_timeout: float = 60.0,
    what: str = "HTTP",
    lane_max_body: int | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port``; returns the runner and the bound ``host:port``.

    Request bodies reach the handlers as they came, ``Content-Encoding`` and all: the
    kernel's :func:`~dl_inference.read_body` decodes them (within the size limit, with
    errors in the protocol's format), and the gateway forwards them undecoded.
    ``lane_max_body``: accept through dl-inference's HTTP/1.1 lane, which answers ``app``'s
    plain routes itself (:mod:`dl_inference.server.http1`) for bodies up to that many bytes
    (``app``'s own limit: aiohttp refuses larger ones).
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        auto_decompress=False,
    )
    await runner.setup()
    site: web.TCPSite
    if lane_max_body is not None and FastLaneSite.serves(app):
        site = FastLaneSite(
            runner,
            app,
            host,
            port,
            max_body=lane_max_body,
            drain_timeout=shutdown_timeout,
            reuse_address=True,
            reuse_port=reuse_port,
            ssl_context=ssl_context,
        )
    else:
        site = web.TCPSite(
            runner, host, port, reuse_address=True, reuse_port=reuse_port, ssl_context=ssl_context
        )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise cannot_listen(host, port, what, exc.strerror or str(exc)) from None
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"{bracket(bound_host)}:{bound_port}"
