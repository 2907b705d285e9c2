"""The management listener: V2 repository index / load / unload over gRPC and REST.

Served on its own gRPC and HTTP ports (127.0.0.1 by default) so that it can stay off
the network that clients reach; every call needs the token (``authorization: Bearer
<token>`` or ``x-dli-token``), compared in constant time. Under ``serve --workers N`` every
worker listens on those ports and a load or unload is applied in every worker: first in
the one that took the call, then in its siblings through the worker link.

Both transports go through the kernel's call path (protocol ``management``): the token is
checked first in every handler, before the body is read; a body that cannot be read is
INVALID_ARGUMENT / 400; every failure is counted once (metrics, access log,
``dli_on_error``) and answered through the one error table.

A protocol plugin may serve its own management API on the same HTTP listener
(``Protocol.management_routes``), each route bound with :meth:`ManagementService.http_handler`:
the same token, checked first, on the same call path.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web

from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.builtin.v2 import SERVICE
from dl_inference.kernel.config.schema import ServerConfig
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.repository import read_model_folder
from dl_inference.server.grpc_h2 import Server, grpc_engine, grpc_server
from dl_inference.server.http_errors import json_errors
from dl_inference.server.listeners import bind_grpc, start_http
from dl_inference.server.management.safety import (
    check_inside_roots,
    check_model_name,
    resolve_model_folder,
)
from dl_inference.server.worker_link import SiblingReply, WorkerLink
from dl_inference.spi import errors
from dl_inference.spi.call_path import (
    Call,
    CallPath,
    ErrorBody,
    ErrorTrailers,
    GrpcHandler,
    HttpHandler,
    RuntimeView,
    json_error_body,
    read_body,
)
from dl_inference.spi.errors import (
    ConfigError,
    DlInferenceError,
    InvalidInput,
    ModelNotFound,
    PluginError,
    Unauthenticated,
)
from dl_inference.spi.json_body import read_json
from dl_inference.spi.protocol import Protocol
from dl_inference.spi.status import http_status, public_message
from dl_inference.spi.types import InferRequest

log = structlog.get_logger("dl_inference.management")

PROTOCOL = "management"  # the name metrics and the access log carry
# A sibling loads the model itself: give it as long as a slow model takes to load.
SIBLING_TIMEOUT_S = 600.0
# Set on the handlers http_handler binds: what a protocol's management route must be.
_GUARDED = "__dli_management_guarded__"


def read_token(config: ServerConfig) -> str:
    """The management token from ``token_file`` or the ``token_env`` variable."""
    management = config.management
    if management.token_file is not None:
        try:
            token = management.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"management.token_file: cannot read {management.token_file} ({exc.strerror})"
            ) from None
    else:
        token = os.environ.get(management.token_env, "").strip()
    if len(token) < 16:
        raise ConfigError(
            f"management.enabled needs a token of 16+ characters: set the environment variable "
            f"{management.token_env} or management.token_file"
        )
    return token


class ManagementService:
    """Load, unload and list models at run time, within the configured roots only."""

    def __init__(
        self,
        config: ServerConfig,
        models: ModelRegistry,
        runtime: RuntimeView,
        on_change: Callable[[], Awaitable[None]],
        link: WorkerLink | None = None,
        protocols: Sequence[Protocol] = (),
    ) -> None:
        self.config = config
        self.models = models
        self.runtime = runtime
        self.calls = CallPath(runtime, PROTOCOL, "management")
        self.on_change = on_change
        self.link = link
        self.protocols = list(protocols)
        self.token = read_token(config)
        roots = config.management.roots or (
            [config.model_repository] if config.model_repository else []
        )
        if not roots:
            raise ConfigError("management.roots: give the folders models may be loaded from")
        self.roots = [Path(root).resolve() for root in roots]
        self.grpc_address = ""
        self.http_address = ""
        self._grpc: grpc.aio.Server | Server | None = None
        self._http: web.AppRunner | None = None
        self._lock = asyncio.Lock()  # one load/unload at a time
        self._here: dict[str, Callable[..., Awaitable[None]]] = {
            "load": self._load_here,
            "load_path": self._load_path_here,
            "load_folder": self._load_folder_here,
            "annotate": self._annotate_here,
            "unload": self._unload_here,
        }
        # What protocols keep with each model (ModelControl.notes), the same in every worker.
        self._notes: dict[str, dict[str, Any]] = {}
        # The last change applied to each model, oldest first: what a worker that replaces
        # a dead one replays so that it serves what its siblings serve.
        self._journal: dict[str, tuple[str, dict[str, Any]]] = {}

    # -- operations ------------------------------------------------------------------------

    def authorize(self, metadata: Mapping[str, str]) -> None:
        given = metadata.get("x-dli-token", "")
        bearer = metadata.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise Unauthenticated(
                "management calls need the token: send 'authorization: Bearer <token>'"
            )

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows = self.models.index()
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    async def load(self, name: str, parameters: Mapping[str, Any]) -> None:
        """Load model folder ``name`` from a root, in every worker."""
        await self._everywhere("load", name=name, parameters=dict(parameters))

    async def load_path(
        self, name: str, path: str, overrides: dict[str, Any] | None = None
    ) -> None:
        """Load ``path`` (absolute, or relative to the first root) as model ``name``.

        For TF Serving's HandleReloadConfigRequest, whose base_path may differ from the
        name; the folder must still lie inside a configured root.
        """
        await self._everywhere("load_path", name=name, path=path, overrides=overrides)

    async def unload(self, name: str) -> None:
        """Unload model ``name`` in every worker."""
        await self._everywhere("unload", name=name)

    def served(self) -> list[str]:
        """Names of the models loaded now."""
        return self.models.names()

    def resolve_path(self, path: str) -> Path:
        """``path`` (absolute, or relative to the first root) resolved, inside the roots."""
        given = Path(path)
        target = given if given.is_absolute() else self.roots[0] / given
        if not target.exists():
            raise ModelNotFound(f"{path!r}: no such file or folder")
        return check_inside_roots(target, self.roots, repr(path))

    async def load_folder(
        self,
        name: str,
        folder: Path,
        overrides: dict[str, Any] | None = None,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        """Load a folder a protocol prepared as model ``name``, in every worker."""
        await self._everywhere(
            "load_folder",
            name=name,
            folder=str(folder),
            overrides=dict(overrides or {}),
            notes=dict(notes or {}),
        )

    async def annotate(self, name: str, notes: Mapping[str, Any]) -> None:
        """Replace the notes kept with model ``name``, in every worker."""
        await self._everywhere("annotate", name=name, notes=dict(notes))

    def notes(self, name: str) -> dict[str, Any]:
        """The notes kept with model ``name`` (a copy; ``{}`` for none)."""
        return json.loads(json.dumps(self._notes.get(name, {})))

    def http_handler(
        self, method: str, handler: HttpHandler, error_body: ErrorBody
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler`` on the management call path, the token checked before it runs."""

        async def guarded(request: web.Request, call: Call) -> web.StreamResponse:
            self.authorize(call.ctx.metadata)
            return await handler(request, call)

        bound = self.calls.http_handler(method, guarded, error_body, counted=False)
        setattr(bound, _GUARDED, True)
        return bound

    def grpc_service(
        self,
        service: str,
        methods: Mapping[str, tuple[GrpcHandler, Any]],
        error_trailers: ErrorTrailers | None = None,
    ) -> grpc.GenericRpcHandler:
        """``service``'s methods on the management call path: the token checked before the
        body is parsed into the method's request type."""
        calls = CallPath(self.runtime, PROTOCOL, "management", error_trailers=error_trailers)

        def guarded(handler: GrpcHandler, request_type: Any) -> GrpcHandler:
            async def method(data: bytes, call: Call) -> bytes:
                message = self._grpc_request(data, call, request_type)
                reply = await handler(message, call)
                return reply if isinstance(reply, bytes) else reply.SerializeToString()

            return method

        bound = calls.grpc_service(
            service,
            {name: (guarded(h, t), None) for name, (h, t) in methods.items()},
            counted=False,
        )
        setattr(bound, _GUARDED, True)
        return bound

    async def catch_up(self) -> None:
        """Replay the changes a sibling worker has applied since start-up, here.

        A worker started in place of one that died loads the repository from disk; the
        loads and unloads made through the management API since then come from a sibling.
        A change that no longer applies (its folder is gone) is logged and skipped.
        """
        if self.link is None:
            return
        found = await self.link.gather("/management/journal", None, json.loads)
        # None for this worker, and for siblings not listening yet (the first start).
        journal = next((j for j in found.values() if j), [])
        for operation, arguments in journal:
            if operation == "load" and arguments["name"] in self.models.names():
                # This process read that folder from disk moments ago.
                self._record(operation, arguments)
                continue
            try:
                await self._apply_here(operation, arguments)
            except errors.DlInferenceError as exc:
                log.warning(
                    "a sibling's management change could not be replayed here",
                    operation=operation,
                    model=arguments.get("name"),
                    error=public_message(exc, "management"),
                )
        if journal:
            log.info("management changes replayed from a sibling", changes=len(journal))

    async def _apply_here(self, operation: str, arguments: dict[str, Any]) -> None:
        await self._here[operation](**arguments)
        self._record(operation, arguments)

    def _record(self, operation: str, arguments: dict[str, Any]) -> None:
        """Keep ``operation`` as the model's last change, newest last. Notes changed after
        a ``load_folder`` change what it is replayed with; other notes are kept beside
        the model's last change (after it), until the next change drops them."""
        name = arguments["name"]
        notes_key = f"{name}/notes"  # "/" is in no model name
        last = self._journal.get(name)
        if operation == "annotate":
            if last is not None and "notes" in last[1]:
                last[1]["notes"] = arguments["notes"]
            else:
                self._journal.pop(notes_key, None)
                self._journal[notes_key] = (operation, arguments)
            return
        self._journal.pop(notes_key, None)
        self._journal.pop(name, None)
        self._journal[name] = (operation, arguments)

    async def _everywhere(self, operation: str, **arguments: Any) -> None:
        """The operation here, then (when it worked) in every sibling worker."""
        await self._apply_here(operation, arguments)
        if self.link is None or not self.link.siblings:
            return
        replies = await self.link.ask_siblings(
            "POST", f"/management/{operation}", arguments, timeout_s=SIBLING_TIMEOUT_S
        )
        failed = [reply for reply in replies if not reply.ok]
        if failed:
            raise _sibling_error(operation, arguments["name"], self.link.index, failed)

    async def _load_here(self, name: str, parameters: Mapping[str, Any]) -> None:
        if parameters:
            raise InvalidInput(
                f"load parameters ({', '.join(sorted(parameters))}) are not supported: "
                "put the model's files and config.yaml in its folder under a repository root"
            )
        _, folder = resolve_model_folder(name, self.roots)
        await self._install(
            name,
            folder,
            self.config.models.get(name),
            f"model folder {name!r} has no numeric version folder",
        )

    async def _load_path_here(
        self, name: str, path: str, overrides: dict[str, Any] | None = None
    ) -> None:
        check_model_name(name)
        folder = Path(path) if Path(path).is_absolute() else self.roots[0] / path
        if not folder.is_dir():
            raise ModelNotFound(f"model {name!r}: base_path {path!r} is not a folder")
        check_inside_roots(folder, self.roots, f"model {name!r} (base_path {path!r})")
        await self._install(
            name,
            folder,
            {**(self.config.models.get(name) or {}), **(overrides or {})},
            f"model {name!r}: {path!r} has no numeric version folder",
        )

    async def _load_folder_here(
        self,
        name: str,
        folder: str,
        overrides: dict[str, Any] | None = None,
        notes: dict[str, Any] | None = None,
    ) -> None:
        check_model_name(name)
        path = Path(folder)
        if not path.is_dir():
            raise ModelNotFound(f"model {name!r}: the prepared folder {folder!r} is gone")
        await self._install(
            name,
            path,
            {**(self.config.models.get(name) or {}), **(overrides or {})},
            f"model {name!r}: the prepared folder has no version folder",
            # Not the repository's folder: the poll must not put the scanned one back.
            managed=True,
            notes=notes or {},
        )

    async def _install(
        self,
        name: str,
        folder: Path,
        config: dict[str, Any] | None,
        no_version: str,
        *,
        managed: bool = False,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        """Read ``folder`` as model ``name`` (``config`` over its own) and load it in place
        of what was there; ``no_version`` is the client's error when it has no version."""
        async with self._lock:
            source = await asyncio.to_thread(read_model_folder, folder, config, name)
            if source is None:
                raise InvalidInput(no_version)
            source.managed = managed
            await self.models.load_model(source)
            if notes is None:
                self._notes.pop(name, None)  # they described what was there before
            else:
                self._notes[name] = dict(notes)
            log.info("model loaded through the management API", model=name, path=str(folder))
            await self.on_change()

    async def _annotate_here(self, name: str, notes: dict[str, Any]) -> None:
        if name not in self.models.names():
            raise ModelNotFound(f"model {name!r} is not loaded")
        self._notes[name] = dict(notes)

    async def _unload_here(self, name: str) -> None:
        async with self._lock:
            await self.models.unload_model(name)
            self._notes.pop(name, None)
            log.info("model unloaded through the management API", model=name)
            await self.on_change()

    # -- listeners -------------------------------------------------------------------------

    def sibling_routes(self) -> list[web.RouteDef]:
        """What a sibling worker asks of this one: apply an operation here only."""

        async def apply(request: web.Request) -> web.Response:
            operation = request.match_info["operation"]
            if operation not in self._here:
                return web.json_response({"error": "no such operation"}, status=404)
            try:
                await self._apply_here(operation, await request.json())
            except Exception as exc:
                reply = {"error": public_message(exc, "management"), "type": type(exc).__name__}
                return web.json_response(reply, status=http_status(exc))
            return web.json_response({})

        async def journal(_: web.Request) -> web.Response:
            return web.json_response(list(self._journal.values()))

        return [web.post("/management/{operation}", apply), web.get("/management/journal", journal)]

    async def start(self) -> None:
        management = self.config.management
        shared = self.link is not None  # every worker listens on the same ports
        engine = grpc_engine(self.config.server.grpc.engine)
        server = grpc_server(engine, [("grpc.so_reuseport", 1 if shared else 0)])
        server.add_generic_rpc_handlers([self._grpc_handler(), *self._protocol_services()])
        self.grpc_address = bind_grpc(
            server, management.host, management.grpc_port, what="management gRPC"
        )
        await server.start()
        self._grpc = server
        # The server's one body limit, which too_large() names when a body exceeds it.
        app = web.Application(
            client_max_size=self.runtime.max_message_bytes, middlewares=[json_errors]
        )
        routes = {
            "/v2/repository/index": self._rest_index,
            "/v2/repository/models/{model}/load": self._rest_load,
            "/v2/repository/models/{model}/unload": self._rest_unload,
        }
        # Not inference: failures are answered with their codes and logged, not counted.
        app.add_routes(
            [
                web.post(
                    path,
                    self.calls.http_handler(
                        f"POST {path}", handler, json_error_body, counted=False
                    ),
                )
                for path, handler in routes.items()
            ]
        )
        self._add_protocol_routes(app)
        self._http, self.http_address = await start_http(
            app, management.host, management.http_port, reuse_port=shared, what="management HTTP"
        )

    def _protocol_services(self) -> list[grpc.GenericRpcHandler]:
        """Each protocol's management gRPC services; PluginError for one not bound with
        :meth:`grpc_service` or one whose name another service has."""
        found: list[grpc.GenericRpcHandler] = []
        names = {SERVICE}
        for protocol in self.protocols:
            for handler in protocol.management_grpc_handlers(self.runtime, self):
                name = handler.service_name() if hasattr(handler, "service_name") else "?"
                if not getattr(handler, _GUARDED, False):
                    raise PluginError(
                        f"protocol {protocol.name!r}: management gRPC service {name} is not "
                        "bound with control.grpc_service (which checks the management token)"
                    )
                if name in names:
                    raise PluginError(
                        f"protocol {protocol.name!r}: management gRPC service {name} is "
                        "served already"
                    )
                names.add(name)
                found.append(handler)
        return found

    def _add_protocol_routes(self, app: web.Application) -> None:
        """Each protocol's management routes, after the kernel's own; PluginError for a
        route not bound with :meth:`http_handler` or one a path already takes."""
        # aiohttp lets a second route of a method and path in silently (never reached).
        taken = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None
        }
        for protocol in self.protocols:
            for route in protocol.management_routes(self.runtime, self):
                method, path = getattr(route, "method", "?"), getattr(route, "path", "?")
                label = f"{method} {path}"
                if not getattr(getattr(route, "handler", None), _GUARDED, False):
                    raise PluginError(
                        f"protocol {protocol.name!r}: management route {label} is not bound "
                        "with control.http_handler (which checks the management token)"
                    )
                if {(method, path), ("*", path)} & taken or (
                    method == "*" and any(p == path for _, p in taken)
                ):
                    raise PluginError(
                        f"protocol {protocol.name!r}: management route {label} cannot be "
                        "added: another route takes that path"
                    )
                try:
                    app.add_routes([route])
                except (RuntimeError, ValueError) as exc:
                    raise PluginError(
                        f"protocol {protocol.name!r}: management route {label} cannot be "
                        f"added ({exc})"
                    ) from None
                taken.add((method, path))

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(1)
        if self._http is not None:
            await self._http.cleanup()

    # -- gRPC ------------------------------------------------------------------------------

    def _grpc_handler(self) -> grpc.GenericRpcHandler:
        # Raw bytes in (request type None): the token is checked before the body is parsed.
        return self.calls.grpc_service(
            SERVICE,
            {
                "RepositoryIndex": (self._grpc_index, None),
                "RepositoryModelLoad": (self._grpc_load, None),
                "RepositoryModelUnload": (self._grpc_unload, None),
            },
            counted=False,  # not inference, as over HTTP
        )

    def _grpc_request(self, data: bytes, call: Call, message_type: Any) -> Any:
        """The token first, then ``data`` parsed as ``message_type``."""
        self.authorize(call.ctx.metadata)
        with call.parsing(f"the {message_type.DESCRIPTOR.name}"):
            return message_type.FromString(data)

    async def _grpc_index(self, data: bytes, call: Call) -> bytes:
        request = self._grpc_request(data, call, pb.RepositoryIndexRequest)
        reply = pb.RepositoryIndexResponse()
        for row in self.index(request.ready):
            reply.models.add(**row)
        return reply.SerializeToString()

    async def _grpc_load(self, data: bytes, call: Call) -> bytes:
        request = self._grpc_request(data, call, pb.RepositoryModelLoadRequest)
        name = _model_name(request.model_name, "load", call)
        await self.load(name, _grpc_parameters("load", request.parameters))
        return pb.RepositoryModelLoadResponse().SerializeToString()

    async def _grpc_unload(self, data: bytes, call: Call) -> bytes:
        request = self._grpc_request(data, call, pb.RepositoryModelUnloadRequest)
        name = _model_name(request.model_name, "unload", call)
        # unload_dependents is checked but has nothing to act on: no model depends on another.
        _grpc_parameters("unload", request.parameters)
        await self.unload(name)
        return pb.RepositoryModelUnloadResponse().SerializeToString()

    # -- REST ------------------------------------------------------------------------------

    async def _rest_body(self, request: web.Request, call: Call, operation: str) -> dict[str, Any]:
        """The token first, then the JSON object of the body (``{}`` for an empty body)."""
        self.authorize(call.ctx.metadata)
        if "model" in request.match_info:
            _model_name(request.match_info["model"], operation, call)
        body = await read_body(request, call)
        if not body:  # the extension's bodies are optional (tritonclient sends none)
            return {}
        document = read_json(body)
        if not isinstance(document, dict):
            raise InvalidInput(
                f"the request body must be a JSON object, got {_json_kind(document)}; "
                'e.g. {"parameters": {}}'
            )
        return document

    async def _rest_index(self, request: web.Request, call: Call) -> web.Response:
        body = await self._rest_body(request, call, "index")
        ready = body.get("ready")
        if ready is not None and not isinstance(ready, bool):
            raise InvalidInput(f'"ready" must be true or false, got {_json_kind(ready)}')
        return web.json_response(self.index(bool(ready)))

    async def _rest_load(self, request: web.Request, call: Call) -> web.Response:
        body = await self._rest_body(request, call, "load")
        await self.load(request.match_info["model"], _rest_parameters("load", body))
        return web.Response(status=200)

    async def _rest_unload(self, request: web.Request, call: Call) -> web.Response:
        body = await self._rest_body(request, call, "unload")
        _rest_parameters("unload", body)  # as over gRPC: checked, nothing to act on
        await self.unload(request.match_info["model"])
        return web.Response(status=200)


# -- what clients send -----------------------------------------------------------------------

Parameter = bool | int | float | str | bytes
"""A repository parameter's value: V2 REST's string, number or boolean; gRPC's bytes too."""


def _model_name(name: str, operation: str, call: Call) -> str:
    """``name``, non-empty; the log line of this call, should it fail, names the model."""
    if not name:
        raise InvalidInput(f"model_name is empty; name the model to {operation}")
    call.ctx.request = InferRequest(model_name=name, inputs={})
    return name


def _grpc_parameters(operation: str, parameters: Mapping[str, Any]) -> dict[str, Parameter]:
    """A ``map<string, ModelRepositoryParameter>`` as plain values, each type checked."""
    values: dict[str, Parameter] = {}
    for name, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidInput(
                f"{operation} parameter {name!r} has no value; set one of bool_param, "
                "int64_param, string_param or bytes_param"
            )
        values[name] = getattr(parameter, choice)
        _check_parameter(operation, name, values[name])
    return values


def _rest_parameters(operation: str, body: Mapping[str, Any]) -> dict[str, Parameter]:
    """The body's ``parameters``: an object of strings, numbers and booleans, type checked."""
    parameters = body.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(
            f'"parameters" must be a JSON object of names to values, got '
            f"{_json_kind(parameters)}; e.g. "
            '{"parameters": {"unload_dependents": false}}'
        )
    for name, value in parameters.items():
        if value is None or isinstance(value, list | dict):
            raise InvalidInput(
                f"{operation} parameter {name!r} must be a string, number or boolean, "
                f"got {_json_kind(value)}"
            )
        _check_parameter(operation, name, value)
    return parameters


def _check_parameter(operation: str, name: str, value: Parameter) -> None:
    """InvalidInput when a parameter the V2 repository extension defines has the wrong type.

    Load: ``config`` is the model configuration as JSON text, ``file:<version>/<name>`` a
    file's content (base64 text over REST, bytes over gRPC). Unload: ``unload_dependents``
    is a boolean. Other names are not the extension's; they pass here (and load refuses
    every parameter: a model's files and config.yaml live in its folder).
    """
    wanted: tuple[type, ...]
    if operation == "load" and name == "config":
        wanted, what = (str,), "a string holding the model configuration as JSON"
    elif operation == "load" and name.startswith("file:"):
        wanted, what = (str, bytes), "the file's content (base64 text over REST, bytes over gRPC)"
    elif operation == "unload" and name == "unload_dependents":
        wanted, what = (bool,), "true or false"
    else:
        return
    if not isinstance(value, wanted):
        raise InvalidInput(
            f"{operation} parameter {name!r} must be {what}, got {_json_kind(value)}"
        )


def _json_kind(value: object) -> str:
    """How a client would name ``value``'s type: JSON's words (gRPC's bytes too)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes):
        return "bytes"
    return "an array" if isinstance(value, list) else "an object"


def _sibling_error(
    operation: str, name: str, here: int, failed: list[SiblingReply]
) -> DlInferenceError:
    """One error for the siblings an operation failed in, typed as the first failure:
    Unavailable when it did not answer, its own error class when it is one of ours, else
    BackendError (an internal error)."""
    kinds: list[type[DlInferenceError]] = []
    reasons = []
    for reply in failed:
        if reply.failure:
            kinds.append(errors.Unavailable)
            reasons.append(f"worker {reply.worker} did not answer ({reply.failure})")
            continue
        try:
            body = json.loads(reply.body)
        except ValueError:
            body = {}
        found = getattr(errors, str(body.get("type", "")), None)
        ours = isinstance(found, type) and issubclass(found, DlInferenceError)
        kinds.append(found if ours else errors.BackendError)
        reasons.append(f"worker {reply.worker}: {body.get('error', reply.status)}")
    verb = operation.replace("_path", "")
    return kinds[0](
        f"model {name!r}: the {verb} took effect in worker {here} but not in every worker "
        f"({'; '.join(reasons)}); the workers now differ: repeat the call, or restart the server"
    )
