"""Fast clients, one per protocol and transport: each builds its request once and then
only sends bytes, so the client costs as little CPU per request as it can.

- V2 gRPC: a ``ModelInferRequest`` (kernel's generated module) serialized once, sent as
  raw bytes on a ``grpc.aio`` channel with identity serializers; replies are not parsed.
- V2 REST: Triton's binary-tensor extension (JSON header + raw bytes) with aiohttp.
- TF Serving / Seldon gRPC: request bytes encoded by hand (:mod:`dl_inference.bench.wire`).
- TF Serving / Seldon REST: their JSON bodies, built once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from dl_inference.bench import wire
from dl_inference.bench.cli import PROTOCOLS
from dl_inference.bench.inputs import InputSpec
from dl_inference.spi.datatypes import from_numpy_dtype
from dl_inference.spi.errors import ConfigError

V2_INFER = "/inference.GRPCInferenceService/ModelInfer"
V2_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
TFS_PREDICT = "/tensorflow.serving.PredictionService/Predict"
SELDON_PREDICT = "/seldon.protos.Seldon/Predict"
SELDON_REST = "/api/v1.0/predictions"

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


# -- request bodies ------------------------------------------------------------------------


def v2_grpc_body(model: str, version: str, inputs: Mapping[str, np.ndarray]) -> bytes:
    """A serialized ModelInferRequest with every tensor in ``raw_input_contents``."""
    from dl_inference._proto import kserve_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        datatype = from_numpy_dtype(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(_v2_raw(array, datatype))
    return request.SerializeToString()


def v2_rest_body(inputs: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """Triton's binary extension: a JSON header followed by each tensor's raw bytes."""
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
    blobs = []
    for name, array in inputs.items():
        datatype = from_numpy_dtype(array.dtype)
        raw = _v2_raw(array, datatype)
        blobs.append(raw)
        header["inputs"].append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    head = json.dumps(header).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return head + b"".join(blobs), headers


def _v2_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return wire.v2_bytes_raw(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_values(array: np.ndarray) -> Any:
    if array.dtype.kind in "OSU":
        return np.vectorize(
            lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v),
            otypes=[object],
        )(array).tolist()
    return array.tolist()


def make_client(
    target: Target,
    protocol: str,
    model: str,
    version: str,
    inputs: Mapping[str, np.ndarray],
    *,
    timeout: float,
    connections: int,
    channels: int = 1,
) -> Client:
    """The client for a protocol and a URL scheme, with its request built once."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    if protocol == "seldon" and len(inputs) != 1:
        raise ConfigError(
            f"the Seldon protocol carries one tensor per request; this model takes "
            f"{len(inputs)} inputs ({', '.join(inputs)}); benchmark it over --protocol v2"
        )
    if target.is_grpc:
        if protocol == "v2":
            return GrpcClient(
                target, V2_INFER, v2_grpc_body(model, version, inputs), timeout, channels=channels
            )
        if protocol == "tfserving":
            body = wire.tfs_predict_request(model, inputs, version=version)
            return GrpcClient(target, TFS_PREDICT, body, timeout, channels=channels)
        array = next(iter(inputs.values()))
        tags = (("model_version", version),) if version else ()
        body = wire.seldon_message(model, array, tags=tags)
        return GrpcClient(
            target, SELDON_PREDICT, body, timeout, metadata=(("model", model),), channels=channels
        )
    if protocol == "v2":
        body, headers = v2_rest_body(inputs)
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        return HttpClient(target, path, body, headers, timeout, connections)
    if protocol == "tfserving":
        payload = {"inputs": {name: _json_values(array) for name, array in inputs.items()}}
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    else:
        array = next(iter(inputs.values()))
        tags = {"model": model, **({"model_version": version} if version else {})}
        payload = {"data": {"ndarray": _json_values(array)}, "meta": {"tags": tags}}
        path = SELDON_REST
    headers = {"Content-Type": "application/json", "model": model}
    return HttpClient(target, path, json.dumps(payload).encode(), headers, timeout, connections)


# -- model metadata --------------------------------------------------------------------------


async def fetch_v2_metadata(
    target: Target, model: str, version: str, timeout: float
) -> list[InputSpec]:
    """The model's declared inputs, read over V2 (gRPC ModelMetadata or REST GET)."""
    if target.is_grpc:
        import grpc

        from dl_inference._proto import kserve_v2_pb2 as pb

        async with grpc.aio.insecure_channel(target.address, options=_GRPC_OPTIONS) as channel:
            call = channel.unary_unary(
                V2_METADATA,
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
