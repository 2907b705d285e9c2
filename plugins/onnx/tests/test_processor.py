"""The seed's processor.py around an ONNX model: run by the kernel for any backend."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess

PROCESSOR = """
    import numpy as np

    def preprocess(text, **kwargs):
        # "1,2,3" (one BYTES element) -> a float row; bad numbers are the client's fault.
        values = [float(v) for v in text.decode().split(",")]
        return np.array([values], dtype=np.float32)

    def run_model(model, x, **kwargs):
        return model(model(x))  # twice: y = x + 2

    def postprocess(y, **kwargs):
        return {"total": np.array([y.sum() * float(kwargs.get("scale", 1))], np.float32)}
"""


def add_one_model(path: Path) -> None:
    """y = x + 1 over FP32 [-1, -1], built with the onnx helper API."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("processor")
    add_one_model(repo / "csv_sum" / "1" / "model.onnx")
    (repo / "csv_sum" / "1" / "processor.py").write_text(textwrap.dedent(PROCESSOR))
    (repo / "csv_sum" / "config.yaml").write_text(
        "inputs: [{name: TEXT, datatype: BYTES, shape: [1]}]\n"
        "outputs: [{name: total, datatype: FP32, shape: [1]}]\n"
    )
    add_one_model(repo / "plain" / "1" / "model.onnx")
    with ServerProcess(["--model-repository", str(repo)]) as srv:
        yield srv


def call(server: ServerProcess, text: bytes, **parameters: object) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("TEXT", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text], dtype=object))
    return client.infer("csv_sum", [tensor], parameters=parameters or None).as_numpy("total")


def test_processor_hooks_wrap_the_onnx_model(server: ServerProcess) -> None:
    values = np.array([1.0, 2.0, 3.5], np.float32)
    expected = (values + 2).sum() * 3  # run_model applies the model twice; scale from kwargs
    np.testing.assert_allclose(call(server, b"1,2,3.5", scale=3), [expected], rtol=1e-6)


def test_metadata_shows_what_clients_send(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    meta = client.get_model_metadata("csv_sum", as_json=True)
    assert meta["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": ["1"]}]
    assert meta["outputs"] == [{"name": "total", "datatype": "FP32", "shape": ["1"]}]
    plain = client.get_model_metadata("plain", as_json=True)
    assert plain["inputs"][0]["name"] == "x"  # no processor: the graph's own tensors


def test_bad_data_is_invalid_argument_naming_the_processor_line(server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as info:
        call(server, b"1,two,3")
    assert "INVALID_ARGUMENT" in str(info.value.status())
    assert "processor.py:6" in str(info.value) and "could not convert" in str(info.value)
    np.testing.assert_allclose(call(server, b"1"), [3.0])  # still serving
