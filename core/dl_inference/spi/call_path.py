"""The one call path every wire-protocol adapter goes through.

An adapter (V2, TF Serving, Seldon, the seed's service, a third party's) binds its methods
with :class:`CallPath`; the kernel then does, the same way for every protocol:

- builds the :class:`~dl_inference.RequestContext` once: metadata with lower-cased keys,
  peer, deadline, and the method as actually called (the gRPC path, or the REST label);
- parses the body inside :meth:`Call.parsing`, so bytes a client sent that cannot be read
  are ``InvalidInput`` (INVALID_ARGUMENT / 400), never UNKNOWN or INTERNAL;
- reads REST bodies with the server's size limit: an oversize body is
  ``PayloadTooLarge`` (RESOURCE_EXHAUSTED / 413);
- counts every inference call once (metrics ``dli_requests_total``, the access log,
  ``dli_on_error``): as a success only once its reply is encoded, as a failure wherever it
  failed, while parsing, in :meth:`~RuntimeView.infer`, or in the adapter's encoding;
- maps errors through the one table in :mod:`dl_inference.spi.status`, with the request id
  sent back (gRPC trailing metadata / HTTP header ``x-request-id``).

Authorization happens in :meth:`RuntimeView.infer`, after the body is parsed (the
``dli_authorize`` hook may decide by model name) and before any model is looked up.

What counts as an inference call: one that reached :meth:`RuntimeView.infer` (it named a
model to run), or one on a method bound as inference (``counted=True``, the default) that
failed before the adapter could tell (an unparsable body, a refusal, an unknown model).
Calls of methods bound with ``counted=False`` (health, readiness, server and model
metadata, model status, management) are answered with the same table's codes, but their
failures are only logged at debug level: they are not inference requests, so they are not
in ``dli_requests_total``, the access log or ``dli_on_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog
from google.protobuf.message import DecodeError

from dl_inference.spi.errors import (
    DlInferenceError,
    InvalidInput,
    PayloadTooLarge,
    ResourceExhausted,
    UnsupportedEncoding,
)
from dl_inference.spi.statistics import VersionStatistics
from dl_inference.spi.status import grpc_code, http_status, public_message
from dl_inference.spi.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelVersionInfo,
    RequestContext,
)

if TYPE_CHECKING:
    import grpc
    from aiohttp import web
    from multidict import CIMultiDictProxy

T = TypeVar("T")

log = structlog.get_logger("dl_inference.call_path")

# What a parser raises on bytes it cannot read: the client's doing, not the server's.
# RecursionError: nesting deeper than the parser can walk; OverflowError: a number out of
# range for its type; MemoryError: a declared size the process cannot hold.
_UNREADABLE = (
    DecodeError,
    ValueError,  # includes json's JSONDecodeError and UnicodeError
    TypeError,
    KeyError,
    IndexError,
    RecursionError,
    OverflowError,
    struct.error,
)
# Also what a decoder's own bug raises: still the client's answer (decoders walk client
# JSON), but logged with its traceback so that a bug is seen.
_SUSPECT = (TypeError, KeyError, IndexError)


class ModelControl(Protocol):
    """Model management as protocols may drive it (TF Serving's HandleReloadConfigRequest,
    a protocol's own management API on the management listener).

    Present on :attr:`RuntimeView.management` when ``management.enabled``, and handed to
    :meth:`~dl_inference.Protocol.management_routes`; every change applies in all of the
    server's workers (and is replayed in a worker that replaces a dead one).
    """

    grpc_address: str
    """``host:port`` of the management listener's gRPC port (once started)."""

    http_address: str
    """``host:port`` of the management listener's HTTP port (once started)."""

    def authorize(self, metadata: Mapping[str, str]) -> None:
        """Raise ``Unauthenticated`` unless ``metadata`` carries the management token."""
        ...

    async def load_path(
        self, name: str, path: str, overrides: dict[str, Any] | None = None
    ) -> None:
        """Load ``path`` (inside the configured roots) as model ``name``."""
        ...

    async def unload(self, name: str) -> None:
        """Unload model ``name``."""
        ...

    def served(self) -> list[str]:
        """Names of the models loaded now."""
        ...

    def resolve_path(self, path: str) -> Path:
        """``path`` (absolute, or relative to the first management root) resolved.

        ``ModelNotFound`` when nothing is there; ``PermissionDenied`` when it, or a link
        it holds, lies outside every configured root. Check every path a client names
        with it before reading the file.
        """
        ...

    async def load_folder(
        self,
        name: str,
        folder: Path,
        overrides: dict[str, Any] | None = None,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        """Load (or reload) ``folder`` as model ``name``, every version it holds.

        For a folder the protocol prepared itself from files it checked with
        :meth:`resolve_path` (an archive unpacked into a cache, say): the folder may lie
        outside the roots, so never pass a path a client named. ``overrides`` are model
        config keys (``max_batch_size``, ...) over the folder's config.yaml, the server
        config's ``models.<name>`` under them. The repository poll leaves the model
        alone until it is unloaded. ``notes`` (JSON values) are kept with the model and
        read back with :meth:`notes`, in every worker.
        """
        ...

    async def annotate(self, name: str, notes: Mapping[str, Any]) -> None:
        """Replace the notes kept with model ``name`` (JSON values), in every worker,
        without reloading it: what a protocol records but does not apply."""
        ...

    def notes(self, name: str) -> dict[str, Any]:
        """The notes kept with model ``name`` (``{}`` for none); an unload drops them."""
        ...

    def http_handler(
        self, method: str, handler: HttpHandler, error_body: ErrorBody
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler(request, call)`` on the management call path, as
        :meth:`CallPath.http_handler` binds it (not counted as inference): the token is
        checked first and a missing or wrong one is ``Unauthenticated`` (401, rendered
        by ``error_body``). Every route of
        :meth:`~dl_inference.Protocol.management_routes` must be bound with it."""
        ...

    def grpc_service(
        self,
        service: str,
        methods: Mapping[str, tuple[GrpcHandler, Any]],
        error_trailers: ErrorTrailers | None = None,
    ) -> grpc.GenericRpcHandler:
        """``service``'s methods (name -> (handler, request type)) on the management call
        path, as :meth:`CallPath.grpc_service` binds them (not counted as inference): the
        token is checked before the body is parsed (UNAUTHENTICATED without it). Every
        service of :meth:`~dl_inference.Protocol.management_grpc_handlers` must be bound
        with it."""
        ...


class RuntimeView(Protocol):
    """What a wire protocol may ask of the server: models, state, inference.

    This is the typed surface :meth:`Protocol.grpc_handlers` and
    :meth:`Protocol.http_routes` receive; the concrete runtime behind it is private.
    """

    max_message_bytes: int
    """The largest request body or message the server accepts, in bytes."""

    @property
    def server_name(self) -> str: ...

    @property
    def server_version(self) -> str: ...

    @property
    def management(self) -> ModelControl | None:
        """The model-control service when ``management.enabled``, else None."""
        ...

    def extensions(self) -> list[str]: ...

    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def model_ready(self, name: str, version: str = "") -> bool: ...

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata: ...

    def model_names(self) -> list[str]: ...

    def model_versions(self, name: str) -> list[ModelVersionInfo]: ...

    def resolve_model(self, name: str, version: str = "") -> ModelVersionInfo: ...

    def model_statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        """Statistics of every version of ``name`` held here (``""``: every model's), or of
        one ``version`` number; ``InvalidInput`` when that model or version is not held
        (see :mod:`dl_inference.spi.statistics` for what each figure counts)."""
        ...

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        """Authorize (unless done), run hooks, validate, predict, select outputs."""
        ...

    def infer_stream(
        self, request: InferRequest, ctx: RequestContext
    ) -> AsyncIterator[InferResponse]:
        """:meth:`infer` for streaming methods: a decoupled model's responses as it yields
        them (``final`` False on each), another model's one response (``final`` True).
        Closing the iterator early (the client left) closes the model's generator."""
        ...

    def authorize(self, ctx: RequestContext) -> None:
        """Ask ``dli_authorize`` (``ctx.request`` names the model); raise when refused.

        Call it before looking a model up when decoding needs the model (``infer``
        otherwise authorizes first itself).
        """
        ...

    def report_failure(
        self, ctx: RequestContext, error: BaseException, model_name: str = ""
    ) -> None:
        """Count an inference call that failed outside ``infer``, once (``dli_on_error``,
        metrics, access log); without ``ctx.request`` the hook gets one naming
        ``model_name`` (``""`` when unknown). :meth:`Call.fail` calls it for adapters."""
        ...

    def report_success(self, ctx: RequestContext) -> None:
        """Count a call whose ``infer`` succeeded, once its reply is encoded."""
        ...


@dataclass
class Call:
    """One client call on its way through the call path; adapters receive it.

    ``counted`` says whether the method is an inference method, whose failures count even
    before :meth:`RuntimeView.infer` is reached (see the module's docstring).
    """

    ctx: RequestContext
    runtime: RuntimeView
    counted: bool = True

    @property
    def deadline(self) -> float | None:
        """The client's deadline as a ``time.monotonic()`` instant, or None."""
        return self.ctx.deadline

    def parsing(self, what: str) -> contextlib.AbstractContextManager[None]:
        """Decode client bytes inside this block: what cannot be read is ``InvalidInput``.

        ``what`` names the thing being read in the message (``"the PredictRequest"``).
        Errors of ours pass unchanged; a ``MemoryError`` is ``ResourceExhausted``.
        """
        return _Parsing(self, what)

    def succeed(self) -> None:
        """Count the call as answered once its reply is encoded (only calls that inferred)."""
        if not self.ctx.finished and self.ctx.response is not None:
            self.runtime.report_success(self.ctx)

    def fail(self, error: BaseException) -> None:
        """Count ``error`` unless :meth:`RuntimeView.infer` already did.

        A call of a method bound with ``counted=False`` that never reached ``infer`` is
        not an inference request: its failure is logged at debug level only.
        """
        if self.ctx.finished:
            return
        if not self.counted and self.ctx.response is None:
            log.debug(
                "call failed",
                protocol=self.ctx.protocol,
                method=self.ctx.method,
                model=self.ctx.request.model_name if self.ctx.request is not None else None,
                request_id=self.ctx.request_id,
                error=f"{type(error).__name__}: {error}",
            )
            return
        model = self.ctx.request.model_name if self.ctx.request is not None else ""
        self.runtime.report_failure(self.ctx, error, model)


class _Parsing:
    """:meth:`Call.parsing`'s block: a plain class, as a generator-based context manager
    costs a microsecond or two on every request."""

    __slots__ = ("call", "what")

    def __init__(self, call: Call, what: str) -> None:
        self.call = call
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> bool:
        if exc is None or isinstance(exc, DlInferenceError):
            return False
        what = self.what
        if isinstance(exc, MemoryError):
            raise ResourceExhausted(
                f"{what} declares more data than this server can hold; send less"
            ) from None
        if not isinstance(exc, _UNREADABLE):
            return False
        if isinstance(exc, _SUSPECT):
            ctx = self.call.ctx
            log.warning(
                "a decoder raised a Python error on client bytes; answered as invalid "
                "input, but it may be a bug in the decoder",
                protocol=ctx.protocol,
                method=ctx.method,
                what=what,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        if isinstance(exc, RecursionError):
            reason = "it is nested too deeply"
        raise InvalidInput(f"{what} could not be read: {reason}") from None


class HttpRequest(Protocol):
    """The part of aiohttp's ``web.Request`` a *plain* HTTP handler may use.

    A handler made with ``CallPath.http_handler(..., plain=True)`` must use nothing else
    of its request: the server may then answer that route on its own HTTP/1.1 lane,
    without aiohttp's per-request machinery, with a request offering just these (aiohttp's
    ``web.Request`` offers them too, so the same handler serves both ways). Its reply must
    be a ``web.Response`` with a bytes body (``web.Response(body=...)`` and
    ``web.json_response`` are; a streamed ``web.StreamResponse`` is not).
    """

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def match_info(self) -> Mapping[str, str]: ...

    @property
    def remote(self) -> str | None: ...

    async def read(self) -> bytes: ...


# The attribute that marks an aiohttp handler as plain (see HttpRequest).
PLAIN_HANDLER = "__dl_inference_plain__"

GrpcHandler = Callable[[Any, Call], Awaitable[Any]]
HttpHandler = Callable[["web.Request", Call], Awaitable["web.StreamResponse"]]
ErrorBody = Callable[[BaseException, str, int], "web.Response"]
ErrorTrailers = Callable[[BaseException, str], Sequence[tuple[str, "str | bytes"]]]


def grpc_metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """Invocation metadata with lower-cased keys (binary ``-bin`` entries left out)."""
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        # `-bin` values are bytes; RequestContext.metadata promises strings.
        if isinstance(value, str):
            metadata[key.lower()] = value
    return metadata


def grpc_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant, or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class CallPath:
    """Binds a protocol's methods to the kernel's call path.

    ``protocol`` is the name metrics and the access log carry; ``plugin`` is named in the
    server log next to an unexpected error's reference id. ``error_trailers(error,
    message)`` adds a protocol's own trailing metadata to a failed gRPC call (Seldon's
    ``seldon-status-bin``), the gRPC counterpart of an HTTP ``error_body``.
    """

    def __init__(
        self,
        runtime: RuntimeView,
        protocol: str,
        plugin: str = "",
        *,
        error_trailers: ErrorTrailers | None = None,
    ) -> None:
        self.runtime = runtime
        self.protocol = protocol
        self.plugin = plugin or protocol
        self.error_trailers = error_trailers

    # -- gRPC ------------------------------------------------------------------------------

    def grpc_call(
        self, method: str, context: grpc.aio.ServicerContext, *, counted: bool = True
    ) -> Call:
        """A :class:`Call` for a gRPC invocation of ``method`` (the full path)."""
        ctx = RequestContext(
            protocol=self.protocol,
            method=method,
            metadata=grpc_metadata(context),
            peer=context.peer() or "",
            deadline=grpc_deadline(context),
            deferred=True,
        )
        return Call(ctx, self.runtime, counted)

    def grpc_unary(
        self,
        service: str,
        method: str,
        handler: GrpcHandler,
        request_type: Any = None,
        *,
        counted: bool = True,
    ) -> grpc.RpcMethodHandler:
        """A unary handler for ``/service/method``.

        With ``request_type`` (a protobuf message class) the body is parsed into it and
        ``handler(message, call)`` answers with a message; without, ``handler`` gets the
        raw bytes and answers with bytes (for adapters that cut tensor data out of the
        message themselves). ``counted=False`` for methods that are not inference (health,
        metadata, status, management): see the module's docstring.
        """
        import grpc

        path = f"/{service}/{method}"
        what = f"the {request_type.DESCRIPTOR.name}" if request_type is not None else "the body"

        async def unary(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            call = self.grpc_call(path, context, counted=counted)
            try:
                if request_type is None:
                    reply = await handler(data, call)
                else:
                    with call.parsing(what):
                        message = request_type.FromString(data)
                    reply = await handler(message, call)
                    reply = reply if isinstance(reply, bytes) else reply.SerializeToString()
            except Exception as exc:
                await self.grpc_abort(call, context, exc)
                raise  # unreachable: abort raises
            call.succeed()
            context.set_trailing_metadata((("x-request-id", call.ctx.request_id),))
            return reply

        return grpc.unary_unary_rpc_method_handler(unary)

    async def grpc_abort(
        self, call: Call, context: grpc.aio.ServicerContext, error: BaseException
    ) -> None:
        """Count ``error`` once and end the call with its status and public message."""
        import grpc

        if isinstance(error, grpc.aio.AbortError):
            raise error
        call.fail(error)
        plugin = "" if isinstance(error, DlInferenceError) else self.plugin
        message = public_message(error, plugin)
        trailers: tuple[tuple[str, str | bytes], ...] = (("x-request-id", call.ctx.request_id),)
        if self.error_trailers is not None:
            trailers += tuple(self.error_trailers(error, message))
        await context.abort(grpc_code(error), message, trailers)

    def grpc_service(
        self,
        service: str,
        methods: Mapping[str, tuple[GrpcHandler, Any]],
        *,
        counted: bool | Collection[str] = True,
    ) -> grpc.GenericRpcHandler:
        """A generic handler for ``service``: method name -> (handler, request type).

        ``counted``: True when every method is an inference method, False when none is,
        or the names of those that are (``{"Predict"}`` beside ``"GetModelMetadata"``).
        """
        import grpc

        def is_counted(name: str) -> bool:
            return counted if isinstance(counted, bool) else name in counted

        return grpc.method_handlers_generic_handler(
            service,
            {
                name: self.grpc_unary(
                    service, name, handler, request_type, counted=is_counted(name)
                )
                for name, (handler, request_type) in methods.items()
            },
        )

    # -- HTTP ------------------------------------------------------------------------------

    def http_call(self, method: str, request: HttpRequest, *, counted: bool = True) -> Call:
        """A :class:`Call` for an HTTP request; ``method`` is the route's label."""
        ctx = RequestContext(
            protocol=self.protocol,
            method=method,
            metadata={key.lower(): value for key, value in request.headers.items()},
            peer=request.remote or "",
            deferred=True,
        )
        return Call(ctx, self.runtime, counted)

    def http_handler(
        self,
        method: str,
        handler: HttpHandler,
        error_body: ErrorBody,
        *,
        counted: bool = True,
        plain: bool = False,
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An aiohttp handler running ``handler(request, call)`` on the call path.

        ``error_body(error, message, status)`` renders a failure the way the protocol's
        clients expect (V2 and TF Serving: ``{"error": message}``). ``counted=False`` for
        routes that are not inference (health, metadata, status, management).
        ``plain=True`` promises that ``handler`` uses only what :class:`HttpRequest` names
        and answers a bytes-bodied ``web.Response``: the server may then serve the route
        on its own HTTP/1.1 lane (``server.http.engine``), the hot path's fast way in.
        """
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            call = self.http_call(method, request, counted=counted)
            try:
                reply = await handler(request, call)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                # aiohttp's own refusals (a body over client_max_size: 413) are client
                # errors: count them and answer in the protocol's error format.
                error: BaseException = (
                    too_large(self.runtime)
                    if exc.status == 413
                    else InvalidInput(exc.text or exc.reason)
                )
                reply = self.http_error(call, error, error_body, status=exc.status)
            except Exception as exc:
                reply = self.http_error(call, exc, error_body)
            else:
                call.succeed()
            reply.headers["x-request-id"] = call.ctx.request_id
            return reply

        if plain:
            setattr(handle, PLAIN_HANDLER, True)
        return handle

    def http_error(
        self,
        call: Call,
        error: BaseException,
        error_body: ErrorBody,
        status: int | None = None,
    ) -> web.Response:
        """Count ``error`` once and render it with the table's HTTP status."""
        call.fail(error)
        plugin = "" if isinstance(error, DlInferenceError) else self.plugin
        status = status or http_status(error)
        reply = error_body(error, public_message(error, plugin), status)
        if status == 401:
            # RFC 7235: a 401 names the scheme the client should use.
            reply.headers["WWW-Authenticate"] = "Bearer"
        elif isinstance(error, UnsupportedEncoding):
            # RFC 9110 12.5.3: a 415 for a content coding names the codings accepted.
            reply.headers["Accept-Encoding"] = ", ".join(BODY_CODINGS)
        return reply


# The content codings a request body may arrive in (RFC 9110 8.4), as Triton decodes them;
# "x-gzip" is gzip's old name, "identity" no coding at all.
BODY_CODINGS = ("gzip", "deflate")
# Bodies this large are decoded off the event loop (zlib releases the GIL while it works).
_INFLATE_IN_THREAD_BYTES = 256 * 1024


async def read_body(request: HttpRequest, call: Call, *, decoded: bool = True) -> bytes:
    """The request body, decoded from its ``Content-Encoding``, within the size limit.

    The HTTP listeners keep bodies as they came (aiohttp's own decoding is off), so this
    is the one place a coding is undone: ``gzip`` (``x-gzip``) and ``deflate`` (zlib, or
    raw deflate as some clients send it; either label takes gzip or zlib data, as Triton
    does), a list of codings in reverse order. The server's limit applies to the bytes as
    received and again to the decoded body, which is inflated at most one byte past it:
    a small body cannot expand without bound. A body over the limit is
    ``PayloadTooLarge`` (413), one that does not decode ``InvalidInput`` (400), a coding
    not in :data:`BODY_CODINGS` ``UnsupportedEncoding`` (415). ``decoded=False``: the
    bytes as they came, with their coding (the gateway forwards those).
    """
    try:
        raw = await request.read()
    except Exception as exc:
        error = _read_error(exc, call.runtime)
        if error is exc:
            raise
        raise error from None
    if not decoded:
        return raw
    encodings = request.headers.getall("Content-Encoding", None)
    if encodings is None:
        return raw  # the usual case: no coding to undo
    codings = content_codings(encodings)
    body = raw
    limit = call.runtime.max_message_bytes
    for coding in reversed(codings):
        if not body:
            break  # nothing was sent: an empty body, whatever its label
        if len(body) > _INFLATE_IN_THREAD_BYTES:
            body = await asyncio.to_thread(inflate, body, coding, limit, call.runtime)
        else:
            body = inflate(body, coding, limit, call.runtime)
    return body


def _read_error(exc: Exception, runtime: RuntimeView) -> Exception:
    """What a failed ``request.read()`` answers: 413 over the limit, 400 for a body that
    could not be read, else ``exc`` itself (aiohttp is imported here, not per request)."""
    from aiohttp import web
    from aiohttp.http_exceptions import HttpProcessingError

    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return too_large(runtime)
    if isinstance(exc, web.RequestPayloadError | HttpProcessingError):
        reason = " ".join(str(exc).split())
        return InvalidInput(f"the request body could not be read: {reason}")
    return exc


def content_codings(headers: Sequence[str]) -> list[str]:
    """The codings of ``Content-Encoding`` header values, in the order they were applied.

    Case does not matter and ``identity`` is left out; a coding not in
    :data:`BODY_CODINGS` is ``UnsupportedEncoding``, naming those that are.
    """
    codings = []
    for value in headers:
        for token in value.split(","):
            coding = token.strip().lower()
            if coding in ("", "identity"):
                continue
            coding = "gzip" if coding == "x-gzip" else coding
            if coding not in BODY_CODINGS:
                raise UnsupportedEncoding(
                    f"the request body's Content-Encoding {', '.join(headers)!r} is not one "
                    f"this server decodes; send the body as {' or '.join(BODY_CODINGS)}, "
                    "or uncompressed"
                )
            codings.append(coding)
    return codings


def inflate(data: bytes, coding: str, limit: int, runtime: RuntimeView) -> bytes:
    """``data`` decoded from ``coding`` (one of :data:`BODY_CODINGS`), at most ``limit``
    bytes of it (``PayloadTooLarge`` beyond); ``InvalidInput`` when it does not decode.

    Concatenated gzip members are one body (RFC 1952), as ``gunzip`` reads them.
    """
    import zlib

    def unreadable(what: str) -> InvalidInput:
        return InvalidInput(
            f"the request body could not be read: it is labelled Content-Encoding: {coding} "
            f"but {what}; send it {coding}-compressed, or without that header"
        )

    pieces: list[bytes] = []
    size = 0
    rest = data
    while rest:
        if rest[:2] == b"\x1f\x8b":
            wbits = 16 + zlib.MAX_WBITS  # gzip
        elif pieces:
            raise unreadable(f"{len(rest)} bytes follow the end of its compressed data")
        elif len(rest) > 1 and rest[0] & 0x0F == 8 and (rest[0] << 8 | rest[1]) % 31 == 0:
            wbits = zlib.MAX_WBITS  # zlib (RFC 1950), HTTP's "deflate"
        elif coding == "deflate":
            wbits = -zlib.MAX_WBITS  # raw deflate (RFC 1951), as aiohttp accepts it
        else:
            raise unreadable(f"is not {coding} data (it starts with {bytes(rest[:4])!r})")
        decoder = zlib.decompressobj(wbits)
        try:
            # Never more than one byte past the limit: the rest of the input is left alone.
            piece = decoder.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise unreadable(f"its compressed data is corrupt ({exc})") from None
        size += len(piece)
        if size > limit:
            raise too_large(runtime)
        if not decoder.eof:
            raise unreadable("it ends before its compressed data does (truncated)")
        pieces.append(piece)
        rest = decoder.unused_data
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def too_large(runtime: RuntimeView) -> PayloadTooLarge:
    """The error for a body over the server's limit, naming the limit and its setting."""
    return PayloadTooLarge(
        f"the request body is larger than this server accepts "
        f"({runtime.max_message_bytes} bytes); send less, or raise server.grpc.max_message_mb"
    )


def json_error_body(error: BaseException, message: str, status: int) -> web.Response:
    """``{"error": message}``: the error body of V2 REST and TF Serving REST."""
    from aiohttp import web

    return web.json_response({"error": message}, status=status)
