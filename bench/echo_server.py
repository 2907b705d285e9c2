"""The ceiling: a bare gRPC server that echoes the request bytes back.

One generic handler, identity serializers, no protobuf parsing, bound at the V2 ModelInfer
path so the same client (``dl-inference bench`` or h2load with the same request file)
drives this server and dl-inference alike. Whatever dl-inference does per request costs
on top of this; no Python gRPC server process of that engine can answer faster.

    python bench/echo_server.py [--engine grpcio|asyncio]   # "gRPC listening on 127.0.0.1:PORT"

``--engine grpcio`` (the default) is ``grpc.aio``; ``--engine asyncio`` is dl-inference's
own HTTP/2 server (``server.grpc.engine: asyncio``), hosting the same handler.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from dl_inference.server.grpc_h2 import grpc_server


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def main(engine: str) -> None:
    server = grpc_server(engine, [])
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)},
    )
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"gRPC listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["grpcio", "asyncio"], default="grpcio")
    asyncio.run(main(parser.parse_args().engine))
