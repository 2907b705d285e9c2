"""Request parameters named like predict()'s or the hooks' own arguments, through a real server.

``{"inputs": 1}`` or ``{"self": 1}`` once made Python raise TypeError ("got multiple
values for argument"), answered INTERNAL / 500 on every backend. Now a parameter either
reaches the model (the kernel's backends take ``inputs`` positional-only) or, where user
code names it as an argument, is refused as the client's error naming it.
"""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, write_python_model

ECHO = """
    import numpy as np
    from dl_inference import PythonModel

    class Echo(PythonModel):
        def predict(self, inputs{slash}, **parameters):
            names = np.array([",".join(sorted(parameters)).encode()], dtype=object)
            return {{"y": inputs["x"] + 1, "names": names}}
"""


def add_one_onnx(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("parameters")
    # As users write it (inputs may be passed by keyword), and positional-only.
    write_python_model(repo, "plain", ECHO.format(slash=""))
    write_python_model(repo, "open", ECHO.format(slash=", /"))
    write_python_model(repo, "hooked", ECHO.format(slash=", /"))
    (repo / "hooked" / "processor.py").write_text(
        textwrap.dedent(
            """
            def preprocess(x, **kwargs):
                return {"x": x}
            """
        )
    )
    add_one_onnx(repo / "onnx" / "1" / "model.onnx")
    with ServerProcess(["--model-repository", str(repo)]) as srv:
        yield srv


def rest(server: ServerProcess, model: str, parameters: dict[str, Any]) -> tuple[int, Any]:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}],
        "parameters": parameters,
    }
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def output(reply: Any, name: str) -> list[Any]:
    return next(o["data"] for o in reply["outputs"] if o["name"] == name)


@pytest.mark.parametrize("name", ["inputs", "self"])
def test_python_model_naming_the_argument_refuses_the_parameter(
    server: ServerProcess, name: str
) -> None:
    status, reply = rest(server, "plain", {name: 1})
    assert status == 400, reply
    assert f"request parameter {name!r}" in reply["error"]
    assert "model.py predict()" in reply["error"]
    assert "def predict(self, inputs, /, **parameters)" in reply["error"]
    status, reply = rest(server, "plain", {"scale": 1})  # other names still reach predict
    assert status == 200 and output(reply, "names") == ["scale"]


@pytest.mark.parametrize("model", ["open", "onnx"])
def test_positional_only_predict_takes_any_parameter_name(
    server: ServerProcess, model: str
) -> None:
    status, reply = rest(server, model, {"inputs": 1, "self": 2, "x": 3})
    assert status == 200, reply
    assert output(reply, "y") == [2.0, 3.0]
    if model == "open":
        assert output(reply, "names") == ["inputs,self,x"]


def test_hook_argument_names_are_refused_others_pass(server: ServerProcess) -> None:
    status, reply = rest(server, "hooked", {"x": 1})
    assert status == 400, reply
    assert (
        "request parameter 'x'" in reply["error"] and "processor.py preprocess()" in reply["error"]
    )
    status, reply = rest(server, "hooked", {"inputs": 1, "self": 1})
    assert status == 200, reply
    assert output(reply, "names") == ["inputs,self"]


def test_grpc_answers_invalid_argument_or_serves(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1.0, 2.0], np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("plain", [tensor], parameters={"inputs": 1})
    assert "INVALID_ARGUMENT" in str(caught.value.status())
    assert "request parameter 'inputs'" in caught.value.message()
    served = client.infer("onnx", [tensor], parameters={"self": 1, "inputs": 2})
    np.testing.assert_allclose(served.as_numpy("y"), [2.0, 3.0])
