"""Shared fixtures: small python-backend model repositories written into tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dl_inference.testing import write_python_model

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""

ADD_ONE_CONFIG = """
    max_batch_size: 4
    inputs: [{name: x, datatype: FP32, shape: [3]}]
    outputs: [{name: y, datatype: FP32, shape: [3]}]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one model, ``add_one`` (FP32 [3] -> +1)."""
    root = tmp_path / "models"
    write_python_model(root, "add_one", ADD_ONE, ADD_ONE_CONFIG)
    return root
