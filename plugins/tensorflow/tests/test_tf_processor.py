"""The seed's processor.py around a SavedModel, run by the kernel."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from dl_inference.testing import ServerProcess

PROCESSOR = """
    import numpy as np

    def preprocess(text, **kwargs):
        return np.array([[float(v) for v in text.decode().split(",")]], dtype=np.float32)

    def postprocess(y, **kwargs):
        return {"label": np.array([int(np.argmax(y))], dtype=np.int64)}
"""


def test_processor_wraps_a_savedmodel(built: Any, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(built.root / "keras", repo / "classes")
    (repo / "classes" / "processor.py").write_text(textwrap.dedent(PROCESSOR))
    (repo / "classes" / "config.yaml").write_text(
        "inputs: [{name: CSV, datatype: BYTES, shape: [1]}]\n"
        "outputs: [{name: label, datatype: INT64, shape: [1]}]\n"
    )
    x = np.array([[0.3, -1.2, 2.5, 0.7]], np.float32)
    expected = int(np.argmax(built.keras.predict(x, verbose=0)))
    with ServerProcess(["--model-repository", str(repo)]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_address)
        tensor = grpcclient.InferInput("CSV", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"0.3,-1.2,2.5,0.7"], dtype=object))
        label = client.infer("classes", [tensor]).as_numpy("label")
    assert label.tolist() == [expected]
