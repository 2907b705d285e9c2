"""Triton ``onnxruntime_onnx`` model folders in process: the backend's parameters and the
file Triton would load. tests/test_triton_repository_platforms.py serves such models with
tritonclient."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402

from dl_inference.kernel.models import ModelState  # noqa: E402
from dl_inference.testing import load_repository  # noqa: E402


def write(root: Path, name: str, config: str, file: str = "model.onnx") -> None:
    (root / name / "1").mkdir(parents=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "neg", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = root / name / "1" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    (root / name / "config.pbtxt").write_text(textwrap.dedent(config))


def test_thread_parameters_and_the_model_folder_form(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tuned",
        """
        backend: "onnxruntime"
        parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "3" } }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        """,
    )
    # A model with external data is a folder model.onnx/ holding model.onnx.
    write(tmp_path, "folder", 'platform: "onnxruntime_onnx"', "model.onnx/model.onnx")
    write(
        tmp_path,
        "wrong",
        """
        backend: "onnxruntime"
        parameters { key: "intra_op_thread_count" value: { string_value: "many" } }
        """,
    )
    env = load_repository(tmp_path)
    try:
        settings = env.models.resolve("tuned").backend.settings
        assert (settings.intra_op_threads, settings.inter_op_threads) == (2, 3)
        assert env.models.resolve("folder").backend.file.name == "model.onnx"
        (version,) = env.models.versions("wrong")
        assert version.state is ModelState.UNAVAILABLE
        assert "parameter intra_op_thread_count is 'many'" in version.reason
    finally:
        env.close()
