"""The ``dl-inference`` command: serve, check-config, plugins."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from dl_inference.bench import add_bench_parser
from dl_inference.kernel.config.loader import load_server_config
from dl_inference.kernel.config.schema import ManagementConfig, ServerConfig
from dl_inference.kernel.remote import cache_folder, is_remote, redact
from dl_inference.spi.errors import ConfigError, DlInferenceError

EXIT_CONFIG = 2  # bad configuration / missing plugin: fix and rerun
EXIT_FAILURE = 1

DEMO_REPOSITORY = Path(__file__).parent / "demo" / "models"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dl-inference",
        description="Serve deep-learning models over KServe V2, TF Serving and Seldon protocols.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve a model repository (the demo one by default)")
    serve.add_argument("-c", "--config", type=Path, help="server YAML file")
    serve.add_argument(
        "--model-repository",
        help="folder <repo>/<model>/<version>/, or a URL (s3://bucket/prefix, gs://...)",
    )
    serve.add_argument("--host", help="address for both listeners (default 0.0.0.0)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (0 picks a free one)")
    serve.add_argument("--http-port", type=int, help="HTTP port (0 picks a free one)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="a listener of its own for /metrics, as Triton's (0 picks a free one)",
    )
    serve.add_argument("--log-format", choices=["console", "json"], help="log line format")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--workers", type=int, help="server processes sharing the ports")
    serve.add_argument(
        "--management-grpc-port", type=int, help="management gRPC port (0 picks a free one)"
    )
    serve.add_argument(
        "--management-http-port", type=int, help="management HTTP port (0 picks a free one)"
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check-config",
        help="validate a server YAML file without serving (no secrets needed)",
        description="Resolve plugins, models and routes as `serve` does and list them; "
        "exit 2 on the first problem. The management token is not read.",
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--load",
        action="store_true",
        help="also load every model with its backend (then unload it); exit 2 if any fails",
    )
    check.set_defaults(func=cmd_check_config)

    add_convert_parser(sub)

    models = sub.add_parser("models", help="list, load or unload models of a running server")
    models.add_argument("action", choices=["list", "load", "unload"])
    models.add_argument("name", nargs="?", help="model name (load, unload)")
    models.add_argument(
        "-c",
        "--config",
        type=Path,
        help="the server's YAML file: its management section gives the address and token",
    )
    models.add_argument(
        "--url", help="the server's management HTTP address (default http://127.0.0.1:8511)"
    )
    models.add_argument(
        "--token-env",
        help="environment variable with the token (default DLI_MANAGEMENT_TOKEN, or -c's)",
    )
    models.set_defaults(func=cmd_models)

    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins)

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DlInferenceError as exc:
        print(f"dl-inference: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


# -- serve ---------------------------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> ServerConfig:
    """The file's configuration (or defaults) with command-line flags applied on top."""
    config = load_server_config(args.config) if args.config else ServerConfig()
    if args.model_repository is not None:
        config.model_repository_url = None
        if is_remote(args.model_repository):
            config.model_repository_url = args.model_repository
            config.model_repository = cache_folder(
                args.model_repository,
                config.model_repository_options,
                config.server.repository_cache_dir,
            )
        else:
            config.model_repository = Path(args.model_repository).resolve()
    if args.host is not None:
        config.server.grpc.host = args.host
        config.server.http.host = args.host
    if args.grpc_port is not None:
        config.server.grpc.port = args.grpc_port
    if args.http_port is not None:
        config.server.http.port = args.http_port
    if args.metrics_port is not None:
        config.server.metrics.port = args.metrics_port
    if args.log_format is not None:
        config.server.log_format = args.log_format
    if args.log_level is not None:
        config.server.log_level = args.log_level
    if args.management_grpc_port is not None:
        config.management.grpc_port = args.management_grpc_port
    if args.management_http_port is not None:
        config.management.http_port = args.management_http_port
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError("--workers: give 1 or more processes")
        config.server.workers = args.workers
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    from dl_inference.server.logs import configure_logging

    config_mtime = args.config.stat().st_mtime if args.config and args.config.exists() else 0.0
    config = resolve_config(args)
    configure_logging(config.server.log_format, config.server.log_level)
    if config.server.workers > 1 and not args.reuse_port:
        return _serve_workers(args, config)
    server = _build_server(config, args.config)
    server.reuse_port = args.reuse_port
    if args.reuse_port:
        from dl_inference.server.worker_link import WorkerLink

        server.link = WorkerLink.from_environment()
        if server.link is not None:
            WorkerLink.follow_parent()
    if args.config:
        server.config_source = (args.config, lambda: _reloaded_config(args, server.plugins))
        server.config_mtime = config_mtime
    try:
        asyncio.run(server.run())
    except OSError as exc:
        print(f"dl-inference: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _listener_field(config: ServerConfig, key: str) -> tuple[Any, str]:
    """``"server.http.port"`` -> (config.server.http, "port")."""
    *path, field = key.split(".")
    section: Any = config
    for part in path:
        section = getattr(section, part)
    return section, field


def _reloaded_config(args: argparse.Namespace, plugins: Any) -> ServerConfig:
    """The file read again as at start-up (the plugins' listener settings included)."""
    config = resolve_config(args)
    apply_plugin_listeners(config, plugins)
    return with_demo_repository(config, plugins)


def _serve_workers(args: argparse.Namespace, config: ServerConfig) -> int:
    from dl_inference.server.listeners import check_port, metrics_host
    from dl_inference.server.workers import reserve_port, run_workers

    _build_server(config, args.config)  # refuse a bad config once, before starting any worker
    grpc_cfg, http_cfg = config.server.grpc, config.server.http
    # Workers load their models before they bind (see Server.start): a port in use is
    # found here, before that wait.
    check_port(grpc_cfg.host, grpc_cfg.port, "gRPC")
    if http_cfg.enabled:
        check_port(http_cfg.host, http_cfg.port, "HTTP")
    argv = ["--grpc-port", str(reserve_port(grpc_cfg.host, grpc_cfg.port))]
    argv += ["--http-port", str(reserve_port(http_cfg.host, http_cfg.port))]
    if config.server.metrics.port is not None:
        host = metrics_host(config)
        check_port(host, config.server.metrics.port, "metrics")
        argv += ["--metrics-port", str(reserve_port(host, config.server.metrics.port))]
    management = config.management
    if management.enabled:
        check_port(management.host, management.grpc_port, "management gRPC")
        check_port(management.host, management.http_port, "management HTTP")
        # Every worker listens on the management ports too: fix them before any starts.
        argv += ["--management-grpc-port", str(reserve_port(management.host, management.grpc_port))]
        argv += ["--management-http-port", str(reserve_port(management.host, management.http_port))]
    if args.config:
        argv += ["-c", str(args.config)]
    if args.model_repository:
        argv += ["--model-repository", str(args.model_repository)]
    for flag in ("host", "log_format", "log_level"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    return run_workers(config.server.workers, argv, expect_http=http_cfg.enabled)


def with_demo_repository(config: ServerConfig, plugins: Any) -> ServerConfig:
    """``config``, serving the built-in demo models when it names no model repository and
    no routes and no plugin offers a model (``dli_configured_models``: TF Serving's
    models.config, say); ``plugins`` are the configured PluginHost."""
    if (
        config.model_repository is None
        and not getattr(config, "routes", None)
        and not plugins.repository_models(None)
    ):
        config.model_repository = DEMO_REPOSITORY
    return config


def _build_server(config: ServerConfig, config_file: Path | None = None) -> Any:
    from dl_inference.kernel.plugins import PluginHost
    from dl_inference.server.composition import Server

    plugins = PluginHost(
        allow=config.plugins.allow, block=config.plugins.block, strict=config.plugins.strict
    ).load()
    # plugin_settings' relative paths resolve as model_repository's: against the file's folder.
    plugins.configure(config.plugin_settings, config_file.parent if config_file else None)
    sources = apply_plugin_listeners(config, plugins)
    with_demo_repository(config, plugins)
    server = Server(config, plugins)
    server.listener_sources = sources
    server.prepare()
    return server


def apply_plugin_listeners(config: ServerConfig, plugins: Any) -> dict[str, str]:
    """Apply the listener settings plugins' files give (``dli_configure``'s answers) where
    neither a flag nor the server YAML set the key: flags > YAML > a plugin's file >
    defaults. Returns where each listener key came from, for ``check-config``."""
    from pydantic import ValidationError

    from dl_inference.spi.hookspecs import LISTENER_KEYS

    sources = {}
    given = plugins.listener_settings
    for key in LISTENER_KEYS:
        section, field = _listener_field(config, key)
        if field in section.model_fields_set:
            # resolve_config's flags are assignments, so they count as set too.
            sources[key] = "the server config or a flag"
        elif key in given:
            value, where = given[key]
            try:
                checked = type(section).model_validate({field: value})
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                raise ConfigError(f"{where}: {value!r} for {key}: {reason}") from None
            setattr(section, field, getattr(checked, field))
            sources[key] = where
        else:
            sources[key] = "default"
    return sources


# -- check-config --------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    from dl_inference.server.logs import configure_logging

    configure_logging("console", "warning")
    # The file as `serve -c FILE` reads it, defaults included (the demo repository when it
    # names neither a model repository nor routes, and no plugin offers a model).
    config = resolve_config(build_parser().parse_args(["serve", "-c", str(args.file)]))
    management = config.management
    # The token is a secret of the serving machine: a check (in CI, on a laptop) must not
    # need it, so everything is built as `serve` builds it except the token read.
    # A model folder that cannot be prepared, which `serve` holds UNAVAILABLE, is an error
    # here: the check is for before production.
    checked = config.model_copy(
        update={
            # Deep copies: the plugins' listener settings are applied to `config` below too.
            "management": management.model_copy(update={"enabled": False}, deep=True),
            "server": config.server.model_copy(update={"strict_model_loading": True}, deep=True),
        }
    )
    server = _build_server(checked, args.file)
    config.model_repository = server.config.model_repository  # the demo, when chosen
    # The listener settings as `serve` applies them (management on, when a plugin's file says).
    sources = apply_plugin_listeners(config, server.plugins)
    gateway = None
    if config.routes:
        from dl_inference.gateway import Gateway

        # As `serve` builds them: balancer and protocol names, seed nodefiles read.
        gateway = Gateway(config.routes, server.plugins)
    for line in _describe_setup(config, server, gateway):
        print(line)
    print("listener settings (flags > the server YAML > a plugin's file > defaults):")
    for key, source in sources.items():
        section, field = _listener_field(config, key)
        value = getattr(section, field)
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"  {key}: {shown} (from {source})")
    models = server.models.names()
    failed = asyncio.run(_load_each_model(server)) if args.load else 0
    if failed:
        print(f"{args.file}: {failed} of {len(models)} model(s) failed to load")
        return EXIT_CONFIG
    print(f"{args.file}: OK ({len(models)} model(s): {', '.join(models) or 'none'})")
    return 0


def _describe_setup(config: ServerConfig, server: Any, gateway: Any) -> list[str]:
    """What ``check-config`` found: plugins, listeners, management, models and routes."""
    lines = []
    plugins = server.plugins.plugins
    for status in ("loaded", "blocked", "failed"):
        names = [p.name for p in plugins if p.status == status]
        if names:
            lines.append(f"plugins {status}: {', '.join(names)}")
    lines += [f"  {p.name}: {p.error}" for p in plugins if p.status == "failed"]
    grpc_cfg, http_cfg = config.server.grpc, config.server.http
    listeners = f"listeners: gRPC {grpc_cfg.host}:{grpc_cfg.port}"
    listeners += f", HTTP {http_cfg.host}:{http_cfg.port}" if http_cfg.enabled else ", HTTP off"
    lines.append(listeners + (", TLS" if config.server.tls is not None else ""))
    management = config.management
    if management.enabled:
        source = (
            f"the file {management.token_file}"
            if management.token_file is not None
            else f"${management.token_env}"
        )
        lines.append(
            f"management: on {management.host}, gRPC port {management.grpc_port}, HTTP port "
            f"{management.http_port}; token from {source} when serving (not read here)"
        )
    else:
        lines.append("management: off")
    if config.model_repository == DEMO_REPOSITORY:
        lines.append(
            "model repository: the built-in demo (the file names neither one nor routes, "
            "and no plugin offers a model)"
        )
    elif config.model_repository_url is not None:
        lines.append(
            f"model repository: {redact(config.model_repository_url)}, "
            f"cached in {config.model_repository}"
        )
    elif config.model_repository is not None:
        lines.append(f"model repository: {config.model_repository}")
    offered = [name for name, _ in server.plugins.repository_models(None)]
    if offered:
        lines.append(f"models offered by plugins' configuration: {', '.join(offered)}")
    for name in server.models.names():
        versions = server.models.versions(name)
        backends = ", ".join(sorted({v.backend_name for v in versions}))
        numbers = ", ".join(v.version for v in versions)
        lines.append(f"model {name}: backend {backends}, version(s) {numbers or 'none'}")
    for name, route in (gateway.routes if gateway is not None else {}).items():
        route_cfg = route.config
        if route.nodes:
            where = "nodes " + ", ".join(
                f"{address} (weight {node.weight})" for address, node in route.nodes.items()
            )
        elif route_cfg.discovery is not None and route_cfg.nodefile is None:
            found = route_cfg.discovery
            source = f"dns {found.dns}" if found.dns else f"file {found.file}"
            where = f"nodes from {source} (every {found.refresh_s:g} s)"
        else:
            where = "no nodes"
        protocols = ", ".join(route_cfg.protocols) if route_cfg.protocols else "all protocols"
        lines.append(
            f"route {name}: balancer {route_cfg.balancer}, {protocols}, {where}, "
            f"retries {route_cfg.retries}"
            + (f", timeout {route_cfg.timeout_ms} ms" if route_cfg.timeout_ms else "")
        )
    return lines


async def _load_each_model(server: Any) -> int:
    """Load every model as ``serve`` does (the kernel's loading), print one line per model,
    unload them all; returns how many models have a version that failed to load."""
    registry = server.models
    try:
        await registry.load_all(strict=False)
        failed = 0
        for name in registry.names():
            versions = registry.versions(name)
            broken = [v for v in versions if not v.ready]
            numbers = ", ".join(v.version for v in versions)
            if broken:
                failed += 1
                reasons = "; ".join(f"version {v.version}: {v.reason}" for v in broken)
                print(f"load {name}: FAILED ({reasons})", flush=True)
            else:
                print(f"load {name}: OK (version(s) {numbers})", flush=True)
    finally:
        await registry.unload_all()
    return failed


# -- convert -------------------------------------------------------------------------------

CONVERT_DESCRIPTION = """\
Convert a model file into another format (its suffix picks the format and the installed
converter plugin), load the written file back and check that its outputs match the
original's on the sample inputs and on the samples resized along every dynamic axis.

  dl-inference convert model.pth model.pt2 --trust-pickle --input x:FP32:1,1,28,28
  dl-inference convert model.pt model.onnx --input input_ids:INT64:1,16 --dynamic input_ids:0,1

Axis 0 (the batch) of every input is dynamic unless --static; --dynamic NAME:AXES sets
one input's dynamic axes exactly (a sequence axis, or 1 alone to fix the batch). Every
other axis keeps the sample's size in the converted model.
Exit status: 0 outputs match, 1 the conversion or the comparison failed, 2 usage error."""


class _ConvertHelp(argparse.Action):
    """``-h``: the help, then every installed converter with its formats and options (the
    plugins are loaded only for this, so parsing other commands stays fast)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any):
        super().__init__(option_strings, dest, nargs=0, help="show this help and exit", **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from dl_inference.kernel.plugins import PluginHost

        converters = [cls.describe() for cls in PluginHost().load().converters]
        parser.epilog = "installed converters:\n  " + (
            "\n  ".join(converters) or "none (the pytorch and onnx plugins provide converters)"
        )
        parser.print_help()
        parser.exit()


class _InOrder(argparse.Action):
    """Appends ``(flag, value)``: --input and --sample share one list, in command-line order
    (the order the model takes its arguments in)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, flag: str | None = None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), (flag, values)])


def add_convert_parser(sub: Any) -> None:
    """The ``convert`` subcommand's flags."""
    convert = sub.add_parser(
        "convert",
        help="convert a model file to another format and check outputs still match",
        description=CONVERT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    convert.add_argument("-h", "--help", action=_ConvertHelp)
    convert.add_argument("source", type=Path, help="model file to read (e.g. model.pth)")
    convert.add_argument("target", type=Path, help="file to write; its suffix picks the format")
    convert.add_argument(
        "--input",
        dest="samples",
        action=_InOrder,
        metavar="NAME:DATATYPE:SHAPE",
        help="a seeded random sample input, e.g. x:FP32:1,1,28,28 (repeat per model input, "
        "in the order the model takes them)",
    )
    convert.add_argument(
        "--sample",
        dest="samples",
        action=_InOrder,
        metavar="NAME=FILE.npy",
        help="a sample input read from a .npy file (mixes with --input, in order)",
    )
    convert.add_argument(
        "--dynamic",
        action="append",
        default=[],
        metavar="NAME:AXIS[,AXIS...]",
        help="the axes of input NAME the converted model accepts at any size, e.g. "
        "input_ids:0,1 for batch and sequence (default: 0)",
    )
    convert.add_argument(
        "--static", action="store_true", help="no dynamic batch axis (inputs not in --dynamic)"
    )
    convert.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a pickled source (torch.save(model)): unpickling runs code from the file",
    )
    convert.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a converter's own option (listed below)",
    )
    convert.add_argument("--converter", help="converter name (default: chosen by file names)")
    convert.add_argument("--tolerance", type=float, default=1e-4, help="max abs output difference")
    convert.set_defaults(func=cmd_convert)


def parse_sample_input(text: str) -> tuple[str, Any]:
    """``x:FP32:1,3,8,8`` -> ("x", seeded random array of that datatype and shape)."""
    import numpy as np

    from dl_inference.spi.datatypes import to_numpy_dtype

    try:
        name, datatype, shape_text = text.split(":")
        shape = tuple(int(dim) for dim in shape_text.split(",") if dim)
    except ValueError:
        raise ConfigError(
            f"--input {text!r}: write NAME:DATATYPE:SHAPE, e.g. x:FP32:1,3,224,224"
        ) from None
    dtype = to_numpy_dtype(datatype)
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        return name, rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return name, rng.integers(0, 2, shape).astype(dtype)
    if dtype.kind in "iu":
        return name, rng.integers(0, 10, shape).astype(dtype)
    raise ConfigError(f"--input {text!r}: sample inputs must be numeric or BOOL")


def parse_sample_file(text: str) -> tuple[str, Any]:
    """``input_ids=ids.npy`` -> ("input_ids", the array in that file)."""
    import numpy as np

    name, sep, file = text.partition("=")
    if not sep or not name or not file:
        raise ConfigError(f"--sample {text!r}: write NAME=FILE.npy, e.g. x=sample.npy")
    try:
        return name, np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--sample {text!r}: cannot read {file}: {exc}") from None


def parse_dynamic_axes(text: str) -> tuple[str, tuple[int, ...]]:
    """``input_ids:0,1`` -> ("input_ids", (0, 1))."""
    name, sep, axes = text.rpartition(":")
    try:
        numbers = tuple(int(a) for a in axes.split(","))
    except ValueError:
        numbers = ()
    if not sep or not name or not numbers:
        raise ConfigError(
            f"--dynamic {text!r}: write NAME:AXIS[,AXIS...], e.g. input_ids:0,1 (batch and "
            "sequence)"
        )
    return name, numbers


def cmd_convert(args: argparse.Namespace) -> int:
    from dl_inference.kernel.plugins import PluginHost, install_hint
    from dl_inference.server.logs import configure_logging
    from dl_inference.spi.errors import BackendError

    configure_logging("console", "warning")
    host = PluginHost().load()
    if not args.source.is_file():
        raise ConfigError(f"{args.source}: no such file")
    if args.converter:
        cls = host.converters.get(args.converter)
        if cls is None:
            raise ConfigError(
                f"no converter named {args.converter!r}; installed: "
                f"{', '.join(host.converters.names()) or 'none'}"
            )
    else:
        found = [c for c in host.converters if c.handles(args.source, args.target)]
        if not found:
            raise ConfigError(
                f"no installed converter turns {args.source.name} into {args.target.name}; "
                f"installed: {', '.join(host.converters.names()) or 'none'} (the pytorch and onnx "
                "plugins provide converters: "
                f"{install_hint('dl-inference-pytorch', 'dl-inference-onnx')})"
            )
        cls = found[0]
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option {item!r}: write KEY=VALUE")
        if key not in cls.options:
            known = ", ".join(cls.options) or "none"
            raise ConfigError(
                f"--option {key}: {cls.name} has no such option; its options: {known}"
            )
        options[key] = value
    samples: dict[str, Any] = {}
    for flag, text in args.samples or []:
        name, array = (parse_sample_input if flag == "--input" else parse_sample_file)(text)
        if name in samples:
            raise ConfigError(f"{flag} {text!r}: another sample input is named {name!r} already")
        samples[name] = array
    named: dict[str, tuple[int, ...]] = {}
    for text in args.dynamic:
        name, numbers = parse_dynamic_axes(text)
        if name in named:
            raise ConfigError(f"--dynamic {text!r}: give all of {name}'s axes in one --dynamic")
        named[name] = numbers
    axes = cls.dynamic_axes(samples, named, static=args.static)
    try:
        report = cls().convert(
            args.source,
            args.target,
            sample_inputs=samples,
            options=options,
            tolerance=args.tolerance,
            trust_pickle=args.trust_pickle,
            dynamic_axes=axes,
        )
    except BackendError as exc:
        # Usage was fine; the conversion itself failed or its outputs differ.
        print(f"dl-inference: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.source} -> {args.target} ({cls.name}): {report}")
    return 0


# -- models --------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    if args.action != "list" and not args.name:
        raise ConfigError(f"models {args.action}: name the model")
    url, token = management_client_settings(args.config, args.url, args.token_env)
    if args.action == "list":
        path = "/v2/repository/index"
    else:
        path = f"/v2/repository/models/{urllib.parse.quote(args.name, safe='')}/{args.action}"
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]
        print(f"dl-inference: error: {exc.code}: {detail}", file=sys.stderr)
        return EXIT_FAILURE
    except urllib.error.URLError as exc:
        message = f"cannot reach {url}: {exc.reason}"
        if isinstance(exc.reason, ConnectionRefusedError) and args.config and not args.url:
            message = (
                f"nothing answers at {url} ({exc.reason.strerror or exc.reason}), the "
                f"management address {args.config} gives: is a server running with this file?"
            )
        elif isinstance(exc.reason, ConnectionRefusedError):
            # Nothing listens there: most often a server whose management is off.
            message = (
                f"nothing answers at {url} ({exc.reason.strerror or exc.reason}): management "
                f"may be disabled on this server; {ENABLE_MANAGEMENT}. Give a server's "
                "config with -c, or its management HTTP address with --url"
            )
        print(f"dl-inference: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    if args.action == "list":
        for row in json.loads(body):
            reason = f"  ({row['reason']})" if row.get("reason") else ""
            print(f"{row['name']:<24} {row['version'] or '-':>7}  {row['state']}{reason}")
    else:
        print(f"{args.name}: {args.action}ed")
    return 0


_MANAGEMENT_DEFAULTS = ManagementConfig()
ENABLE_MANAGEMENT = (
    "enable it in the server's config with `management: {enabled: true}` and a token of 16+ "
    f"characters in ${_MANAGEMENT_DEFAULTS.token_env} (or management.token_env / "
    f"management.token_file); it then listens on management.host:management.http_port "
    f"(default {_MANAGEMENT_DEFAULTS.host}:{_MANAGEMENT_DEFAULTS.http_port})"
)


def management_client_settings(
    config_file: Path | None, url: str | None = None, token_env: str | None = None
) -> tuple[str, str]:
    """The management HTTP URL and token a client uses: from ``config_file``'s management
    section, read as the server reads it, else the defaults; ``url`` and ``token_env`` win."""
    import os

    from dl_inference.server.listeners import bracket
    from dl_inference.server.management.service import read_token

    management = _MANAGEMENT_DEFAULTS
    config = None
    if config_file is not None:
        config = load_server_config(config_file)
        management = config.management
        if not management.enabled:
            raise ConfigError(
                f"{config_file}: management is disabled in this config; {ENABLE_MANAGEMENT}"
            )
    if url is None:
        if management.http_port == 0:
            raise ConfigError(
                f"{config_file}: management.http_port is 0 (the server picks one as it starts):"
                " pass --url with the address of its 'Management HTTP listening on' line"
            )
        # A server listening on every address is reached on this machine's loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
            management.host, management.host
        )
        url = f"http://{bracket(host)}:{management.http_port}"
    if token_env is None and config is not None:
        return url, read_token(config)
    name = token_env or management.token_env
    token = os.environ.get(name, "").strip()
    if not token:
        raise ConfigError(f"set {name} to the server's management token")
    return url, token


# -- plugins -------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    from dl_inference.kernel.plugins import PluginHost
    from dl_inference.server.logs import configure_logging

    configure_logging("console", "error")
    host = PluginHost().load()
    rows = [info.as_dict() for info in host.plugins]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        line = f"{row['name']:<16} {row['distribution']} {row['version']}  [{row['status']}]"
        print(line)
        for kind, names in row["registers"].items():
            print(f"    {kind}: {', '.join(names)}")
        if row["hooks"]:
            print(f"    hooks: {', '.join(row['hooks'])}")
        if row["error"]:
            print(f"    error: {row['error']}")
    return 0
