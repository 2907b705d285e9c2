"""grpcio's own clients against both gRPC engines: the same answers from each.

Every test runs against ``grpcio`` (grpc.aio's server) and ``asyncio`` (dl-inference's own
HTTP/2 server) hosting the same handlers (handlers_server.py).
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from .conftest import HandlersServer

BIG = 100 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", 200 * 1024 * 1024),
    ("grpc.max_send_message_length", 200 * 1024 * 1024),
]


@pytest.fixture()
def channel(handlers: HandlersServer):
    with grpc.insecure_channel(handlers.address, options=OPTIONS) as channel:
        yield channel


def call(channel: grpc.Channel, method: str):
    return channel.unary_unary(f"/test.T/{method}")


def test_unary_echo_and_metadata(channel: grpc.Channel) -> None:
    assert call(channel, "Echo")(b"hello") == b"hello"
    assert call(channel, "Echo")(b"") == b""
    assert call(channel, "SyncEcho")(b"x") == b"sync:x"
    reply, rpc = call(channel, "Meta").with_call(
        b"", metadata=(("x-text", "a b"), ("x-data-bin", b"\x00\xfe\xff")), timeout=30
    )
    seen = json.loads(reply)
    # Exactly what grpc.aio hands a handler: user-agent, then the client's own, in order.
    assert [key for key, _ in seen["metadata"]] == ["user-agent", "x-text", "x-data-bin"]
    metadata = dict(seen["metadata"])
    assert metadata["x-text"] == "a b"
    assert metadata["x-data-bin"] == "00feff"
    assert seen["peer"].startswith("ipv4:127.0.0.1:")
    assert seen["deadline"] is True
    assert ("initial-key", "v1") in rpc.initial_metadata()
    assert ("initial-bin", b"\x00\xff") in rpc.initial_metadata()
    assert ("trailing-key", "v2") in rpc.trailing_metadata()
    assert ("trailing-bin", b"\x01\x02") in rpc.trailing_metadata()


def test_abort_status_message_and_trailers(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, "Abort")(b"")
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "bad input: 100% wrong \u00e9\n"
    assert ("why-bin", b"\x00\x01") in error.trailing_metadata()
    assert ("why", "because") in error.trailing_metadata()


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/test.T/Nope")(b"")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_streams_of_every_kind(channel: grpc.Channel) -> None:
    assert list(channel.unary_stream("/test.T/Split")(b"abc")) == [b"a", b"b", b"c"]
    assert channel.stream_unary("/test.T/Join")(iter([b"a", b"b", b"c"])) == b"abc"
    assert list(channel.stream_stream("/test.T/Chat")(iter([b"x", b"y"]))) == [b"X", b"Y"]
    assert list(channel.unary_stream("/test.T/Write")(b"1,2,3")) == [b"1", b"2", b"3"]
    assert channel.stream_unary("/test.T/Read")(iter([b"1", b"2"])) == b"1+2"
    assert channel.stream_unary("/test.T/Read")(iter([])) == b""


def test_synchronous_handlers_of_every_kind(channel: grpc.Channel) -> None:
    parts = channel.unary_stream("/test.T/SyncSplit")(b"abc")
    assert list(parts) == [b"a", b"b", b"c"]
    assert ("parts", "3") in parts.trailing_metadata()
    assert channel.stream_unary("/test.T/SyncJoin")(iter([b"a", b"b", b"c"])) == b"abc"
    assert channel.stream_unary("/test.T/SyncJoin")(iter([])) == b""
    chat = channel.stream_stream("/test.T/SyncChat")
    assert list(chat(iter([b"x", b"y"]))) == [b"X", b"Y"]


def test_a_synchronous_handler_context(channel: grpc.Channel) -> None:
    reply, rpc = call(channel, "SyncMeta").with_call(b"", metadata=(("x-text", "a"),), timeout=30)
    assert json.loads(reply) == {
        "metadata": ["user-agent", "x-text"],
        "deadline": True,
        "peer": True,
    }
    assert "sync-meta:ended" in json.loads(call(channel, "Events")(b""))
    assert ("initial-key", "sync") in rpc.initial_metadata()
    assert ("trailing-key", "sync") in rpc.trailing_metadata()
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, "SyncAbort")(b"")
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "sync says no"
    assert ("why", "sync") in caught.value.trailing_metadata()


def test_a_blocking_synchronous_generator_holds_a_thread_not_the_server(
    channel: grpc.Channel,
) -> None:
    started = time.monotonic()
    drip = channel.unary_stream("/test.T/SyncDrip")(b"3")  # 3 replies, 0.5 s before each
    time.sleep(0.2)  # the generator is in its first sleep
    took = []
    for _ in range(5):
        before = time.monotonic()
        assert call(channel, "Echo")(b"meanwhile", timeout=10) == b"meanwhile"
        took.append(time.monotonic() - before)
    assert list(drip) == [b"drop"] * 3
    assert time.monotonic() - started >= 1.4
    # Run on the event loop, the generator held every other call until it was done.
    assert max(took) < 0.25, took


def test_a_100_mb_message_both_ways(channel: grpc.Channel) -> None:
    body = bytes(range(256)) * (BIG // 256)
    assert call(channel, "Echo")(body, timeout=120) == body


def test_gzip_and_deflate_requests(channel: grpc.Channel) -> None:
    body = b"compress me " * 10_000
    for algorithm in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        assert call(channel, "Echo")(body, compression=algorithm) == body


def test_message_over_the_limit_is_resource_exhausted(handlers: HandlersServer) -> None:
    # The handlers server takes 200 MB; a client allowed more sends more.
    options = [("grpc.max_send_message_length", 300 * 1024 * 1024)]
    with grpc.insecure_channel(handlers.address, options=options) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, "Echo")(b"x" * (201 * 1024 * 1024), timeout=120)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert call(channel, "Echo")(b"after") == b"after"  # the connection still serves


def test_deadline_cancels_the_handler(channel: grpc.Channel) -> None:
    tag = f"deadline-{time.monotonic()}"
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, "Slow")(tag.encode(), timeout=0.5)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for_event(channel, f"{tag}:cancelled")


def test_client_cancellation_cancels_the_handler(channel: grpc.Channel) -> None:
    tag = f"cancel-{time.monotonic()}"
    future = call(channel, "Slow").future(tag.encode())
    wait_for_event(channel, f"{tag}:started")
    future.cancel()
    wait_for_event(channel, f"{tag}:cancelled")


def wait_for_event(channel: grpc.Channel, event: str) -> None:
    deadline = time.monotonic() + 10
    while event not in json.loads(call(channel, "Events")(b"")):
        assert time.monotonic() < deadline, f"the handler never recorded {event}"
        time.sleep(0.05)


def test_many_concurrent_streams_on_one_connection(handlers: HandlersServer) -> None:
    async def run() -> list[bytes]:
        async with grpc.aio.insecure_channel(handlers.address) as channel:
            echo = channel.unary_unary("/test.T/Echo")
            chat = channel.stream_stream("/test.T/Chat")

            async def one_chat(i: int) -> bytes:
                replies = [r async for r in chat(iter([b"a%d" % i, b"b%d" % i]))]
                return b"".join(replies)

            unary = [echo(b"%d" % i) for i in range(500)]
            streams = [one_chat(i) for i in range(100)]
            return await asyncio.gather(*unary, *streams)

    replies = asyncio.run(run())
    assert replies[:500] == [b"%d" % i for i in range(500)]
    assert replies[500:] == [b"A%dB%d" % (i, i) for i in range(100)]


def test_health_and_reflection(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service="test.T"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="missing"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="test.T"))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(reflection.ServerReflectionInfo(iter([request])))
    names = {s.name for s in answer.list_services_response.service}
    assert "grpc.health.v1.Health" in names


def test_graceful_stop_lets_running_calls_finish() -> None:
    for engine in ("grpcio", "asyncio"):
        server = HandlersServer(engine)
        try:
            with grpc.insecure_channel(server.address) as channel:
                future = call(channel, "Nap").future(b"1.5", timeout=30)
                time.sleep(0.5)
                server.process.terminate()  # SIGTERM: stop(grace=10)
                assert future.result() == b"rested", engine
                assert server.process.wait(15) == 0
        finally:
            server.stop()
