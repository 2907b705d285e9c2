"""Readiness with one model that failed to load, side by side with Triton 2.51.

Both servers serve ``good`` and ``broken`` (its python-backend model raises while loading).
Triton runs with ``--exit-on-error=false`` (by default it exits when a model fails to load;
dl-inference serves the rest unless ``strict_model_loading``) and ``--strict-readiness``
true, then false; dl-inference with ``server.strict_readiness`` the same. What clients see
must agree: server readiness (tritonclient gRPC and HTTP), each model's readiness, and
grpc.health ``""``. Where they differ on purpose (docs/triton-differences.md, "Readiness
with a model that failed to load"): Triton's HTTP says 400 where dl-inference says 503,
and Triton's grpc.health answers the server's readiness for any name.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from grpc_health.v1 import health_pb2

from dl_inference.testing import ServerProcess, get_status, grpc_health, write_python_model

from .triton import TritonServer, skip_without_triton

Status = health_pb2.HealthCheckResponse.ServingStatus

TRITON_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""
TRITON_GOOD = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]
                )
                for r in requests
            ]
"""
TRITON_BROKEN = """
    class TritonPythonModel:
        def initialize(self, args):
            raise RuntimeError("the weights are missing")

        def execute(self, requests):
            return []
"""
OUR_GOOD = """
    from dl_inference import PythonModel

    class Good(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"]}
"""
OUR_BROKEN = """
    from dl_inference import PythonModel

    class Broken(PythonModel):
        def load(self):
            raise RuntimeError("the weights are missing")

        def predict(self, inputs, **parameters):
            raise AssertionError("never loaded")
"""
OUR_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def triton_repository(root: Path) -> Path:
    for name, code in (("good", TRITON_GOOD), ("broken", TRITON_BROKEN)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(textwrap.dedent(TRITON_CONFIG))
        (root / name / "1" / "model.py").write_text(textwrap.dedent(code))
    return root


def our_config(root: Path, strict: bool) -> Path:
    repo = root / "models"
    write_python_model(repo, "good", OUR_GOOD, OUR_CONFIG)
    write_python_model(repo, "broken", OUR_BROKEN, OUR_CONFIG)
    path = root / "server.yaml"
    path.write_text(
        yaml.safe_dump({"server": {"strict_readiness": strict}, "model_repository": str(repo)})
    )
    return path


def server_health(address: str) -> str:
    status = grpc_health(address)
    return str(status) if isinstance(status, grpc.StatusCode) else Status.Name(status)


def seen(grpc_address: str, http_address: str) -> dict[str, Any]:
    """What clients see of the server's and each model's readiness."""
    grpc_client = grpcclient.InferenceServerClient(grpc_address)
    http_client = httpclient.InferenceServerClient(http_address)
    return {
        "live": grpc_client.is_server_live(),
        "ready (gRPC)": grpc_client.is_server_ready(),
        "ready (HTTP)": http_client.is_server_ready(),
        "good ready": grpc_client.is_model_ready("good") and http_client.is_model_ready("good"),
        "broken ready": grpc_client.is_model_ready("broken")
        or http_client.is_model_ready("broken"),
        "grpc.health": server_health(grpc_address),
    }


@pytest.fixture(params=[True, False], ids=["strict", "not-strict"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any, bool]]:
    skip_without_triton()
    strict: bool = request.param
    flag = "true" if strict else "false"
    triton = TritonServer(
        triton_repository(tmp_path / "triton"),
        tmp_path / "triton.log",
        args=["--exit-on-error=false", f"--strict-readiness={flag}"],
        wait_for="/v2/health/live",
    ).start()
    try:
        with ServerProcess(["-c", str(our_config(tmp_path / "ours", strict))]) as ours:
            yield triton, ours, strict
    finally:
        triton.stop()


def test_readiness_with_a_failed_model_is_tritons(pair: tuple[Any, Any, bool]) -> None:
    triton, ours, strict = pair
    theirs = seen(triton.grpc_address, triton.http_address)
    mine = seen(ours.grpc_address, ours.http_address)
    assert mine == theirs, triton.output()
    assert theirs["ready (gRPC)"] is not strict and not theirs["broken ready"]
    assert theirs["good ready"] and theirs["live"]
    # Not ready over HTTP: Triton says 400, dl-inference 503 (both False to clients).
    expected = (200, 200) if not strict else (400, 503)
    got = (
        get_status(f"{triton.http_url}/v2/health/ready"),
        get_status(f"{ours.http_url}/v2/health/ready"),
    )
    assert got == expected
    assert get_status(f"{triton.http_url}/v2/models/broken/ready") == 400
    assert get_status(f"{ours.http_url}/v2/models/broken/ready") == 503
