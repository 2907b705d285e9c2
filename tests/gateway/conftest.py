"""Upstreams for the gateway tests: TF Serving look-alikes (not dl-inference) in subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from dl_inference.testing import ServerProcess, free_port, stop_process, write_python_model

FAKE = Path(__file__).with_name("fake_tfserving.py")

# A model for dl-inference workers behind a gateway: doubles x, names the worker it ran on.
REMOTE = """
    import os
    import numpy as np
    from dl_inference import PythonModel

    class Remote(PythonModel):
        def predict(self, inputs, **parameters):
            worker = os.environ["GATEWAY_TEST_WORKER"].encode()
            return {"y": inputs["x"] * 2, "node": np.array([worker], dtype=object)}
"""
# A model the gateway serves itself, beside the routed ones.
LOCAL = """
    from dl_inference import PythonModel

    class Local(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""


@contextlib.contextmanager
def named_workers(repo: Path, names: tuple[str, ...]) -> Iterator[list[ServerProcess]]:
    """One dl-inference worker per name serving ``repo``; REMOTE reports the name."""
    procs = [
        ServerProcess(["--model-repository", str(repo)], env={"GATEWAY_TEST_WORKER": name})
        for name in names
    ]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


REMOTE_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}, {name: node, datatype: BYTES, shape: [1]}]
"""


@pytest.fixture(scope="module")
def remote_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Workers ``w1`` and ``w2`` serving REMOTE (``y = 2x`` and the node's name), per module."""
    repo = tmp_path_factory.mktemp("remote_workers")
    write_python_model(repo, "remote", REMOTE, REMOTE_CONFIG)
    with named_workers(repo, ("w1", "w2")) as procs:
        yield procs


class FakeUpstream:
    """``fake_tfserving.py`` in a subprocess on a fixed port, so it can be killed and restarted."""

    def __init__(self, name: str, *, delay_ms: float = 0, health: bool = True) -> None:
        self.name = name
        self.port = free_port()
        self.delay_ms = delay_ms
        self.health = health
        self.process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> FakeUpstream:
        command = [
            sys.executable,
            str(FAKE),
            "--name",
            self.name,
            "--port",
            str(self.port),
            "--delay-ms",
            str(self.delay_ms),
        ]
        if not self.health:
            command.append("--no-health")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        ready = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                if line.startswith("listening on"):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"fake upstream {self.name} did not start")
        return self

    def kill(self) -> None:
        """``kill -9``: no goodbye, connections just break."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def stats(self) -> dict[str, Any]:
        with grpc.insecure_channel(self.address) as channel:
            return json.loads(channel.unary_unary("/fake.Upstream/Stats")(b"", timeout=5))


def write_config(path: Path, routes: list[dict[str, Any]], **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"routes": routes, **extra}))
    return path


def gateway(config: Path) -> ServerProcess:
    return ServerProcess(["-c", str(config)], env={"TF_CPP_MIN_LOG_LEVEL": "3"})


def fast_health(**overrides: Any) -> dict[str, Any]:
    """Probe and eject quickly so fault tests stay short."""
    return {
        "health": {"interval_s": 0.2, "timeout_s": 0.5, "unhealthy_threshold": 1},
        "ejection": {
            "consecutive_failures": 1,
            "base_s": 1.0,
            "max_s": 5.0,
            "slow_start_s": 0,
            **overrides,
        },
    }


@pytest.fixture(scope="module")
def tf_apis() -> Any:
    """tensorflow_serving.apis, imported once (it loads TensorFlow's protos)."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    return predict_pb2, prediction_service_pb2_grpc


def predict_request(predict_pb2: Any, model: str, x: np.ndarray) -> Any:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in x.shape]
            ),
            tensor_content=x.astype(np.float32).tobytes(),
        )
    )
    return request


def output_text(reply: Any, name: str) -> str:
    return reply.outputs[name].string_val[0].decode()


def output_floats(reply: Any, name: str) -> np.ndarray:
    tensor = reply.outputs[name]
    shape = [d.size for d in tensor.tensor_shape.dim]
    return np.frombuffer(tensor.tensor_content, dtype=np.float32).reshape(shape)


def wait_until(condition: Any, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll ``condition`` until true (bounded; tests assert on the outcome, not the time)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
