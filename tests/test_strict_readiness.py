"""``server.strict_readiness``: whether one model that failed to load makes the whole
server NOT READY (the default, Triton's), and grpc.health per model.

Real ``dl-inference serve`` processes on 127.0.0.1 serving ``good`` and ``broken`` (a
python-backend model whose ``load`` raises); real clients (urllib, tritonclient, grpc).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dl_inference.testing import (
    ServerProcess,
    free_port,
    get_status,
    grpc_health,
    wait_for,
    write_python_model,
)

GOOD = """
    from dl_inference import PythonModel

    class Good(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
BROKEN = """
    from dl_inference import PythonModel

    class Broken(PythonModel):
        def load(self):
            raise RuntimeError("the weights are missing")

        def predict(self, inputs, **parameters):
            raise AssertionError("never loaded")
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
Status = health_pb2.HealthCheckResponse
V2_SERVICE = "inference.GRPCInferenceService"


def good_and_broken(root: Path) -> Path:
    """A repository with ``good`` (y = x + 1) and ``broken`` (its load raises)."""
    write_python_model(root, "good", GOOD, CONFIG)
    write_python_model(root, "broken", BROKEN, CONFIG)
    return root


def write_server_config(path: Path, repo: Path, strict: bool | None) -> Path:
    server: dict[str, object] = {"config_poll_s": 0}  # SIGHUP reloads, nothing else
    if strict is not None:
        server["strict_readiness"] = strict
    path.write_text(yaml.safe_dump({"server": server, "model_repository": str(repo)}))
    return path


def watch_first(address: str, service: str) -> int:
    """The first status a grpc.health Watch of ``service`` streams."""
    with grpc.insecure_channel(address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
        first = next(stream)
        stream.cancel()
    return first.status


def infer_good(address: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.zeros(2, np.float32))
    return client.infer("good", [tensor]).as_numpy("y")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return good_and_broken(tmp_path_factory.mktemp("good_and_broken"))


@pytest.fixture(scope="module")
def strict_server(repository: Path) -> Iterator[ServerProcess]:
    """The default: no strict_readiness key at all."""
    with ServerProcess(["--model-repository", str(repository)]) as server:
        yield server


@pytest.fixture(scope="module")
def lenient_config(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_server_config(
        tmp_path_factory.mktemp("lenient") / "server.yaml", repository, strict=False
    )


@pytest.fixture(scope="module")
def lenient_server(lenient_config: Path) -> Iterator[ServerProcess]:
    with ServerProcess(["-c", str(lenient_config)]) as server:
        yield server


def assert_models_answer_for_themselves(server: ServerProcess) -> None:
    """Whatever the server's readiness: each model's own readiness, health and calls."""
    url, address = server.http_url, server.grpc_address
    assert get_status(f"{url}/v2/models/good/ready") == 200
    assert get_status(f"{url}/v2/models/broken/ready") == 503
    client = grpcclient.InferenceServerClient(address)
    assert client.is_model_ready("good") and not client.is_model_ready("broken")
    assert grpc_health(address, "good") == Status.SERVING
    assert grpc_health(address, "broken") == Status.NOT_SERVING
    assert grpc_health(address, "no_such_model") == grpc.StatusCode.NOT_FOUND
    assert grpc_health(address, V2_SERVICE) == Status.SERVING
    assert watch_first(address, "good") == Status.SERVING
    assert watch_first(address, "broken") == Status.NOT_SERVING
    np.testing.assert_array_equal(infer_good(address), np.ones(2, np.float32))


def test_by_default_one_broken_model_makes_the_server_not_ready(
    strict_server: ServerProcess,
) -> None:
    url, address = strict_server.http_url, strict_server.grpc_address
    assert get_status(f"{url}/v2/health/live") == 200
    assert get_status(f"{url}/v2/health/ready") == 503
    assert not grpcclient.InferenceServerClient(address).is_server_ready()
    assert grpc_health(address, "") == Status.NOT_SERVING
    assert watch_first(address, "") == Status.NOT_SERVING
    assert_models_answer_for_themselves(strict_server)


def test_strict_readiness_false_keeps_the_server_ready(lenient_server: ServerProcess) -> None:
    url, address = lenient_server.http_url, lenient_server.grpc_address
    assert get_status(f"{url}/v2/health/ready") == 200
    assert grpcclient.InferenceServerClient(address).is_server_ready()
    assert grpc_health(address, "") == Status.SERVING
    assert watch_first(address, "") == Status.SERVING
    assert_models_answer_for_themselves(lenient_server)
    with urllib.request.urlopen(f"{url}/api/status", timeout=10) as reply:
        assert json.loads(reply.read())["server"]["ready"] is True


def test_a_reload_switches_strict_readiness(
    lenient_server: ServerProcess, lenient_config: Path, repository: Path
) -> None:
    url, address = lenient_server.http_url, lenient_server.grpc_address
    assert lenient_server.process is not None
    try:
        write_server_config(lenient_config, repository, strict=True)
        lenient_server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: get_status(f"{url}/v2/health/ready") == 503, "strict readiness")
        assert grpc_health(address, "") == Status.NOT_SERVING
        assert "server.strict_readiness: True" in lenient_server.output()
    finally:
        write_server_config(lenient_config, repository, strict=False)
        lenient_server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: get_status(f"{url}/v2/health/ready") == 200, "lenient readiness")
    assert grpc_health(address, "") == Status.SERVING


def test_without_strict_readiness_the_server_is_not_ready_while_models_load(
    tmp_path: Path,
) -> None:
    """As Triton: readiness waits for the start-up loading, whatever its outcome."""
    gate = tmp_path / "gate"
    repo = good_and_broken(tmp_path / "models")
    write_python_model(repo, "gated", GATED.replace("GATE", json.dumps(str(gate))), CONFIG)
    config = write_server_config(tmp_path / "server.yaml", repo, strict=False)
    grpc_port, http_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dl_inference", "serve", "-c", str(config),
         "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", str(http_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url, address = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    try:
        wait_for(lambda: get_status(f"{url}/v2/health/live") == 200, "the HTTP listener")
        assert get_status(f"{url}/v2/health/ready") == 503
        assert grpc_health(address, "") == Status.NOT_SERVING
        assert grpc_health(address, "gated") == Status.NOT_SERVING
        gate.touch()
        wait_for(lambda: get_status(f"{url}/v2/health/ready") == 200, "readiness")
        assert grpc_health(address, "") == Status.SERVING
        assert grpc_health(address, "gated") == Status.SERVING
        assert grpc_health(address, "broken") == Status.NOT_SERVING
        # A model no longer held is a name the health service does not know.
        shutil.rmtree(repo / "broken")
        wait_for(lambda: grpc_health(address, "broken") == grpc.StatusCode.NOT_FOUND, "unload")
        assert grpc_health(address, "") == Status.SERVING
    finally:
        gate.touch()  # a load left waiting would hold up the drain
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output
