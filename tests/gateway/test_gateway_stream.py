"""V2 ModelStreamInfer through the gateway: tritonclient's stream API reaches a node.

The first message names the model; the whole stream goes to one node of its route, or is
served locally when no route names the model.
"""

from __future__ import annotations

import queue
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from dl_inference.testing import ServerProcess, free_port, write_python_model

from .conftest import LOCAL, gateway, write_config

LOCAL_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


SLOW = """
    import time
    from dl_inference import PythonModel

    class Slow(PythonModel):
        def predict(self, inputs, **parameters):
            time.sleep(5)
            return {"y": inputs["x"]}
"""


@pytest.fixture(scope="module")
def slow_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("slow_worker")
    write_python_model(repo, "slow", SLOW, LOCAL_CONFIG)
    with ServerProcess(["--model-repository", str(repo)]) as worker:
        yield worker


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    remote_workers: list[ServerProcess],
    slow_worker: ServerProcess,
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("stream_gw")
    write_python_model(folder / "models", "local", LOCAL, LOCAL_CONFIG)
    config = write_config(
        folder / "gateway.yaml",
        [
            {
                "model": "remote",
                "balancer": "round_robin",
                "nodes": [{"address": w.grpc_address} for w in remote_workers],
            },
            {"model": "slow", "nodes": [{"address": slow_worker.grpc_address}]},
            # Nothing listens there: the stream's first message finds no node.
            {"model": "dead", "nodes": [{"address": f"127.0.0.1:{free_port()}"}]},
        ],
        model_repository=str(folder / "models"),
    )
    with gateway(config) as srv:
        yield srv


def stream(server: ServerProcess, calls: list[tuple[str, np.ndarray]]) -> list[tuple[Any, Any]]:
    """(result, error) for each call, all sent on one stream in order."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for model, x in calls:
            tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            client.async_stream_infer(model, [tensor])
        return [answers.get(timeout=30) for _ in calls]
    finally:
        client.stop_stream()
        client.close()


def test_a_stream_goes_to_one_node_and_streams_are_balanced(server: ServerProcess) -> None:
    nodes = []
    for _ in range(2):
        xs = [np.array([i, -0.5], dtype=np.float32) for i in range(4)]
        answers = stream(server, [("remote", x) for x in xs])
        stream_nodes = set()
        for (result, error), x in zip(answers, xs, strict=True):
            assert error is None, error
            np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
            stream_nodes.add(result.as_numpy("node")[0].decode())
        assert len(stream_nodes) == 1  # every message of a stream went to the same node
        nodes += stream_nodes
    assert sorted(nodes) == ["w1", "w2"]  # round robin, one pick per stream


def test_an_unrouted_model_streams_locally(server: ServerProcess) -> None:
    x = np.array([1.0, 2.0], dtype=np.float32)
    [(result, error)] = stream(server, [("local", x)])
    assert error is None, error
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)


def test_errors_in_the_stream_come_back_and_the_stream_goes_on(server: ServerProcess) -> None:
    wrong = np.array([[1.0]], dtype=np.float32)  # rank 2: the node refuses this message
    good = np.array([3.0], dtype=np.float32)
    answers = stream(server, [("remote", good), ("remote", wrong), ("remote", good)])
    # The stream's requests run concurrently: the refusal may come first.
    errors = [error for result, error in answers if error is not None]
    results = [result for result, error in answers if error is None]
    assert len(errors) == 1 and "'x'" in str(errors[0])
    assert len(results) == 2
    for result in results:
        np.testing.assert_array_equal(result.as_numpy("y"), good * 2)


def test_a_route_with_no_live_node_ends_the_stream_with_unavailable(
    server: ServerProcess,
) -> None:
    [(result, error)] = stream(server, [("dead", np.ones(1, dtype=np.float32))])
    assert result is None
    assert "UNAVAILABLE" in str(error.status()) and "dead" in str(error)
    # The gateway keeps serving.
    [(result, error)] = stream(server, [("remote", np.ones(1, dtype=np.float32))])
    assert error is None, error


def samples(server: ServerProcess, name: str, model: str) -> list[Any]:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("model") == model
    ]


def in_flight(server: ServerProcess, model: str) -> float:
    return sum(s.value for s in samples(server, "dli_in_flight_requests", model))


def requests_by_status(server: ServerProcess, model: str) -> dict[str, float]:
    return {s.labels["status"]: s.value for s in samples(server, "dli_requests_total", model)}


def wait_until(check: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_cancelled_stream_cancels_the_upstream(
    server: ServerProcess, slow_worker: ServerProcess
) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    client.start_stream(callback=lambda result, error: None)
    tensor = grpcclient.InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.ones(1, dtype=np.float32))
    client.async_stream_infer("slow", [tensor])
    assert wait_until(lambda: in_flight(slow_worker, "slow") == 1)
    client.stop_stream(cancel_requests=True)
    client.close()
    # The node's request ends with the cancelled stream, well before its 5 s sleep would.
    assert wait_until(lambda: in_flight(slow_worker, "slow") == 0, timeout=3)
    # Counted as cancelled by the client, not as a server error.
    statuses = requests_by_status(slow_worker, "slow")
    assert statuses.get("CANCELLED") == 1 and "INTERNAL" not in statuses, statuses
    slow_worker.wait_for_output("request cancelled by the client")
