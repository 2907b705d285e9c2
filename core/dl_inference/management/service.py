"""The management listener: V2 repository index / load / unload over gRPC and REST.

Served on its own gRPC and HTTP ports (127.0.0.1 by default) so that it can stay off
the network that clients reach; every call needs the token (``authorization: Bearer
<token>`` or ``x-dli-token``), compared in constant time. Under ``serve --workers N`` every
worker listens on those ports and a load or unload is applied in every worker: first in
the one that took the call, then in its siblings through the worker link.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web

from dl_inference import errors
from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.config.schema import ServerConfig
from dl_inference.errors import (
    ConfigError,
    DlInferenceError,
    InvalidInput,
    ModelNotFound,
    Unauthenticated,
)
from dl_inference.listeners import bind_grpc, start_http
from dl_inference.management.safety import (
    check_inside_roots,
    check_model_name,
    resolve_model_folder,
)
from dl_inference.models import ModelRegistry
from dl_inference.repository import read_model_folder
from dl_inference.status import grpc_code, http_status, public_message
from dl_inference.worker_link import SiblingReply, WorkerLink

log = structlog.get_logger("dl_inference.management")

SERVICE = "inference.GRPCInferenceService"
# A sibling loads the model itself: give it as long as a slow model takes to load.
SIBLING_TIMEOUT_S = 600.0


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
        on_change: Callable[[], Awaitable[None]],
        link: WorkerLink | None = None,
    ) -> None:
        self.config = config
        self.models = models
        self.on_change = on_change
        self.link = link
        self.token = read_token(config)
        roots = config.management.roots or (
            [config.model_repository] if config.model_repository else []
        )
        if not roots:
            raise ConfigError("management.roots: give the folders models may be loaded from")
        self.roots = [Path(root).resolve() for root in roots]
        self.grpc_address = ""
        self.http_address = ""
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._lock = asyncio.Lock()  # one load/unload at a time
        self._here: dict[str, Callable[..., Awaitable[None]]] = {
            "load": self._load_here,
            "load_path": self._load_path_here,
            "unload": self._unload_here,
        }
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
        """Keep ``operation`` as the model's last change, newest last."""
        self._journal.pop(arguments["name"], None)
        self._journal[arguments["name"]] = (operation, arguments)

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
        async with self._lock:
            source = await asyncio.to_thread(
                read_model_folder, folder, self.config.models.get(name)
            )
            if source is None:
                raise InvalidInput(f"model folder {name!r} has no numeric version folder")
            await self.models.load_model(source)
            log.info("model loaded through the management API", model=name)
            await self.on_change()

    async def _load_path_here(
        self, name: str, path: str, overrides: dict[str, Any] | None = None
    ) -> None:
        check_model_name(name)
        folder = Path(path) if Path(path).is_absolute() else self.roots[0] / path
        if not folder.is_dir():
            raise ModelNotFound(f"model {name!r}: base_path {path!r} is not a folder")
        check_inside_roots(folder, self.roots, f"model {name!r} (base_path {path!r})")
        merged = {**(self.config.models.get(name) or {}), **(overrides or {})}
        async with self._lock:
            source = await asyncio.to_thread(read_model_folder, folder, merged, name)
            if source is None:
                raise InvalidInput(f"model {name!r}: {path!r} has no numeric version folder")
            await self.models.load_model(source)
            log.info("model loaded through the management API", model=name, path=str(folder))
            await self.on_change()

    async def _unload_here(self, name: str) -> None:
        async with self._lock:
            await self.models.unload_model(name)
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
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if shared else 0)])
        server.add_generic_rpc_handlers([self._grpc_handler()])
        self.grpc_address = bind_grpc(
            server, management.host, management.grpc_port, what="management gRPC"
        )
        await server.start()
        self._grpc = server
        app = web.Application()
        app.add_routes(
            [
                web.post("/v2/repository/index", self._rest_index),
                web.post("/v2/repository/models/{model}/load", self._rest_load),
                web.post("/v2/repository/models/{model}/unload", self._rest_unload),
            ]
        )
        self._http, self.http_address = await start_http(
            app, management.host, management.http_port, reuse_port=shared, what="management HTTP"
        )

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(1)
        if self._http is not None:
            await self._http.cleanup()

    def _grpc_handler(self) -> grpc.GenericRpcHandler:
        async def call(
            context: grpc.aio.ServicerContext, action: Callable[[], Awaitable[Any]]
        ) -> Any:
            try:
                metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
                self.authorize(metadata)
                return await action()
            except Exception as exc:
                await context.abort(grpc_code(exc), public_message(exc, "management"))

        async def index(
            request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
        ) -> pb.RepositoryIndexResponse:
            async def run() -> pb.RepositoryIndexResponse:
                reply = pb.RepositoryIndexResponse()
                for row in self.index(request.ready):
                    reply.models.add(**row)
                return reply

            return await call(context, run)

        async def load(
            request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
        ) -> pb.RepositoryModelLoadResponse:
            async def run() -> pb.RepositoryModelLoadResponse:
                await self.load(request.model_name, dict(request.parameters))
                return pb.RepositoryModelLoadResponse()

            return await call(context, run)

        async def unload(
            request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
        ) -> pb.RepositoryModelUnloadResponse:
            async def run() -> pb.RepositoryModelUnloadResponse:
                await self.unload(request.model_name)
                return pb.RepositoryModelUnloadResponse()

            return await call(context, run)

        def unary(function: Any, request_type: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                function,
                request_deserializer=request_type.FromString,
                response_serializer=lambda reply: reply.SerializeToString(),
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "RepositoryIndex": unary(index, pb.RepositoryIndexRequest),
                "RepositoryModelLoad": unary(load, pb.RepositoryModelLoadRequest),
                "RepositoryModelUnload": unary(unload, pb.RepositoryModelUnloadRequest),
            },
        )

    async def _rest(
        self, request: web.Request, action: Callable[[dict[str, Any]], Awaitable[Any]]
    ) -> web.Response:
        try:
            self.authorize({k.lower(): v for k, v in request.headers.items()})
            body: dict[str, Any] = {}
            if request.can_read_body:
                try:
                    body = await request.json()
                except ValueError:
                    raise InvalidInput("the body is not valid JSON") from None
                if not isinstance(body, dict):
                    raise InvalidInput("the body must be a JSON object")
            result = await action(body)
        except DlInferenceError as exc:
            return web.json_response({"error": str(exc)}, status=http_status(exc))
        except Exception as exc:
            return web.json_response({"error": public_message(exc, "management")}, status=500)
        return web.json_response(result) if result is not None else web.Response(status=200)

    async def _rest_index(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any]) -> Any:
            return self.index(bool(body.get("ready", False)))

        return await self._rest(request, run)

    async def _rest_load(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any]) -> None:
            await self.load(request.match_info["model"], body.get("parameters") or {})

        return await self._rest(request, run)

    async def _rest_unload(self, request: web.Request) -> web.Response:
        async def run(body: dict[str, Any]) -> None:
            await self.unload(request.match_info["model"])

        return await self._rest(request, run)


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
