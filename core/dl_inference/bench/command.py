"""``dl-inference bench``: load-test an endpoint over any registered protocol.

The protocol is looked up by name among the registered ones (the kernel's ``v2``, and those
of installed plugins such as ``dl-inference-tfserving`` and ``dl-inference-seldon``) and
builds the request itself (:meth:`dl_inference.Protocol.bench_request`): the kernel keeps
no copy of any protocol's format.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from typing import Any

import numpy as np

from dl_inference.bench import inputs as bench_inputs
from dl_inference.bench import load, report
from dl_inference.bench.clients import (
    RequestFailed,
    Target,
    fetch_v2_metadata,
    make_client,
    parse_url,
)
from dl_inference.kernel.plugins import PluginHost
from dl_inference.spi.errors import ConfigError
from dl_inference.spi.protocol import BenchRequest, BenchTransport, Protocol


def cmd_bench(args: argparse.Namespace) -> int:
    """Check the endpoint with one request, run every load point, report."""
    if args.channels < 1:
        raise ConfigError("--channels: give 1 or more")
    if args.duration <= 0 or args.warmup < 0 or args.timeout <= 0:
        raise ConfigError("--duration and --timeout must be > 0, --warmup >= 0")
    if args.processes < 1:
        raise ConfigError("--processes: give 1 or more client processes")
    if args.batch_size < 1:
        raise ConfigError("--batch-size: give 1 or more rows")
    if args.input and args.input_file:
        raise ConfigError("give --input or --input-file, not both")
    target = parse_url(args.url)
    protocol = find_protocol(args.protocol)
    options = parse_options(args.option)
    if args.plot and not report.matplotlib_available():
        print(
            "dl-inference bench: note: --plot needs matplotlib, which is not installed "
            "(pip install matplotlib); the benchmark runs without the plot",
            file=sys.stderr,
        )
    tensors = asyncio.run(_resolve_inputs(args, target))
    request = build_request(protocol, target, args.model, args.model_version, tensors, options)
    asyncio.run(_preflight(args, target, request))

    points = [load.LoadPoint("closed", concurrency=c) for c in (args.concurrency or [])]
    points += [load.LoadPoint("open", rate=r) for r in (args.rate or [])]
    if not points:
        points = [load.LoadPoint("closed", concurrency=c) for c in (1, 8, 32)]
    plan = load.Plan(
        target=target,
        request=request,
        duration=args.duration,
        warmup=args.warmup,
        timeout=args.timeout,
        processes=args.processes,
        channels=args.channels,
    )
    batch = bench_inputs.batch_of(tensors)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    rows = load.run(plan, points, batch, progress=None if args.quiet else sys.stderr)
    document = build_document(args, tensors, batch, rows, started)
    print(report.table(rows))
    if args.json:
        report.write_json(args.json, document)
    if args.plot and report.matplotlib_available():
        report.write_plot(args.plot, document)
    return 1 if any(row["requests"] == 0 for row in rows) else 0


def build_document(
    args: argparse.Namespace,
    tensors: dict[str, np.ndarray],
    batch: int,
    rows: list[dict[str, Any]],
    started: str,
) -> dict[str, Any]:
    """The JSON document (keys listed in the command's --help)."""
    from dl_inference import __version__

    return {
        "tool": "dl-inference bench",
        "version": __version__,
        "started_at": started,
        "url": args.url,
        "protocol": args.protocol,
        "model": args.model,
        "model_version": args.model_version,
        "inputs": bench_inputs.describe(tensors),
        "batch_size": batch,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "processes": args.processes,
        "results": rows,
    }


def find_protocol(name: str, host: PluginHost | None = None) -> Protocol:
    """The registered protocol ``name``; the error names the plugin that adds it."""
    host = host if host is not None else PluginHost().load()
    cls = host.protocols.get(name)
    if cls is None:
        message = host.missing_message("protocol", name, sorted(host.protocols.names()))
        raise ConfigError(f"--protocol {name}: {message}")
    return cls()


def parse_options(items: list[str]) -> dict[str, str]:
    """``--option KEY=VALUE`` items as a mapping for :meth:`Protocol.bench_request`."""
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: write KEY=VALUE, e.g. signature_name=serve")
        options[key] = value
    return options


def build_request(
    protocol: Protocol,
    target: Target,
    model: str,
    version: str,
    tensors: dict[str, np.ndarray],
    options: dict[str, str],
) -> BenchRequest:
    """The protocol's request for this model and these inputs, over the URL's transport."""
    transport: BenchTransport = "grpc" if target.is_grpc else "http"
    request = protocol.bench_request(model, tensors, transport, version=version, **options)
    if request is None:
        other = "http://" if target.is_grpc else "grpc://"
        raise ConfigError(
            f"--protocol {protocol.name}: the protocol has no benchmark request over "
            f"{transport}; try an {other} URL or another --protocol"
        )
    if request.transport != transport:
        raise ConfigError(
            f"--protocol {protocol.name}: the protocol built a {request.transport} request "
            f"for a {transport} URL (a bug in the plugin that provides it)"
        )
    return request


async def _resolve_inputs(args: argparse.Namespace, target: Target) -> dict[str, np.ndarray]:
    if args.input_file:
        return bench_inputs.load_input_file(args.input_file)
    if args.input:
        specs = [bench_inputs.parse_input_spec(text) for text in args.input]
        return bench_inputs.from_specs(specs, args.batch_size)
    try:
        specs = await fetch_v2_metadata(target, args.model, args.model_version, args.timeout)
    except RequestFailed as exc:
        if args.protocol != "v2" and exc.kind in ("unsupported", "not_found", "error"):
            raise ConfigError(
                f"cannot read the inputs of model {args.model!r}: model metadata is read over "
                f"V2, which {args.url} does not answer for it ({exc}); give the inputs with "
                "--input NAME:DATATYPE:SHAPE or --input-file FILE.npz"
            ) from None
        raise _endpoint_error(args, exc, "reading the model metadata") from None
    if not specs:
        raise ConfigError(
            f"model {args.model!r} declares no inputs in its metadata; give them with "
            "--input NAME:DATATYPE:SHAPE or --input-file FILE.npz"
        )
    return bench_inputs.from_specs(specs, args.batch_size)


async def _preflight(args: argparse.Namespace, target: Target, request: BenchRequest) -> None:
    """One request before the run, so a wrong URL, model or input fails fast and clearly."""
    client = make_client(target, request, timeout=args.timeout, connections=1)
    await client.open()
    try:
        await client.infer()
    except RequestFailed as exc:
        raise _endpoint_error(args, exc, "the first request") from None
    finally:
        await client.close()


def _endpoint_error(args: argparse.Namespace, exc: RequestFailed, when: str) -> ConfigError:
    if exc.kind == "unreachable":
        return ConfigError(
            f"cannot reach {args.url} ({exc}); is the server running, and are the host, port "
            "and scheme (grpc:// for gRPC, http:// for REST) right?"
        )
    if exc.kind == "not_found":
        version = f" version {args.model_version!r}" if args.model_version else ""
        return ConfigError(
            f"model {args.model!r}{version} is not served at {args.url} ({exc}); check --model "
            "and --model-version"
        )
    if exc.kind == "unsupported":
        return ConfigError(
            f"{args.url} does not answer the {args.protocol} protocol ({exc}); check --protocol "
            "and the port"
        )
    return ConfigError(
        f"{when} for model {args.model!r} at {args.url} failed ({exc}); fix the inputs "
        "(--input / --input-file / --batch-size) or the model before benchmarking"
    )
