"""Opening the gRPC and HTTP listeners, with one clear error when a port cannot be bound."""

from __future__ import annotations

import ssl

import grpc
from aiohttp import web


def bracket(host: str) -> str:
    """``::1`` -> ``[::1]``, so that ``host:port`` stays unambiguous."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def bind_grpc(
    server: grpc.aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
    what: str = "gRPC",
) -> str:
    """Add a port to ``server`` (TLS with ``credentials``); returns the bound ``host:port``."""
    address = f"{bracket(host)}:{port}"
    try:
        if credentials is not None:
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address} ({what}): {exc}") from None
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
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port``; returns the runner and the bound ``host:port``.

    Request bodies reach the handlers as they came, ``Content-Encoding`` and all: the
    kernel's :func:`~dl_inference.read_body` decodes them (within the size limit, with
    errors in the protocol's format), and the gateway forwards them undecoded.
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        auto_decompress=False,
    )
    await runner.setup()
    site = web.TCPSite(
        runner, host, port, reuse_address=True, reuse_port=reuse_port, ssl_context=ssl_context
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen on {bracket(host)}:{port} ({what}): {exc.strerror}") from None
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"{bracket(bound_host)}:{bound_port}"
