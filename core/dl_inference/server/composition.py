"""The server process: one grpc.aio server and one aiohttp app over a shared Runtime.

Start-up order: plugins -> repository scan and config checks -> listeners (live, NOT
READY) -> model loads -> ready, "listening" lines on stdout. Binding first reports a port in
use at once, not after minutes of loading. SIGTERM / SIGINT drain: health turns NOT_SERVING,
new calls are refused, in-flight calls finish within ``server.drain_timeout_s``, models
unload. SIGHUP reloads the config file, or without one rescans the model repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from dl_inference.kernel import heap
from dl_inference.kernel.config.schema import ServerConfig
from dl_inference.kernel.metrics import UpstreamCollector
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.remote import RemoteRepository, remote_for
from dl_inference.kernel.repository import (
    ModelSource,
    read_model_folder,
    scan_repository,
    version_numbers,
)
from dl_inference.kernel.runtime import Runtime
from dl_inference.server.grpc_h2 import Server as H2Server
from dl_inference.server.grpc_h2 import grpc_engine, grpc_server
from dl_inference.server.health import ServerHealth
from dl_inference.server.http1 import http_engine
from dl_inference.server.http_errors import json_errors
from dl_inference.server.listeners import bind_grpc, check_port, metrics_host, start_http
from dl_inference.server.logs import configure_logging, info_enabled
from dl_inference.server.status_page import metrics_route, status_document, status_routes
from dl_inference.server.tls import ServerTls
from dl_inference.server.worker_link import WorkerLink
from dl_inference.spi.errors import ConfigError, DlInferenceError
from dl_inference.spi.protocol import Protocol

log = structlog.get_logger("dl_inference.server")

_MB = 1024 * 1024
_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


class Server:
    """A configured dl-inference server; :meth:`run` serves until SIGTERM."""

    def __init__(self, config: ServerConfig, plugins: PluginHost) -> None:
        self.config = config
        self.plugins = plugins
        self.models = ModelRegistry(plugins)
        self.runtime = Runtime(
            plugins,
            self.models,
            max_message_bytes=int(config.server.grpc.max_message_mb * _MB),
            strict_readiness=config.server.strict_readiness,
        )
        self.runtime.info_logged = info_enabled(config.server.log_level)
        if config.server.metrics.triton_names:
            self.runtime.metrics.export_triton_names(self.runtime.model_statistics)
        self.runtime.metrics.export_gpu()
        self.protocols: list[Protocol] = [cls() for cls in plugins.protocols]
        self.grpc_address = ""
        self.http_address = ""
        self.metrics_address = ""  # the metrics listener's, when server.metrics.port is set
        self.gateway: Any = None
        self.reuse_port = False  # set for `serve --workers N` children
        self.link: WorkerLink | None = None  # the siblings of a `serve --workers N` child
        self.management: Any = None
        self.tls: ServerTls | None = None
        self._grpc: grpc.aio.Server | H2Server | None = None
        self._http: web.AppRunner | None = None
        self._metrics: web.AppRunner | None = None
        self._health = ServerHealth(
            self.runtime, lambda: [s for p in self.protocols for s in p.grpc_services]
        )
        self._stopped = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        # The mirror of a remote model_repository (s3://...): synced before each scan.
        self.remote: RemoteRepository | None = None
        # (path, loader) when the server runs from a config file: SIGHUP and edits reload
        # it. Without one, SIGHUP rescans the model repository.
        self.config_source: tuple[Path, Callable[[], ServerConfig]] | None = None
        self.config_mtime = 0.0  # the file's mtime when it was read, to spot later edits
        self._started = False
        self._reload_pending = False
        self._reloads: set[asyncio.Task[bool]] = set()

    # -- start -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Scan the repository and resolve every backend; raises ConfigError / PluginError.

        A model folder that cannot be prepared (invalid config.yaml, files no backend
        recognises) is held UNAVAILABLE with the reason and retried, unless
        ``server.strict_model_loading`` makes it fatal.
        """
        if self.config.management.enabled:
            from dl_inference.server.management.service import read_token

            read_token(self.config)
        if self.config.server.tls is not None:
            self.tls = ServerTls.load(self.config.server.tls)
        self.remote = remote_for(self.config)
        if self.remote is not None:
            self.remote.sync()  # unreadable at start: RemoteRepositoryError, exit 2
        strict = self.config.server.strict_model_loading
        sources = self._scan(self.config.model_repository, self.config.models, strict)
        self.models.prepare(sources, strict=strict)

    def _scan(
        self, root: Path | None, overrides: dict[str, dict[str, Any]], strict: bool
    ) -> list[ModelSource]:
        """The repository's model folders (none without a repository), then the models
        plugins offer (``dli_repository_models``: archives in it, say;
        ``dli_configured_models``: their own configuration's); a folder's name wins."""
        found = self.plugins.repository_models(root)
        # An override naming a contributed model is not "a model not in the repository". A
        # folder of that name takes it only as a model folder (numeric version folders): a
        # folder a plugin reads in its own format (a no-archive archive) may bear the name.
        contributed = {
            name
            for name, _ in found
            if root is None or not (root / name).is_dir() or not version_numbers(root / name)
        }
        own = {name: value for name, value in overrides.items() if name not in contributed}
        if root is not None:
            sources = scan_repository(root, own, strict=strict)
        elif own:
            raise ConfigError(
                f"models.{next(iter(own))}: no such model (the config names no "
                "model_repository, and no plugin offers a model of that name)"
            )
        else:
            sources = []
        taken = {source.name for source in sources}
        for name, folder in found:
            if name in taken:
                log.warning(
                    "model found by a plugin skipped: a folder has that name",
                    model=name,
                    folder=str(root / name),
                    skipped=str(folder),
                )
                continue
            source = read_model_folder(folder, overrides.get(name), name, strict=strict)
            if source is None:
                log.warning("model found by a plugin has no numeric version folder", model=name)
                continue
            source.contributed = True
            sources.append(source)
        return sources

    async def start(self) -> None:
        """Open the listeners, load models, print the addresses, run dli_server_started.

        The listeners open before the models load, so that a port in use is reported at
        once; meanwhile the server is live but NOT READY (every model is LOADING). A
        ``--workers`` child loads first: with SO_REUSEPORT the kernel would hand it new
        connections while its siblings serve (the parent checked the ports already).
        """
        bind_first = not self.reuse_port
        self.runtime.starting = True  # NOT READY until the models it starts with loaded
        if bind_first:
            if self.config.management.enabled:
                management = self.config.management
                check_port(management.host, management.grpc_port, "management gRPC")
                check_port(management.host, management.http_port, "management HTTP")
            await self._open_listeners()
            log.info(
                "listeners open; loading models",
                grpc=self.grpc_address,
                http=self.http_address or None,
                models=self.models.names(),
            )
        await self.models.load_all(strict=self.config.server.strict_model_loading)
        if self.config.management.enabled:
            from dl_inference.server.management import ManagementService

            self.management = ManagementService(
                self.config,
                self.models,
                self.runtime,
                self._update_health,
                self.link,
                self.protocols,
            )
            # Before the listeners: a replacement worker serves what its siblings serve.
            await self.management.catch_up()
        if not bind_first:
            await self._open_listeners()
        if self.management is not None:
            await self.management.start()
            self.runtime.management = self.management
        await self._start_link()
        self.runtime.starting = False
        await self._update_health()
        if self.management is not None:
            print(f"Management gRPC listening on {self.management.grpc_address}", flush=True)
            print(f"Management HTTP listening on {self.management.http_address}", flush=True)
        # Before gRPC and HTTP: their lines tell a supervisor and tests that the server is up.
        if self.metrics_address:
            print(f"Metrics listening on {self.metrics_address}", flush=True)
        print(f"gRPC listening on {self.grpc_address}", flush=True)
        if self.http_address:
            print(f"HTTP listening on {self.http_address}", flush=True)
        log.info(
            "server ready",
            grpc=self.grpc_address,
            http=self.http_address or None,
            models=self.models.names(),
            protocols=[p.name for p in self.protocols],
        )
        self.plugins.pm.hook.dli_server_started(server=self)
        poll = self.config.server.repository_poll_s
        # Without a repository, the models plugins' own configuration names are polled.
        configured = self.plugins.pm.hook.dli_configured_models.get_hookimpls()
        if poll > 0 and (self.config.model_repository is not None or configured):
            self._poller = asyncio.create_task(self._poll_repository(poll))

    async def _open_listeners(self) -> None:
        """Gateway, gRPC, HTTP and metrics listeners; health first, so no probe sees SERVING
        early."""
        await self._update_health()
        await self._start_gateway()
        await self._start_grpc()
        if self.config.server.http.enabled:
            await self._start_http()
        if self.config.server.metrics.port is not None:
            await self._start_metrics()

    async def _poll_repository(self, interval: float) -> None:
        """Load versions and models that appear on disk, retire those that leave, reload
        those whose files or config.yaml changed, and retry failed loads when due."""
        while True:
            await asyncio.sleep(interval)
            # Read each time: a config reload may have named another repository (or none:
            # the models plugins' configuration names are scanned then).
            root = self.config.model_repository
            try:
                if self.remote is not None:
                    await asyncio.to_thread(self.remote.poll)  # keeps the cache on failure
                # Never strict here: one folder broken while serving must not stop the rest.
                sources = await asyncio.to_thread(self._scan, root, self.config.models, False)
                if await self.models.refresh(sources, root, folders=root is not None):
                    await self._update_health()
            except DlInferenceError as exc:
                log.error("repository scan failed; serving what is loaded", error=str(exc))
            except Exception:
                log.exception("repository scan crashed; serving what is loaded")

    async def _start_gateway(self) -> None:
        routes = getattr(self.config, "routes", None)
        if not routes:
            return
        from dl_inference.gateway import Gateway

        self.gateway = Gateway(routes, self.plugins)
        await self.gateway.start()
        self.runtime.metrics.add_collector(UpstreamCollector(self.gateway.snapshot))
        self.runtime.metrics.add_collector(self.gateway.group_collector())

    async def _start_grpc(self) -> None:
        limit = self.runtime.max_message_bytes
        engine = grpc_engine(self.config.server.grpc.engine)
        server = grpc_server(
            engine,
            [
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ],
        )
        handlers = [h for p in self.protocols for h in p.grpc_handlers(self.runtime)]
        if self.gateway is not None:
            handlers = self.gateway.wrap_grpc_handlers(handlers, self.protocols)
        server.add_generic_rpc_handlers(handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self._add_reflection(server)
        grpc_cfg = self.config.server.grpc
        credentials = self.tls.grpc_credentials(engine) if self.tls is not None else None
        self.grpc_address = bind_grpc(server, grpc_cfg.host, grpc_cfg.port, credentials)
        await server.start()
        self._grpc = server

    def _add_reflection(self, server: grpc.aio.Server | H2Server) -> None:
        # A private pool: our files are renamed to the standard packages (inference.*, ...),
        # which must not enter the default pool where client libraries register theirs.
        pool = descriptor_pool.DescriptorPool()
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        health_file = descriptor_pb2.FileDescriptorProto()
        health_pb2.DESCRIPTOR.CopyToProto(health_file)
        files = [health_file]
        for protocol in self.protocols:
            files.extend(protocol.reflection_files())
        added: set[str] = set()
        for file in files:
            if file.name not in added:
                pool.Add(file)
                added.add(file.name)
                names += [
                    f"{file.package}.{s.name}" if file.package else s.name for s in file.service
                ]
        names += [reflection.SERVICE_NAME, _REFLECTION_V1]
        servicer = reflection.aio.ReflectionServicer(sorted(set(names)), pool=pool)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
        # grpc.reflection.v1 has the same messages as v1alpha; newer tools ask for v1 first.
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    _REFLECTION_V1,
                    {
                        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                            servicer.ServerReflectionInfo,
                            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                        )
                    },
                )
            ]
        )

    async def _start_link(self) -> None:
        """Answer the sibling workers: this worker's metrics and status, management changes."""
        if self.link is None:
            return

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=self.runtime.metrics.render(), content_type="text/plain")

        async def status(_: web.Request) -> web.Response:
            return web.json_response(status_document(self.runtime, self.gateway))

        routes = [web.get("/metrics", metrics), web.get("/status", status)]
        if self.management is not None:
            routes += self.management.sibling_routes()
        await self.link.start(routes)

    async def _start_http(self) -> None:
        middlewares = (
            [self.gateway.http_middleware(self.protocols, self.runtime)]
            if self.gateway is not None
            else []
        )
        # Innermost: only this app's own refusals become JSON; forwarded answers pass as is.
        middlewares.append(json_errors)
        app = web.Application(
            client_max_size=self.runtime.max_message_bytes, middlewares=middlewares
        )
        app.add_routes(status_routes(self.runtime, lambda: self.gateway, self.link))
        for protocol in self.protocols:
            app.add_routes(list(protocol.http_routes(self.runtime)))
        http_cfg = self.config.server.http
        self._http, self.http_address = await start_http(
            app,
            http_cfg.host,
            http_cfg.port,
            ssl_context=self.tls.ssl_context() if self.tls is not None else None,
            reuse_port=self.reuse_port,
            shutdown_timeout=self.config.server.drain_timeout_s,
            # The lane answers plain routes without the middlewares: not beside the gateway.
            lane_max_body=(
                self.runtime.max_message_bytes
                if http_engine(http_cfg.engine) == "asyncio" and self.gateway is None
                else None
            ),
        )

    async def _start_metrics(self) -> None:
        """``/metrics`` alone on a listener of its own (Triton's --metrics-port, TorchServe's
        metrics_address), TLS as the HTTP listener's."""
        metrics = self.config.server.metrics
        app = web.Application()
        app.add_routes([metrics_route(self.runtime, self.link)])
        self._metrics, self.metrics_address = await start_http(
            app,
            metrics_host(self.config),
            metrics.port or 0,
            ssl_context=self.tls.ssl_context() if self.tls is not None else None,
            reuse_port=self.reuse_port,
            shutdown_timeout=self.config.server.drain_timeout_s,
            what="metrics",
        )

    async def _update_health(self) -> None:
        await self._health.update()  # for grpc.health Watch streams; Check asks the runtime

    # -- run and stop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Start, then serve until SIGTERM/SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        # Always, and before start: SIGHUP's default action would end the process, also
        # while it starts.
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        heap.keep_freed_memory()  # before the models load: their batches reuse freed blocks
        try:
            await self.start()
        except BaseException:
            await self._abandon_start()
            raise
        self._started = True
        heap.freeze()  # what start-up made stays: no full collection walks it again
        if self.config_source is not None:
            self._watcher = asyncio.create_task(self._watch_config())
        if self._reload_pending:
            self._spawn_reload()
        await self._stopped.wait()
        await self.stop()

    async def _abandon_start(self) -> None:
        """Close what a failed start opened, so the process exits without stray servers."""
        for stop in (
            self._grpc.stop(0) if self._grpc is not None else None,
            self._http.cleanup() if self._http is not None else None,
            self.management.stop() if self.management is not None else None,
            self.link.stop() if self.link is not None else None,
            self.gateway.stop() if self.gateway is not None else None,
        ):
            if stop is not None:
                with contextlib.suppress(Exception):
                    await stop

    def _on_sighup(self) -> None:
        if self._started:
            self._spawn_reload()
        else:
            self._reload_pending = True  # applied once start-up completes

    def _spawn_reload(self) -> None:
        task = asyncio.create_task(self.reload())
        self._reloads.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._reloads.discard)

    # -- configuration reload --------------------------------------------------------------

    async def _watch_config(self) -> None:
        """Reload when the config file changes (checked every ``server.config_poll_s``)."""
        assert self.config_source is not None
        path, _ = self.config_source
        last = self.config_mtime
        while True:
            await asyncio.sleep(self.config.server.config_poll_s or 3600)
            if not self.config.server.config_poll_s:
                continue
            current = _mtime(path)
            if current != last:
                last = current
                await self.reload()

    async def reload(self) -> bool:
        """Re-read the config; apply it whole if valid, else keep the running one.

        Models (overrides, repository), routes and the log level change live; listener,
        TLS, worker, plugin and management settings need a restart and are reported.
        A server without a config file rescans its model repository the same way.
        """
        if self.config_source is None:
            path, load = None, lambda: self.config
            event, refused = (
                "repository rescanned",
                "repository rescan refused; serving what is loaded",
            )
        else:
            path, load = self.config_source
            event, refused = "config reloaded", "config reload refused; the running config stays"
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(load)
                plan = await self._plan_reload(new, event)
            except Exception as exc:
                log.error(refused, file=str(path) if path else None, error=str(exc))
                return False
            await plan()
            return True

    async def _plan_reload(
        self, new: ServerConfig, event: str = "config reloaded"
    ) -> Callable[[], Awaitable[None]]:
        """Validate everything ``new`` needs, then return the step that applies it."""
        old = self.config
        restart = [
            key
            for key in ("grpc", "http", "tls", "workers", "drain_timeout_s")
            if getattr(old.server, key) != getattr(new.server, key)
        ]
        if _metrics_listener(old) != _metrics_listener(new):
            restart.append("metrics (its listener)")
        restart += [
            k
            for k in ("plugins", "management", "plugin_settings")
            if getattr(old, k) != getattr(new, k)
        ]
        remote = remote_for(new, self.remote)
        if remote is not None:
            await asyncio.to_thread(remote.sync)
        # As at start-up: a broken model folder is refused only under strict loading.
        strict = new.server.strict_model_loading
        sources = await asyncio.to_thread(self._scan, new.model_repository, new.models, strict)
        staging = ModelRegistry(self.plugins)
        staging.prepare(sources, strict=strict)  # backend and settings checks, no load
        routes = None
        if new.routes != old.routes:
            if self.gateway is None:
                restart.append("routes (this server started without routes)")
            else:
                routes = self.gateway.build_routes(new.routes)
        changed_models = {
            name
            for name in set(old.models) | set(new.models)
            if old.models.get(name) != new.models.get(name)
        }

        # The listeners keep running as they started: their settings stay the old ones.
        kept: dict[str, Any] = {
            key: getattr(old.server, key) for key in ("grpc", "http", "tls", "workers")
        }
        kept["metrics"] = new.server.metrics.model_copy(
            update={"port": old.server.metrics.port, "host": old.server.metrics.host}
        )

        async def apply() -> None:
            self.remote = remote
            self.config = new.model_copy(update={"server": new.server.model_copy(update=kept)})
            if (
                new.server.log_level != old.server.log_level
                or new.server.log_format != old.server.log_format
            ):
                configure_logging(new.server.log_format, new.server.log_level)
                self.runtime.info_logged = info_enabled(new.server.log_level)
            applied = []
            if new.server.strict_readiness != old.server.strict_readiness:
                self.runtime.strict_readiness = new.server.strict_readiness
                applied.append(f"server.strict_readiness: {new.server.strict_readiness}")
            for source in sources:
                if source.name in changed_models and source.name in self.models.names():
                    try:
                        await self.models.load_model(source)
                    except DlInferenceError as exc:
                        applied.append(f"model {source.name} failed to reload: {exc}")
                    else:
                        applied.append(f"model {source.name} reloaded")
            folders = new.model_repository is not None
            if await self.models.refresh(sources, new.model_repository, folders=folders):
                applied.append("repository refreshed")
            if routes is not None:
                applied += [f"route {c}" for c in await self.gateway.apply(routes)]
            await self._update_health()
            log.info(
                event,
                applied=applied or ["nothing to change"],
                models=self.models.names(),
                needs_restart=restart or None,
            )

        return apply

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        """Drain: refuse new calls, let in-flight ones finish (bounded), then unload models."""
        grace = self.config.server.drain_timeout_s
        log.info("draining", timeout_s=grace)
        self.runtime.draining = True
        for task in (self._poller, self._watcher):
            if task is not None:
                task.cancel()
        self.plugins.pm.hook.dli_server_stopping(server=self)
        await self._health.enter_graceful_shutdown()
        stops = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(grace))
        for runner in (self._http, self._metrics):
            if runner is not None:
                stops.append(runner.shutdown())
        await asyncio.gather(*stops)
        for runner in (self._http, self._metrics):
            if runner is not None:
                await runner.cleanup()
        if self.gateway is not None:
            await self.gateway.stop()
        if self.management is not None:
            await self.management.stop()
        if self.link is not None:
            await self.link.stop()
        await self.models.unload_all()
        log.info("stopped")


def _metrics_listener(config: ServerConfig) -> tuple[str, int | None]:
    return metrics_host(config), config.server.metrics.port


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
