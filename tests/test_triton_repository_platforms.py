"""Triton model repositories of the framework platforms, served as they are: ONNX
(``onnxruntime_onnx``), TorchScript (``pytorch_libtorch``) and SavedModel
(``tensorflow_savedmodel``) models laid out as Triton's docs lay them out
(``<model>/config.pbtxt``, ``<model>/1/model.onnx`` / ``model.pt`` / ``model.savedmodel/``),
served by a real ``dl-inference serve`` and called with tritonclient over HTTP and gRPC as
a script written for Triton calls them. Answers are compared with the framework run in this
process; the Triton build here has only the python backend, so these platforms cannot be
compared side by side with Triton itself.

A platform whose framework is not importable is left out of the repository, and its tests
skip saying so.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dl_inference.testing import ServerProcess

grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
from tritonclient.utils import InferenceServerException  # noqa: E402

# -- the models, as Triton's docs write their configs -------------------------------------------

ONNX_CONFIG = """
name: "onnx_simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "features" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "offset" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "sum" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "difference" data_type: TYPE_FP32 dims: [ 4 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
# Auto-complete: no input / output; Triton fills them from the graph.
ONNX_AUTO_CONFIG = """
backend: "onnxruntime"
"""
# INPUT__1 listed first, OUTPUT__1 first: Triton maps them by their index, not the order.
TORCH_CONFIG = """
name: "torch_indexed"
platform: "pytorch_libtorch"
max_batch_size: 8
input [
  { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] }
]
output [
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] }
]
dynamic_batching { }
instance_group [ { kind: KIND_GPU } ]
"""
# forward()'s own argument names, listed in another order than forward() takes them.
TORCH_NAMED_CONFIG = """
backend: "pytorch"
max_batch_size: 0
input [
  { name: "scale" data_type: TYPE_INT64 dims: [ 1 ] },
  { name: "x" data_type: TYPE_INT64 dims: [ -1 ] }
]
output [ { name: "scaled" data_type: TYPE_INT64 dims: [ -1 ] } ]
"""
TF_CONFIG = """
platform: "tensorflow_savedmodel"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "total" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
TF_AUTO_CONFIG = """
backend: "tensorflow"
"""


def _write(root: Path, name: str, config: str) -> Path:
    version = root / name / "1"
    version.mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(textwrap.dedent(config))
    return version


def _onnx_model(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def tensor(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["features", "offset"], ["sum"]),
            helper.make_node("Sub", ["features", "offset"], ["difference"]),
        ],
        "simple",
        [tensor("features"), tensor("offset")],
        [tensor("sum"), tensor("difference")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what the onnxruntime of any supported version reads
    onnx.save(model, str(path))


def _torch_models(indexed: Path, named: Path) -> None:
    torch = pytest.importorskip("torch")

    class Indexed(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a - b, a * 2 + b

    class Named(torch.nn.Module):
        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return x * scale

    torch.jit.save(torch.jit.script(Indexed()), str(indexed))
    torch.jit.save(torch.jit.script(Named()), str(named))


def _saved_model(path: Path) -> None:
    tf = pytest.importorskip("tensorflow")

    class Totals(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"doubled": x * 2.0, "total": tf.reduce_sum(x, axis=1, keepdims=True)}

    module = Totals()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


PLATFORMS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx_simple", "onnx_auto"),
    "torch": ("torch_indexed", "torch_named"),
    "tensorflow": ("tf_savedmodel", "tf_auto"),
}


def _build(root: Path) -> dict[str, str]:
    """Write each platform's models; returns the platforms left out, with the reason."""
    missing: dict[str, str] = {}
    builders: dict[str, Callable[[], None]] = {
        "onnx": lambda: [
            _onnx_model(_write(root, name, config) / "model.onnx")
            for name, config in (("onnx_simple", ONNX_CONFIG), ("onnx_auto", ONNX_AUTO_CONFIG))
        ],
        "torch": lambda: _torch_models(
            _write(root, "torch_indexed", TORCH_CONFIG) / "model.pt",
            _write(root, "torch_named", TORCH_NAMED_CONFIG) / "model.pt",
        ),
        "tensorflow": lambda: [
            _saved_model(_write(root, name, config) / "model.savedmodel")
            for name, config in (("tf_savedmodel", TF_CONFIG), ("tf_auto", TF_AUTO_CONFIG))
        ],
    }
    for platform, build in builders.items():
        try:
            build()
        except pytest.skip.Exception as exc:
            missing[platform] = str(exc)
            for name in PLATFORMS[platform]:
                _remove(root / name)
    return missing


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


class Served:
    def __init__(self, root: Path, server: ServerProcess, missing: dict[str, str]) -> None:
        self.root = root
        self.server = server
        self.missing = missing

    def need(self, platform: str) -> None:
        if platform in self.missing:
            pytest.skip(f"{platform} is not importable here: {self.missing[platform]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("triton_repository")
    missing = _build(root)
    if len(missing) == len(PLATFORMS):
        pytest.skip("no framework is importable: " + "; ".join(missing.values()))
    with ServerProcess(["--model-repository", str(root)], timeout=300) as server:
        client = httpclient.InferenceServerClient(server.http_address)
        names = [n for p, names in PLATFORMS.items() if p not in missing for n in names]
        deadline = time.monotonic() + 240
        while not all(client.is_model_ready(n) for n in names):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.5)
        yield Served(root, server, missing)


def _client(served: Served, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(served.server.http_address)
    return grpcclient.InferenceServerClient(served.server.grpc_address)


def _infer(
    served: Served, protocol: str, model: str, inputs: dict[str, np.ndarray], datatype: str
) -> Any:
    module = httpclient if protocol == "http" else grpcclient
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return _client(served, protocol).infer(model, tensors)


def _metadata(served: Served, protocol: str, model: str) -> dict[str, Any]:
    client = _client(served, protocol)
    if protocol == "http":
        return client.get_model_metadata(model)
    return client.get_model_metadata(model, as_json=True)


def _tensors(metadata: dict[str, Any], kind: str) -> list[tuple[str, str, list[int]]]:
    return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata[kind]]


def _same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def _wrong_shape(served: Served, protocol: str, model: str, inputs: dict[str, np.ndarray]) -> str:
    """The error a wrong shape gets: HTTP 400 / gRPC INVALID_ARGUMENT, its message."""
    with pytest.raises(InferenceServerException) as caught:
        _infer(served, protocol, model, inputs, "FP32")
    status = caught.value.status()
    assert status == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"), status
    return caught.value.message()


PROTOCOLS = pytest.mark.parametrize("protocol", ["http", "grpc"])


# -- ONNX ----------------------------------------------------------------------------------------


@PROTOCOLS
def test_onnx_model_answers_as_onnxruntime(served: Served, protocol: str) -> None:
    served.need("onnx")
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    inputs = {
        "features": rng.standard_normal((2, 4)).astype(np.float32),
        "offset": rng.standard_normal((2, 4)).astype(np.float32),
    }
    session = ort.InferenceSession(str(served.root / "onnx_simple/1/model.onnx"))
    names = ["sum", "difference"]
    expected = dict(zip(names, session.run(names, inputs), strict=True))
    for model in ("onnx_simple", "onnx_auto"):
        result = _infer(served, protocol, model, inputs, "FP32")
        for name, array in expected.items():
            _same(result.as_numpy(name), array)


@PROTOCOLS
def test_onnx_metadata_names_the_graphs_tensors(served: Served, protocol: str) -> None:
    served.need("onnx")
    for model in ("onnx_simple", "onnx_auto"):
        metadata = _metadata(served, protocol, model)
        assert metadata["platform"] == "onnxruntime_onnx"
        assert _tensors(metadata, "inputs") == [
            ("features", "FP32", [-1, 4]),
            ("offset", "FP32", [-1, 4]),
        ]
        assert _tensors(metadata, "outputs") == [
            ("sum", "FP32", [-1, 4]),
            ("difference", "FP32", [-1, 4]),
        ]


@PROTOCOLS
def test_onnx_wrong_shape_is_the_clients_error(served: Served, protocol: str) -> None:
    served.need("onnx")
    bad = np.zeros((2, 5), dtype=np.float32)
    message = _wrong_shape(served, protocol, "onnx_simple", {"features": bad, "offset": bad})
    assert "features" in message


# -- TorchScript ---------------------------------------------------------------------------------


@PROTOCOLS
def test_torchscript_tensors_map_by_index_as_on_triton(served: Served, protocol: str) -> None:
    """INPUT__0 is forward()'s first argument and OUTPUT__1 the result's second item,
    whatever order config.pbtxt lists them in."""
    served.need("torch")
    import torch

    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 3)).astype(np.float32)
    b = rng.standard_normal((3, 3)).astype(np.float32)
    module = torch.jit.load(str(served.root / "torch_indexed/1/model.pt"))
    first, second = (t.numpy() for t in module(torch.from_numpy(a), torch.from_numpy(b)))
    result = _infer(served, protocol, "torch_indexed", {"INPUT__0": a, "INPUT__1": b}, "FP32")
    _same(result.as_numpy("OUTPUT__0"), first)
    _same(result.as_numpy("OUTPUT__1"), second)


@PROTOCOLS
def test_torchscript_inputs_named_as_forwards_arguments(served: Served, protocol: str) -> None:
    served.need("torch")
    import torch

    x = np.array([1, 2, 3, 4], dtype=np.int64)
    scale = np.array([7], dtype=np.int64)
    module = torch.jit.load(str(served.root / "torch_named/1/model.pt"))
    expected = module(torch.from_numpy(x), torch.from_numpy(scale)).numpy()
    result = _infer(served, protocol, "torch_named", {"scale": scale, "x": x}, "INT64")
    _same(result.as_numpy("scaled"), expected)


@PROTOCOLS
def test_torchscript_metadata_is_config_pbtxts(served: Served, protocol: str) -> None:
    served.need("torch")
    metadata = _metadata(served, protocol, "torch_indexed")
    assert metadata["platform"] == "pytorch_libtorch"
    assert _tensors(metadata, "inputs") == [
        ("INPUT__1", "FP32", [-1, 3]),
        ("INPUT__0", "FP32", [-1, 3]),
    ]
    assert _tensors(metadata, "outputs") == [
        ("OUTPUT__1", "FP32", [-1, 3]),
        ("OUTPUT__0", "FP32", [-1, 3]),
    ]
    named = _metadata(served, protocol, "torch_named")
    assert _tensors(named, "inputs") == [("scale", "INT64", [1]), ("x", "INT64", [-1])]


@PROTOCOLS
def test_torchscript_wrong_shape_is_the_clients_error(served: Served, protocol: str) -> None:
    served.need("torch")
    bad = np.zeros((1, 4), dtype=np.float32)
    message = _wrong_shape(served, protocol, "torch_indexed", {"INPUT__0": bad, "INPUT__1": bad})
    assert "INPUT__" in message


# -- SavedModel ----------------------------------------------------------------------------------


@PROTOCOLS
def test_savedmodel_answers_as_tensorflow(served: Served, protocol: str) -> None:
    """config.pbtxt's one output is all tf_savedmodel answers; tf_auto answers every output
    of the signature (auto-complete)."""
    served.need("tensorflow")
    import tensorflow as tf

    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    function = tf.saved_model.load(str(served.root / "tf_auto/1/model.savedmodel"))
    expected = {k: v.numpy() for k, v in function.signatures["serving_default"](x=x).items()}
    result = _infer(served, protocol, "tf_savedmodel", {"x": x}, "FP32")
    _same(result.as_numpy("total"), expected["total"])
    assert result.as_numpy("doubled") is None
    auto = _infer(served, protocol, "tf_auto", {"x": x}, "FP32")
    for name, array in expected.items():
        _same(auto.as_numpy(name), array)


@PROTOCOLS
def test_savedmodel_metadata_names_the_signatures_keys(served: Served, protocol: str) -> None:
    served.need("tensorflow")
    metadata = _metadata(served, protocol, "tf_savedmodel")
    assert metadata["platform"] == "tensorflow_savedmodel"
    assert _tensors(metadata, "inputs") == [("x", "FP32", [-1, 3])]
    assert _tensors(metadata, "outputs") == [("total", "FP32", [-1, 1])]
    auto = _metadata(served, protocol, "tf_auto")
    assert _tensors(auto, "inputs") == [("x", "FP32", [-1, 3])]
    assert _tensors(auto, "outputs") == [
        ("doubled", "FP32", [-1, 3]),
        ("total", "FP32", [-1, 1]),
    ]


@PROTOCOLS
def test_savedmodel_wrong_shape_is_the_clients_error(served: Served, protocol: str) -> None:
    served.need("tensorflow")
    message = _wrong_shape(
        served, protocol, "tf_savedmodel", {"x": np.zeros((2, 4), dtype=np.float32)}
    )
    assert "x" in message


# -- what Triton refuses at load, refused here too (in process) ---------------------------------


def _load_reason(root: Path, name: str) -> str:
    from dl_inference.kernel.models import ModelRegistry, ModelState
    from dl_inference.kernel.plugins import PluginHost
    from dl_inference.kernel.repository import scan_repository

    async def load() -> ModelRegistry:
        models = ModelRegistry(PluginHost().load())
        models.prepare(scan_repository(root))
        await models.load_all()
        return models

    (version,) = asyncio.run(load()).versions(name)
    assert version.state is ModelState.UNAVAILABLE
    return version.reason


BAD_MODELS = {
    "onnx_unknown_input": (
        "onnx",
        ONNX_CONFIG.replace('name: "onnx_simple"', "").replace('"offset"', '"bias"'),
        "config.pbtxt declares input 'bias', which model.onnx does not have",
    ),
    "onnx_wrong_file": (
        "onnx",
        ONNX_CONFIG.replace('name: "onnx_simple"', 'default_model_filename: "other.onnx"'),
        "other.onnx does not exist",
    ),
    "torch_no_outputs": (
        "torch",
        'platform: "pytorch_libtorch"\ninput [ { name: "INPUT__0" data_type: TYPE_FP32 '
        "dims: [ 3 ] } ]",
        "a pytorch_libtorch model needs its input [...] and output [...]",
    ),
    "torch_input_count": (
        "torch",
        TORCH_CONFIG.replace('name: "torch_indexed"', "").replace(
            ',\n  { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] }', ""
        ),
        "config.pbtxt declares 1 input(s) (INPUT__1), but model.pt's forward(a, b) takes 2",
    ),
    "tf_wrong_datatype": (
        "tensorflow",
        TF_CONFIG.replace("TYPE_FP32 dims: [ 3 ]", "TYPE_INT32 dims: [ 3 ]"),
        "config.pbtxt declares input 'x' as INT32 [-1, 3], but signature 'serving_default' "
        "has FP32 [-1, 3]",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_a_config_pbtxt_the_model_does_not_fit_fails_its_load(
    served: Served, tmp_path: Path, name: str
) -> None:
    platform, config, reason = BAD_MODELS[name]
    served.need(platform)
    source = {"onnx": "onnx_simple", "torch": "torch_indexed", "tensorflow": "tf_savedmodel"}
    import shutil

    shutil.copytree(served.root / source[platform] / "1", tmp_path / name / "1")
    (tmp_path / name / "config.pbtxt").write_text(textwrap.dedent(config))
    assert reason in _load_reason(tmp_path, name)
