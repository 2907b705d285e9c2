"""A third-party plugin found through its entry point, end to end.

``tests/fixtures/dl-inference-scale`` (the STYLE.md §4 example as a real distribution) is
pip-installed into a temporary folder; the real server, started with that folder on
PYTHONPATH, serves a ``backend: scale`` model to tritonclient, and ``dl-inference
plugins --json`` lists it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess

FIXTURE = Path(__file__).parent / "fixtures" / "dl-inference-scale"

SCALED_CONFIG = """
    backend: scale
    factor: 3
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: x, datatype: FP32, shape: [-1]}]
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture distribution, really pip-installed into its own target folder."""
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in tests/.
    source = tmp_path_factory.mktemp("src") / "dl-inference-scale"
    shutil.copytree(FIXTURE, source)
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The entry point arrived as installed metadata, not as a source folder.
    entry_points = next(target.glob("dl_inference_scale-0.1.0.dist-info")) / "entry_points.txt"
    assert "scale = dl_inference_scale" in entry_points.read_text()
    return target


def with_site(site: Path) -> dict[str, str]:
    paths = [str(site), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def write_model(root: Path, name: str, config: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.yaml").write_text(textwrap.dedent(config))


@pytest.fixture(scope="module")
def server(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("models")
    write_model(repo, "scaled", SCALED_CONFIG)
    with ServerProcess(["--model-repository", str(repo)], env=with_site(site)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_address) as triton:
        yield triton


def plugins_json(env: dict[str, str] | None = None) -> list[dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "plugins", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def infer(
    client: grpcclient.InferenceServerClient, x: np.ndarray, datatype: str = "FP32"
) -> np.ndarray:
    tensor = grpcclient.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    result = client.infer("scaled", [tensor], outputs=[grpcclient.InferRequestedOutput("x")])
    return result.as_numpy("x")


def test_plugins_command_lists_the_installed_plugin(site: Path) -> None:
    rows = {row["name"]: row for row in plugins_json(with_site(site))}
    scale = rows["scale"]
    assert scale["distribution"] == "dl-inference-scale"
    assert scale["version"] == "0.1.0"
    assert scale["status"] == "loaded", scale
    assert scale["error"] == ""
    assert scale["registers"] == {"backends": ["scale"]}
    assert scale["hooks"] == []
    # Without the install folder on the path there is no such plugin: the entry point
    # (not some import side effect) is what brought it in.
    assert "scale" not in {row["name"] for row in plugins_json()}


def test_scale_model_multiplies_by_its_configured_factor(
    client: grpcclient.InferenceServerClient,
) -> None:
    x = np.array([1.5, -2.0, 0.0, 4.25, 1e6], dtype=np.float32)
    y = infer(client, x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x * np.float32(3))


def test_scale_model_metadata_comes_from_its_config(
    client: grpcclient.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("scaled", as_json=True)
    assert metadata["platform"] == "scale"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1"]}]


def test_wrong_datatype_is_invalid_argument_and_server_keeps_serving(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer(client, np.array([1, 2], dtype=np.int32), "INT32")
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    message = caught.value.message()
    assert "'x'" in message and "INT32" in message and "FP32" in message
    np.testing.assert_array_equal(infer(client, np.array([2.0], np.float32)), [6.0])


def test_a_typo_in_the_plugins_settings_is_the_models_reason(site: Path, tmp_path: Path) -> None:
    # The plugin's Settings validate its keys, so `factr` is caught before the model loads:
    # that model is UNAVAILABLE with the reason, and the server keeps serving the others.
    write_model(tmp_path, "scaled", SCALED_CONFIG.replace("factor", "factr"))
    args = ["--model-repository", str(tmp_path)]
    with ServerProcess(args, env=with_site(site)) as server:
        status = json.loads(urllib.request.urlopen(f"{server.http_url}/api/status").read())
    (model,) = [m for m in status["models"] if m["name"] == "scaled"]
    (version,) = model["versions"]
    assert version["state"] == "UNAVAILABLE"
    assert "factr: unknown key (did you mean factor?)" in version["reason"]


def test_a_typo_in_the_plugins_settings_stops_a_strict_start_up(site: Path, tmp_path: Path) -> None:
    write_model(tmp_path / "models", "scaled", SCALED_CONFIG.replace("factor", "factr"))
    config = tmp_path / "server.yaml"
    config.write_text("server: {strict_model_loading: true}\nmodel_repository: models\n")
    with pytest.raises(RuntimeError) as caught:
        ServerProcess(["-c", str(config)], env=with_site(site)).start()
    assert "factr: unknown key (did you mean factor?)" in str(caught.value)
