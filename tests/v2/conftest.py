"""One real server for the V2 protocol tests, with small python-backend models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dl_inference.testing import ServerProcess, write_python_model

ADD_SUB = """
    import numpy as np
    from dl_inference import PythonModel

    class AddSub(PythonModel):
        def predict(self, inputs, **parameters):
            a, b = inputs["INPUT0"], inputs["INPUT1"]
            return {"OUTPUT0": a + b, "OUTPUT1": a - b}
"""
ADD_SUB_CONFIG = """
    max_batch_size: 8
    inputs:
      - {name: INPUT0, datatype: FP32, shape: [4]}
      - {name: INPUT1, datatype: FP32, shape: [4]}
    outputs:
      - {name: OUTPUT0, datatype: FP32, shape: [4]}
      - {name: OUTPUT1, datatype: FP32, shape: [4]}
"""

# No declared tensors: any input passes validation, so every datatype can be echoed back.
# The request's parameters come back as sorted JSON in the BYTES output "PARAMS".
ECHO = """
    import json
    import numpy as np
    from dl_inference import PythonModel

    class Echo(PythonModel):
        def predict(self, inputs, **parameters):
            out = {"OUT_" + name: value for name, value in inputs.items()}
            params = json.dumps(parameters, sort_keys=True).encode()
            out["PARAMS"] = np.array([params], dtype=object)
            return out
"""

STRINGS = """
    import numpy as np
    from dl_inference import PythonModel

    class Strings(PythonModel):
        def predict(self, inputs, **parameters):
            text = inputs["TEXT"]
            upper = np.array([t.upper() for t in text.reshape(-1)], dtype=object)
            lengths = np.array([len(t) for t in text.reshape(-1)], dtype=np.int32)
            return {"UPPER": upper.reshape(text.shape), "LENGTHS": lengths.reshape(text.shape)}
"""
STRINGS_CONFIG = """
    inputs: [{name: TEXT, datatype: BYTES, shape: [-1]}]
    outputs:
      - {name: UPPER, datatype: BYTES, shape: [-1]}
      - {name: LENGTHS, datatype: INT32, shape: [-1]}
"""

FAILING = """
    from dl_inference import PythonModel

    class Failing(PythonModel):
        def predict(self, inputs, **parameters):
            raise ValueError("the tokenizer vocabulary is missing")
"""
FAILING_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def versioned_model(version: int) -> str:
    return f"""
    import numpy as np
    from dl_inference import PythonModel

    class Versioned(PythonModel):
        def predict(self, inputs, **parameters):
            return {{"y": inputs["x"] * {version}}}
"""


VERSIONED_CONFIG = """
    version_policy: {all: true}
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def write_repository(root: Path) -> Path:
    """The V2 test repository: add_sub, echo, strings, failing, versioned (v1 and v2)."""
    write_python_model(root, "add_sub", ADD_SUB, ADD_SUB_CONFIG)
    write_python_model(root, "echo", ECHO)
    write_python_model(root, "strings", STRINGS, STRINGS_CONFIG)
    write_python_model(root, "failing", FAILING, FAILING_CONFIG)
    for version in (1, 2):
        write_python_model(root, "versioned", versioned_model(version), VERSIONED_CONFIG, version)
    return root


@pytest.fixture(scope="package")
def v2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for every V2 test module (starting one costs seconds on 2 cores)."""
    repo = write_repository(tmp_path_factory.mktemp("v2") / "models")
    with ServerProcess(["--model-repository", str(repo)]) as server:
        yield server
