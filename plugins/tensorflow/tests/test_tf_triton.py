"""Triton ``tensorflow_savedmodel`` model folders in process: the SavedModel folder
Triton loads, its parameters, an instance group asking for a GPU where none is visible.
tests/test_triton_repository_platforms.py serves such models with tritonclient."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from dl_inference.kernel.models import ModelState  # noqa: E402
from dl_inference.testing import load_repository  # noqa: E402


class TwoSignatures(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def double(self, x: Any) -> dict[str, Any]:
        return {"y": x * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def negate(self, x: Any) -> dict[str, Any]:
        return {"y": -x, "sum": tf.reduce_sum(x, axis=1)}


def test_signature_parameter_gpu_group_and_saved_model_folder(tmp_path: Path) -> None:
    module = TwoSignatures()
    signatures = {"serving_default": module.double, "negate": module.negate}
    for name, config in {
        # TF_SIGNATURE_DEF picks the signature; KIND_GPU runs on the CPU where none is seen.
        "negate": """
            platform: "tensorflow_savedmodel"
            max_batch_size: 4
            input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
            output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
            instance_group [ { kind: KIND_GPU } ]
            parameters { key: "TF_SIGNATURE_DEF" value: { string_value: "negate" } }
            parameters { key: "TF_NUM_INTRA_THREADS" value: { string_value: "2" } }
        """,
        "threads": """
            backend: "tensorflow"
            parameters { key: "TF_NUM_INTRA_THREADS" value: { string_value: "two" } }
        """,
        "elsewhere": """
            backend: "tensorflow"
            default_model_filename: "other.savedmodel"
        """,
    }.items():
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(textwrap.dedent(config))
        tf.saved_model.save(
            module, str(tmp_path / name / "1" / "model.savedmodel"), signatures=signatures
        )
    env = load_repository(tmp_path)
    try:
        x = np.array([[1.0, 2.0]], dtype=np.float32)
        response = env.infer("negate", {"x": x})
        assert list(response.outputs) == ["y"]  # config.pbtxt's outputs only
        np.testing.assert_array_equal(response.outputs["y"], -x)
        backend = env.models.resolve("negate").backend
        device = "cuda" if tf.config.list_physical_devices("GPU") else "cpu"
        assert (backend.settings.signature, backend.settings.device) == ("negate", device)
        reasons = {n: env.models.versions(n)[0] for n in ("threads", "elsewhere")}
        assert all(v.state is ModelState.UNAVAILABLE for v in reasons.values())
        assert (
            "parameter TF_NUM_INTRA_THREADS is 'two'; use a number >= 0"
            in reasons["threads"].reason
        )
        assert "other.savedmodel/saved_model.pb does not exist" in reasons["elsewhere"].reason
    finally:
        env.close()
