"""Triton ensembles (``platform: "ensemble"`` config.pbtxt) run by the kernel's ensemble
backend, in process: the steps of a graph on the kernel's own python-backend models,
tensors passed in process; the load-time checks of the graph (each error names the step);
a step's error class reaching the client; statistics; a step model unloaded.

The side-by-side comparison with the real Triton is tests/reference/test_triton_ensemble.py.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dl_inference.builtin.v2.model_config import config_document, config_message
from dl_inference.kernel.models import ModelRegistry, ModelState
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.errors import InvalidInput, Unavailable
from dl_inference.spi.types import InferRequest, InferResponse, RequestContext
from dl_inference.testing import write_python_model

SCALE = """
    from dl_inference import InvalidInput, PythonModel

    class Scale(PythonModel):
        def predict(self, inputs):
            x = inputs["X"]
            if (x < 0).any():
                raise InvalidInput("scale takes no negative values")
            return {"Y": x * 2}
"""
ADD = """
    from dl_inference import PythonModel

    class Add(PythonModel):
        def predict(self, inputs):
            return {"SUM": inputs["A"] + inputs["B"]}
"""
# Two branch models that meet at a barrier: they answer only when both run at once. Each
# model.py is a module of its own: the barrier lives in one shared module, per repository.
BRANCH = """
    import sys
    import threading
    import types
    from pathlib import Path
    from dl_inference import PythonModel

    SHARED = sys.modules.setdefault("dli_test_barriers", types.ModuleType("dli_test_barriers"))
    BARRIER = SHARED.__dict__.setdefault(
        str(Path(__file__).parents[2]), threading.Barrier(2, timeout=20)
    )

    class Branch(PythonModel):
        def predict(self, inputs):
            BARRIER.wait()
            return {"OUT": inputs["IN"] + 1}
"""
FP32_4 = """
    max_batch_size: 8
    inputs: [{name: %s, datatype: FP32, shape: [4]}%s]
    outputs: [{name: %s, datatype: FP32, shape: [4]}]
"""

PIPELINE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [
  { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "BIAS" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "SCALED" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "LEFT" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "RIGHT" data_type: TYPE_FP32 dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "add" model_version: -1
      input_map { key: "A" value: "SCALED" }
      input_map { key: "B" value: "BIAS" }
      output_map { key: "SUM" value: "OUT" }
    },
    {
      model_name: "scale" model_version: -1
      input_map { key: "X" value: "IN" }
      output_map { key: "Y" value: "SCALED" }
    },
    {
      model_name: "left" model_version: 1
      input_map { key: "IN" value: "BIAS" }
      output_map { key: "OUT" value: "LEFT" }
    },
    {
      model_name: "right" model_version: -1
      input_map { key: "IN" value: "BIAS" }
      output_map { key: "OUT" value: "RIGHT" }
    }
  ]
}
"""


def write_repository(root: Path, ensemble: str = PIPELINE) -> Path:
    write_python_model(root, "scale", SCALE, FP32_4 % ("X", "", "Y"))
    write_python_model(
        root, "add", ADD, FP32_4 % ("A", ", {name: B, datatype: FP32, shape: [4]}", "SUM")
    )
    for name in ("left", "right"):
        write_python_model(root, name, BRANCH, FP32_4 % ("IN", "", "OUT"))
    (root / "pipeline" / "1").mkdir(parents=True)
    (root / "pipeline" / "config.pbtxt").write_text(textwrap.dedent(ensemble))
    return root


class Served:
    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        plugins = PluginHost(entry_points=[]).load()
        self.models = ModelRegistry(plugins)
        self.runtime = Runtime(plugins, self.models, access_log=False)
        self.models.prepare(scan_repository(root, strict=False), strict=False)
        self.run(self.models.load_all())

    def run(self, work: object) -> object:
        return self.loop.run_until_complete(work)  # type: ignore[arg-type]

    def infer(self, model: str, **inputs: np.ndarray) -> InferResponse:
        request = InferRequest(model, dict(inputs))
        return self.run(self.runtime.infer(request, RequestContext("test", "infer")))  # type: ignore[return-value]

    def reason(self, model: str) -> str:
        (version,) = self.models.versions(model)
        assert version.state is ModelState.UNAVAILABLE, version.state
        return version.reason

    def close(self) -> None:
        self.run(self.models.unload_all())
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    served = Served(write_repository(tmp_path))
    yield served
    served.close()


def fp32(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_steps_run_in_order_and_branches_at_once(served: Served) -> None:
    """add waits for scale's output (listed first, it runs second); left and right run
    concurrently (their barrier needs both at once)."""
    x, bias = fp32([1, 2, 3, 4], [0, 0, 0, 1]), fp32([1, 1, 1, 1], [5, 5, 5, 5])
    response = served.infer("pipeline", IN=x, BIAS=bias)
    assert response.outputs["OUT"].tolist() == (x * 2 + bias).tolist()
    assert response.outputs["SCALED"].tolist() == (x * 2).tolist()
    assert response.outputs["LEFT"].tolist() == response.outputs["RIGHT"].tolist()
    assert response.outputs["LEFT"].tolist() == (bias + 1).tolist()
    assert response.outputs["OUT"].dtype == np.float32
    metadata = served.runtime.model_metadata("pipeline")
    assert metadata.platform == "ensemble"
    assert [s.name for s in metadata.outputs] == ["OUT", "SCALED", "LEFT", "RIGHT"]


def test_the_configuration_lists_the_steps_as_triton_does(served: Served) -> None:
    """/config (and gRPC ModelConfig, parsed from the same document): Triton's ensemble."""
    document = config_document(served.runtime.resolve_model("pipeline", ""))
    assert document["platform"] == "ensemble"
    assert document["backend"] == ""
    assert document["instance_group"] == []
    assert "optimization" not in document
    steps = document["ensemble_scheduling"]["step"]
    assert [(s["model_name"], s["model_version"]) for s in steps] == [
        ("add", -1),
        ("scale", -1),
        ("left", 1),
        ("right", -1),
    ]
    assert steps[0]["input_map"] == {"A": "SCALED", "B": "BIAS"}
    assert steps[0]["output_map"] == {"SUM": "OUT"}
    message = config_message(document).config
    assert message.platform == "ensemble"
    assert [s.model_name for s in message.ensemble_scheduling.step] == [
        "add",
        "scale",
        "left",
        "right",
    ]


def test_step_models_count_their_executions(served: Served) -> None:
    x = fp32([1, 2, 3, 4])
    for _ in range(2):
        served.infer("pipeline", IN=x, BIAS=x)
    with pytest.raises(InvalidInput):
        served.infer("pipeline", IN=-x, BIAS=x)
    stats = {s.name: s for s in served.runtime.model_statistics()}
    assert (stats["pipeline"].execution_count, stats["pipeline"].success.count) == (2, 2)
    assert stats["pipeline"].fail.count == 1
    assert (stats["scale"].success.count, stats["scale"].fail.count) == (2, 1)
    assert (stats["add"].execution_count, stats["add"].success.count) == (2, 2)


def test_a_step_error_keeps_its_class_and_names_the_step(served: Served) -> None:
    x = fp32([-1, 2, 3, 4])
    with pytest.raises(InvalidInput) as caught:
        served.infer("pipeline", IN=x, BIAS=x)
    assert "in ensemble 'pipeline', step 1 (model 'scale'): " in str(caught.value)
    assert "scale takes no negative values" in str(caught.value)


def test_the_ensemble_inputs_are_checked_as_any_model_s(served: Served) -> None:
    with pytest.raises(InvalidInput, match="'BIAS'"):
        served.infer("pipeline", IN=fp32([1, 2, 3, 4]))
    with pytest.raises(InvalidInput, match="max_batch_size 8"):
        served.infer("pipeline", IN=np.ones((9, 4), np.float32), BIAS=np.ones((9, 4), np.float32))


def test_a_step_model_unloaded_makes_requests_unavailable(served: Served) -> None:
    served.run(served.models.unload_model("add"))
    x = fp32([1, 2, 3, 4])
    with pytest.raises(Unavailable, match=r"step 0 \(model 'add'\) cannot run"):
        served.infer("pipeline", IN=x, BIAS=x)


def steps(*lines: str) -> str:
    """An ensemble config with these steps (IN -> ... -> OUT, FP32 [4], batch 8)."""
    return (
        'platform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        "ensemble_scheduling { step [\n" + ",\n".join(lines) + "\n] }\n"
    )


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'{{ model_name: "{model}" model_version: -1 {" ".join(maps)} }}'


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            steps(step("scale", {"X": "NOPE"}, {"Y": "OUT"})),
            "step 0 (model 'scale'): input 'X' reads 'NOPE', which is neither an input",
        ),
        (
            steps(
                step("scale", {"X": "IN"}, {"Y": "OUT"}), step("scale", {"X": "IN"}, {"Y": "OUT"})
            ),
            "step 1 (model 'scale'): ensemble tensor 'OUT' is already the output of step 0",
        ),
        (
            steps(step("scale", {"X": "IN"}, {"Y": "MID"})),
            "ensemble output 'OUT' is produced by no step",
        ),
        (
            steps(
                step("scale", {"X": "B"}, {"Y": "A"}),
                step("scale", {"X": "A"}, {"Y": "B"}),
                step("scale", {"X": "IN"}, {"Y": "OUT"}),
            ),
            "a cycle): step 0 (model 'scale'), step 1 (model 'scale')",
        ),
        (
            steps(step("scale", {"X": "IN"}, {"Y": "IN"})),
            "step 0 (model 'scale'): output_map writes 'IN', an input of the ensemble",
        ),
        (
            steps(step("missing", {"X": "IN"}, {"Y": "OUT"})),
            "step 0 (model 'missing') cannot run: unknown model 'missing'",
        ),
        (
            steps(step("scale", {"Z": "IN"}, {"Y": "OUT"})),
            "step 0 (model 'scale'): input_map names 'Z', which is not an input of 'scale' "
            "(its inputs: X)",
        ),
        (
            steps(step("scale", {"X": "IN"}, {"W": "OUT"})),
            "step 0 (model 'scale'): output_map names 'W', which is not an output",
        ),
        (
            steps(step("add", {"A": "IN"}, {"SUM": "OUT"})),
            "step 0 (model 'add'): input_map leaves out the model's inputs B",
        ),
        (
            steps(step("scale", {"X": "IN"}, {"Y": "OUT"})).replace("TYPE_FP32", "TYPE_INT32", 1),
            "step 0 (model 'scale'): input 'X' takes FP32, and ensemble tensor 'IN' is INT32",
        ),
        (
            steps(step("scale", {"X": "IN"}, {"Y": "OUT"})).replace(
                "max_batch_size: 8", "max_batch_size: 16"
            ),
            "the ensemble's max_batch_size 16 is larger than the model's (8)",
        ),
        (
            steps(step("scale", {"X": "IN"}, {"Y": "OUT"})).replace(
                'platform: "ensemble"', 'backend: "python"'
            ),
            'platform "ensemble" and ensemble_scheduling go together',
        ),
    ],
)
def test_load_errors_name_the_step(tmp_path: Path, config: str, expected: str) -> None:
    served = Served(write_repository(tmp_path, config))
    try:
        reason = served.reason("pipeline")
        assert expected in reason
        assert served.models.is_ready("scale")  # the step models serve on
    finally:
        served.close()


def test_ensembles_using_each_other_fail_to_load(tmp_path: Path) -> None:
    write_repository(tmp_path, steps(step("other", {"IN": "IN"}, {"OUT": "OUT"})))
    (tmp_path / "other" / "1").mkdir(parents=True)
    (tmp_path / "other" / "config.pbtxt").write_text(
        steps(step("pipeline", {"IN": "IN"}, {"OUT": "OUT"}))
    )
    served = Served(tmp_path)
    try:
        assert "use each other" in served.reason("pipeline") + served.reason("other")
    finally:
        served.close()


def write_outer(root: Path) -> None:
    """An ensemble ``outer`` in ``root`` whose one step is the ensemble ``pipeline``
    (:func:`write_repository`'s), answering pipeline's ``OUT`` and ``LEFT``."""
    (root / "outer" / "1").mkdir(parents=True)
    outer = steps(
        '{ model_name: "pipeline" model_version: -1 input_map { key: "IN" value: "IN" } '
        'input_map { key: "BIAS" value: "IN" } output_map { key: "OUT" value: "OUT" } '
        'output_map { key: "LEFT" value: "LEFT" } }'
    ).replace(
        'output [ { name: "OUT"',
        'output [ { name: "LEFT" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "OUT"',
    )
    (root / "outer" / "config.pbtxt").write_text(outer)


def test_an_ensemble_may_run_another_ensemble(tmp_path: Path) -> None:
    """``outer`` runs ``pipeline`` as a step: it waits for it to load, then calls it."""
    write_repository(tmp_path)
    write_outer(tmp_path)
    served = Served(tmp_path)
    try:
        x = fp32([1, 2, 3, 4])
        response = served.infer("outer", IN=x)
        assert response.outputs["OUT"].tolist() == (x * 3).tolist()
        assert response.outputs["LEFT"].tolist() == (x + 1).tolist()
        assert served.runtime.model_statistics("pipeline")[0].success.count == 1
    finally:
        served.close()
