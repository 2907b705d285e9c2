"""What a newcomer meets first with ``serve``: SIGHUP without a config file, a port in use,
readiness while models load. Real ``dl-inference serve`` processes on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2

from dl_inference.testing import (
    ServerProcess,
    free_port,
    get_status,
    grpc_health,
    wait_for,
    write_python_model,
)

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
# load() waits until the file GATE exists: the test decides when loading ends.
GATED = """
    import time
    from pathlib import Path
    from dl_inference import PythonModel

    class Gated(PythonModel):
        def load(self):
            while not Path(GATE).exists():
                time.sleep(0.05)

        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


def infer(address: str, model: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.zeros(2, np.float32))
    return client.infer(model, [tensor]).as_numpy("y")


def gated_repository(root: Path, gate: Path) -> Path:
    write_python_model(root, "gated", GATED.replace("GATE", json.dumps(str(gate))), CONFIG)
    return root


def serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dl_inference", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sighup_without_a_config_file_rescans_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_python_model(repo, "a", ADD_ONE, CONFIG)
    server = ServerProcess(["--model-repository", str(repo)]).start()
    try:
        # Built aside, then moved in whole: a scan never sees half a model folder.
        write_python_model(tmp_path / "staging", "b", ADD_ONE, CONFIG)
        (tmp_path / "staging" / "b").rename(repo / "b")
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "repository rescanned" in server.output(), "the rescan")
        assert server.process.poll() is None, server.output()
        wait_for(lambda: get_status(f"{server.http_url}/v2/models/b/ready") == 200, "model b ready")
        np.testing.assert_array_equal(infer(server.grpc_address, "b"), np.ones(2, np.float32))
        np.testing.assert_array_equal(infer(server.grpc_address, "a"), np.ones(2, np.float32))
    finally:
        code = server.stop()
    assert code == 0, server.output()
    assert "draining" in server.output()


def test_listeners_answer_not_ready_while_models_load(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    repo = gated_repository(tmp_path / "models", gate)
    grpc_port, http_port = free_port(), free_port()
    process = serve(
        "--model-repository", str(repo), "--host", "127.0.0.1",
        "--grpc-port", str(grpc_port), "--http-port", str(http_port),
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_for(lambda: get_status(f"{url}/v2/health/live") == 200, "the HTTP listener")
        assert get_status(f"{url}/v2/health/ready") == 503
        assert get_status(f"{url}/v2/models/gated/ready") != 200
        address = f"127.0.0.1:{grpc_port}"
        assert grpc_health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
        gate.touch()
        wait_for(lambda: get_status(f"{url}/v2/health/ready") == 200, "readiness")
        assert grpc_health(address) == health_pb2.HealthCheckResponse.SERVING
        np.testing.assert_array_equal(infer(address, "gated"), np.ones(2, np.float32))
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    # "listening" still means "ready": printed once the models loaded.
    assert f"gRPC listening on 127.0.0.1:{grpc_port}" in output


@pytest.mark.parametrize(
    ("busy_flag", "key", "extra"),
    [
        ("--grpc-port", "server.grpc.port", []),
        ("--http-port", "server.http.port", []),
        ("--http-port", "server.http.port", ["--workers", "2"]),
    ],
    ids=["grpc", "http", "workers"],
)
def test_a_port_in_use_is_reported_at_once_with_the_setting_to_change(
    tmp_path: Path, busy_flag: str, key: str, extra: list[str]
) -> None:
    # The model never finishes loading: only an error raised before the load ends the run.
    repo = gated_repository(tmp_path / "models", tmp_path / "never")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--grpc-port": "0", "--http-port": "0", busy_flag: str(port)}
        args = ["--model-repository", str(repo), "--host", "127.0.0.1", *extra]
        for flag, value in ports.items():
            args += [flag, value]
        result = subprocess.run(
            [sys.executable, "-m", "dl_inference", "serve", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr
    assert busy_flag in result.stderr and key in result.stderr
    assert "listening on" not in result.stdout
