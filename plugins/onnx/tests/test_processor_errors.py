"""onnxruntime's shape errors through a model's processor.py, served by `dl-inference serve`.

``preprocess()`` turns what clients send (checked against config.yaml) into the graph's
inputs, which the kernel does not check again: onnxruntime does, and its refusal is the
client's INVALID_ARGUMENT / 400 in one line, with or without ``run_model()``.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dl_inference.testing import ServerProcess, post_json

PROCESSOR = """
    import numpy as np

    def preprocess(x, **kwargs):
        return np.asarray(x, dtype=np.float32).reshape(1, -1)

    def run_model(model, x, **kwargs):
        return model(x)
"""


def matmul_model(path: Path) -> None:
    """y = x @ ones([4, 3]) over x: FP32 [batch, 4]."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [1.0] * 12)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    matmul_model(repo / "rows" / "1" / "model.onnx")
    (repo / "rows" / "processor.py").write_text(textwrap.dedent(PROCESSOR))
    # Clients send any number of values; the graph takes rows of 4.
    (repo / "rows" / "config.yaml").write_text(
        "inputs: [{name: values, datatype: FP32, shape: [-1]}]\n"
    )
    with ServerProcess(["--model-repository", str(repo)]) as srv:
        yield srv


def post(server: ServerProcess, values: list[float]) -> tuple[int, dict[str, Any]]:
    body = {
        "inputs": [{"name": "values", "datatype": "FP32", "shape": [len(values)], "data": values}]
    }
    return post_json(f"{server.http_url}/v2/models/rows/infer", body)


def test_onnxruntime_shape_error_through_processor_is_a_short_400(server: ServerProcess) -> None:
    status, body = post(server, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert status == 400, body
    message = body["error"]
    assert message.startswith("model 'rows': Got invalid dimensions for input: x"), message
    assert "Got: 5 Expected: 4" in message
    # One line, no server path ("inputs/outputs" is onnxruntime's own word).
    assert "\n" not in message and not re.search(r"(^|[\s(\"'])/\w", message), message
    assert len(json.dumps(body)) <= 300, body
    # The server keeps serving: a request that fits answers.
    status, body = post(server, [1.0, 2.0, 3.0, 4.0])
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"][0]["data"], [10.0, 10.0, 10.0])
