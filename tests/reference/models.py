"""The same small models twice: a Triton python-backend repository (``config.pbtxt`` +
``model.py``) and the equivalent dl-inference python-backend repository (``config.yaml``
+ ``model.py``).

- ``types`` (no batching) and ``types_batched`` (``max_batch_size`` 8): one input
  ``INPUT_<T>`` and one output ``OUTPUT_<T>`` per V2 datatype; ``OUTPUT = INPUT + 1``,
  the identity for BOOL and BYTES. Shapes ``[2, -1]`` and ``[-1]`` (plus the batch
  dimension).
- ``typed``: as ``types`` without FP16 (every datatype with a gRPC typed contents
  field), shape ``[-1]``.
- ``params``: ``y = x`` (FP32 ``[-1]``) and ``PARAMS``, the request's parameters as
  sorted JSON (BYTES ``[1]``), so both servers show what reaches a model.
- ``failing``: its execute / predict raises ``ValueError(FAIL_MESSAGE)``.
- ``failing_error``: Triton's execute returns a ``TritonError`` response; dl-inference's
  predict raises ``BackendError``, its error for a model that failed.
- ``versioned`` (newest version served) and ``versioned_all`` (every version): versions 1
  and 2, ``y = x * version``.
- ``refusing``: Triton's execute returns a ``TritonError`` with code ``INVALID_ARG``;
  dl-inference's predict raises ``InvalidInput``, its error for a refused input.
"""

from __future__ import annotations

from pathlib import Path

from dl_inference.testing import write_python_model

DATATYPES = (
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)
IDENTITY = ("BOOL", "BYTES")
# Every datatype that has a typed contents field in gRPC's InferTensorContents (not FP16).
TYPED = tuple(t for t in DATATYPES if t != "FP16")
FAIL_MESSAGE = "differential-model-failure: the model raised on purpose"
ERROR_MESSAGE = "differential-model-error: the model answered with an error"
REFUSE_MESSAGE = "differential-model-refusal: the model refused the input"
MAX_BATCH_SIZE = 8
# Models with more than one version: y = x * version. The default policy serves the newest
# only (Triton's and dl-inference's default, latest 1); versioned_all serves every one.
VERSIONS = {"versioned": (1, 2), "versioned_all": (1, 2)}
TRITON_POLICY = {"versioned_all": "version_policy: { all { } }\n"}
OUR_POLICY = {"versioned_all": "version_policy: {all: true}\n"}

# model name -> (max_batch_size, [(name, datatype, dims)] inputs, outputs)
Tensors = list[tuple[str, str, list[int]]]
SIGNATURES: dict[str, tuple[int, Tensors, Tensors]] = {
    "types": (
        0,
        [(f"INPUT_{t}", t, [2, -1]) for t in DATATYPES],
        [(f"OUTPUT_{t}", t, [2, -1]) for t in DATATYPES],
    ),
    "types_batched": (
        MAX_BATCH_SIZE,
        [(f"INPUT_{t}", t, [-1]) for t in DATATYPES],
        [(f"OUTPUT_{t}", t, [-1]) for t in DATATYPES],
    ),
    "typed": (
        0,
        [(f"INPUT_{t}", t, [-1]) for t in TYPED],
        [(f"OUTPUT_{t}", t, [-1]) for t in TYPED],
    ),
    "params": (0, [("x", "FP32", [-1])], [("y", "FP32", [-1]), ("PARAMS", "BYTES", [1])]),
    "failing": (0, [("x", "FP32", [-1])], [("y", "FP32", [-1])]),
    "failing_error": (0, [("x", "FP32", [-1])], [("y", "FP32", [-1])]),
    "refusing": (0, [("x", "FP32", [-1])], [("y", "FP32", [-1])]),
    "versioned": (0, [("x", "FP32", [-1])], [("y", "FP32", [-1])]),
    "versioned_all": (0, [("x", "FP32", [-1])], [("y", "FP32", [-1])]),
}

_TRITON_HEAD = """\
import json

import numpy as np
import triton_python_backend_utils as pb_utils

DATATYPES = {datatypes!r}
IDENTITY = {identity!r}


def add_one(datatype, x):
    return x.copy() if datatype in IDENTITY else x + np.array(1, dtype=x.dtype)


def get(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

"""

TRITON_BODIES = {
    "types": """
class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            tensors = [pb_utils.Tensor("OUTPUT_" + t, add_one(t, get(r, "INPUT_" + t)))
                       for t in DATATYPES]
            out.append(pb_utils.InferenceResponse(tensors))
        return out
""",
    "params": """
class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            params = json.dumps(json.loads(r.parameters()), sort_keys=True).encode()
            tensors = [pb_utils.Tensor("y", get(r, "x")),
                       pb_utils.Tensor("PARAMS", np.array([params], dtype=np.object_))]
            out.append(pb_utils.InferenceResponse(tensors))
        return out
""",
    "failing": f"""
class TritonPythonModel:
    def execute(self, requests):
        raise ValueError({FAIL_MESSAGE!r})
""",
    "failing_error": f"""
class TritonPythonModel:
    def execute(self, requests):
        error = pb_utils.TritonError({ERROR_MESSAGE!r})
        return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
""",
}
TRITON_BODIES["refusing"] = f"""
class TritonPythonModel:
    def execute(self, requests):
        error = pb_utils.TritonError({REFUSE_MESSAGE!r}, pb_utils.TritonError.INVALID_ARG)
        return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
"""
TRITON_BODIES["versioned"] = TRITON_BODIES["versioned_all"] = """
VERSION = int(__file__.split("/")[-2])


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", get(r, "x") * np.float32(VERSION))])
            for r in requests
        ]
"""
TRITON_BODIES["types_batched"] = TRITON_BODIES["typed"] = TRITON_BODIES["types"]

_OURS_HEAD = """
import json

import numpy as np
from dl_inference import BackendError, InvalidInput, PythonModel

DATATYPES = {datatypes!r}
IDENTITY = {identity!r}


def add_one(datatype, x):
    return x.copy() if datatype in IDENTITY else x + np.array(1, dtype=x.dtype)
"""

OUR_BODIES = {
    "types": """
class Types(PythonModel):
    def predict(self, inputs, /, **parameters):
        return {"OUTPUT_" + t: add_one(t, inputs["INPUT_" + t]) for t in DATATYPES}
""",
    "params": """
class Params(PythonModel):
    def predict(self, inputs, /, **parameters):
        params = json.dumps(parameters, sort_keys=True).encode()
        return {"y": inputs["x"], "PARAMS": np.array([params], dtype=np.object_)}
""",
    "failing": f"""
class Failing(PythonModel):
    def predict(self, inputs, /, **parameters):
        raise ValueError({FAIL_MESSAGE!r})
""",
    "failing_error": f"""
class FailingError(PythonModel):
    def predict(self, inputs, /, **parameters):
        raise BackendError({ERROR_MESSAGE!r})
""",
}
OUR_BODIES["refusing"] = f"""
class Refusing(PythonModel):
    def predict(self, inputs, /, **parameters):
        raise InvalidInput({REFUSE_MESSAGE!r})
"""
OUR_BODIES["versioned"] = OUR_BODIES["versioned_all"] = """
VERSION = int(__file__.split("/")[-2])


class Versioned(PythonModel):
    def predict(self, inputs, /, **parameters):
        return {"y": inputs["x"] * np.float32(VERSION)}
"""
OUR_BODIES["types_batched"] = OUR_BODIES["typed"] = OUR_BODIES["types"]


def _datatypes(model: str) -> tuple[str, ...]:
    return TYPED if model == "typed" else DATATYPES


def _pbtxt_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def write_triton_repository(root: Path) -> Path:
    """``<root>/<model>/config.pbtxt`` and ``<root>/<model>/<version>/model.py``."""
    for name, (max_batch, inputs, outputs) in SIGNATURES.items():
        head = _TRITON_HEAD.format(datatypes=_datatypes(name), identity=IDENTITY)
        for version in VERSIONS.get(name, (1,)):
            folder = root / name / str(version)
            folder.mkdir(parents=True)
            (folder / "model.py").write_text(head + TRITON_BODIES[name])

        def block(tensors: Tensors) -> str:
            return ",\n".join(
                f'  {{ name: "{n}" data_type: {_pbtxt_type(t)} dims: {dims} }}'
                for n, t, dims in tensors
            )

        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
            f"input [\n{block(inputs)}\n]\noutput [\n{block(outputs)}\n]\n"
            # One stub process per model is enough and keeps start-up short.
            "instance_group [ { count: 1 kind: KIND_CPU } ]\n" + TRITON_POLICY.get(name, "")
        )
    return root


def write_our_repository(root: Path) -> Path:
    """The same models as dl-inference python-backend models."""
    for name, (max_batch, inputs, outputs) in SIGNATURES.items():
        head = _OURS_HEAD.format(datatypes=_datatypes(name), identity=IDENTITY)

        def block(tensors: Tensors) -> str:
            return "".join(
                f"  - {{name: {n}, datatype: {t}, shape: {dims}}}\n" for n, t, dims in tensors
            )

        config = (
            f"max_batch_size: {max_batch}\ninputs:\n{block(inputs)}outputs:\n{block(outputs)}"
            + OUR_POLICY.get(name, "")
        )
        for version in VERSIONS.get(name, (1,)):
            write_python_model(root, name, head + OUR_BODIES[name], config, version=version)
    return root
