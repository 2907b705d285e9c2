"""TensorFlow's shape errors through a model's processor.py, served by `dl-inference serve`.

An op in ``preprocess()`` given the request's data, or the model run by ``run_model()``,
raises TensorFlow's ``InvalidArgumentError``: the client gets INVALID_ARGUMENT / 400 with
TensorFlow's reason in one line (not "Graph execution error:", no stack naming server
files); a bug in processor.py stays INTERNAL / 500 naming its line.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dl_inference.testing import ServerProcess, post_json

PROCESSORS = {
    "runs": """
        def run_model(model, x, **kwargs):
            return model(x)
    """,
    "reshapes": """
        import tensorflow as tf

        def preprocess(x, **kwargs):
            return tf.reshape(x, [-1, 4]).numpy()
    """,
    "preprocess_bug": """
        def preprocess(x, **kwargs):
            return x * undefined_scale
    """,
}


def save_matmul(folder: Path) -> None:
    """y = x @ ones([4, 3]); the signature takes any [n, m], so TensorFlow checks m."""
    import tensorflow as tf

    class MatMul(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.ones([4, 3]))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": tf.matmul(x, self.w)}

    module = MatMul()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("repo")
    for name, processor in PROCESSORS.items():
        save_matmul(root / name / "1")
        (root / name / "processor.py").write_text(textwrap.dedent(processor))
    # What clients send to the models with preprocess(): any number of values.
    for name in ("reshapes", "preprocess_bug"):
        (root / name / "config.yaml").write_text(
            "inputs: [{name: x, datatype: FP32, shape: [1, -1]}]\n"
        )
    with ServerProcess(["--model-repository", str(root)]) as srv:
        yield srv


def post(server: ServerProcess, model: str, values: list[float]) -> tuple[int, dict[str, Any]]:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, len(values)], "data": values}]
    }
    return post_json(f"{server.http_url}/v2/models/{model}/infer", body)


@pytest.mark.parametrize(
    ("model", "error"),
    [
        (
            "runs",
            "model 'runs' signature 'serving_default' rejected the inputs: "
            "Matrix size-incompatible: In[0]: [1,5], In[1]: [4,3]",
        ),
        (
            "reshapes",
            "model 'reshapes' rejected the input: "
            "Input to reshape is a tensor with 5 values, but the requested shape requires a "
            "multiple of 4",
        ),
    ],
)
def test_tensorflow_shape_error_through_processor_is_a_short_400(
    server: ServerProcess, model: str, error: str
) -> None:
    status, body = post(server, model, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert status == 400, body
    assert body["error"] == error
    text = json.dumps(body)
    assert "/" not in text and "Traceback" not in text and len(text) <= 300, text
    # The server keeps serving: the same model answers a request that fits.
    status, body = post(server, model, [1.0, 2.0, 3.0, 4.0])
    assert status == 200, body
    assert body["outputs"][0]["data"] == [10.0, 10.0, 10.0]


def test_a_processor_bug_stays_a_500_naming_its_line(server: ServerProcess) -> None:
    status, body = post(server, "preprocess_bug", [1.0, 2.0, 3.0, 4.0])
    assert status == 500, body
    assert body["error"] == (
        "processor.py preprocess() raised NameError: name 'undefined_scale' is not defined "
        "(processor.py:3)"
    )
