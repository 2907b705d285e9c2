"""``dl-inference bench``: a load generator for any registered protocol's endpoints.

The protocol, looked up by name, builds the request
(:meth:`dl_inference.Protocol.bench_request`). Closed loop at given concurrencies or open
loop at a given rate, inputs synthesized from the model's V2 metadata or given, one or
several client processes, a table of req/s and p50/p90/p99 latency, optional JSON and PNG.
See ``dl-inference bench --help``.
"""

from dl_inference.bench.cli import add_bench_parser

__all__ = ["add_bench_parser"]
