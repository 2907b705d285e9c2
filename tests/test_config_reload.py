"""Config reload on SIGHUP and on file change: applied whole, or refused and the old one kept."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dl_inference.testing import ServerProcess, free_port, write_python_model

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs):
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""
BASE = "model_repository: models\nserver: {repository_poll_s: 0, config_poll_s: %s}\n"


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def input_shape(server: ServerProcess) -> list[int]:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    return list(client.get_model_metadata("a").inputs[0].shape)


def infer(server: ServerProcess) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.zeros(2, np.float32))
    return client.infer("a", [tensor]).as_numpy("y")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    write_python_model(tmp_path / "models", "a", ADD_ONE, CONFIG)
    path = tmp_path / "server.yaml"
    path.write_text(BASE % 0)
    return path


def test_sighup_applies_a_valid_config(config: Path) -> None:
    with ServerProcess(["-c", str(config)]) as server:
        assert input_shape(server) == [2]
        config.write_text(BASE % 0 + "models: {a: {max_batch_size: 4}}\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in server.output(), "the reload")
        assert input_shape(server) == [-1, 2]


def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(config: Path) -> None:
    with ServerProcess(["-c", str(config)]) as server:
        config.write_text(BASE % 0 + "models: {a: {max_batch_sise: 4}}\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reload refused" in server.output(), "the refusal")
        assert "did you mean max_batch_size" in server.output()
        np.testing.assert_array_equal(infer(server), np.ones(2, np.float32))
        assert input_shape(server) == [2]
        config.write_text("server: {grpc: [broken\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: server.output().count("config reload refused") == 2, "the second refusal")
        np.testing.assert_array_equal(infer(server), np.ones(2, np.float32))


def test_a_changed_file_is_picked_up_without_a_signal(config: Path) -> None:
    config.write_text(BASE % 0.2)
    with ServerProcess(["-c", str(config)]) as server:
        config.write_text(BASE % 0.2 + "models: {a: {max_batch_size: 2}}\n")
        wait_for(lambda: "config reloaded" in server.output(), "the reload")
        assert input_shape(server) == [-1, 2]


def test_listener_changes_are_reported_as_needing_a_restart(config: Path) -> None:
    with ServerProcess(["-c", str(config)]) as server:
        config.write_text(
            "model_repository: models\n"
            "server: {repository_poll_s: 0, config_poll_s: 0, drain_timeout_s: 5}\n"
        )
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in server.output(), "the reload")
        assert "drain_timeout_s" in server.output().split("config reloaded", 1)[1]
        np.testing.assert_array_equal(infer(server), np.ones(2, np.float32))


def test_a_metrics_listener_change_needs_a_restart_and_the_listener_stays(config: Path) -> None:
    listener = "model_repository: models\nserver: {repository_poll_s: 0, metrics: {port: %s}}\n"
    config.write_text(listener % 0)
    with ServerProcess(["-c", str(config)]) as server:
        before = server.metrics_port
        assert before, server.output()
        moved = free_port()
        config.write_text(listener % moved)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in server.output(), "the reload")
        assert "metrics (its listener)" in server.output().split("config reloaded", 1)[1]
        # Still where it started, and nothing listens on the new port.
        with urllib.request.urlopen(f"http://127.0.0.1:{before}/metrics", timeout=10) as reply:
            assert reply.status == 200
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{moved}/metrics", timeout=10)
