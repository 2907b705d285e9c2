"""Fast clients, one per transport: each sends a request built once, so that the client
costs as little CPU per request as it can.

The protocol builds the request (:meth:`dl_inference.Protocol.bench_request`, a
:class:`~dl_inference.BenchRequest`: a method path or REST path, bytes and headers): this
module names no protocol's messages. gRPC: the bytes on a ``grpc.aio`` channel with
identity serializers, replies not parsed. HTTP: a POST of the body on a keep-alive aiohttp
session. The model's inputs are read over V2, the kernel's own protocol.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from dl_inference.bench.inputs import InputSpec
from dl_inference.spi.errors import ConfigError
from dl_inference.spi.protocol import BenchRequest

# Unlimited both ways: a benchmark must not fail on a large tensor the server accepts.
_GRPC_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class RequestFailed(Exception):
    """One request failed; ``kind``: ``unreachable``, ``not_found``, ``unsupported``, ``error``."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    """Where the server is: ``grpc://host:port`` or ``http(s)://host:port[/prefix]``."""

    url: str
    scheme: str
    address: str  # host:port for gRPC
    base: str  # http://host:port[/prefix] for REST

    @property
    def is_grpc(self) -> bool:
        return self.scheme == "grpc"


def parse_url(url: str) -> Target:
    """Check the ``--url`` form; the error says which forms are accepted."""
    hint = "write grpc://HOST:PORT or http://HOST:PORT, e.g. grpc://127.0.0.1:8500"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--url {url!r}: {exc}; {hint}") from None
    if parts.scheme not in ("grpc", "http", "https"):
        raise ConfigError(f"--url {url!r}: unknown scheme {parts.scheme!r}; {hint}")
    if not parts.hostname or port is None:
        raise ConfigError(f"--url {url!r}: give a host and a port; {hint}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if parts.scheme == "grpc" and parts.path not in ("", "/"):
        raise ConfigError(f"--url {url!r}: a gRPC address has no path; {hint}")
    base = f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"
    return Target(url=url, scheme=parts.scheme, address=f"{host}:{port}", base=base)


class Client:
    """Sends the prepared request; :meth:`infer` raises :class:`RequestFailed` on failure."""

    async def open(self) -> None:
        """Create the channel or session (inside the event loop that will use it)."""

    async def infer(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Release the channel or session."""


class GrpcClient(Client):
    """Raw request bytes on one ``grpc.aio`` channel; the reply's bytes are not parsed."""

    def __init__(
        self,
        target: Target,
        method: str,
        body: bytes,
        timeout: float,
        metadata: tuple[tuple[str, str], ...] = (),
        channels: int = 1,
    ) -> None:
        self.target = target
        self.method = method
        self.body = body
        self.timeout = timeout
        self.metadata = metadata or None
        self.channels = max(1, channels)
        self._channels: list[Any] = []
        self._calls: Any = None

    async def open(self) -> None:
        import grpc

        # A local subchannel pool gives each channel its own TCP connection, so that
        # SO_REUSEPORT can spread them over `serve --workers N` processes.
        options = [*_GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        self._channels = [
            grpc.aio.insecure_channel(self.target.address, options=options)
            for _ in range(self.channels)
        ]
        # No serializers: grpc passes bytes through untouched both ways.
        self._calls = itertools.cycle([c.unary_unary(self.method) for c in self._channels])

    async def infer(self) -> None:
        import grpc

        try:
            await next(self._calls)(self.body, timeout=self.timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise grpc_failure(exc) from None

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()


class HttpClient(Client):
    """One POST with a prepared body on a keep-alive aiohttp session."""

    def __init__(
        self,
        target: Target,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        connections: int,
    ) -> None:
        self.url = target.base + path
        self.body = body
        self.headers = dict(headers)
        self.timeout = timeout
        self.connections = connections
        self._session: Any = None

    async def open(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )

    async def infer(self) -> None:
        import aiohttp

        with http_errors(aiohttp):
            async with self._session.post(self.url, data=self.body, headers=self.headers) as reply:
                payload = await reply.read()
                if reply.status >= 300:
                    raise http_failure(reply.status, payload)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def grpc_failure(exc: Any) -> RequestFailed:
    """A gRPC error as ``CODE: details``, classified for the pre-flight check."""
    import grpc

    code = exc.code()
    details = (exc.details() or "").strip()
    kind = "error"
    if code == grpc.StatusCode.NOT_FOUND:
        kind = "not_found"
    elif code == grpc.StatusCode.UNAVAILABLE and (
        "connect" in details.lower() or "unreachable" in details.lower()
    ):
        kind = "unreachable"
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        kind = "unsupported"
    return RequestFailed(f"{code.name}: {details}", kind)


@contextlib.contextmanager
def http_errors(aiohttp: Any) -> Iterator[None]:
    """aiohttp's client errors as :class:`RequestFailed` (no connection: "unreachable").

    ``aiohttp`` is passed in: it is imported only when an HTTP target is used.
    """
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        raise RequestFailed(f"cannot connect: {exc}", "unreachable") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RequestFailed(f"{type(exc).__name__}: {exc}") from None


def http_failure(status: int, payload: bytes) -> RequestFailed:
    text = payload[:300].decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(payload)
        if isinstance(parsed, dict) and "error" in parsed:
            text = str(parsed["error"])[:300]
    except ValueError:
        pass
    return RequestFailed(f"HTTP {status}: {text}", "not_found" if status == 404 else "error")


def make_client(
    target: Target,
    request: BenchRequest,
    *,
    timeout: float,
    connections: int,
    channels: int = 1,
) -> Client:
    """The client that sends ``request`` (built by the protocol for the URL's transport)."""
    if target.is_grpc:
        return GrpcClient(
            target,
            request.path,
            request.body,
            timeout,
            metadata=request.headers,
            channels=channels,
        )
    return HttpClient(
        target, request.path, request.body, dict(request.headers), timeout, connections
    )


# -- model metadata --------------------------------------------------------------------------


async def fetch_v2_metadata(
    target: Target, model: str, version: str, timeout: float
) -> list[InputSpec]:
    """The model's declared inputs, read over V2 (gRPC ModelMetadata or REST GET)."""
    if target.is_grpc:
        import grpc

        from dl_inference._proto import kserve_v2_pb2 as pb
        from dl_inference.builtin.v2 import SERVICE

        async with grpc.aio.insecure_channel(target.address, options=_GRPC_OPTIONS) as channel:
            call = channel.unary_unary(
                f"/{SERVICE}/ModelMetadata",
                request_serializer=pb.ModelMetadataRequest.SerializeToString,
                response_deserializer=pb.ModelMetadataResponse.FromString,
            )
            try:
                reply = await call(
                    pb.ModelMetadataRequest(name=model, version=version), timeout=timeout
                )
            except grpc.aio.AioRpcError as exc:
                raise grpc_failure(exc) from None
        return [InputSpec(t.name, t.datatype, tuple(t.shape)) for t in reply.inputs]

    import aiohttp

    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    with http_errors(aiohttp):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(target.base + path) as reply,
        ):
            payload = await reply.read()
            if reply.status >= 300:
                raise http_failure(reply.status, payload)
    try:
        data = json.loads(payload)
        return [
            InputSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
            for t in data.get("inputs", [])
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise RequestFailed(f"the model metadata reply is not V2 JSON ({exc})") from None
