"""What a newcomer meets first with ``serve``: SIGHUP without a config file.
Real ``dl-inference serve`` processes on 127.0.0.1."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from dl_inference.testing import ServerProcess, write_python_model

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_status(url: str) -> int | None:
    """The status code of GET ``url``; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def infer(address: str, model: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.zeros(2, np.float32))
    return client.infer(model, [tensor]).as_numpy("y")


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
        wait_for(
            lambda: http_status(f"{server.http_url}/v2/models/b/ready") == 200, "model b ready"
        )
        np.testing.assert_array_equal(infer(server.grpc_address, "b"), np.ones(2, np.float32))
        np.testing.assert_array_equal(infer(server.grpc_address, "a"), np.ones(2, np.float32))
    finally:
        code = server.stop()
    assert code == 0, server.output()
    assert "draining" in server.output()
