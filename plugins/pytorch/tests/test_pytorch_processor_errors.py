"""torch's shape errors through a model's processor.py, served by `dl-inference serve`.

``run_model(model, x)`` gets the TorchScript module itself and ``preprocess()`` may run torch
ops on the request's data, so torch's errors reach the kernel without passing through the
backend's ``predict()``: the kernel asks the backend (``Backend.client_error``), and the
client gets the same short INVALID_ARGUMENT / 400 as without a processor. A bug in
processor.py stays INTERNAL / 500 naming its line.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _torch_models import write_config

from dl_inference.testing import ServerProcess, post_json

grpcclient = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

# torch 2.10+ deprecates TorchScript; the backend still serves it (and these tests save it).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROCESSORS = {
    # The seed's processor.py: run_model calls the module itself.
    "runs": """
        def run_model(model, x, **kwargs):
            return model(x)
    """,
    # A torch op on the request's data, before the model.
    "reshapes": """
        import torch

        def preprocess(x, **kwargs):
            return torch.from_numpy(x.copy()).view(-1, 4)
    """,
    # processor.py's own bugs: the model's errors, whatever the request.
    "preprocess_bug": """
        def preprocess(x, **kwargs):
            return x * undefined_scale
    """,
    "postprocess_bug": """
        LABELS = {}

        def postprocess(y, **kwargs):
            return LABELS[int(y.argmax())]
    """,
}


def write_model(root: Path, name: str, processor: str) -> None:
    folder = root / name / "1"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 8).eval()), folder / "model.pt")
    # No inputs in config.yaml: nothing is checked before torch sees the data.
    write_config(root, name, {"backend": "pytorch"})
    (root / name / "processor.py").write_text(textwrap.dedent(processor))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("repo")
    for name, processor in PROCESSORS.items():
        write_model(root, name, processor)
    with ServerProcess(["--model-repository", str(root)]) as srv:
        yield srv


def post(server: ServerProcess, model: str, values: list[float]) -> tuple[int, dict[str, Any]]:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, len(values)], "data": values}]
    }
    return post_json(f"{server.http_url}/v2/models/{model}/infer", body)


def assert_short_and_clean(message: str) -> None:
    """One line a client can read: no traceback, no server path."""
    assert "Traceback" not in message and "\n" not in message, message
    assert "/" not in message and "site-packages" not in message, message
    assert len(message) <= 300, message


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("runs", "mat1 and mat2 shapes cannot be multiplied (1x5 and 4x8)"),
        ("reshapes", "shape '[-1, 4]' is invalid for input of size 5"),
    ],
)
def test_torch_shape_error_through_processor_is_a_short_400(
    server: ServerProcess, model: str, reason: str
) -> None:
    status, body = post(server, model, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert status == 400, body
    assert body["error"] == f"model {model!r} rejected the input: {reason}"
    assert_short_and_clean(json.dumps(body))
    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("x", [2, 7], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 7), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert_short_and_clean(caught.value.message())
    # The server keeps serving: the same model answers a request that fits.
    status, body = post(server, model, [1.0, 2.0, 3.0, 4.0])
    assert status == 200, body
    assert body["outputs"][0]["shape"] == [1, 8]


@pytest.mark.parametrize(
    ("model", "error"),
    [
        (
            "preprocess_bug",
            "processor.py preprocess() raised NameError: name 'undefined_scale' is not "
            "defined (processor.py:3)",
        ),
        ("postprocess_bug", "processor.py postprocess() raised KeyError: "),
    ],
)
def test_a_processor_bug_stays_a_500_naming_its_line(
    server: ServerProcess, model: str, error: str
) -> None:
    status, body = post(server, model, [1.0, 2.0, 3.0, 4.0])
    assert status == 500, body
    assert body["error"].startswith(error), body
    assert body["error"].endswith(("(processor.py:3)", "(processor.py:5)")), body
