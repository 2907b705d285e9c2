"""The lane's routes, requests and replies, and the aiohttp site that accepts through it."""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from dl_inference.server.engines import chosen_engine
from dl_inference.spi.call_path import PLAIN_HANDLER

ENGINES = ("asyncio", "aiohttp")
# aiohttp's default: an idle keep-alive connection is closed after this long.
KEEPALIVE_TIMEOUT_S = 75.0
_SWEEP_EVERY_S = 15.0

PlainHandler = Callable[[Any], Awaitable[web.StreamResponse]]


def http_engine(configured: str) -> str:
    """The engine to run: ``DLI_HTTP_ENGINE`` when set (for tests), else ``configured``."""
    return chosen_engine("DLI_HTTP_ENGINE", configured, ENGINES, "HTTP")


class PlainRequest:
    """What a plain handler gets on the lane: the part of aiohttp's ``web.Request`` that
    :class:`dl_inference.HttpRequest` names, with the body already read."""

    __slots__ = ("_body", "headers", "match_info", "method", "path", "remote")

    def __init__(
        self,
        method: str,
        path: str,
        match_info: dict[str, str],
        fields: list[tuple[str, str]],
        remote: str | None,
        body: bytes,
    ) -> None:
        self.method = method
        self.path = path
        self.match_info = match_info
        self.headers = CIMultiDictProxy(CIMultiDict(fields))
        self.remote = remote
        self._body = body

    async def read(self) -> bytes:
        return self._body


class Routes:
    """The plain routes of an aiohttp application, matched as aiohttp matches them (its
    own compiled pattern for a path with ``{name}`` parts, the path itself otherwise)."""

    def __init__(self, app: web.Application) -> None:
        self._by_method: dict[str, list[tuple[re.Pattern[str], PlainHandler]]] = {}
        for route in app.router.routes():
            if not getattr(route.handler, PLAIN_HANDLER, False) or route.resource is None:
                continue
            if route.method == "HEAD":
                continue  # a reply without its body: aiohttp's to write
            info = route.resource.get_info()
            if "pattern" in info:
                pattern = info["pattern"]
            elif "path" in info:
                pattern = re.compile(re.escape(info["path"]))
            else:
                continue  # a static or prefixed resource: aiohttp's alone
            self._by_method.setdefault(route.method, []).append((pattern, route.handler))

    def __bool__(self) -> bool:
        return bool(self._by_method)

    def match(self, method: str, path: str) -> tuple[PlainHandler, dict[str, str]] | None:
        for pattern, handler in self._by_method.get(method, ()):
            found = pattern.fullmatch(path)
            if found is not None:
                return handler, found.groupdict()
        return None


class _Date:
    """RFC 9110's Date field, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._field = b""

    def field(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._field = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("latin-1")
        return self._field


_DATE = _Date()
_SKIPPED = frozenset({"content-length", "transfer-encoding", "connection"})


def serialize(reply: web.StreamResponse, request: PlainRequest, keep_alive: bool) -> bytes:
    """``reply`` as HTTP/1.1 bytes, compressed as aiohttp would when it asks for it (and
    ``request`` accepts it)."""
    body = reply.body if isinstance(reply, web.Response) else None
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"a plain handler answered with {type(body).__name__}, not bytes")
    lines = [f"HTTP/1.1 {reply.status} {reply.reason}\r\n"]
    for name, value in reply.headers.items():
        if name.lower() not in _SKIPPED:
            lines.append(f"{name}: {value}\r\n")
    if reply.compression and body:
        coding = _coding(request.headers.get("Accept-Encoding", ""))
        if coding is not None:
            compressor = zlib.compressobj(wbits=31 if coding == "gzip" else zlib.MAX_WBITS)
            body = compressor.compress(body) + compressor.flush()
            lines.append(f"Content-Encoding: {coding}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n")
    head = "".join(lines).encode("latin-1")
    return b"".join((head, _DATE.field(), b"\r\n", body))


def _coding(accept_encoding: str) -> str | None:
    accepted = accept_encoding.lower()
    for coding in ("gzip", "deflate"):  # aiohttp's order of preference
        if coding in accepted:
            return coding
    return None


class Lane:
    """The lane's shared state: routes, aiohttp's server to hand off to, open connections."""

    def __init__(self, routes: Routes, aiohttp_server: web.Server, max_body: int) -> None:
        self.routes = routes
        self.aiohttp_server = aiohttp_server
        self.max_body = max_body
        self.connections: set[Any] = set()
        self.closing = False
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_SWEEP_EVERY_S)
            idle_since = loop.time() - KEEPALIVE_TIMEOUT_S
            for connection in list(self.connections):
                connection.close_if_idle(idle_since)

    async def stop(self, timeout: float) -> None:
        """Close idle connections now, the others after their reply, within ``timeout``."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.close_if_idle(float("inf"))
        deadline = asyncio.get_running_loop().time() + timeout
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()


class FastLaneSite(web.TCPSite):
    """aiohttp's TCP site, accepting through the lane; ``runner.cleanup()`` drains both."""

    def __init__(
        self,
        runner: web.AppRunner,
        app: web.Application,
        host: str,
        port: int,
        *,
        max_body: int,
        drain_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._app = app
        self._max_body = max_body
        self._drain_timeout = drain_timeout
        self._lane: Lane | None = None

    @staticmethod
    def serves(app: web.Application) -> bool:
        """Whether ``app`` has plain routes for the lane to take."""
        return bool(Routes(app))

    async def start(self) -> None:
        from dl_inference.server.http1.connection import LaneConnection

        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        lane = Lane(Routes(self._app), server, self._max_body)
        self._lane = lane
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: LaneConnection(lane),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        lane.start()

    async def stop(self) -> None:
        await super().stop()
        if self._lane is not None:
            await self._lane.stop(self._drain_timeout)
