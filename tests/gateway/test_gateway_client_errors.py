"""A client's bad calls never eject a healthy node; a dead node still is ejected.

Only what a client cannot provoke counts against a node (Envoy's gateway failures: no
connection, resets, UNAVAILABLE, a deadline passing at the node). A worker's answer to a
bad call, INVALID_ARGUMENT as much as INTERNAL from a model that chokes on a poisoned
input, shows the node alive.
"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from dl_inference.testing import ServerProcess, write_python_model

from .conftest import gateway, named_workers, wait_until, write_config

# Doubles x and names its worker; a value of 1000 or more is an out-of-range token id
# (the model raises: INTERNAL / HTTP 500); -1 makes it slow.
CHOKING = """
    import os
    import time
    import numpy as np
    from dl_inference import PythonModel

    class Choking(PythonModel):
        def predict(self, inputs, **parameters):
            x = inputs["x"]
            if (x >= 1000).any():
                raise ValueError(f"token id {int(x.max())} is out of range")
            if (x == -1).any():
                time.sleep(0.5)
            worker = os.environ["GATEWAY_TEST_WORKER"].encode()
            return {"y": x * 2, "node": np.array([worker], dtype=object)}
"""
CHOKING_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}, {name: node, datatype: BYTES, shape: [1]}]
"""
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    repo = tmp_path_factory.mktemp("choking_workers")
    write_python_model(repo, "choking", CHOKING, CHOKING_CONFIG)
    with named_workers(repo, ("w1", "w2")) as procs:
        yield procs


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, workers: list[ServerProcess]
) -> Iterator[ServerProcess]:
    nodes = [
        {"address": w.grpc_address, "http_address": w.http_address, "weight": 10} for w in workers
    ]
    route = {
        "model": "choking",
        "balancer": "dynamic_weighted_round_robin",
        "retries": 1,
        "nodes": nodes,
        # No probes: only passive outcomes can take a node out, and one failure does.
        "health": {"enabled": False},
        "ejection": {"consecutive_failures": 1, "base_s": 60, "slow_start_s": 0},
    }
    config = write_config(tmp_path_factory.mktemp("gw") / "gateway.yaml", [route])
    with gateway(config) as srv:
        yield srv


def infer_request(x: list[float], *, name: str = "x", raw: bytes | None = None) -> bytes:
    """A serialized V2 ModelInferRequest for model ``choking`` (``raw``: its tensor bytes)."""
    request = service_pb2.ModelInferRequest(model_name="choking")
    request.inputs.add(name=name, datatype="FP32", shape=[len(x)])
    request.raw_input_contents.append(
        raw if raw is not None else np.asarray(x, np.float32).tobytes()
    )
    return request.SerializeToString()


def call(server: ServerProcess, body: bytes, timeout: float = 10) -> bytes:
    with grpc.insecure_channel(server.grpc_address) as channel:
        return channel.unary_unary(MODEL_INFER)(body, timeout=timeout)


def call_code(server: ServerProcess, body: bytes, timeout: float = 10) -> grpc.StatusCode:
    try:
        call(server, body, timeout)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def served_by(server: ServerProcess, x: list[float]) -> str:
    reply = service_pb2.ModelInferResponse.FromString(call(server, infer_request(x)))
    names = [o.name for o in reply.outputs]
    y = np.frombuffer(reply.raw_output_contents[names.index("y")], np.float32)
    np.testing.assert_array_equal(y, np.float32(x) * 2)
    node = reply.raw_output_contents[names.index("node")]
    return node[4:].decode()  # BYTES: a 4-byte length, then the name


def rest(server: ServerProcess, body: bytes) -> int:
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/choking/infer", data=body, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def routes(server: ServerProcess) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{server.http_url}/api/status", timeout=10) as reply:
        return {row["address"]: row for row in json.loads(reply.read())["routes"]}


def test_a_clients_bad_calls_keep_the_nodes_in_and_a_killed_node_is_ejected(
    server: ServerProcess, workers: list[ServerProcess]
) -> None:
    codes: Counter[str] = Counter()
    for i in range(8):  # the model raises: INTERNAL from the worker
        codes[call_code(server, infer_request([1.0, 1000.0 + i])).name] += 1
    for _ in range(6):  # tensor bytes that do not match the shape
        codes[call_code(server, infer_request([1.0, 2.0], raw=b"\x00" * 5)).name] += 1
    for _ in range(6):  # an input the model does not have
        codes[call_code(server, infer_request([1.0], name="nope")).name] += 1
    for _ in range(6):  # the routing key, then an input whose bytes do not parse
        codes[call_code(server, b"\x0a\x07choking" + b"\x2a\x03\x8a@\xe0").name] += 1
    for _ in range(2):  # the client's own deadline passes while the node works
        codes[call_code(server, infer_request([-1.0]), timeout=0.1).name] += 1
    for body in [b"{not json", b'{"inputs": 3}', b"\xff\xfe"] * 2:
        codes[f"HTTP {rest(server, body)}"] += 1
    poisoned = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [5000]}]}
    for _ in range(4):
        codes[f"HTTP {rest(server, json.dumps(poisoned).encode())}"] += 1
    assert sum(codes.values()) == 38
    assert codes["INTERNAL"] == 8 and codes["DEADLINE_EXCEEDED"] == 2, codes
    assert codes["INVALID_ARGUMENT"] == 18 and codes["HTTP 500"] == 4, codes
    assert codes["HTTP 400"] == 6, codes

    assert "node ejected" not in server.output()
    nodes = routes(server).values()
    # Each bad call reached one node once (none was retried on the other), bar the two
    # whose client gave up first (the gateway may see their cancellation first).
    assert 36 <= sum(row["requests"] for row in nodes) <= 38
    for row in nodes:
        assert row["state"] == "healthy" and row["times_ejected"] == 0, row
        assert row["failures"] == 0 and row["effective_weight"] == 10, row  # never halved
    served = Counter(served_by(server, [float(i), 0.5]) for i in range(10))
    assert served == {"w1": 5, "w2": 5}

    # kill -9: the dead node is ejected, and its calls go to the other one meanwhile.
    dead = workers[1]
    assert dead.process is not None
    dead.process.send_signal(signal.SIGKILL)
    dead.process.wait()
    assert {served_by(server, [float(i)]) for i in range(10)} == {"w1"}
    assert wait_until(lambda: routes(server)[dead.grpc_address]["state"] == "ejected")
    server.wait_for_output(f"node={dead.grpc_address}")
    assert routes(server)[workers[0].grpc_address]["state"] == "healthy"
