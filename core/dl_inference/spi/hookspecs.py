"""Every extension point of dl-inference, in one module.

Registration hooks run once at start-up and receive a registrar. Per-request hooks run
for every inference call (not for health, metadata or management calls) and cost nothing
when no plugin implements them; ``ctx.request`` is always set when they run. An
implementation may take fewer arguments than its spec. ``HOOKSPEC_VERSION`` is the
contract's version: a plugin may declare the one it was built for (module attribute
``DLI_HOOKSPEC_VERSION``) and is refused with an upgrade hint when the major differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from dl_inference.spi.registry import (
        BackendRegistry,
        BalancerRegistry,
        ConverterRegistry,
        ProtocolRegistry,
    )
    from dl_inference.spi.types import Decision, ForwardTrace, RequestContext

PROJECT = "dl_inference"
# 1.1: protocols get a RuntimeView and bind methods on the kernel call path (CallPath);
# backends say what their model takes (model_inputs / model_outputs, ProcessorAdapter).
# 1.2: dli_repository_models (models a plugin finds as files in the repository folder).
# 1.3: dli_gateway_call (watch a gateway's forwarded calls and their upstream attempts);
# RequestContext.execution (queue and compute times in dli_on_response / dli_on_error).
# 1.4: ExecutionTiming.steps (StepExecution: the calls an ensemble's steps made for the
# request, with their own timing).
# 1.5: dli_configured_models (models a plugin's own configuration names, served with or
# without a model repository; they keep the demo models out); dli_configure's config_dir.
# 1.6: dli_configure may return listener settings its own files give (LISTENER_KEYS), merged
# below flags and the server YAML's explicit keys.
# 1.7: plain HTTP routes (CallPath.http_handler(..., plain=True), handlers using only
# dl_inference.HttpRequest), which the server may answer on its own HTTP/1.1 lane.
# 1.8: LISTENER_KEYS gains server.metrics.host and server.metrics.port (the metrics
# listener); dl_inference.VersionPolicy (a config.yaml version_policy, .select()).
# 1.9: Backend.self_contained and PythonModel.self_contained (a request alone may run on
# the event loop's thread; ignored by older kernels).
HOOKSPEC_VERSION = "1.9"

# The listener settings a plugin's dli_configure may return, as the server YAML spells them
# (management.roots too: where that listener may load models from).
LISTENER_KEYS = (
    "server.http.host",
    "server.http.port",
    "server.grpc.host",
    "server.grpc.port",
    "server.metrics.host",
    "server.metrics.port",
    "management.enabled",
    "management.host",
    "management.http_port",
    "management.grpc_port",
    "management.roots",
)

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dli_register_backends(registry: BackendRegistry) -> None:
    """Add Backend subclasses with ``registry.add(cls)``. Called once at start-up."""


@hookspec
def dli_register_balancers(registry: BalancerRegistry) -> None:
    """Add Balancer subclasses with ``registry.add(cls)``. Called once at start-up."""


@hookspec
def dli_register_protocols(registry: ProtocolRegistry) -> None:
    """Add Protocol subclasses (wire protocols) with ``registry.add(cls)``. Called once."""


@hookspec
def dli_register_converters(registry: ConverterRegistry) -> None:
    """Add Converter subclasses (``dl-inference convert``) with ``registry.add(cls)``."""


@hookspec
def dli_repository_models(root: Path) -> list[tuple[str, Path]] | None:
    """Models this plugin finds as files in the model repository folder ``root`` (archives
    of a format it knows, for one), as ``(model name, folder)`` pairs.

    Each folder is laid out as a model folder, ``<folder>/<version>/<files>`` plus an
    optional config.yaml, and may live anywhere (a cache the plugin unpacks into); the
    backend that claims its files serves it. Called at every repository scan (start-up,
    each ``server.repository_poll_s`` poll, config reloads), in a worker thread: return the
    same folder, untouched, while the file is unchanged, so the poll sees no change. A name
    that a folder of ``root`` (or another plugin) gives too is skipped with a warning;
    ``models.<name>`` overrides in the server config apply as to folders. Raise
    ``ConfigError`` for a file that cannot be read only when it makes the whole repository
    unusable; rather leave a broken file out and log why.
    """


@hookspec
def dli_configured_models() -> list[tuple[str, Path]] | None:
    """Models this plugin's own configuration names, wherever their files are (TF Serving's
    ``models.config``, say), as ``(model name, folder)`` pairs like ``dli_repository_models``'.

    They are served whether or not the server config names a ``model_repository``, with
    the same rules: called at every scan (start-up, each ``server.repository_poll_s`` poll,
    config reloads), in a worker thread; the same folder, untouched, while nothing changed;
    a name a repository folder (or another plugin) gives too is skipped with a warning;
    ``models.<name>`` overrides apply. A model left out of a later answer is unloaded. The
    built-in demo models are served only when the config names no ``model_repository``, no
    ``routes``, and no plugin answers a model here. Return ``[]`` when not configured.
    """


@hookspec
def dli_configure(settings: dict[str, Any], config_dir: Path) -> dict[str, tuple[Any, str]] | None:
    """Receive this plugin's ``plugin_settings.<plugin name>`` mapping from the server YAML.

    Called once at start-up, before the server listens, with an empty mapping when the
    config has no section for the plugin. A relative path in ``settings`` is relative to
    ``config_dir``, as ``model_repository`` in the YAML is: the YAML file's folder (the
    working directory when the server runs without one). Validate it (a pydantic model with
    ``extra="forbid"`` is the norm) and raise ``dl_inference.ConfigError`` naming the
    key; the server then exits with status 2.

    May return where the server listens as a file of the plugin's own says it (a migrated
    server's config file): ``{key: (value, where)}`` with keys from ``LISTENER_KEYS``
    (``"server.http.port"``, ...) and ``where`` naming the file and its key for messages and
    ``check-config``. One precedence rule: command-line flags, then keys the server YAML
    gives, then these, then defaults. A key two plugins return is a config error; so is a
    value the server config would refuse (named by ``where``).
    """


@hookspec(firstresult=True)
def dli_authorize(ctx: RequestContext) -> Decision | None:
    """Allow or refuse a request before it reaches a model; the first non-None answer wins.

    Return ``Decision.deny(reason)`` to refuse, ``Decision.allow()`` to accept and stop
    asking other plugins, or ``None`` to leave the choice to others (no answer = allowed).
    ``ctx.request.model_name`` names the model; its inputs may not be decoded yet. An
    exception raised here fails the call: a ``DlInferenceError`` with its own code and
    message, any other as INTERNAL.
    """


@hookspec
def dli_on_request(ctx: RequestContext) -> None:
    """A decoded request is about to be run; ``ctx.request`` may be read or rewritten.

    An exception raised here fails the call (``InvalidInput`` to refuse a request).
    """


@hookspec
def dli_on_response(ctx: RequestContext) -> None:
    """A response is about to be encoded; ``ctx.response`` may be read or rewritten.

    An exception raised here fails the call.
    """


@hookspec
def dli_on_error(ctx: RequestContext, error: BaseException) -> None:
    """An inference call failed with ``error``; for audit and metrics. Called once per call.

    That includes calls whose body could not be decoded: ``ctx.request`` is then a request
    with no inputs naming the model the protocol could read (``""`` when none), so
    ``ctx.request.model_name`` is always safe to read. An exception raised here is logged
    with the plugin's name and changes nothing: the client gets the original error and the
    other plugins' implementations still run. The return value is ignored.
    """


@hookspec(firstresult=True)
def dli_gateway_call(ctx: RequestContext) -> ForwardTrace | None:
    """A gateway is about to forward a routed model's call to its nodes; return a
    ``ForwardTrace`` to watch it (its upstream attempts, its end), or None.

    Called for every gRPC call (unary, and each ``ModelStreamInfer`` stream: one attempt)
    and REST call the gateway forwards; the first non-None answer wins. ``ctx.protocol``
    is ``grpc`` or ``http``, ``ctx.method`` the gRPC path or the HTTP method and path,
    ``ctx.metadata`` the client's metadata / headers (names lower-cased); ``ctx.request``
    names the model, its inputs not decoded (the gateway forwards bytes). The headers an
    attempt gives (``AttemptTrace.headers``) replace the client's same-named ones on that
    attempt only. An exception raised here fails the call.
    """


@hookspec
def dli_server_started(server: object) -> None:
    """The server listens; ``server`` exposes ``grpc_address``, ``http_address``, ``runtime``."""


@hookspec
def dli_server_stopping(server: object) -> None:
    """The server has begun to drain and will stop; release what plugins hold."""
