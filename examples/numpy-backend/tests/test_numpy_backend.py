"""The ``numpy`` backend on its own, and served end to end through its entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from dl_inference import ConfigError, InvalidInput, ModelConfig, TensorSpec
from dl_inference.testing import ServerProcess
from dl_inference_numpy_example.backend import NumpyBackend, NumpySettings

RNG = np.random.default_rng(0)
W0, B0 = RNG.standard_normal((4, 8)).astype(np.float32), RNG.standard_normal(8).astype(np.float32)
W1, B1 = RNG.standard_normal((8, 3)).astype(np.float32), RNG.standard_normal(3).astype(np.float32)


def reference(x: np.ndarray) -> np.ndarray:
    """The MLP written out in numpy: relu between layers, softmax at the end."""
    logits = np.maximum(x @ W0 + B0, 0) @ W1 + B1
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_mlp(root: Path, name: str = "iris", **config: object) -> Path:
    version = root / name / "1"
    version.mkdir(parents=True)
    np.savez(version / "model.npz", w0=W0, b0=B0, w1=W1, b1=B1)
    (root / name / "config.yaml").write_text(
        yaml.safe_dump({"output_activation": "softmax", **config})
    )
    return version


def backend_for(version: Path) -> NumpyBackend:
    config = ModelConfig.from_mapping(yaml.safe_load((version.parent / "config.yaml").read_text()))
    settings = NumpySettings.model_validate(config.backend_options)
    backend = NumpyBackend(version.parent.name, "1", version, config, settings)
    backend.load()
    return backend


def test_registered_through_the_entry_point() -> None:
    """`dl-inference plugins` lists it as users see it: found through the entry point."""
    done = subprocess.run(
        [sys.executable, "-m", "dl_inference", "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["numpy"]["distribution"] == "dl-inference-numpy-example"
    assert rows["numpy"]["status"] == "loaded"
    assert rows["numpy"]["registers"] == {"backends": ["numpy"]}


def test_mlp_matches_numpy_reference(tmp_path: Path) -> None:
    backend = backend_for(write_mlp(tmp_path))
    assert backend.inputs() == [TensorSpec("x", "FP32", (-1, 4))]
    assert backend.outputs() == [TensorSpec("y", "FP32", (-1, 3))]
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    y = backend.predict({"x": x})["y"]
    np.testing.assert_allclose(y, reference(x), rtol=1e-5)
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-5)


def test_bad_files_and_settings(tmp_path: Path) -> None:
    version = write_mlp(tmp_path)
    np.savez(version / "model.npz", w0=W0, b0=B0, w2=W1, b2=B1)
    with pytest.raises(ConfigError, match=r"numbered 0, 1, 2, \.\.\. \(found \[0, 2\]\)"):
        backend_for(version)
    np.savez(version / "model.npz", w0=W0, b0=B0, w1=W0, b1=B0)
    with pytest.raises(ConfigError, match="w1 takes 4 features but the layer before gives 8"):
        backend_for(version)
    with pytest.raises(ValidationError, match="activation"):
        NumpySettings.model_validate({"activation": "gelu"})


def test_wrong_width_is_invalid_input(tmp_path: Path) -> None:
    backend = backend_for(write_mlp(tmp_path))
    with pytest.raises(InvalidInput, match="layer 0"):
        backend.predict({"x": np.ones((2, 5), np.float32)})
    with pytest.raises(InvalidInput, match="takes input 'x'; got z"):
        backend.predict({"z": np.ones((2, 4), np.float32)})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("numpy-repo")
    write_mlp(root, max_batch_size=16)
    with ServerProcess(["--model-repository", str(root)]) as srv:
        yield srv


def test_served_over_http(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_address)
    meta = client.get_model_metadata("iris")
    assert meta["platform"] == "numpy"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    tensor = httpclient.InferInput("x", [3, 4], "FP32")
    tensor.set_data_from_numpy(x)
    y = client.infer("iris", [tensor]).as_numpy("y")
    np.testing.assert_allclose(y, reference(x), rtol=1e-5)
    bad = httpclient.InferInput("x", [3, 5], "FP32")
    bad.set_data_from_numpy(np.ones((3, 5), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [bad])
    assert caught.value.status() == "400"
    assert "shape [3, 5] given, [-1, 4] expected" in caught.value.message()
