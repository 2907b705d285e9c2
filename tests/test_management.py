"""Run-time model management: V2 repository extension, token, roots, CLI; off by default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, write_python_model

TOKEN = "s3cret-token-for-tests"
CONSTANT = """
    from dl_inference import PythonModel

    class Constant(PythonModel):
        def predict(self, inputs):
            return {{"y": inputs["x"] * 0 + {value}}}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def management_address(server: ServerProcess, kind: str) -> str:
    match = re.search(rf"^Management {kind} listening on (\S+)$", server.output(), re.M)
    assert match, server.output()
    return match.group(1)


def infer(address: str, model: str) -> float:
    client = grpcclient.InferenceServerClient(address)
    tensor = grpcclient.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.ones(2, np.float32))
    return float(client.infer(model, [tensor]).as_numpy("y")[0])


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("mgmt")
    write_python_model(base / "models", "a", CONSTANT.format(value=1), CONFIG)
    write_python_model(base / "outside", "evil", CONSTANT.format(value=666), CONFIG)
    (base / "models" / "escape").symlink_to(base / "outside" / "evil")
    (base / "server.yaml").write_text(
        "model_repository: models\n"
        "server: {repository_poll_s: 0}\n"
        "management: {enabled: true, grpc_port: 0, http_port: 0}\n"
    )
    return base


@pytest.fixture(scope="module")
def server(layout: Path):
    with ServerProcess(
        ["-c", str(layout / "server.yaml")], env={"DLI_MANAGEMENT_TOKEN": TOKEN}
    ) as srv:
        yield srv


def test_management_needs_the_token(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(management_address(server, "HTTP"))
    with pytest.raises(InferenceServerException, match="need the token"):
        client.get_model_repository_index()
    wrong = grpcclient.InferenceServerClient(management_address(server, "gRPC"))
    with pytest.raises(InferenceServerException) as info:
        wrong.get_model_repository_index(headers={"authorization": "Bearer nope"})
    assert "UNAUTHENTICATED" in str(info.value.status())


def test_management_binds_loopback_and_not_the_public_ports(server: ServerProcess) -> None:
    assert management_address(server, "HTTP").startswith("127.0.0.1:")
    public = grpcclient.InferenceServerClient(server.grpc_address)
    with pytest.raises(InferenceServerException) as info:
        public.unload_model("a", headers={"authorization": f"Bearer {TOKEN}"})
    assert "UNIMPLEMENTED" in str(info.value.status())


def test_load_unload_and_index_with_tritonclient(server: ServerProcess, layout: Path) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    admin = grpcclient.InferenceServerClient(management_address(server, "gRPC"))
    assert infer(server.grpc_address, "a") == 1
    admin.unload_model("a", headers=headers)
    with pytest.raises(InferenceServerException, match="unknown model 'a'"):
        infer(server.grpc_address, "a")
    index = admin.get_model_repository_index(headers=headers, as_json=True)
    (row,) = [m for m in index["models"] if m["name"] == "a"]
    assert (row["state"], row["reason"]) == ("UNAVAILABLE", "unloaded")
    # A new model folder, then a load, serves it; a reload picks up new files.
    write_python_model(layout / "models", "b", CONSTANT.format(value=2), CONFIG)
    admin.load_model("b", headers=headers)
    assert infer(server.grpc_address, "b") == 2
    write_python_model(layout / "models", "b", CONSTANT.format(value=3), CONFIG)
    admin.load_model("b", headers=headers)
    assert infer(server.grpc_address, "b") == 3
    admin.load_model("a", headers=headers)
    assert infer(server.grpc_address, "a") == 1


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("../outside/evil", "INVALID_ARGUMENT", "is not allowed"),
        ("/etc", "INVALID_ARGUMENT", "is not allowed"),
        ("escape", "PERMISSION_DENIED", "outside the repository root"),
        ("missing", "NOT_FOUND", "no model folder 'missing'"),
    ],
)
def test_paths_that_leave_the_root_are_refused(
    server: ServerProcess, name: str, status: str, message: str
) -> None:
    admin = grpcclient.InferenceServerClient(management_address(server, "gRPC"))
    with pytest.raises(InferenceServerException) as info:
        admin.load_model(name, headers={"authorization": f"Bearer {TOKEN}"})
    assert status in str(info.value.status()) and message in str(info.value)
    assert infer(server.grpc_address, "a") == 1  # still serving


def test_load_parameters_are_refused(server: ServerProcess) -> None:
    admin = httpclient.InferenceServerClient(management_address(server, "HTTP"))
    with pytest.raises(InferenceServerException, match="not supported"):
        admin.load_model(
            "a", headers={"authorization": f"Bearer {TOKEN}"}, config='{"backend": "python"}'
        )


def test_models_command(server: ServerProcess) -> None:
    url = "http://" + management_address(server, "HTTP")
    env = {**os.environ, "DLI_MANAGEMENT_TOKEN": TOKEN}
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "dl_inference", "models", *a, "--url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^a\s+1\s+READY$", listed.stdout, re.M)
    assert run("unload", "a").returncode == 0
    assert "UNAVAILABLE" in run("list").stdout
    assert run("load", "a").stdout.strip() == "a: loaded"
    refused = run("load", "../x")
    assert refused.returncode == 1 and "is not allowed" in refused.stderr


def test_management_is_off_by_default_and_needs_a_token(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "a", CONSTANT.format(value=1), CONFIG)
    with ServerProcess(["--model-repository", str(tmp_path / "models")]) as plain:
        assert "Management" not in plain.output()
    config = tmp_path / "server.yaml"
    config.write_text("model_repository: models\nmanagement: {enabled: true}\n")
    env = {k: v for k, v in os.environ.items() if k != "DLI_MANAGEMENT_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "DLI_MANAGEMENT_TOKEN" in result.stderr
