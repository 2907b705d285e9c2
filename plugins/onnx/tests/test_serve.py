"""ONNX models served end to end: the real server in a subprocess, Triton's own clients.

One server for the module, over a repository of:

- ``mlp``: exported from torch, ``max_batch_size: 8`` (dynamic batching on);
- ``text``: the ``onnx.helper`` string model, no config.yaml at all (found by ``*.onnx``);
- ``fallback``: the mlp with ``providers: [cuda]``;
- ``fixed``: exported with a fixed batch of 1 but configured with ``max_batch_size: 4``,
  which the backend refuses at load, while the rest of the repository serves.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess


def add_model(root: Path, name: str, file: Path, config: dict[str, Any] | None) -> None:
    version = root / name / "1"
    version.mkdir(parents=True)
    shutil.copy(file, version / "model.onnx")
    if config is not None:
        (root / name / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def server(built: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("onnx-repo")
    add_model(root, "mlp", built.mlp_file, {"max_batch_size": 8, "max_queue_delay_ms": 5})
    add_model(root, "text", built.text_file, None)
    add_model(root, "fallback", built.mlp_file, {"backend": "onnx", "providers": ["cuda"]})
    add_model(root, "fixed", built.fixed_file, {"max_batch_size": 4})
    with ServerProcess(["--model-repository", str(root)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_address)


@pytest.fixture(scope="module")
def http_client(server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_address)


def grpc_infer(client: grpcclient.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("mlp", [tensor]).as_numpy("probs")


def test_grpc_infer_matches_torch_and_onnxruntime(
    built: Any, grpc_client: Any, torch_run: Any, ort_run: Any
) -> None:
    x = np.random.default_rng(11).standard_normal((3, 4)).astype(np.float32)
    probs = grpc_infer(grpc_client, x)
    assert probs.shape == (3, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, torch_run(built.mlp, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, ort_run(built.mlp_file, {"x": x})[0], rtol=1e-6, atol=1e-7)


def test_concurrent_requests_are_batched_and_split_back(
    built: Any, grpc_client: Any, torch_run: Any
) -> None:
    rng = np.random.default_rng(12)
    arrays = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 2, 1, 3, 1, 2)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda a: grpc_infer(grpc_client, a), arrays))
    for array, probs in zip(arrays, results, strict=True):
        np.testing.assert_allclose(probs, torch_run(built.mlp, array), rtol=1e-5, atol=1e-6)


def test_metadata_is_read_from_the_graph(grpc_client: Any, http_client: Any) -> None:
    meta = grpc_client.get_model_metadata("mlp", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": ["-1", "3"]}]
    text = http_client.get_model_metadata("text")
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in text["outputs"]] == [
        ("shout", "BYTES"),
        ("three", "BOOL"),
        ("label", "INT64"),
        ("echo", "BYTES"),
    ]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_string_model(built: Any, http_client: Any, ort_run: Any, binary: bool) -> None:
    words = ["cat", "dogs", "été"]
    text = httpclient.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(
        np.array([w.encode() for w in words], dtype=object), binary_data=binary
    )
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=binary)
        for name in ("shout", "three", "label")
    ]
    result = http_client.infer("text", [text], outputs=outputs)
    shout, three, label, _ = ort_run(built.text_file, {"text": np.array(words, dtype=object)})
    # JSON carries BYTES as text, which tritonclient hands back as str.
    got = [v.encode() if isinstance(v, str) else bytes(v) for v in result.as_numpy("shout")]
    assert got == [s.encode() for s in shout]
    assert got[2] == "été!".encode()
    np.testing.assert_array_equal(result.as_numpy("three"), three)
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    assert list(result.as_numpy("label")) == [0, -1, 2]


def test_grpc_bad_inputs_are_invalid_argument(grpc_client: Any, built: Any, torch_run: Any) -> None:
    wrong_type = grpcclient.InferInput("x", [1, 4], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 4), np.float64))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer("mlp", [wrong_type])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x'" in caught.value.message() and "FP32 expected" in caught.value.message()
    wrong_shape = grpcclient.InferInput("x", [2, 5], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((2, 5), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer("mlp", [wrong_shape])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape [2, 5] given, [-1, 4] expected" in caught.value.message()
    # The model keeps serving.
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(grpc_infer(grpc_client, x), torch_run(built.mlp, x), rtol=1e-5)


def test_http_bad_inputs_are_400(http_client: Any) -> None:
    unknown = httpclient.InferInput("words", [1], "BYTES")
    unknown.set_data_from_numpy(np.array([b"a"], dtype=object))
    with pytest.raises(InferenceServerException) as caught:
        http_client.infer("text", [unknown])
    assert caught.value.status() == "400"
    assert "no input named 'words'; its inputs are: text" in caught.value.message()
    batchless = httpclient.InferInput("x", [4], "FP32")
    batchless.set_data_from_numpy(np.zeros(4, np.float32))
    with pytest.raises(InferenceServerException) as caught:
        http_client.infer("mlp", [batchless])
    assert caught.value.status() == "400" and "shape [4] given" in caught.value.message()
    good = httpclient.InferInput("text", [1], "BYTES")
    good.set_data_from_numpy(np.array([b"dog"], dtype=object))
    assert list(http_client.infer("text", [good]).as_numpy("label")) == [1]


def test_asking_for_cuda_without_a_gpu_serves_on_cpu_and_logs_why(
    server: ServerProcess, grpc_client: Any, cpu_only: None, built: Any, torch_run: Any
) -> None:
    assert grpc_client.is_model_ready("fallback")
    x = np.ones((2, 4), np.float32)
    tensor = grpcclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    probs = grpc_client.infer("fallback", [tensor]).as_numpy("probs")
    np.testing.assert_allclose(probs, torch_run(built.mlp, x), rtol=1e-5, atol=1e-6)
    # One key=value line, as the kernel logs.
    [line] = [
        line
        for line in server.output().splitlines()
        if "onnx provider fallback" in line and "model=fallback" in line
    ]
    assert "asked_for=CUDAExecutionProvider" in line and "version=1" in line
    assert "running_on=CPUExecutionProvider" in line
    assert "reason=" in line and "onnxruntime could not start CUDAExecutionProvider" in line


def test_model_without_a_batch_axis_is_refused_and_others_serve(
    server: ServerProcess, http_client: Any, grpc_client: Any
) -> None:
    assert not http_client.is_model_ready("fixed")
    assert http_client.is_model_ready("mlp") and http_client.is_model_ready("text")
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer("fixed", [tensor])
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    assert "input 'x' has a fixed first dimension 1" in caught.value.message()
    assert "needs a dynamic batch dimension first" in server.output()
