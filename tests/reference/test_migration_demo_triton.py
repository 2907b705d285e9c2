"""The Triton migration demo: one Triton model repository, written as a Triton user has it,
served unchanged by ``dl-inference serve --model-repository DIR`` (a separate process) and,
for what this machine's Triton 2.51 build can run (the python backend), by the real Triton
on the SAME folder; every model called with tritonclient over HTTP and gRPC.

The repository:

- ``normalize``: python backend, dynamic batching; each FP32 [4] row standardized, with an
  ``epsilon`` from the config's ``parameters`` and the output dtype read with
  ``get_output_config_by_name`` / ``triton_string_to_numpy``; a row with a NaN is refused
  by its own error response (INVALID_ARG), the other requests of its batch answered;
- ``to_label``: python backend; FP32 [4] scores to the best label (read from
  ``labels.txt`` in its version folder) and its softmax probability;
- ``text_stats``: python backend, no batching; BYTES [-1] to their lengths (INT64) and
  upper-cased text with the request parameter ``suffix`` appended;
- ``pipeline``: an ensemble: RAW -> normalize -> to_label -> LABEL, PROB (and NORMALIZED);
- ``onnx_linear``: ``onnxruntime_onnx`` (``model.onnx`` built with onnx.helper: Gemm with
  initializers, then Softmax);
- ``torch_mlp``: ``pytorch_libtorch`` (``model.pt`` TorchScript; ``INPUT__0`` ->
  ``OUTPUT__0`` scores, ``OUTPUT__1`` the argmax).

The python models and the ensemble answer alike on both servers (values, dtypes, shapes,
error classes); the ONNX and TorchScript answers match onnxruntime and torch run in this
process (Triton's build here has no onnxruntime or libtorch backend). Every file of the
folder is hashed before the servers start, once dl-inference has loaded every model, and
after every call: nothing changed, nothing added by dl-inference (which runs without
``PYTHONDONTWRITEBYTECODE``). Triton's python stubs write ``__pycache__`` beside each
``model.py`` (as for any Triton user); those are recorded when it has started, and nothing
else may appear.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dl_inference.testing import ServerProcess

from .triton import TritonServer, file_hashes, skip_without_triton

grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
from tritonclient.utils import InferenceServerException  # noqa: E402

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

NORMALIZE_CONFIG = """
name: "normalize"
backend: "python"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "NORMALIZED" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100000 }
parameters { key: "epsilon" value: { string_value: "0.001" } }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
NORMALIZE = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.epsilon = float(config["parameters"]["epsilon"]["string_value"])
        output = pb_utils.get_output_config_by_name(config, "NORMALIZED")
        self.dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
            if np.isnan(raw).any():
                error = pb_utils.TritonError("RAW has a NaN", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            mean = raw.mean(axis=1, keepdims=True)
            spread = raw.std(axis=1, keepdims=True) + self.epsilon
            normalized = ((raw - mean) / spread).astype(self.dtype)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("NORMALIZED", normalized)])
            )
        return responses

    def finalize(self):
        self.epsilon = None
"""
TO_LABEL_CONFIG = """
name: "to_label"
backend: "python"
max_batch_size: 8
input [ { name: "SCORES" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "PROB" data_type: TYPE_FP32 dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU } ]
"""
TO_LABEL = """
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "labels.txt"), encoding="utf-8") as labels:
            self.labels = [line.strip().encode() for line in labels if line.strip()]

    def execute(self, requests):
        responses = []
        for request in requests:
            scores = pb_utils.get_input_tensor_by_name(request, "SCORES").as_numpy()
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=1, keepdims=True)
            best = probabilities.argmax(axis=1)
            labels = np.array([[self.labels[i]] for i in best], dtype=np.object_)
            prob = probabilities.max(axis=1, keepdims=True).astype(np.float32)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("LABEL", labels), pb_utils.Tensor("PROB", prob)]
                )
            )
        return responses
"""
LABELS = "cat\ndog\nbird\nfish\n"
TEXT_STATS_CONFIG = """
name: "text_stats"
backend: "python"
max_batch_size: 0
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
output [
  { name: "LENGTH" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] }
]
"""
TEXT_STATS = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            suffix = json.loads(request.parameters()).get("suffix", "").encode()
            lengths = np.array([len(t) for t in text], dtype=np.int64)
            upper = np.array([t.upper() + suffix for t in text], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("LENGTH", lengths), pb_utils.Tensor("UPPER", upper)]
                )
            )
        return responses
"""
PIPELINE_CONFIG = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "PROB" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "NORMALIZED" data_type: TYPE_FP32 dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "normalize"
      model_version: -1
      input_map { key: "RAW" value: "RAW" }
      output_map { key: "NORMALIZED" value: "NORMALIZED" }
    },
    {
      model_name: "to_label"
      model_version: -1
      input_map { key: "SCORES" value: "NORMALIZED" }
      output_map { key: "LABEL" value: "LABEL" }
      output_map { key: "PROB" value: "PROB" }
    }
  ]
}
"""
ONNX_CONFIG = """
name: "onnx_linear"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "logits" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
TORCH_CONFIG = """
name: "torch_mlp"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 1 ] }
]
dynamic_batching { }
instance_group [ { kind: KIND_CPU } ]
"""
PYTHON_MODELS = ("normalize", "to_label", "text_stats", "pipeline")
ALL_MODELS = (*PYTHON_MODELS, "onnx_linear", "torch_mlp")


class _Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.out(torch.tanh(self.hidden(x)))
        return scores, scores.argmax(dim=1, keepdim=True)


def _onnx_model(path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    weights = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "B")

    def tensor(name: str, width: int) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])

    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["features", "W", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "linear",
        [tensor("features", 4)],
        [tensor("logits", 3), tensor("probabilities", 3)],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what the onnxruntime of any supported version reads
    onnx.save(model, str(path))


def write_repository(root: Path) -> Path:
    """The user's Triton repository: config.pbtxt and version folders, as Triton reads them."""
    python = {
        "normalize": (NORMALIZE_CONFIG, NORMALIZE),
        "to_label": (TO_LABEL_CONFIG, TO_LABEL),
        "text_stats": (TEXT_STATS_CONFIG, TEXT_STATS),
    }
    for name, (config, code) in python.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(textwrap.dedent(config))
        (root / name / "1" / "model.py").write_text(textwrap.dedent(code))
    (root / "to_label" / "1" / "labels.txt").write_text(LABELS)
    (root / "pipeline" / "1").mkdir(parents=True)  # an ensemble's empty version folder
    (root / "pipeline" / "config.pbtxt").write_text(PIPELINE_CONFIG)
    (root / "onnx_linear" / "1").mkdir(parents=True)
    (root / "onnx_linear" / "config.pbtxt").write_text(ONNX_CONFIG)
    _onnx_model(root / "onnx_linear" / "1" / "model.onnx")
    (root / "torch_mlp" / "1").mkdir(parents=True)
    (root / "torch_mlp" / "config.pbtxt").write_text(TORCH_CONFIG)
    torch.manual_seed(5)
    torch.jit.save(torch.jit.script(_Mlp().eval()), str(root / "torch_mlp" / "1" / "model.pt"))
    return root


@dataclass
class Demo:
    repository: Path
    files: dict[str, str]
    ours: ServerProcess
    triton: TritonServer | None
    why_no_triton: str

    def address(self, who: str, transport: str) -> str:
        server: Any = self.triton if who == "triton" else self.ours
        return server.http_address if transport == "http" else server.grpc_address

    def need_triton(self) -> TritonServer:
        if self.triton is None:
            pytest.skip(f"the Triton reference server cannot run here: {self.why_no_triton}")
        return self.triton


def _start_triton(repository: Path, log: Path) -> TritonServer:
    """Triton on the same folder, loading what its build can run: the python models and the
    ensemble (the onnxruntime and libtorch backends are not in this build)."""
    loads = [f"--load-model={name}" for name in PYTHON_MODELS]
    return TritonServer(repository, log, args=["--model-control-mode=explicit", *loads]).start()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    work = tmp_path_factory.mktemp("triton-migration-demo")
    repository = write_repository(work / "models")
    files = file_hashes(repository)
    # Our imports of model.py would write bytecode next to it unless told not to: they
    # must not, so the variable is cleared for this process.
    env = {"PYTHONDONTWRITEBYTECODE": ""}
    with ServerProcess(["--model-repository", str(repository)], env=env) as ours:
        _wait_ready(ours, ALL_MODELS)
        # Every model loaded (model.py imported, config.pbtxt read): nothing written.
        assert file_hashes(repository) == files, "dl-inference changed the user's repository"
        triton, why = None, ""
        try:
            skip_without_triton()
        except pytest.skip.Exception as exc:  # the dl-inference half runs without Triton
            why = str(exc)
        else:
            triton = _start_triton(repository, work / "triton.log")
        try:
            # Triton's python stubs write __pycache__/model.*.pyc beside each model.py (a
            # Triton user's folder gets them too; PYTHONDONTWRITEBYTECODE does not reach
            # them): those are Triton's, known from here on.
            added = {k: v for k, v in file_hashes(repository).items() if k not in files}
            assert all("__pycache__" in path for path in added), added
            yield Demo(repository, {**files, **added}, ours, triton, why)
        finally:
            if triton is not None:
                triton.stop()
    assert file_hashes(repository) == {**files, **added}, "a server changed the user's repository"


def _wait_ready(server: ServerProcess, models: tuple[str, ...]) -> None:
    client = httpclient.InferenceServerClient(server.http_address)
    deadline = time.monotonic() + 120
    try:
        while not all(client.is_model_ready(name) for name in models):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.3)
    finally:
        client.close()


CLIENTS: dict[str, Any] = {"http": httpclient, "grpc": grpcclient}
TIMEOUT_S = 20.0
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(object): "BYTES"}


def _infer(
    transport: str,
    address: str,
    model: str,
    inputs: dict[str, np.ndarray],
    outputs: tuple[str, ...],
    **kwargs: Any,
) -> dict[str, Any]:
    """A tritonclient call, reduced to what the client sees: each output's dtype, shape and
    values, or the error's status and message."""
    module = CLIENTS[transport]
    if transport == "http":
        client = httpclient.InferenceServerClient(address, network_timeout=TIMEOUT_S)
    else:
        client = grpcclient.InferenceServerClient(address)
        kwargs.setdefault("client_timeout", TIMEOUT_S)
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), DATATYPES[array.dtype])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    try:
        result = client.infer(model, tensors, **kwargs)
    except InferenceServerException as exc:
        return {"error": str(exc.status()), "message": exc.message()}
    finally:
        client.close()
    answer = {}
    for name in outputs:
        array = result.as_numpy(name)
        answer[name] = {"dtype": str(array.dtype), "shape": list(array.shape), "array": array}
    return answer


def _comparable(answer: dict[str, Any]) -> dict[str, Any]:
    return {
        name: (
            {**value, "array": value["array"].reshape(-1).tolist()}
            if isinstance(value, dict) and "array" in value
            else value
        )
        for name, value in answer.items()
    }


def _both(demo: Demo, transport: str, call: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Both servers' answers to the same call, asserted equal (values, dtypes, shapes; for
    an error its status); returns ours."""
    demo.need_triton()
    theirs = call(demo.address("triton", transport))
    ours = call(demo.address("ours", transport))
    if "error" in theirs or "error" in ours:
        assert ours.get("error") == theirs.get("error"), (theirs, ours)
        return ours
    assert _comparable(ours) == _comparable(theirs)
    return ours


RAW = np.array([[1, 2, 3, 4], [4, -1, 0.5, 2], [0, 0, 0, 9]], dtype=np.float32)


def _normalized(raw: np.ndarray) -> np.ndarray:
    return (raw - raw.mean(axis=1, keepdims=True)) / (raw.std(axis=1, keepdims=True) + 0.001)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_python_models_answer_as_triton(demo: Demo, transport: str) -> None:
    def normalize(address: str) -> dict[str, Any]:
        return _infer(transport, address, "normalize", {"RAW": RAW}, ("NORMALIZED",))

    answer = _both(demo, transport, normalize)
    assert answer["NORMALIZED"]["dtype"] == "float32" and answer["NORMALIZED"]["shape"] == [3, 4]
    assert np.allclose(answer["NORMALIZED"]["array"], _normalized(RAW), rtol=1e-6)

    scores = np.array([[0.1, 2.0, -1.0, 0.3], [5.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    answer = _both(
        demo,
        transport,
        lambda a: _infer(transport, a, "to_label", {"SCORES": scores}, ("LABEL", "PROB")),
    )
    assert answer["LABEL"]["array"].tolist() == [[b"dog"], [b"cat"]]
    assert answer["PROB"]["dtype"] == "float32" and answer["PROB"]["shape"] == [2, 1]

    text = np.array([b"hello", "gr\u00fc\u00df".encode(), b""], dtype=np.object_)
    answer = _both(
        demo,
        transport,
        lambda a: _infer(
            transport,
            a,
            "text_stats",
            {"TEXT": text},
            ("LENGTH", "UPPER"),
            parameters={"suffix": "!"},
        ),
    )
    assert answer["LENGTH"]["dtype"] == "int64"
    assert answer["LENGTH"]["array"].tolist() == [5, 6, 0]
    assert answer["UPPER"]["array"].tolist() == [b"HELLO!", "GR\u00fc\u00df!".encode(), b"!"]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_dynamic_batching_keeps_each_requests_answer_and_error(demo: Demo, transport: str) -> None:
    # Concurrent requests meet in one execute() (max_queue_delay 100 ms) on both servers;
    # the one with a NaN fails alone, by its own error response.
    rows = [np.array([[i, 1, 2, 3]], dtype=np.float32) for i in range(6)]
    rows[3] = np.array([[np.nan, 1, 2, 3]], dtype=np.float32)

    def run(address: str) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(len(rows)) as pool:
            return list(
                pool.map(
                    lambda row: _infer(
                        transport, address, "normalize", {"RAW": row}, ("NORMALIZED",)
                    ),
                    rows,
                )
            )

    demo.need_triton()
    theirs = run(demo.address("triton", transport))
    ours = run(demo.address("ours", transport))
    expected_error = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}[transport]
    for index, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        if index == 3:
            assert mine["error"] == reference["error"] == expected_error, (reference, mine)
            assert "RAW has a NaN" in mine["message"] and "RAW has a NaN" in reference["message"]
        else:
            assert _comparable(mine) == _comparable(reference)
            assert np.allclose(mine["NORMALIZED"]["array"], _normalized(rows[index]), rtol=1e-6)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_ensemble_answers_as_triton(demo: Demo, transport: str) -> None:
    def pipeline(address: str) -> dict[str, Any]:
        return _infer(transport, address, "pipeline", {"RAW": RAW}, ("LABEL", "PROB", "NORMALIZED"))

    answer = _both(demo, transport, pipeline)
    assert answer["LABEL"]["array"].tolist() == [[b"fish"], [b"cat"], [b"fish"]]
    assert answer["LABEL"]["shape"] == [3, 1] and answer["PROB"]["shape"] == [3, 1]
    # A request the ensemble's config refuses: dims [3], not [4]; the same class on both.
    bad = np.ones((1, 3), dtype=np.float32)
    answer = _both(
        demo, transport, lambda a: _infer(transport, a, "pipeline", {"RAW": bad}, ("LABEL",))
    )
    assert answer["error"] == {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}[transport]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_onnx_model_answers_as_onnxruntime(demo: Demo, transport: str) -> None:
    features = np.random.default_rng(9).normal(size=(5, 4)).astype(np.float32)
    answer = _infer(
        transport,
        demo.address("ours", transport),
        "onnx_linear",
        {"features": features},
        ("logits", "probabilities"),
    )
    session = ort.InferenceSession(
        str(demo.repository / "onnx_linear" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    logits, probabilities = session.run(None, {"features": features})
    assert answer["logits"]["dtype"] == "float32" and answer["logits"]["shape"] == [5, 3]
    assert np.array_equal(answer["logits"]["array"], logits)
    assert np.array_equal(answer["probabilities"]["array"], probabilities)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_torchscript_model_answers_as_torch(demo: Demo, transport: str) -> None:
    x = np.random.default_rng(10).normal(size=(4, 4)).astype(np.float32)
    answer = _infer(
        transport,
        demo.address("ours", transport),
        "torch_mlp",
        {"INPUT__0": x},
        ("OUTPUT__0", "OUTPUT__1"),
    )
    model = torch.jit.load(str(demo.repository / "torch_mlp" / "1" / "model.pt"))
    with torch.inference_mode():
        scores, best = model(torch.from_numpy(x))
    assert answer["OUTPUT__0"]["dtype"] == "float32" and answer["OUTPUT__0"]["shape"] == [4, 3]
    assert np.allclose(answer["OUTPUT__0"]["array"], scores.numpy(), rtol=1e-6, atol=1e-7)
    assert answer["OUTPUT__1"]["dtype"] == "int64" and answer["OUTPUT__1"]["shape"] == [4, 1]
    assert np.array_equal(answer["OUTPUT__1"]["array"], best.numpy())


def test_the_repository_is_unchanged(demo: Demo) -> None:
    # Every model has loaded and answered by now (this module's tests run in file order):
    # the folder is byte for byte what the user wrote (and Triton's bytecode, when it ran).
    assert file_hashes(demo.repository) == demo.files
