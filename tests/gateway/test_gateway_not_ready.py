"""A version that failed to load is the application's answer, not a broken node.

A client that names a version that is loading or failed to load gets UNAVAILABLE / 503
(``ModelNotReady``) from a worker. The answer carries the worker's ``x-request-id``: the
gateway counts it as answered (no node is ejected or has its weight halved for it), still
tries another node while retries remain, and when none is left relays the last node's own
status and message rather than "no upstream node answered".
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from dl_inference.testing import ServerProcess, write_python_model

from .conftest import gateway, named_workers, write_config

# Version 1 and (where it loads) version 2: y = x * version, and the worker's name.
GOOD = """
    import os
    import numpy as np
    from dl_inference import PythonModel

    class Versioned(PythonModel):
        def predict(self, inputs, **parameters):
            worker = os.environ["GATEWAY_TEST_WORKER"].encode()
            return {{"y": inputs["x"] * {version}, "node": np.array([worker], dtype=object)}}
"""
BROKEN = """
    from dl_inference import PythonModel

    class Broken(PythonModel):
        def load(self):
            raise RuntimeError("the weights of version 2 are missing")

        def predict(self, inputs, **parameters):
            raise AssertionError("never loaded")
"""
CONFIG = """
    version_policy: {all: true}
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}, {name: node, datatype: BYTES, shape: [1]}]
"""
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def repository(root: Path, flaky_v2_loads: bool) -> Path:
    """``flaky`` (version 2 loads only where ``flaky_v2_loads``) and ``dead`` (version 2
    never loads); version 1 of both serves."""
    for model, v2_loads in (("flaky", flaky_v2_loads), ("dead", False)):
        write_python_model(root, model, GOOD.format(version=1), CONFIG, version=1)
        code = GOOD.format(version=2) if v2_loads else BROKEN
        write_python_model(root, model, code, version=2)
    return root


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """``broken`` (version 2 of both models failed to load) and ``good`` (flaky's loads)."""
    broken = repository(tmp_path_factory.mktemp("broken_v2"), flaky_v2_loads=False)
    good = repository(tmp_path_factory.mktemp("good_v2"), flaky_v2_loads=True)
    with named_workers(broken, ("broken",)) as first, named_workers(good, ("good",)) as second:
        yield [*first, *second]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, workers: list[ServerProcess]
) -> Iterator[ServerProcess]:
    nodes = [
        {"address": w.grpc_address, "http_address": w.http_address, "weight": 10} for w in workers
    ]

    def route(model: str) -> dict[str, Any]:
        return {
            "model": model,
            "balancer": "round_robin",
            "retries": 1,
            "nodes": nodes,
            # No probes, and one node failure ejects: only how calls are counted matters.
            "health": {"enabled": False},
            "ejection": {"consecutive_failures": 1, "base_s": 60, "slow_start_s": 0},
        }

    config = write_config(
        tmp_path_factory.mktemp("gw") / "gateway.yaml", [route("flaky"), route("dead")]
    )
    with gateway(config) as srv:
        yield srv


def infer_request(model: str, version: str, x: list[float]) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=[len(x)])
    request.raw_input_contents.append(np.asarray(x, np.float32).tobytes())
    return request.SerializeToString()


def infer(server: ServerProcess, model: str, version: str, x: list[float]) -> tuple[str, Any]:
    """(worker that answered, y) of a gRPC ModelInfer through the gateway."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        data = channel.unary_unary(MODEL_INFER)(infer_request(model, version, x), timeout=10)
    reply = service_pb2.ModelInferResponse.FromString(data)
    names = [o.name for o in reply.outputs]
    y = np.frombuffer(reply.raw_output_contents[names.index("y")], np.float32)
    return reply.raw_output_contents[names.index("node")][4:].decode(), y


def infer_error(server: ServerProcess, model: str, version: str) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary(MODEL_INFER)
        with pytest.raises(grpc.RpcError) as info:
            call(infer_request(model, version, [1.0]), timeout=10)
    return info.value


def rest_infer(server: ServerProcess, model: str, version: str) -> tuple[int, Any]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.5]}]}
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/{model}/versions/{version}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def nodes(server: ServerProcess, model: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{server.http_url}/api/status", timeout=10) as reply:
        rows = json.loads(reply.read())["routes"]
    return {row["address"]: row for row in rows if row["model"] == model}


def assert_never_failed(server: ServerProcess, model: str) -> None:
    for row in nodes(server, model).values():
        assert row["state"] == "healthy" and row["times_ejected"] == 0, row
        assert row["failures"] == 0 and row["effective_weight"] == 10, row


def test_a_version_that_failed_on_one_node_is_served_by_another(
    server: ServerProcess, workers: list[ServerProcess]
) -> None:
    served = Counter()
    for i in range(6):
        worker, y = infer(server, "flaky", "2", [float(i), 0.5])
        np.testing.assert_array_equal(y, np.float32([i, 0.5]) * 2)
        served[worker] += 1
    assert served == {"good": 6}  # the broken node answered each time it was picked first
    rows = nodes(server, "flaky")
    assert rows[workers[0].grpc_address]["requests"] >= 3  # it was asked, and retried past
    for _ in range(4):
        status, body = rest_infer(server, "flaky", "2")
        assert status == 200 and body["outputs"][0]["data"] == [3.0], body
    assert_never_failed(server, "flaky")
    # Version 1 is still balanced over both nodes.
    assert {infer(server, "flaky", "1", [1.0])[0] for _ in range(4)} == {"broken", "good"}


def test_when_every_node_answers_not_ready_the_client_gets_the_nodes_own_answer(
    server: ServerProcess,
) -> None:
    before = sum(row["requests"] for row in nodes(server, "dead").values())
    error = infer_error(server, "dead", "2")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    details = error.details()
    assert "version 2" in details and "weights of version 2 are missing" in details, details
    assert "no upstream node answered" not in details
    assert any(key == "x-request-id" for key, _ in error.trailing_metadata() or ())
    # Tried on both nodes (one retry), then the last node's own answer came back.
    assert sum(row["requests"] for row in nodes(server, "dead").values()) == before + 2

    status, body = rest_infer(server, "dead", "2")
    assert status == 503, body
    assert "weights of version 2 are missing" in body["error"], body
    assert "no upstream node answered" not in body["error"]
    assert_never_failed(server, "dead")
    assert infer(server, "dead", "1", [2.0])[1].tolist() == [2.0]
