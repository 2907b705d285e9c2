"""The seed's clients work unchanged: stubs from the seed's own protos, on every method of
``WpaiDLPredictOnlineService``, against a dl-inference worker and through a dl-inference
gateway whose routes come from a seed ``nodefile.txt``.

The protos (``protos/``: the seed's ``wpai.proto`` with its real message types, TF Serving
1.x's, Seldon's ``prediction.proto``, Triton's 2020 ``grpc_service.proto``) are compiled
with ``grpc_tools.protoc`` into a temporary folder, and ``seed_client.py`` runs on them in a
subprocess: their full names (``tensorflow.serving.PredictRequest``, ...) are the ones
``tensorflow_serving.apis`` and ``tritonclient`` register, so they cannot share a process.

The worker serves small real models made here: TorchScript modules behind the seed's
``processor.py`` hooks for ``PytorchPredict`` / ``CaffePredict``, python models for
``Predict`` / ``TisPredict``, and (with TensorFlow installed) a small SavedModel with the
TextCnn client's ``prediction`` signature. Expected answers are computed here from the same
modules.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml

from dl_inference.testing import ServerProcess, write_python_model

HERE = Path(__file__).parent
PROTOS = HERE / "protos"
CLIENT = HERE / "seed_client.py"
# torch 2.10+ deprecates TorchScript; the pytorch backend still serves it.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def load_client() -> ModuleType:
    """seed_client.py's request data (it imports no stubs at module level)."""
    spec = importlib.util.spec_from_file_location("seed_client_data", CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seed = load_client()


# -- stubs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's protos compiled for Python, as importable packages, in a temporary folder."""
    grpc_tools = pytest.importorskip("grpc_tools")

    out = tmp_path_factory.mktemp("seed_stubs")
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    # protoc in a process of its own: run in this one, after the suite has loaded
    # protobuf and grpc, it crashed the test process.
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", *args, *sources],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"protoc failed on {sources}: {done.stderr}"
    # Regular packages (with __init__.py) first on sys.path win over the installed
    # tensorflow / tensorflow_serving in the client's process.
    for folder in [p for p in out.rglob("*") if p.is_dir()]:
        (folder / "__init__.py").touch()
    return out


def run_client(stubs: Path, target: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(CLIENT), str(stubs), target],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the models ----------------------------------------------------------------------------

WIDE_AND_DEEP = """
    import numpy as np
    from dl_inference import PythonModel

    class WideAndDeep(PythonModel):
        # Scores from each serialized tf.Example's size: enough to tell rows apart.
        def predict(self, inputs, **parameters):
            sizes = np.array([len(b) for b in inputs["inputs"].reshape(-1)], np.float32)
            p = sizes / (sizes + 100.0)
            return {
                "scores": np.stack([1 - p, p], axis=1).astype(np.float32),
                "classes": (p > 0.5).astype(np.int32),
            }
"""
WIDE_AND_DEEP_CONFIG = """
    inputs: [{name: inputs, datatype: BYTES, shape: [-1]}]
    outputs:
      - {name: scores, datatype: FP32, shape: [-1, 2]}
      - {name: classes, datatype: INT32, shape: [-1]}
"""

TIS = """
    import numpy as np
    from dl_inference import PythonModel

    class Tis(PythonModel):
        def predict(self, inputs, **parameters):
            x = inputs["input_1:0"]
            logits = np.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=1)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return {"dense_1/Softmax:0": (e / e.sum(axis=1, keepdims=True)).astype(np.float32)}
"""
TIS_CONFIG = """
    inputs: [{name: "input_1:0", datatype: FP32, shape: [-1, 8, 8, 3]}]
    outputs: [{name: "dense_1/Softmax:0", datatype: FP32, shape: [-1, 6]}]
"""


def tis_expected() -> np.ndarray:
    x = seed.tis_image()
    logits = np.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True))[0]


# The seed's PyTorch processor.py: binData (an image file) -> tensor; results as lists.
MNIST_PROCESSOR = """
    import io

    import numpy as np
    import torch
    from PIL import Image

    def preprocess(x, **kwargs):
        assert kwargs["meta"]["tags"]["taskId"] == 39
        image = Image.open(io.BytesIO(x)).convert("L").resize((28, 28))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(pixels).reshape(1, 1, 28, 28)

    def postprocess(y, **kwargs):
        return y.cpu().numpy().tolist()
"""

# The seed's Caffe service: a base64 image as strData; (label, score) per row.
CAFFE_PROCESSOR = """
    import base64
    import io

    import numpy as np
    import torch
    from PIL import Image

    def preprocess(x, **kwargs):
        data = x if isinstance(x, bytes) else str(x).encode()
        image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
        pixels = np.asarray(image, dtype=np.float32)
        return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)

    def postprocess(y, **kwargs):
        rows = []
        for p in y.cpu().numpy():
            label = int(p.argsort()[::-1][0])
            rows.append((label, float(p[label])))
        return np.array(rows)
"""


def write_text_cnn(root: Path) -> bool:
    """A SavedModel with TensorflowTextCnn.java's signature ``prediction``; False without
    TensorFlow (the TextCnn test then skips)."""
    try:
        import tensorflow as tf
    except ImportError:
        return False

    class TextCnn(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, seed.SEQ_LEN], tf.string, name="sentence"),
                tf.TensorSpec([None], tf.string, name="label"),
            ]
        )
        def predict(self, sentence: Any, label: Any) -> dict[str, Any]:
            real = tf.logical_and(sentence != "<pad>", sentence != "<eos>")
            share = tf.reduce_sum(tf.cast(real, tf.float32), axis=1) / seed.SEQ_LEN
            labels = tf.constant([["__label__yes", "__label__no"]])
            return {
                "output": tf.tile(labels, [tf.shape(sentence)[0], 1]),
                "score": tf.stack([share, 1.0 - share], axis=1),
            }

    module = TextCnn()
    path = root / seed.TEXT_CNN / "1"
    tf.saved_model.save(module, str(path), signatures={"prediction": module.predict})
    # Its only signature is the one requests run by default.
    (root / seed.TEXT_CNN / "config.yaml").write_text("signature: prediction\n")
    return True


def torch_modules() -> dict[str, Any]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("dl_inference_pytorch")
    pytest.importorskip("PIL")

    class Mnist(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(784, 10)

        def forward(self, x: Any) -> Any:
            return torch.softmax(self.linear(x.reshape(x.shape[0], -1)), dim=1)

    class Mmoe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(seed.MMOE_FEATURES, 2)

        def forward(self, x: Any) -> Any:
            return torch.sigmoid(self.linear(x))

    class Caffe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 4)

        def forward(self, x: Any) -> Any:
            return torch.softmax(self.linear(x.mean(dim=(2, 3)) / 255.0), dim=1)

    torch.manual_seed(0)
    return {
        str(seed.MNIST_TASK): (Mnist().eval(), torch.zeros(1, 1, 28, 28)),
        str(seed.MMOE_TASK): (Mmoe().eval(), torch.zeros(1, seed.MMOE_FEATURES)),
        str(seed.CAFFE_TASK): (Caffe().eval(), torch.zeros(1, 3, 12, 16)),
    }


def write_repository(root: Path, modules: dict[str, Any]) -> None:
    import torch

    write_python_model(root, seed.WIDE_AND_DEEP, WIDE_AND_DEEP, WIDE_AND_DEEP_CONFIG)
    write_python_model(root, seed.TIS_MODEL, TIS, TIS_CONFIG)
    processors = {str(seed.MNIST_TASK): MNIST_PROCESSOR, str(seed.CAFFE_TASK): CAFFE_PROCESSOR}
    for name, (module, example) in modules.items():
        folder = root / name / "1"
        folder.mkdir(parents=True)
        torch.jit.save(torch.jit.trace(module, example), folder / "model.pt")
        if name in processors:
            (folder / "processor.py").write_text(textwrap.dedent(processors[name]))
            inputs = [{"name": "data", "datatype": "BYTES", "shape": [1]}]
            (root / name / "config.yaml").write_text(yaml.safe_dump({"inputs": inputs}))


def expected_answers(modules: dict[str, Any]) -> dict[str, Any]:
    import torch
    from PIL import Image

    def run(name: str, x: Any) -> np.ndarray:
        with torch.no_grad():
            return modules[name][0](x).numpy()

    digit = np.asarray(Image.open(io.BytesIO(seed.digit_png())).convert("L"), np.float32)
    photo = np.asarray(Image.open(io.BytesIO(seed.photo_jpeg())).convert("RGB"), np.float32)
    caffe = run(str(seed.CAFFE_TASK), torch.from_numpy(photo).permute(2, 0, 1).unsqueeze(0))
    label = int(caffe[0].argmax())
    features = torch.tensor([seed.mmoe_features()], dtype=torch.float32)
    return {
        "PytorchPredict": run(str(seed.MNIST_TASK), torch.from_numpy(digit / 255.0)[None, None]),
        "PytorchPredict/mmoe": run(str(seed.MMOE_TASK), features),
        "CaffePredict": np.array([[label, caffe[0, label]]]),
        "TisPredict": tis_expected(),
    }


# -- servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A worker serving the seed's demo models, and a gateway routing by a seed nodefile."""
    modules = torch_modules()
    root = tmp_path_factory.mktemp("seed_models")
    write_repository(root, modules)
    text_cnn = write_text_cnn(root)
    with ServerProcess(["--model-repository", str(root)]) as worker:
        folder = tmp_path_factory.mktemp("seed_gateway")
        # The seed's format: taskid=timeout_ms,ip:port,... (one line per task).
        tasks = [2390, 69, seed.MNIST_TASK, seed.MMOE_TASK, seed.CAFFE_TASK, 888]
        lines = [f"{task}=10000,{worker.grpc_address}" for task in tasks]
        (folder / "nodefile.txt").write_text("\n".join(lines) + "\n")
        config = {"routes": [{"discovery": {"nodefile": str(folder / "nodefile.txt")}}]}
        (folder / "gateway.yaml").write_text(yaml.safe_dump(config))
        with ServerProcess(["-c", str(folder / "gateway.yaml")]) as gateway:
            yield {
                "targets": {"direct": worker.grpc_address, "gateway": gateway.grpc_address},
                "expected": {**expected_answers(modules), "text_cnn": text_cnn},
                "logs": {"worker": worker.output, "gateway": gateway.output},
            }


@pytest.fixture(scope="module", params=["direct", "gateway"])
def answers(request: pytest.FixtureRequest, stubs: Path, served: dict[str, Any]) -> Any:
    """What the seed's clients read, called directly on the worker and through the gateway."""
    return run_client(stubs, served["targets"][request.param]), served["expected"]


def ok(answers: Any, method: str) -> tuple[dict[str, Any], Any]:
    read, expected = answers
    assert "error" not in read[method], read[method]
    return read[method], expected.get(method)


# -- the four methods ----------------------------------------------------------------------


def test_predict_answers_typed_float_val_and_int_val(answers: Any) -> None:
    read, _ = ok(answers, "Predict")
    assert read["model_spec"] == seed.WIDE_AND_DEEP
    sizes = np.array(read["example_sizes"], np.float32)
    p = sizes / (sizes + 100.0)
    # TensorflowWideAndDeep.java reads getFloatValList() two at a time: typed fields.
    np.testing.assert_allclose(read["scores"], np.stack([1 - p, p], axis=1), rtol=1e-6)
    assert read["classes"] == (p > 0.5).astype(int).tolist()
    assert read["scores_tensor_content"] == 0 and read["classes_tensor_content"] == 0


def test_predict_on_a_named_signature_answers_string_val_and_float_val(answers: Any) -> None:
    if not answers[1]["text_cnn"]:
        pytest.skip("needs TensorFlow for the TextCnn SavedModel")
    read, _ = ok(answers, "Predict/textcnn")
    assert read["keys"] == ["output", "score"]
    share = len(seed.TEXT_CNN_SENTENCE) / seed.SEQ_LEN
    labels = [label for label, _ in read["pairs"]]
    assert labels == ["__label__yes", "__label__no"]
    np.testing.assert_allclose([s for _, s in read["pairs"]], [share, 1 - share], rtol=1e-6)


def test_pytorch_predict_answers_data_tensor_values(answers: Any) -> None:
    read, expected = ok(answers, "PytorchPredict")
    assert len(read["values"]) == 10  # PyTorchMnist.java prints data.tensor.values
    np.testing.assert_allclose(read["values"], expected.reshape(-1), rtol=1e-5)
    assert read["shape"] == [1, 10]


def test_pytorch_predict_with_a_tensor_answers_a_tensor(answers: Any) -> None:
    read, expected = ok(answers, "PytorchPredict/mmoe")
    np.testing.assert_allclose(read["values"], expected.reshape(-1), rtol=1e-5)
    assert read["shape"] == [1, 2]
    assert read["tags"] == {"taskId": seed.MMOE_TASK}  # the request's tags come back


def test_caffe_predict_answers_label_and_score_in_data(answers: Any) -> None:
    read, expected = ok(answers, "CaffePredict")
    assert read["has_data"] and read["kind"] == "tensor"  # CaffeClient.java prints getData()
    assert read["shape"] == [1, 2]
    np.testing.assert_allclose(read["values"], expected.reshape(-1), rtol=1e-5)


def test_tis_predict_answers_raw_output_contents(answers: Any) -> None:
    read, expected = ok(answers, "TisPredict")
    assert (read["model_name"], read["model_version"], read["id"]) == (seed.TIS_MODEL, "1", "1")
    assert read["outputs"] == [{"name": seed.TIS_OUTPUT, "datatype": "FP32", "shape": [1, 6]}]
    np.testing.assert_allclose(read["probabilities"], expected, rtol=1e-6)
    assert len(read["top5"]) == 5
