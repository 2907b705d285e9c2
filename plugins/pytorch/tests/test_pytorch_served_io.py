"""End to end through `dl-inference serve`: TorchScript inputs/outputs from config.yaml,
torch's shape errors as short 400s, and TorchServe's eager pattern (model.py + state_dict).

Plain HTTP (the V2 REST API, to read the exact error bodies) and tritonclient (gRPC).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _torch_models import features, reference, write_config, write_eager

from dl_inference.testing import ServerProcess, post_json

grpcclient = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

# torch 2.10+ deprecates TorchScript; the backend still serves it (and these tests save it).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class TwoInputs(torch.nn.Module):
    """forward(x, y): scores = fc(x) + y and total = x summed per row; x has 4 features,
    y 3, so swapping them fails."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x) + y, x.sum(1, keepdim=True)


class Broken(torch.nn.Module):
    """Fails whatever it is given, for a reason that is not the request's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.isnan().any()):
            return x
        raise RuntimeError("the model's lookup table is empty")


def script(module: torch.nn.Module, folder: Path) -> torch.nn.Module:
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    module = module.eval()
    torch.jit.save(torch.jit.script(module), folder / "model.pt")
    return module


TWO_CONFIG = {
    "backend": "pytorch",
    "max_batch_size": 8,
    "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [4]},
        {"name": "y", "datatype": "FP32", "shape": [3]},
    ],
    "outputs": [
        {"name": "scores", "datatype": "FP32", "shape": [3]},
        {"name": "total", "datatype": "FP32", "shape": [1]},
    ],
}
# Any feature count is accepted by config.yaml: torch itself finds [.., 7] wrong.
LINEAR_CONFIG = {
    "backend": "pytorch",
    "max_batch_size": 8,
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [8]}],
}


@dataclass
class Served:
    server: ServerProcess
    client: Any
    modules: dict[str, torch.nn.Module]

    def post(self, model: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return post_json(f"{self.server.http_url}/v2/models/{model}/infer", body)

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.server.http_url + path, timeout=60) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("repo")
    modules = {
        "two": script(TwoInputs(), root / "two" / "1"),
        "linear": script(torch.nn.Linear(4, 8), root / "linear" / "1"),
        "bare": script(torch.nn.Linear(4, 8), root / "bare" / "1"),
        "broken": script(Broken(), root / "broken" / "1"),
        # No config.yaml: model.py + model.pth must be recognised as the eager pattern.
        "eager": write_eager(root, "eager", None, seed=5),
    }
    write_config(root, "two", TWO_CONFIG)
    write_config(root, "linear", LINEAR_CONFIG)
    write_config(root, "bare", {"backend": "pytorch"})
    write_config(root, "broken", {"backend": "pytorch"})
    # A state_dict alone: the model is UNAVAILABLE and says why; the others serve.
    state = root / "weights_only" / "1"
    state.mkdir(parents=True)
    torch.save(torch.nn.Linear(4, 8).state_dict(), state / "model.pth")
    write_config(root, "weights_only", {"backend": "pytorch"})
    with ServerProcess(["--model-repository", str(root)]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_address)
        try:
            yield Served(server, client, modules)
        finally:
            client.close()


def v2_input(name: str, array: np.ndarray, datatype: str = "FP32") -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.ravel().tolist(),
    }


def triton_input(name: str, array: np.ndarray, datatype: str = "FP32") -> Any:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def assert_short_and_clean(message: str) -> None:
    """One line a client can read: no traceback, no server path, no server file name."""
    assert "Traceback" not in message and "\n" not in message
    assert "/" not in message and ".py" not in message and "site-packages" not in message
    assert len(message) <= 300, message


# -- TorchScript with inputs / outputs in config.yaml ------------------------------------------


def test_metadata_shows_the_configured_inputs_and_outputs(served):
    meta = served.get("/v2/models/two")
    assert meta["platform"] == "pytorch"
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert meta["outputs"] == [
        {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "total", "datatype": "FP32", "shape": [-1, 1]},
    ]
    grpc_meta = served.client.get_model_metadata("two", as_json=True)
    assert [i["name"] for i in grpc_meta["inputs"]] == ["x", "y"]


def test_inputs_go_in_config_order_and_a_tuple_is_named_outputs(served):
    x, y = features(3, seed=1), np.random.default_rng(2).standard_normal((3, 3), np.float32)
    # The request lists y first: forward() still gets (x, y), as config.yaml orders them.
    result = served.client.infer(
        "two",
        [triton_input("y", y), triton_input("x", x)],
        outputs=[grpcclient.InferRequestedOutput(n) for n in ("scores", "total")],
    )
    with torch.inference_mode():
        scores, total = served.modules["two"](torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(result.as_numpy("scores"), scores.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("total"), total.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ([v2_input("x", features(1)), v2_input("z", np.zeros((1, 3), np.float32))], "'z'"),
        (
            [v2_input("x", features(1)), v2_input("y", np.zeros((1, 3), np.int64), "INT64")],
            "datatype INT64 given, FP32 expected",
        ),
        (
            [v2_input("x", np.zeros((1, 5), np.float32)), v2_input("y", features(1)[:, :3])],
            "shape [1, 5] given, [-1, 4] expected",
        ),
    ],
    ids=["name", "datatype", "shape"],
)
def test_requests_that_do_not_fit_the_config_are_400(served, inputs, expected):
    status, body = served.post("two", {"inputs": inputs})
    assert status == 400, body
    assert expected in body["error"]


def test_torch_shape_error_is_a_short_400_without_server_paths(served):
    status, body = served.post("linear", {"inputs": [v2_input("features", features(1)[:, :3])]})
    assert status == 400, body
    message = body["error"]
    assert message == (
        "model 'linear' rejected the input features [1, 3] (float32): "
        "mat1 and mat2 shapes cannot be multiplied (1x3 and 4x8)"
    )
    assert_short_and_clean(message)
    with pytest.raises(InferenceServerException) as caught:
        served.client.infer("linear", [triton_input("features", np.zeros((2, 7), np.float32))])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "(2x7 and 4x8)" in caught.value.message()
    assert_short_and_clean(caught.value.message())


def test_without_config_any_names_pass_and_torch_errors_are_still_400(served):
    meta = served.get("/v2/models/bare")
    assert "inputs" not in meta or not meta["inputs"]  # unknown: nothing is checked
    x = features(2)
    status, body = served.post("bare", {"inputs": [v2_input("anything", x)]})
    assert status == 200, body
    np.testing.assert_allclose(
        np.array(body["outputs"][0]["data"]).reshape(2, 8),
        reference(served.modules["bare"], x),
        rtol=1e-5,
        atol=1e-6,
    )
    status, body = served.post("bare", {"inputs": [v2_input("x", np.zeros((1, 7), np.float32))]})
    assert status == 400 and "(1x7 and 4x8)" in body["error"]
    assert_short_and_clean(body["error"])
    # Two inputs for a forward(input) of one: the request's fault too.
    two = [v2_input("a", x), v2_input("b", x)]
    status, body = served.post("bare", {"inputs": two})
    assert status == 400 and "forward()" in body["error"], body
    assert_short_and_clean(body["error"])


def test_a_model_error_not_about_the_input_stays_500_with_a_clear_message(served):
    status, body = served.post("broken", {"inputs": [v2_input("x", features(1))]})
    assert status == 500
    assert body["error"] == (
        "model 'broken' (model.pt) raised RuntimeError: the model's lookup table is empty"
    )
    served.server.wait_for_output("the model's lookup table is empty", "Traceback")


def test_the_server_keeps_serving_after_rejected_inputs(served):
    for _ in range(3):
        assert (
            served.post("linear", {"inputs": [v2_input("features", features(4)[:, :2])]})[0] == 400
        )
    x = features(4, seed=9)
    result = served.client.infer("linear", [triton_input("features", x)])
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference(served.modules["linear"], x), rtol=1e-5, atol=1e-6
    )


# -- TorchServe's eager pattern ---------------------------------------------------------------


def test_eager_model_answers_like_the_module_in_process(served):
    x = features(3, seed=4)
    expected = reference(served.modules["eager"], x)
    status, body = served.post("eager", {"inputs": [v2_input("x", x)]})
    assert status == 200, body
    np.testing.assert_allclose(
        np.array(body["outputs"][0]["data"], np.float32).reshape(3, 3),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )
    result = served.client.infer("eager", [triton_input("x", x)])
    np.testing.assert_allclose(result.as_numpy("output__0"), expected, rtol=1e-5, atol=1e-6)


def test_state_dict_without_model_py_is_unavailable_saying_so(served):
    status, body = served.post("weights_only", {"inputs": [v2_input("x", features(1))]})
    assert status == 503
    assert "model.pth is a state_dict" in body["error"] and "model.py" in body["error"]
    assert "pickled whole module" not in body["error"]
