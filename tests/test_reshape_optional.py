"""config.yaml's ``reshape`` and ``optional`` (Triton's, see kernel/config/model_config.py)
with the kernel's own python backend, which merges requests along dimension 0: the model
sees ``reshape``, clients ``shape``; an optional input may be left out, and requests with
different sets of inputs are never merged into one execution."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from dl_inference import InferRequest, RequestContext
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.errors import InvalidInput
from dl_inference.testing import write_python_model

MODEL = """
    import time
    import numpy as np
    from dl_inference import PythonModel

    class Mixed(PythonModel):
        def predict(self, inputs):
            x = inputs["x"]  # [batch, 2, 2]: the reshape
            assert x.shape[1:] == (2, 2), x.shape
            time.sleep(0.05)  # lets concurrent requests queue and merge
            bias = inputs["bias"].reshape(-1, 1, 1) if "bias" in inputs else 100
            rows = np.full((x.shape[0], 1), x.shape[0], dtype=np.int64)
            return {"y": x.transpose(0, 2, 1) + bias, "rows": rows}
"""
CONFIG = """
    max_batch_size: 8
    max_queue_delay_ms: 50
    inputs:
      - {name: x, datatype: FP32, shape: [4], reshape: [2, 2]}
      - {name: bias, datatype: FP32, shape: [1], optional: true}
    outputs:
      - {name: y, datatype: FP32, shape: [4], reshape: [2, 2]}
      - {name: rows, datatype: INT64, shape: [1]}
"""


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    write_python_model(tmp_path, "mixed", MODEL, CONFIG)
    host = PluginHost(entry_points=[]).load()
    models = ModelRegistry(host)
    runtime = Runtime(host, models, access_log=False)
    models.prepare(scan_repository(tmp_path))
    await models.load_all(strict=True)
    yield runtime
    await models.unload_all()


async def infer(runtime: Runtime, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    request = InferRequest("mixed", {k: v.astype(np.float32) for k, v in inputs.items()})
    return (await runtime.infer(request, RequestContext(protocol="test", method="infer"))).outputs


async def test_reshape_in_and_out(runtime: Runtime) -> None:
    model = runtime.models.resolve("mixed", "")
    # clients see config's shape (metadata, validation), the model its reshape
    assert [(s.name, s.shape, s.optional) for s in model.inputs() or []] == [
        ("x", (-1, 4), False),
        ("bias", (-1, 1), True),
    ]
    assert [s.shape for s in model.backend.model_inputs() or []] == [(-1, 2, 2), (-1, 1)]
    out = await infer(runtime, x=np.array([[1, 2, 3, 4]]), bias=np.array([[10]]))
    assert out["y"].shape == (1, 4)
    assert out["y"].tolist() == [[11, 13, 12, 14]]


async def test_an_optional_input_left_out(runtime: Runtime) -> None:
    out = await infer(runtime, x=np.array([[1, 2, 3, 4]]))
    assert out["y"].tolist() == [[101, 103, 102, 104]]
    with pytest.raises(InvalidInput, match="needs input 'x'"):
        await infer(runtime, bias=np.array([[1]]))


async def test_requests_with_and_without_the_optional_input_never_merge(runtime: Runtime) -> None:
    calls = [
        {"x": np.full((1, 4), i)} | ({"bias": np.array([[i]])} if i % 2 else {}) for i in range(8)
    ]
    answers = await asyncio.gather(*(infer(runtime, **c) for c in calls))
    for i, out in enumerate(answers):
        assert out["y"].tolist() == [[i + (i if i % 2 else 100)] * 4]
    # some requests did merge (the batcher works), each batch of one kind only
    assert max(int(out["rows"][0, 0]) for out in answers) > 1


ONNX_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
"""


async def test_reshape_on_a_framework_backend(tmp_path: Path) -> None:
    """A Triton onnxruntime_onnx model whose graph takes [batch, 2, 2] while clients send
    [batch, 4]: the onnx backend checks config against the graph as the model sees it
    (the reshape), clients see dims."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("dl_inference_onnx")
    from onnx import TensorProto, helper

    def tensor(name: str) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2, 2])

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])],
        "square",
        [tensor("x")],
        [tensor("y")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (tmp_path / "square" / "1").mkdir(parents=True)
    onnx.save(model, str(tmp_path / "square" / "1" / "model.onnx"))
    (tmp_path / "square" / "config.pbtxt").write_text(ONNX_CONFIG)
    host = PluginHost().load()
    models = ModelRegistry(host)
    runtime = Runtime(host, models, access_log=False)
    models.prepare(scan_repository(tmp_path))
    await models.load_all(strict=True)
    try:
        served = runtime.models.resolve("square", "")
        assert [s.shape for s in served.inputs() or []] == [(-1, 4)]
        assert [s.shape for s in served.outputs() or []] == [(-1, 4)]
        request = InferRequest("square", {"x": np.array([[1, 2, 3, 4]], np.float32)})
        ctx = RequestContext(protocol="test", method="infer")
        out = (await runtime.infer(request, ctx)).outputs
        assert out["y"].tolist() == [[1, 3, 2, 4]]
    finally:
        await models.unload_all()
