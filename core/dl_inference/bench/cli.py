"""The ``bench`` sub-command's arguments (kept free of heavy imports: ``dl-inference``
builds this parser on every start)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  dl-inference bench --url grpc://127.0.0.1:8500 --model mlp --concurrency 1,8,32
  dl-inference bench --url http://127.0.0.1:8501 --model mlp --rate 500 --duration 20
  dl-inference bench --url grpc://127.0.0.1:8500 --protocol tfserving --model mlp \\
      --input x:FP32:1,256 --processes 2 --json out.json

--protocol names a registered protocol: v2 (built in), tfserving (pip install
./plugins/tfserving), seldon (pip install ./plugins/tfserving ./plugins/seldon; both from
the root of a source checkout), or another plugin's; the protocol builds the request
(`dl-inference plugins` lists what is installed).

JSON output (--json): {tool, version, started_at, url, protocol, model, model_version,
inputs: [{name, datatype, shape}], batch_size, duration_s, warmup_s, processes,
results: [{mode, concurrency, rate, processes, duration_s, requests, errors, req_per_s,
samples_per_s, latency_ms: {min, p50, p90, p99, max, mean}, error_messages}]}.
Exit status: 0 done, 1 some load point had no successful request, 2 bad arguments or
the endpoint / model could not be used (the message says why).
"""


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the ``dl-inference`` sub-command parser."""
    bench = sub.add_parser(
        "bench",
        help="load-test an endpoint over any installed protocol: req/s and latency percentiles",
        description=(
            "Closed loop at each concurrency (or open loop at a rate) against a running "
            "server; prints req/s, p50/p90/p99 and errors per load point."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--url", required=True, help="grpc://HOST:PORT or http://HOST:PORT")
    bench.add_argument(
        "--protocol",
        default="v2",
        help="wire protocol: a registered protocol's name (v2, tfserving, seldon, ...)",
    )
    bench.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a protocol's request option, e.g. signature_name=serving_default for tfserving",
    )
    bench.add_argument("--model", required=True, help="model name")
    bench.add_argument("--model-version", default="", help="model version (default: latest)")
    bench.add_argument(
        "--concurrency",
        type=_int_list,
        help="closed loop: requests in flight, comma-separated levels (default 1,8,32)",
    )
    bench.add_argument(
        "--rate", type=_float_list, help="open loop: requests per second (comma-separated)"
    )
    bench.add_argument("--duration", type=float, default=10.0, help="seconds per load point")
    bench.add_argument(
        "--warmup", type=float, default=1.0, help="unrecorded seconds before each point"
    )
    bench.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes sharing the load (use 2+ when one cannot saturate the server)",
    )
    bench.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:DATATYPE:SHAPE",
        help="an input to synthesize, e.g. x:FP32:1,256 (repeatable; default: from metadata)",
    )
    bench.add_argument(
        "--channels",
        type=int,
        default=1,
        help="gRPC connections per client process (spread load over `serve --workers N`)",
    )
    bench.add_argument("--input-file", type=Path, help=".npz file: one array per input name")
    bench.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="rows per request for a variable first dimension in the metadata (default 1)",
    )
    bench.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    bench.add_argument("--json", type=Path, help="write the results as JSON to this file")
    bench.add_argument(
        "--plot", type=Path, help="write a latency-vs-throughput PNG (needs matplotlib)"
    )
    bench.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    bench.set_defaults(func=_run)
    return bench


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write whole numbers, e.g. 1,8,32") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more numbers >= 1")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write numbers, e.g. 100,500") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: rates are requests per second, > 0")
    return values


def _run(args: argparse.Namespace) -> int:
    from dl_inference.bench.command import cmd_bench

    return cmd_bench(args)
