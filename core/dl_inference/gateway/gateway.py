"""The Gateway the server integrates: routes by model name, forwards bytes, keeps local models."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web

from dl_inference.gateway.config import GroupConfig, NodeConfig, RouteConfig
from dl_inference.gateway.discovery import (
    NodeFileWatch,
    SeedTask,
    SeedTasks,
    parse_seed_node_file,
)
from dl_inference.gateway.forward import Forwarder
from dl_inference.gateway.groups import GroupCollector, Mirror, VersionRewrites
from dl_inference.gateway.rest_forward import BUILTIN_MODEL_PATHS, RestForwarder, routed_model
from dl_inference.gateway.route import Route
from dl_inference.gateway.stream_forward import forward_stream
from dl_inference.kernel.plugins import KNOWN_PROVIDERS, install_hint
from dl_inference.spi.balancer import Balancer
from dl_inference.spi.call_path import CallPath, RuntimeView, json_error_body, read_body
from dl_inference.spi.errors import ConfigError, DlInferenceError, PluginError
from dl_inference.spi.protocol import Protocol, RoutingKeyReader
from dl_inference.spi.seed_names import task_id_of

log = structlog.get_logger("dl_inference.gateway")


class RouteTable(dict[str, Route]):
    """:meth:`Gateway.build_routes`' result: routes by name, with the ``routes:`` entries
    and the node-file versions they were built from (to rebuild them when a file changes)."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        configs: Sequence[RouteConfig],
        node_files: Mapping[Path, SeedTasks],
    ) -> None:
        super().__init__(routes)
        self.configs = tuple(configs)
        self.node_files = dict(node_files)


class Gateway:
    """Routes calls for the configured models to their upstream nodes.

    ``Gateway(routes, plugins)`` checks every balancer and protocol name (and reads the
    seed node files) up front, ``await start()`` begins discovery, node-file watches and
    health probes, :meth:`wrap_grpc_handlers` and :meth:`http_middleware` put the gateway
    in front of the server's own gRPC handlers and REST routes, ``await stop()`` ends it
    all, and :meth:`snapshot` reports every node's state.

    A call goes to the route of its model name, else (the seed's rule) to the route of
    the task id the name ends in (:func:`task_id_of`), for the protocols the route takes.
    """

    def __init__(self, routes: Sequence[RouteConfig], plugins: Any) -> None:
        self.plugins = plugins
        # What version: groups write into calls: the protocol plugins' rewriters.
        self.versions = VersionRewrites(plugins.protocols)
        table = self.build_routes(routes)
        self.routes: dict[str, Route] = table
        self._configs = table.configs
        self._node_files = table.node_files
        self._by_model, self._by_task = _indexes(table)
        # A tracing plugin's dli_gateway_call (None, and no cost, without one).
        self.trace = plugins.request_hook("dli_gateway_call")
        self.forwarder = Forwarder(self.trace)
        self.rest_forwarder = RestForwarder(self.trace)
        self._retiring: set[asyncio.Task[None]] = set()
        self._watches: dict[Path, NodeFileWatch] = {}
        self._started = False
        # One change at a time: a config reload and a node-file edit both rebuild routes.
        self._changing = asyncio.Lock()

    def build_routes(
        self,
        routes: Sequence[RouteConfig],
        node_files: Mapping[Path, SeedTasks] | None = None,
    ) -> RouteTable:
        """Route objects for ``routes``, every name checked; nothing starts yet.

        A route with ``discovery: {nodefile}`` takes its task's nodes and timeout from the
        file (``node_files``' version of it, else the file read now); one that names
        neither model nor task id becomes one route per line, except for tasks another
        route names.
        """
        files: dict[Path, SeedTasks] = dict(node_files or {})
        named_tasks = {config.task_id for config in routes if config.task_id is not None}
        built: dict[str, Route] = {}
        for index, config in enumerate(routes):
            where = f"routes[{index}] ({_what(config)})"
            make_balancer = self._balancer_factory(where, config)
            path = config.nodefile
            if path is None:
                concrete = [(where, config)]
            else:
                if path not in files:
                    try:
                        files[path] = parse_seed_node_file(path)
                    except ConfigError as exc:
                        raise ConfigError(f"{where}.discovery.nodefile: {exc}") from None
                concrete = _from_node_file(where, config, files[path], named_tasks)
            for place, route_config in concrete:
                if route_config.name in built:
                    raise ConfigError(
                        f"{place}: a route named {route_config.name!r} is already given"
                    )
                built[route_config.name] = self._route(place, route_config, make_balancer)
        _indexes(built, check=True)
        wanted = {c.nodefile for c in routes if c.nodefile is not None}
        return RouteTable(built, routes, {p: t for p, t in files.items() if p in wanted})

    def _route(
        self, where: str, config: RouteConfig, make_balancer: Callable[[], Balancer]
    ) -> Route:
        """The Route of ``config``, with one Route per ``split`` group and its shadow's."""
        groups = []
        for index, group in enumerate(config.split):
            group_config = config.group_route(group)
            place = f"{where}.split[{index}]"
            balancer = self._balancer_factory(place, group_config)()
            groups.append(self._group(place, config, group_config, group, balancer))
        mirror = None
        if config.mirror is not None:
            shadow_config = config.group_route(config.mirror)
            place = f"{where}.mirror"
            balancer = self._balancer_factory(place, shadow_config)()
            shadow = self._group(place, config, shadow_config, config.mirror, balancer)
            mirror = Mirror(config.mirror, shadow)
        return Route(config, make_balancer(), groups=groups, mirror=mirror)

    def _group(
        self,
        where: str,
        route: RouteConfig,
        config: RouteConfig,
        group: GroupConfig,
        balancer: Balancer,
    ) -> Route:
        """The Route of a ``split`` group or shadow; its ``version`` checked against the
        route's protocols' rewriters."""
        if group.version is not None:
            self.versions.check(where, route.protocols or (), group.version)
        return Route(
            config, balancer, group=group.name, version=group.version, versions=self.versions
        )

    def _balancer_factory(self, where: str, config: RouteConfig) -> Callable[[], Balancer]:
        """Checks ``config``'s protocol and balancer names and options; returns a maker of
        its balancer (one per route a node-file entry stands for)."""
        # The kernel's V2 protocol registers through the same hook as the plugins' ones.
        known_protocols = {cls.name for cls in self.plugins.protocols}
        for name in config.protocols or ():
            if name not in known_protocols:
                package = KNOWN_PROVIDERS.get(name)  # tfserving, seldon: plugins of ours
                raise ConfigError(
                    f"{where}.protocols: unknown protocol {name!r}; known: "
                    f"{', '.join(sorted(known_protocols))}"
                    + (f"; install it: {install_hint(package)}" if package else "")
                )
        try:
            balancer_cls = self.plugins.balancer(config.balancer)
        except PluginError as exc:
            raise PluginError(f"{where}.balancer: {exc}") from None
        try:
            balancer_cls(**config.balancer_options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.balancer_options: {exc}") from None
        return lambda: balancer_cls(**config.balancer_options)

    async def apply(self, new_routes: dict[str, Route]) -> list[str]:
        """Switch to ``new_routes`` (from :meth:`build_routes`) without failing calls.

        Unchanged routes keep their node state; a route whose only changes are its static
        node list and timeout takes them (removed nodes drain); other changed routes are
        replaced, and the old ones stop once their in-flight calls end. Returns what changed.
        """
        async with self._changing:
            return await self._apply(new_routes)

    async def _apply(self, new_routes: dict[str, Route]) -> list[str]:
        changes = []
        for name, route in new_routes.items():
            old = self.routes.get(name)
            if old is not None and old.config == route.config:
                new_routes[name] = old
                continue
            changed = _live_changes(old.config, route.config) if old is not None else None
            if old is not None and changed:
                old.update(route.config)
                new_routes[name] = old
                changes.append(f"{name}: {changed}")
                continue
            await route.start()
            changes.append(f"{name}: {'replaced' if old else 'added'}")
        retired = [r for m, r in self.routes.items() if new_routes.get(m) is not r]
        changes += [f"{r.model}: removed" for r in retired if r.model not in new_routes]
        by_model, by_task = _indexes(new_routes)
        # No await from here to the last assignment: calls see the old or the new table.
        self.routes, self._by_model, self._by_task = new_routes, by_model, by_task
        if isinstance(new_routes, RouteTable):
            self._configs, self._node_files = new_routes.configs, new_routes.node_files
        for route in retired:
            task = asyncio.create_task(_stop_when_idle(route))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        if self._started:
            await self._watch_node_files()
        return changes

    async def _watch_node_files(self) -> None:
        """One watch per node file the ``routes:`` entries name, at their shortest refresh."""
        wanted: dict[Path, float] = {}
        for config in self._configs:
            if config.nodefile is not None and config.discovery is not None:
                refresh = config.discovery.refresh_s
                wanted[config.nodefile] = min(wanted.get(config.nodefile, refresh), refresh)
        for path, watch in list(self._watches.items()):
            if wanted.get(path) != watch.refresh_s:
                await self._watches.pop(path).stop()
        for path, refresh in wanted.items():
            if path not in self._watches:
                watch = NodeFileWatch(path, refresh, self._node_files[path], self._file_changed)
                self._watches[path] = watch
                watch.start()
            self._watches[path].last = self._node_files[path]

    async def _file_changed(self, path: Path, tasks: SeedTasks) -> None:
        """A node file's new version: rebuild the routes from it (ConfigError: refused)."""
        async with self._changing:
            table = self.build_routes(self._configs, {**self._node_files, path: tasks})
            changes = await self._apply(table)
        log.info("nodefile applied", nodefile=str(path), changes=changes or ["nothing"])

    async def start(self) -> None:
        for route in self.routes.values():
            await route.start()
        self._started = True
        await self._watch_node_files()
        log.info("gateway started", routes={m: r.describe_nodes() for m, r in self.routes.items()})

    async def stop(self) -> None:
        for watch in self._watches.values():
            await watch.stop()
        self._watches.clear()
        for route in self.routes.values():
            await route.stop()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.rest_forwarder.close()

    def http_middleware(
        self, protocols: Iterable[Protocol | type[Protocol]], runtime: RuntimeView
    ) -> Any:
        """An aiohttp middleware: REST calls for routed models go upstream, others stay.

        The model name comes from the path (V2's ``/v2/models/<name>``, and the prefixes
        ``protocols`` list in :meth:`~dl_inference.Protocol.rest_model_paths`), or for the
        POST paths they list in :meth:`~dl_inference.Protocol.rest_routing_keys`, from the
        body and headers by that protocol's reader. A routed call's body goes upstream as
        it came, ``Content-Encoding`` included: the node decodes it and answers for it.
        The gateway reads it with the kernel's :func:`~dl_inference.read_body`
        (``runtime``'s size limit on the bytes received: 413 beyond, as ``{"error": ...}``
        and counted like any failed call); a reader gets the body decoded, or an empty
        one when it does not decode (then headers alone can route the call, and an
        unrouted call's handler explains what is wrong with the body).
        """
        model_paths = dict(BUILTIN_MODEL_PATHS)
        readers: dict[str, tuple[str, RoutingKeyReader]] = {}
        for protocol in protocols:
            instance = protocol() if isinstance(protocol, type) else protocol
            for prefix in instance.rest_model_paths():
                model_paths[prefix] = instance.name
            for path, reader in instance.rest_routing_keys().items():
                readers[path] = (instance.name, reader)
        call_paths: dict[str, CallPath] = {}

        def calls_of(protocol: str) -> CallPath:
            if protocol not in call_paths:
                call_paths[protocol] = CallPath(runtime, protocol, "dl_inference.gateway")
            return call_paths[protocol]

        async def body_of(request: web.Request, protocol: str) -> bytes | web.Response:
            """The body as it came (aiohttp keeps it for the local handler too), or the
            refusal."""
            calls = calls_of(protocol)
            call = calls.http_call(f"{request.method} {request.path}", request)
            try:
                return await read_body(request, call, decoded=False)
            except DlInferenceError as exc:
                reply = calls.http_error(call, exc, json_error_body)
                reply.headers["x-request-id"] = call.ctx.request_id
                return reply

        async def decoded_body(request: web.Request, protocol: str) -> bytes:
            """The body for a routing-key reader: decoded, or empty when it does not decode."""
            call = calls_of(protocol).http_call(f"{request.method} {request.path}", request)
            try:
                return await read_body(request, call)
            except DlInferenceError:
                return b""  # not counted here: whoever serves the call answers for it

        @web.middleware
        async def route_rest(request: web.Request, handler: Any) -> web.StreamResponse:
            if not self.routes:
                return await handler(request)
            found = routed_model(request.path, model_paths)
            body: bytes | web.Response | None = None
            if found is not None:
                protocol, model = found
                route = self.route_of(model, protocol)
            elif request.method == "POST" and request.path in readers:
                protocol, reader = readers[request.path]
                # Read once here: the local handler gets the same body if it is not routed.
                body = await body_of(request, protocol)
                if isinstance(body, web.Response):
                    # Not for the local handler: after a refused read, aiohttp would hand
                    # it the rest of the stream as if it were the body.
                    return body
                headers = {key.lower(): value for key, value in request.headers.items()}
                key_body = await decoded_body(request, protocol)
                route = self.route_of(
                    read_routing_key(reader, key_body, headers, protocol, request.path),
                    protocol,
                )
            else:
                route = None
            if route is None:
                return await handler(request)
            if not route.reaches_rest:
                return web.json_response(
                    {
                        "error": f"model {route.model!r} is routed to upstream nodes over gRPC "
                        "only; call it over gRPC, or give its route http_port (or its nodes "
                        "http_address) to forward REST calls"
                    },
                    status=501,
                )
            if body is None:
                body = await body_of(request, protocol)
                if isinstance(body, web.Response):
                    return body
            return await self.rest_forwarder.forward(route, request, body)

        return route_rest

    def route_of(self, model: str | None, protocol: str) -> Route | None:
        """The route that forwards ``protocol`` calls for ``model``; None: serve them here.

        The route naming ``model`` first; else the route of its task id (:func:`task_id_of`).
        """
        if not model:
            return None
        route = self._by_model.get(model)
        if route is not None and route.accepts(protocol):
            return route
        task = task_id_of(model)
        route = self._by_task.get(task) if task is not None else None
        return route if route is not None and route.accepts(protocol) else None

    def group_collector(self) -> GroupCollector:
        """The per-group figures (:class:`~dl_inference.gateway.groups.GroupCollector`) of
        the routes in force at each scrape, for the server's metrics registry."""
        return GroupCollector(lambda: list(self.routes.values()))

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per node of every route (by group): model, group, address, weight,
        state, counters."""
        return [row for route in self.routes.values() for row in route.snapshot()]

    def group_rows(self) -> list[dict[str, Any]]:
        """One dict per ``split`` group and shadow group of every route, for the status
        page: model, group, kind (``split`` / ``mirror``), weight or percent, version,
        nodes, and the calls the group's figures count (``requests``, ``errors``; a
        shadow's copies sent, failed, and ``dropped`` over ``max_in_flight``)."""
        rows: list[dict[str, Any]] = []
        for route in self.routes.values():
            for group in route.groups.values():
                rows.append(
                    {
                        **_group_row(route, group, "split"),
                        "weight": route.weights.get(group.group, 0),
                        "requests": group.stats.requests,
                        "errors": group.stats.errors,
                    }
                )
            if route.mirror is not None:
                mirror = route.mirror
                rows.append(
                    {
                        **_group_row(route, mirror.group, "mirror"),
                        "percent": mirror.config.percent,
                        "requests": mirror.sent,
                        "errors": mirror.failed,
                        "dropped": mirror.dropped,
                    }
                )
        return rows

    def routing_table(
        self, protocols: Iterable[Protocol | type[Protocol]]
    ) -> dict[str, tuple[str, RoutingKeyReader]]:
        """gRPC method path -> (protocol name, routing-key reader), from each protocol's
        :meth:`~dl_inference.Protocol.routing_keys` (the kernel's V2 protocol's too)."""
        table: dict[str, tuple[str, RoutingKeyReader]] = {}
        for protocol in protocols:
            instance = protocol() if isinstance(protocol, type) else protocol
            for path, reader in instance.routing_keys().items():
                table[path] = (instance.name, reader)
        return table

    def upstream_table(self, protocols: Iterable[Protocol | type[Protocol]]) -> dict[str, str]:
        """gRPC method path -> the path calls to it are forwarded under, from each
        protocol's :meth:`~dl_inference.Protocol.upstream_paths`."""
        table: dict[str, str] = {}
        for protocol in protocols:
            instance = protocol() if isinstance(protocol, type) else protocol
            table.update(instance.upstream_paths())
        return table

    def wrap_grpc_handlers(
        self,
        local_handlers: Sequence[grpc.GenericRpcHandler],
        protocols: Iterable[Protocol | type[Protocol]] = (),
    ) -> list[grpc.GenericRpcHandler]:
        """Handlers that forward routed models and pass everything else to ``local_handlers``.

        A routed method is forwarded as the kind of call its protocol binds it locally:
        unary, a server stream routed by its one request (TorchServe's
        ``StreamPredictions``), or a bidirectional stream routed by its first message (V2's
        ``ModelStreamInfer``); a method not bound here is forwarded as unary.
        """
        if not self.routes and not self._configs:
            return list(local_handlers)
        protocols = list(protocols)
        table = self.routing_table(protocols)
        upstream = self.upstream_table(protocols)
        return [_GatewayHandler(self, table, upstream, list(local_handlers)), *local_handlers]


def read_routing_key(
    reader: RoutingKeyReader,
    body: bytes,
    metadata: dict[str, str],
    protocol: str,
    where: str,
) -> str | None:
    """``reader``'s model name, or None (the call is served here) when the reader fails.

    Readers come from plugins: one that chokes on a body must not take the method down.
    """
    try:
        return reader(body, metadata)
    except Exception as exc:
        log.error(
            "routing-key reader failed",
            method=where,
            protocol=protocol,
            error=f"{type(exc).__name__}: {exc}",
        )
        return None


class _GatewayHandler(grpc.GenericRpcHandler):
    """Claims the routable methods as raw bytes, then forwards or serves locally.

    A generic handler sees only the method path, not the body, so it must take every call
    to a routable path; once the model name is read (for a stream, from its first
    message), calls for unrouted models run the local handler's behaviour on the same
    bytes, deserialized as it would have.
    """

    def __init__(
        self,
        gateway: Gateway,
        table: dict[str, tuple[str, RoutingKeyReader]],
        upstream: dict[str, str],
        local: list[grpc.GenericRpcHandler],
    ) -> None:
        self.gateway = gateway
        self.table = table
        self.upstream = upstream
        self.local = local
        # Method path -> how the local handler takes it: "unary", "stream" (both ways),
        # "replies" (one request, a stream of replies), or "other" (a client stream: not
        # forwarded, served here).
        self._kinds: dict[str, str] = {}

    def _kind(self, details: grpc.HandlerCallDetails) -> str:
        if details.method not in self._kinds:
            local = self._local_service(details)
            kind = "unary"
            if local is not None and (local.request_streaming or local.response_streaming):
                both = local.request_streaming and local.response_streaming
                kind = "stream" if both else "other" if local.request_streaming else "replies"
            self._kinds[details.method] = kind
        return self._kinds[details.method]

    def _local_service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        for candidate in self.local:
            handler = candidate.service(details)
            if handler is not None:
                return handler
        return None

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        details = handler_call_details
        entry = self.table.get(details.method)
        if entry is None:
            return None
        protocol, reader = entry
        kind = self._kind(details)
        if kind == "other":
            return None
        if kind == "stream":
            # An async generator function, which grpc.aio runs in its response-iterator mode.
            async def stream(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                async for reply in self._handle_stream(
                    details, protocol, reader, requests, context
                ):
                    yield reply

            return grpc.stream_stream_rpc_method_handler(stream)
        if kind == "replies":

            async def replies(
                body: bytes, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                async for reply in self._handle_replies(details, protocol, reader, body, context):
                    yield reply

            return grpc.unary_stream_rpc_method_handler(replies)

        async def handle(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._handle(details, protocol, reader, body, context)

        # No (de)serializers: the gateway gets and returns raw bytes.
        return grpc.unary_unary_rpc_method_handler(handle)

    def _route_for(
        self,
        details: grpc.HandlerCallDetails,
        protocol: str,
        reader: RoutingKeyReader,
        body: bytes,
        context: grpc.aio.ServicerContext,
    ) -> tuple[str | None, Route | None]:
        """(model named by ``body``, its route when calls of ``protocol`` are routed)."""
        metadata = {
            key.lower(): value
            for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)
        }
        model = read_routing_key(reader, body, metadata, protocol, details.method)
        return model, self.gateway.route_of(model, protocol)

    async def _handle(
        self,
        details: grpc.HandlerCallDetails,
        protocol: str,
        reader: RoutingKeyReader,
        body: bytes,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        model, route = self._route_for(details, protocol, reader, body, context)
        if route is not None:
            method = self.upstream.get(details.method, details.method)
            return await self.gateway.forwarder.forward(route, method, body, context)
        return await self._local(details, model, body, context)

    async def _handle_stream(
        self,
        details: grpc.HandlerCallDetails,
        protocol: str,
        reader: RoutingKeyReader,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        rest = aiter(requests)
        try:
            first = await anext(rest)
        except StopAsyncIteration:
            return  # the client closed without a message: nothing to answer
        model, route = self._route_for(details, protocol, reader, first, context)
        if route is not None:
            method = self.upstream.get(details.method, details.method)
            replies = forward_stream(route, method, first, rest, context, self.gateway.trace)
        else:
            replies = self._local_stream(details, model, first, rest, context)
        async for reply in replies:
            yield reply

    async def _handle_replies(
        self,
        details: grpc.HandlerCallDetails,
        protocol: str,
        reader: RoutingKeyReader,
        body: bytes,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        model, route = self._route_for(details, protocol, reader, body, context)
        if route is None:
            handler = await self._local_handler(details, model, context, replies=True)
            request = await self._decoded(handler, details, body, context)
            encode = handler.response_serializer or (lambda reply: reply)
            result = handler.unary_stream(request, context)
            if inspect.isawaitable(result):  # a handler that writes with context.write
                await result
                return
            async for reply in result:
                yield encode(reply)
            return
        # On the wire a server-streaming call is a stream of one request message: forwarded
        # as a stream, the node's handler takes it as its one request.
        method = self.upstream.get(details.method, details.method)
        async for reply in forward_stream(
            route, method, body, _nothing(), context, self.gateway.trace
        ):
            yield reply

    async def _local_stream(
        self,
        details: grpc.HandlerCallDetails,
        model: str | None,
        first: bytes,
        rest: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        handler = await self._local_handler(details, model, context, streaming=True)
        decode = handler.request_deserializer or (lambda data: data)
        encode = handler.response_serializer or (lambda reply: reply)

        async def requests() -> AsyncIterator[Any]:
            yield decode(first)
            async for data in rest:
                yield decode(data)

        async for reply in handler.stream_stream(requests(), context):
            yield encode(reply)

    async def _local_handler(
        self,
        details: grpc.HandlerCallDetails,
        model: str | None,
        context: grpc.aio.ServicerContext,
        *,
        streaming: bool = False,
        replies: bool = False,
    ) -> grpc.RpcMethodHandler:
        """This server's own handler for the method, or an abort that says why none."""
        handler = self._local_service(details)
        behaviour = None
        if handler is not None:
            behaviour = handler.stream_stream if streaming else handler.unary_unary
            behaviour = handler.unary_stream if replies else behaviour
        if handler is None or behaviour is None:
            routed = ", ".join(sorted(self.gateway.routes)) or "none"
            if model:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"model {model!r} is not served here: no route names it and this server has "
                    f"no local service for {details.method}; routed models: {routed}",
                )
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{details.method} is not served here and the request names no routed model "
                f"(routed models: {routed})",
            )
        return handler

    async def _local(
        self,
        details: grpc.HandlerCallDetails,
        model: str | None,
        body: bytes,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        handler = await self._local_handler(details, model, context)
        request = await self._decoded(handler, details, body, context)
        result = handler.unary_unary(request, context)
        if inspect.isawaitable(result):
            result = await result
        if handler.response_serializer is not None:
            return handler.response_serializer(result)
        return result

    async def _decoded(
        self,
        handler: grpc.RpcMethodHandler,
        details: grpc.HandlerCallDetails,
        body: bytes,
        context: grpc.aio.ServicerContext,
    ) -> Any:
        """``body`` as the local handler takes it; INVALID_ARGUMENT when it is no message."""
        if handler.request_deserializer is None:
            return body
        try:
            return handler.request_deserializer(body)
        except Exception:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request body is not a valid message for {details.method}",
            )


async def _nothing() -> AsyncIterator[bytes]:
    """No more request messages (a server-streaming call's one request is sent already)."""
    return
    yield


def _live_changes(old: RouteConfig, new: RouteConfig) -> str | None:
    """What :meth:`Route.update` can take in place: ``"nodes"``, ``"timeout"``,
    ``"weights"`` (of ``split`` groups), ``"mirror percent"``, for routes with static
    nodes (or split groups) that differ in nothing else; None otherwise."""
    if old.discovery is not None or new.discovery is not None:
        return None
    if [g.name for g in old.split] != [g.name for g in new.split]:
        return None
    if (old.mirror is None) != (new.mirror is None):
        return None
    taken: dict[str, Any] = {"nodes": new.nodes, "timeout_ms": new.timeout_ms}
    taken["split"] = [
        group.model_copy(update=_group_live(group, now, weight=now.weight))
        for group, now in zip(old.split, new.split, strict=True)
    ]
    if old.mirror is not None and new.mirror is not None:
        taken["mirror"] = old.mirror.model_copy(
            update=_group_live(old.mirror, new.mirror, percent=new.mirror.percent)
        )
    if old.model_copy(update=taken) != new:
        return None
    old_groups = [*old.split, *([old.mirror] if old.mirror else [])]
    new_groups = [*new.split, *([new.mirror] if new.mirror else [])]
    changed = [
        what
        for what, differs in (
            ("nodes", old.nodes != new.nodes),
            ("timeout", old.timeout_ms != new.timeout_ms),
            ("weights", [g.weight for g in old.split] != [g.weight for g in new.split]),
            (
                "mirror percent",
                old.mirror is not None
                and new.mirror is not None
                and old.mirror.percent != new.mirror.percent,
            ),
            (
                "group nodes",
                [g.nodes for g in old_groups] != [g.nodes for g in new_groups],
            ),
        )
        if differs
    ]
    return " and ".join(changed) or None


def _group_live(old: GroupConfig, new: GroupConfig, **update: Any) -> dict[str, Any]:
    """``update`` plus the group's static nodes, which :meth:`Route.update` takes in place
    (a group with discovery keeps its discovery: replaced when it changes)."""
    if old.discovery is None and new.discovery is None:
        update["nodes"] = new.nodes
    return update


def _group_row(route: Route, group: Route, kind: str) -> dict[str, Any]:
    return {
        "model": route.model,
        "group": group.group,
        "kind": kind,
        "version": group.version,
        "nodes": sorted(group.nodes),
    }


def _what(config: RouteConfig) -> str:
    """How an error names a ``routes:`` entry besides its index."""
    if config.model is not None:
        return f"model {config.model!r}"
    if config.task_id is not None:
        return f"task {config.task_id}"
    return f"every task of {config.nodefile}"


def _from_node_file(
    where: str, config: RouteConfig, tasks: SeedTasks, named_tasks: set[int]
) -> list[tuple[str, RouteConfig]]:
    """The routes a node-file entry stands for, each with where an error would point."""
    if config.task_id is not None:
        task = tasks.get(config.task_id)
        if task is None:
            log.warning(
                "task not in the nodefile: its route has no nodes until it is",
                route=config.name,
                nodefile=str(config.nodefile),
            )
        return [(where, _from_line(config, task))]
    return [
        (f"{where} (line {task.line}, task {task.task_id})", _from_line(config, task))
        for task in tasks.values()
        if task.task_id not in named_tasks  # a route naming the task wins over its line
    ]


def _from_line(template: RouteConfig, task: SeedTask | None) -> RouteConfig:
    """``template`` as a route with static nodes: task ``task``'s nodes and timeout (none
    of either while the task is missing from the node file)."""
    assert template.discovery is not None
    weight = template.discovery.weight
    update: dict[str, Any] = {"discovery": None, "nodes": [], "timeout_ms": None}
    if task is not None:
        update["task_id"] = task.task_id
        update["timeout_ms"] = task.timeout_ms
        update["nodes"] = [NodeConfig(address=a, weight=weight) for a in task.nodes]
    return template.model_copy(update=update)


def _indexes(
    routes: Mapping[str, Route], *, check: bool = False
) -> tuple[dict[str, Route], dict[int, Route]]:
    """The routes by the model they name and by their task id (``check``: a duplicate is a
    ConfigError)."""
    by_model: dict[str, Route] = {}
    by_task: dict[int, Route] = {}
    for route in routes.values():
        model, task = route.config.model, route.config.task_id
        if check and model is not None and model in by_model:
            raise ConfigError(f"model {model!r} has two routes; merge them")
        if check and task is not None and task in by_task:
            raise ConfigError(
                f"task {task} has two routes ({by_task[task].model} and {route.model}); give it one"
            )
        if model is not None:
            by_model[model] = route
        if task is not None:
            by_task[task] = route
    return by_model, by_task


async def _stop_when_idle(route: Route, timeout_s: float = 60.0) -> None:
    """Stop a route that left the config once its last in-flight call ended (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while route.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await route.stop()
