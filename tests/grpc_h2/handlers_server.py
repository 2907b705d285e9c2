"""A gRPC server with test handlers of every kind, on either engine, for tests/grpc_h2.

    python tests/grpc_h2/handlers_server.py --engine grpcio|asyncio [--tls CERT KEY]

Prints "gRPC listening on 127.0.0.1:PORT". Service ``test.T`` (raw bytes in and out):
Echo, Meta (the call's metadata, peer and deadline as JSON, with initial and trailing
metadata sent back), Abort, Slow (sleeps; ``Events`` says whether it was cancelled), Nap
(sleeps the seconds it is sent), Split (unary-stream), Join (stream-unary), Chat
(stream-stream, async generator), Write (unary-stream with context.write), Read
(stream-unary with context.read), SyncEcho, SyncMeta and SyncAbort (synchronous unary
handlers), SyncSplit, SyncJoin and SyncChat (synchronous streaming handlers: generators and
plain iteration), SyncDrip (a synchronous generator that sleeps 0.5 s before each reply).
Health and reflection too. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from dl_inference.server.grpc_h2 import grpc_server

EVENTS: list[str] = []
LIMIT = 200 * 1024 * 1024


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def meta(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.send_initial_metadata((("initial-key", "v1"), ("initial-bin", b"\x00\xff")))
    context.set_trailing_metadata((("trailing-key", "v2"), ("trailing-bin", b"\x01\x02")))
    metadata = [
        [k, v.hex() if isinstance(v, bytes) else v] for k, v in context.invocation_metadata()
    ]
    remaining = context.time_remaining()
    return json.dumps(
        {"metadata": metadata, "peer": context.peer(), "deadline": remaining is not None}
    ).encode()


async def abort(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad input: 100% wrong \u00e9\n",
        (("why-bin", b"\x00\x01"), ("why", "because")),
    )
    raise AssertionError("unreachable")


async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    tag = request.decode()
    EVENTS.append(f"{tag}:started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        EVENTS.append(f"{tag}:cancelled")
        raise
    return b"late"


async def nap(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request))
    return b"rested"


def sync_echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"sync:" + request


def sync_meta(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.send_initial_metadata((("initial-key", "sync"),))
    context.set_trailing_metadata((("trailing-key", "sync"),))
    context.add_callback(lambda: EVENTS.append("sync-meta:ended"))
    return json.dumps(
        {
            "metadata": [k for k, _ in context.invocation_metadata()],
            "deadline": context.time_remaining() is not None,
            "peer": context.peer().startswith("ipv4:127.0.0.1:"),
        }
    ).encode()


def sync_abort(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "sync says no", (("why", "sync"),))
    return b"not sent"  # grpc.aio ends the call at abort whether or not it raises


def sync_split(request: bytes, context: grpc.ServicerContext):
    context.set_trailing_metadata((("parts", str(len(request))),))
    for byte in request:
        yield bytes([byte])


def sync_join(requests, context: grpc.ServicerContext) -> bytes:
    return b"".join(requests)


def sync_chat(requests, context: grpc.ServicerContext):
    for request in requests:
        yield request.upper()


def sync_drip(request: bytes, context: grpc.ServicerContext):
    """Replies slowly, blocking its thread between them (a model computing each)."""
    for _ in range(int(request)):
        time.sleep(0.5)
        yield b"drop"


async def events(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return json.dumps(EVENTS).encode()


async def split(request: bytes, context: grpc.aio.ServicerContext):
    for byte in request:
        yield bytes([byte])


async def join(requests, context: grpc.aio.ServicerContext) -> bytes:
    return b"".join([r async for r in requests])


async def chat(requests, context: grpc.aio.ServicerContext):
    async for request in requests:
        yield request.upper()


async def write(request: bytes, context: grpc.aio.ServicerContext) -> None:
    for part in request.split(b","):
        await context.write(part)


async def read(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    parts = []
    while (message := await context.read()) is not grpc.aio.EOF:
        parts.append(message)
    return b"+".join(parts)


async def main(engine: str, tls: list[str] | None) -> None:
    options = [
        ("grpc.max_receive_message_length", LIMIT),
        ("grpc.max_send_message_length", LIMIT),
    ]
    server = grpc_server(engine, options)
    rpc = grpc
    handlers = {
        "Echo": rpc.unary_unary_rpc_method_handler(echo),
        "Meta": rpc.unary_unary_rpc_method_handler(meta),
        "Abort": rpc.unary_unary_rpc_method_handler(abort),
        "Slow": rpc.unary_unary_rpc_method_handler(slow),
        "Nap": rpc.unary_unary_rpc_method_handler(nap),
        "Events": rpc.unary_unary_rpc_method_handler(events),
        "SyncEcho": rpc.unary_unary_rpc_method_handler(sync_echo),
        "SyncMeta": rpc.unary_unary_rpc_method_handler(sync_meta),
        "SyncAbort": rpc.unary_unary_rpc_method_handler(sync_abort),
        "SyncSplit": rpc.unary_stream_rpc_method_handler(sync_split),
        "SyncJoin": rpc.stream_unary_rpc_method_handler(sync_join),
        "SyncChat": rpc.stream_stream_rpc_method_handler(sync_chat),
        "SyncDrip": rpc.unary_stream_rpc_method_handler(sync_drip),
        "Split": rpc.unary_stream_rpc_method_handler(split),
        "Join": rpc.stream_unary_rpc_method_handler(join),
        "Chat": rpc.stream_stream_rpc_method_handler(chat),
        "Write": rpc.unary_stream_rpc_method_handler(write),
        "Read": rpc.stream_unary_rpc_method_handler(read),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.T", handlers)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("test.T", health_pb2.HealthCheckResponse.SERVING)
    # As composition.py does: the asyncio servicer, whatever the engine.
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(names), server
    )
    if tls:
        if engine == "asyncio":
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[0], tls[1])
            port = server.add_secure_port("127.0.0.1:0", context)
        else:
            with open(tls[0], "rb") as cert, open(tls[1], "rb") as key:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # SIGTERM: a graceful stop, as dl-inference drains (running calls get 10 s).
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    print(f"gRPC listening on 127.0.0.1:{port}", flush=True)
    await stopping.wait()
    await server.stop(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", default="grpcio")
    parser.add_argument("--tls", nargs=2, default=None)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.engine, arguments.tls))
