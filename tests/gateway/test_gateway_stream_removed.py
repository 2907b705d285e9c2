"""A call whose connection dies after the node received it is not retried on another node.

The upstreams here are fakes (plain grpc servers in subprocesses, not dl-inference) that
exit the moment a call reaches them: the gateway sees ``UNAVAILABLE: Stream removed``
after the request was sent, so the node may have run it, and repeating it elsewhere
could run it twice. A node that refuses the connection, on the other hand, never got the
call: that one is retried.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2

from dl_inference.testing import ServerProcess, free_port

from .conftest import gateway, wait_until, write_config

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

# Exits without a word when a call arrives (the process dies mid-call); answers "served"
# when started with --serve.
UPSTREAM = textwrap.dedent(
    """
    import os, sys
    from concurrent import futures
    import grpc

    def infer(request, context):
        if "--serve" in sys.argv:
            return b""
        os._exit(3)

    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.unary_unary_rpc_method_handler(infer)
    service = "inference.GRPCInferenceService"
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service, {"ModelInfer": handler})]
    )
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()
    """
)


class Upstream:
    """One fake upstream process on a port of its own."""

    def __init__(self, folder: Path, serve: bool = False) -> None:
        self.port = free_port()
        script = folder / "upstream.py"
        script.write_text(UPSTREAM)
        args = [sys.executable, str(script), str(self.port)] + (["--serve"] if serve else [])
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "listening"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[list[Upstream]]:
    nodes = [Upstream(tmp_path), Upstream(tmp_path)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def infer_body() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\x00\x00\x80?")
    return request.SerializeToString()


def route_to(folder: Path, addresses: list[str]) -> ServerProcess:
    config = write_config(
        folder / "gateway.yaml",
        [
            {
                "model": "m",
                "balancer": "round_robin",
                "retries": 2,
                "nodes": [{"address": a} for a in addresses],
                "health": {"enabled": False},
            }
        ],
    )
    return gateway(config)


def test_a_call_whose_node_died_after_receiving_it_is_not_sent_to_another(
    tmp_path: Path, upstreams: list[Upstream]
) -> None:
    with (
        route_to(tmp_path, [u.address for u in upstreams]) as server,
        grpc.insecure_channel(server.grpc_address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        channel.unary_unary(MODEL_INFER)(infer_body(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details()
    assert "model 'm'" in details and "not retried" in details, details
    # The first node died holding the call; the second never got it (it would have died
    # too). Give a retry every chance to show up before looking.
    assert wait_until(lambda: any(u.process.poll() is not None for u in upstreams), 5)
    assert not wait_until(lambda: all(u.process.poll() is not None for u in upstreams), 1)


def test_a_call_no_node_received_goes_to_another(tmp_path: Path) -> None:
    refused = f"127.0.0.1:{free_port()}"  # nothing listens there
    serving = Upstream(tmp_path, serve=True)
    try:
        with (
            route_to(tmp_path, [refused, serving.address]) as server,
            grpc.insecure_channel(server.grpc_address) as channel,
        ):
            for _ in range(4):  # round robin: the refused node comes first at least once
                assert channel.unary_unary(MODEL_INFER)(infer_body(), timeout=10) == b""
    finally:
        serving.stop()
