"""What a client reads about a model that failed names the file at fault, never where the
server keeps it: absolute paths in load reasons and model errors are cut to file names (the
server's log keeps them whole)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dl_inference.testing import ServerProcess, write_python_model
from dl_inference.testing.probes import post_json

LOADS_A_MISSING_FILE = """
    import numpy as np
    from dl_inference import PythonModel

    class Weights(PythonModel):
        def load(self):
            self.table = np.load(self.path / "weights.npy")
        def predict(self, inputs, /):
            return {"y": inputs["x"]}
"""

OPENS_A_MISSING_FILE = """
    from dl_inference import PythonModel

    class Lookup(PythonModel):
        def predict(self, inputs, /):
            open(self.path / "vocabulary.txt").read()
            return {"y": inputs["x"]}
"""

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("models")
    write_python_model(root, "weights", LOADS_A_MISSING_FILE)
    write_python_model(root, "lookup", OPENS_A_MISSING_FILE)
    with ServerProcess(["--model-repository", str(root)]) as srv:
        yield srv, root


def test_a_load_failure_names_the_file_not_the_servers_folders(
    server: tuple[ServerProcess, Path],
) -> None:
    srv, root = server
    status, answer = post_json(f"{srv.http_url}/v2/models/weights/infer", BODY)
    assert status == 503, answer
    assert "weights.npy" in answer["error"]
    assert str(root) not in answer["error"] and "/weights/1/" not in answer["error"]


def test_a_model_error_names_the_file_not_the_servers_folders(
    server: tuple[ServerProcess, Path],
) -> None:
    srv, root = server
    status, answer = post_json(f"{srv.http_url}/v2/models/lookup/infer", BODY)
    assert status == 500, answer
    assert "vocabulary.txt" in answer["error"] and "model.py:" in answer["error"]
    assert str(root) not in answer["error"] and "/lookup/1/" not in answer["error"]
    # The server keeps the whole path for its operator.
    srv.wait_for_output(str(root / "lookup" / "1" / "vocabulary.txt"))
