"""CPU per request of dl-inference's own V2 ModelInfer handler, without gRPC.

Loads a model repository into a real Runtime, then drives the V2 servicer's ``model_infer``
with a pre-serialized one-sample request from 32 concurrent coroutines and a stand-in for
the gRPC call context. What it reports is the handler's own cost per request (decoding,
validation, runtime, the hand-off to the model's thread, metrics, encoding), the part of
the served cost that dl-inference controls; ``bench/per_request_overhead.sh`` measures the
whole served cost next to a bare grpc.aio echo.

    python bench/handler_cost.py MODEL_REPOSITORY MODEL [--input input:FP32:1,256]
        [--requests 300] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from pathlib import Path

import numpy as np

from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.builtin.v2.grpc_service import V2GrpcServicer
from dl_inference.kernel.config.schema import ServerConfig
from dl_inference.kernel.plugins import PluginHost
from dl_inference.server.composition import Server
from dl_inference.server.logs import configure_logging

CONCURRENCY = 32


class CallContext:
    """What the handler asks of grpc.aio's ServicerContext, answered for free."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "handler-cost"),)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def time_remaining(self) -> None:
        return None

    def set_trailing_metadata(self, metadata: object) -> None:
        pass


def request_bytes(model: str, spec: str) -> bytes:
    name, datatype, shape = spec.split(":")
    dims = [int(d) for d in shape.split(",")]
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=dims)
    dtype = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
    data = np.random.default_rng(0).random(dims).astype(dtype[datatype])
    request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


async def measure(args: argparse.Namespace) -> None:
    configure_logging("console", "warning")
    config = ServerConfig.model_validate({"model_repository": str(args.repository)})
    server = Server(config, PluginHost().load())
    server.prepare()
    await server.models.load_all(strict=True)
    servicer = V2GrpcServicer(server.runtime)
    data, context = request_bytes(args.model, args.input), CallContext()

    async def client(count: int) -> None:
        for _ in range(count):
            await servicer.model_infer(data, context)

    await asyncio.gather(*[client(50) for _ in range(CONCURRENCY)])  # warm-up
    profile = cProfile.Profile() if args.profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profile:
        profile.enable()
    await asyncio.gather(*[client(args.requests) for _ in range(CONCURRENCY)])
    if profile:
        profile.disable()
    total = CONCURRENCY * args.requests
    cpu_us = (time.process_time() - cpu) / total * 1e6
    wall_us = (time.perf_counter() - wall) / total * 1e6
    print(f"{total} requests: {cpu_us:.1f} us CPU, {wall_us:.1f} us wall per request")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    await server.models.unload_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("model")
    parser.add_argument("--input", default="input:FP32:1,256", help="NAME:DATATYPE:SHAPE")
    parser.add_argument("--requests", type=int, default=300, help="per coroutine (32 of them)")
    parser.add_argument("--profile", action="store_true", help="cProfile, top 25 by own time")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
