"""Draining on SIGTERM, message-size limits and several worker processes, end to end."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, write_python_model

SLOW = """
    import time
    from dl_inference import PythonModel

    class Slow(PythonModel):
        def predict(self, inputs, **parameters):
            time.sleep(float(parameters.get("sleep_s", 0)))
            return {"y": inputs["x"] * 2}
"""
PID = """
    import os
    import numpy as np
    from dl_inference import PythonModel

    class Pid(PythonModel):
        def predict(self, inputs, **parameters):
            return {"pid": np.array([os.getpid()], dtype=np.int64)}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def infer(address: str, model: str = "slow", size: int = 4, **parameters) -> np.ndarray:
    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput("x", [size], "FP32")
    tensor.set_data_from_numpy(np.ones(size, np.float32))
    return client.infer(model, [tensor], parameters=parameters or None).as_numpy("y")


@pytest.fixture
def slow_repo(tmp_path: Path) -> Path:
    write_python_model(tmp_path, "slow", SLOW, CONFIG)
    return tmp_path


def test_sigterm_lets_in_flight_requests_finish(slow_repo: Path) -> None:
    server = ServerProcess(["--model-repository", str(slow_repo)]).start()
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["y"] = infer(server.grpc_address, sleep_s=1.5)
        except Exception as exc:  # reported below
            result["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 30
    while "model" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the request is inside predict() now
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    caller.join(30)
    assert server.process.wait(30) == 0
    assert "error" not in result, result.get("error")
    np.testing.assert_array_equal(result["y"], np.full(4, 2, np.float32))
    assert "draining" in server.output()


def test_oversize_payloads_are_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "slow", SLOW, CONFIG)
    config = tmp_path / "server.yaml"
    config.write_text("model_repository: models\nserver: {grpc: {max_message_mb: 1}}\n")
    with ServerProcess(["-c", str(config)]) as server:
        with pytest.raises(InferenceServerException) as info:
            infer(server.grpc_address, size=400_000)  # 1.6 MB of FP32
        assert "RESOURCE_EXHAUSTED" in str(info.value.status())
        body = json.dumps(
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
                "padding": "x" * 1_200_000,
            }
        ).encode()
        request = urllib.request.Request(
            server.http_url + "/v2/models/slow/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as http_info:
            urllib.request.urlopen(request, timeout=10)
        assert http_info.value.code == 413
        np.testing.assert_array_equal(infer(server.grpc_address), np.full(4, 2, np.float32))


def test_workers_share_the_ports(tmp_path: Path) -> None:
    write_python_model(
        tmp_path, "pid", PID, "outputs: [{name: pid, datatype: INT64, shape: [1]}]\n"
    )
    with ServerProcess(["--model-repository", str(tmp_path), "--workers", "2"]) as server:
        pids = set()
        for _ in range(40):
            # A new client (and so a new connection) each time: the kernel spreads them.
            client = grpcclient.InferenceServerClient(server.grpc_address)
            pids.add(int(client.infer("pid", []).as_numpy("pid")[0]))
            client.close()
            if len(pids) == 2:
                break
        assert len(pids) == 2
    assert server.process is not None and server.process.returncode == 0


def test_model_timeout_answers_deadline_exceeded_and_keeps_serving(tmp_path: Path) -> None:
    write_python_model(tmp_path, "slow", SLOW, CONFIG + "    timeout_ms: 300\n    instances: 2\n")
    with ServerProcess(["--model-repository", str(tmp_path)]) as server:
        with pytest.raises(InferenceServerException) as info:
            infer(server.grpc_address, sleep_s=2)
        assert "DEADLINE_EXCEEDED" in str(info.value.status())
        assert "did not answer within the deadline" in str(info.value)
        np.testing.assert_array_equal(infer(server.grpc_address), np.full(4, 2, np.float32))


def test_a_full_model_queue_answers_resource_exhausted(tmp_path: Path) -> None:
    write_python_model(tmp_path, "slow", SLOW, CONFIG + "    max_queue_size: 1\n")
    with ServerProcess(["--model-repository", str(tmp_path)]) as server:
        outcomes: list[str] = []

        def call() -> None:
            try:
                infer(server.grpc_address, sleep_s=1.0)
                outcomes.append("ok")
            except InferenceServerException as exc:
                outcomes.append(str(exc.status()))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
            time.sleep(0.1)  # one running, one queued, the rest refused at once
        for thread in threads:
            thread.join(30)
        assert sorted(outcomes).count("ok") == 2
        assert outcomes.count("StatusCode.RESOURCE_EXHAUSTED") == 2
        np.testing.assert_array_equal(infer(server.grpc_address), np.full(4, 2, np.float32))


def test_a_gateway_spreads_calls_over_an_upstreams_workers(tmp_path: Path) -> None:
    write_python_model(
        tmp_path / "models", "pid", PID, "outputs: [{name: pid, datatype: INT64, shape: [1]}]\n"
    )
    with ServerProcess(["--model-repository", str(tmp_path / "models"), "--workers", "2"]) as up:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            "routes:\n  - model: pid\n    balancer: round_robin\n"
            "    connections_per_node: 16\n"
            f"    nodes: [{{address: '{up.grpc_address}', weight: 1}}]\n"
        )
        with ServerProcess(["-c", str(config)]) as gateway:
            client = grpcclient.InferenceServerClient(gateway.grpc_address)
            pids = {int(client.infer("pid", []).as_numpy("pid")[0]) for _ in range(64)}
    # One client connection to the gateway, 16 from the gateway: both workers answer.
    assert len(pids) == 2


SUM = """
    import numpy as np
    from dl_inference import PythonModel

    class Sum(PythonModel):
        def predict(self, inputs):
            x = inputs["x"]
            return {"total": np.array([x.sum(dtype=np.float64)]), "size": np.array([x.size])}
"""


def test_a_100_mb_tensor_passes_within_the_message_limit(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "sum", SUM)
    config = tmp_path / "server.yaml"
    config.write_text("model_repository: models\nserver: {grpc: {max_message_mb: 128}}\n")
    x = np.arange(25_000_000, dtype=np.float32)  # 100 MB as raw_input_contents
    with ServerProcess(["-c", str(config)]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_address)
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("sum", [tensor], client_timeout=120)
    assert int(result.as_numpy("size")[0]) == x.size
    assert float(result.as_numpy("total")[0]) == float(x.sum(dtype=np.float64))
