"""``dl-inference bench``: a load generator for V2, TF Serving and Seldon endpoints.

Closed loop at given concurrencies or open loop at a given rate, inputs synthesized from
the model's V2 metadata or given, one or several client processes, a table of req/s and
p50/p90/p99 latency, optional JSON and PNG. See ``dl-inference bench --help``.
"""

from dl_inference.bench.cli import add_bench_parser

__all__ = ["add_bench_parser"]
