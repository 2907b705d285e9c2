"""One real server for the bench tests: small python-backend models in tmp_path."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from dl_inference.testing import ServerProcess, write_python_model

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_script(name: str) -> ModuleType:
    """``bench/<name>.py`` imported as the module ``bench_<name>`` (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


DENSE = """
    import numpy as np
    from dl_inference import PythonModel

    class Dense(PythonModel):
        def load(self):
            self.w = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)

        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] @ self.w}
"""
DENSE_CONFIG = """
    max_batch_size: 8
    inputs: [{name: x, datatype: FP32, shape: [16]}]
    outputs: [{name: y, datatype: FP32, shape: [4]}]
"""

PAIR = """
    from dl_inference import PythonModel

    class Pair(PythonModel):
        def predict(self, inputs, **parameters):
            return {"sum": inputs["a"] + inputs["b"]}
"""
PAIR_CONFIG = """
    inputs:
      - {name: a, datatype: INT64, shape: [-1, 3]}
      - {name: b, datatype: INT64, shape: [-1, 3]}
    outputs: [{name: sum, datatype: INT64, shape: [-1, 3]}]
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-models")
    write_python_model(root, "dense", DENSE, DENSE_CONFIG)
    write_python_model(root, "pair", PAIR, PAIR_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    with ServerProcess(["--model-repository", str(repository)]) as srv:
        yield srv
