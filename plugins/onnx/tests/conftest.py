"""ONNX models made once per test session, with the originals kept to compare against.

- ``mlp``: a torch ``nn.Module`` (Linear-ReLU-Linear-Softmax, input ``x`` [batch, 4],
  output ``probs`` [batch, 3]) exported with ``torch.onnx.export`` and a dynamic batch axis.
- ``fixed``: the same network exported without a dynamic axis (input [1, 4]).
- ``cnn``: a small Conv2d network (``image`` [batch, 3, 8, 8] -> ``logits`` [batch, 5]).
- ``text``: built with ``onnx.helper``: a string input ``text`` [-1] giving ``shout``
  (StringConcat with "!"), ``three`` (RegexFullMatch ``.{3}``: exactly three characters),
  ``label`` (ai.onnx.ml LabelEncoder, string -> int64) and ``echo`` (Identity).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

IR_VERSION = 8  # readable by every onnxruntime >= 1.20 (onnx's default may be newer)
LABELS = {"cat": 0, "dog": 1, "été": 2}


@dataclass
class Built:
    """The ONNX files and the in-process originals."""

    root: Path
    mlp: Any
    cnn: Any

    @property
    def mlp_file(self) -> Path:
        return self.root / "mlp.onnx"

    @property
    def fixed_file(self) -> Path:
        return self.root / "fixed.onnx"

    @property
    def cnn_file(self) -> Path:
        return self.root / "cnn.onnx"

    @property
    def text_file(self) -> Path:
        return self.root / "text.onnx"


def torch_export(
    module: Any,
    example: Any,
    path: Path,
    names: list[str],
    outputs: list[str],
    dynamic: bool = True,
) -> None:
    import torch

    axes = {name: {0: "batch"} for name in [*names, *outputs]} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def text_model(path: Path) -> None:
    """String operators that see characters, so they show whether UTF-8 text arrived as text."""
    text = helper.make_tensor_value_info("text", TensorProto.STRING, [None])
    outputs = [
        helper.make_tensor_value_info(name, elem, [None])
        for name, elem in (
            ("shout", TensorProto.STRING),
            ("three", TensorProto.BOOL),
            ("label", TensorProto.INT64),
            ("echo", TensorProto.STRING),
        )
    ]
    bang = helper.make_tensor("bang", TensorProto.STRING, [], [b"!"])
    nodes = [
        helper.make_node("StringConcat", ["text", "bang"], ["shout"]),
        helper.make_node("RegexFullMatch", ["text"], ["three"], pattern=".{3}"),
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["label"],
            domain="ai.onnx.ml",
            keys_strings=list(LABELS),
            values_int64s=list(LABELS.values()),
            default_int64=-1,
        ),
        helper.make_node("Identity", ["text"], ["echo"]),
    ]
    graph = helper.make_graph(nodes, "text", [text], outputs, initializer=[bang])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("ai.onnx.ml", 3)],
        ir_version=9,
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("onnx-models")
    mlp = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1)
    ).eval()
    torch_export(mlp, torch.randn(2, 4), root / "mlp.onnx", ["x"], ["probs"])
    torch_export(mlp, torch.randn(1, 4), root / "fixed.onnx", ["x"], ["probs"], dynamic=False)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 5),
    ).eval()
    torch_export(cnn, torch.randn(1, 3, 8, 8), root / "cnn.onnx", ["image"], ["logits"])
    text_model(root / "text.onnx")
    return Built(root, mlp, cnn)


def run_torch(module: Any, array: np.ndarray) -> np.ndarray:
    """The torch original's output for ``array``."""
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(array)).numpy()


def run_ort(path: Path, feed: dict[str, Any]) -> list[Any]:
    """onnxruntime run directly on ``path`` (CPU), as a user would without dl-inference."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.fixture(scope="session")
def torch_run() -> Any:
    return run_torch


@pytest.fixture(scope="session")
def ort_run() -> Any:
    return run_ort


def gpu_reason() -> str | None:
    """Why GPU tests cannot run here, or None when a CUDA device is present."""
    try:
        import torch
    except ImportError:
        return "torch is not installed, so CUDA presence cannot be checked"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


@pytest.fixture(scope="session")
def gpu() -> None:
    """Skips, saying why, where no CUDA device is present."""
    reason = gpu_reason()
    if reason is not None:
        pytest.skip(f"needs a CUDA GPU: {reason}")


@pytest.fixture(scope="session")
def cpu_only(built: Built) -> None:
    """Skips where onnxruntime can start CUDA: there asking for cuda does not fall back."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(built.mlp_file), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    if "CUDAExecutionProvider" in session.get_providers():
        pytest.skip("onnxruntime starts CUDAExecutionProvider here, so there is no fallback")
