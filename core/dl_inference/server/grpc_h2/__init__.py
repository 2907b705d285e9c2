"""A gRPC server on asyncio that speaks HTTP/2 itself (the ``asyncio`` gRPC engine).

It hosts the same ``grpc.GenericRpcHandler`` objects as ``grpc.aio.Server`` and gives
handlers a context with grpc.aio's methods, at a fraction of grpc.aio's cost per call.
Modules: frames (HTTP/2 framing), headers (HPACK and gRPC metadata), messages (gRPC message
framing and compression), stream (one call's stream), context (the servicer context), calls
(running handlers), connection (one HTTP/2 connection), server (ports and lifecycle).
See docs/grpc-transport.md.
"""

from dl_inference.server.grpc_h2.server import ENGINES, Server, grpc_engine, grpc_server

__all__ = ["ENGINES", "Server", "grpc_engine", "grpc_server"]
