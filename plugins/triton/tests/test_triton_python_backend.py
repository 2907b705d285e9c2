"""The ``triton_python`` backend in process (no Triton needed): Triton's life cycle,
requests kept apart, what a model may get wrong, and the utility module.

Models load through the plugin host and the model registry and are called through
``Runtime.infer``, the path every wire protocol takes.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import triton_python_backend_utils as pb_utils

from dl_inference import BackendError, InferRequest, InvalidInput, RequestContext
from dl_inference.kernel.models import ModelRegistry, ModelState
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime

CONFIG = """
    backend: "python"
    max_batch_size: 8
    input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""
HEAD = "import json\nimport numpy as np\nimport triton_python_backend_utils as pb_utils\n"


def write(root: Path, name: str, code: str, config: str = CONFIG) -> Path:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(textwrap.dedent(config))
    (root / name / "1" / "model.py").write_text(HEAD + textwrap.dedent(code))
    return root / name


async def serve(root: Path) -> Runtime:
    models = ModelRegistry(PluginHost().load())
    runtime = Runtime(models.plugins, models, access_log=False)  # it observes executions
    models.prepare(scan_repository(root))
    await models.load_all()
    return runtime


async def infer(runtime: Runtime, model: str, x: Any, **parameters: Any) -> dict[str, np.ndarray]:
    request = InferRequest(model, {"X": np.asarray(x, dtype=np.float32)}, parameters=parameters)
    return (await runtime.infer(request, RequestContext(protocol="test", method="infer"))).outputs


def reason(runtime: Runtime, model: str) -> str:
    (version,) = runtime.models.versions(model)
    assert version.state is ModelState.UNAVAILABLE
    return version.reason


ROWS = """
class TritonPythonModel:
    def execute(self, requests):
        import time
        time.sleep(0.05)  # let the others queue up behind this one
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "Y", np.full(pb_utils.get_input_tensor_by_name(r, "X").as_numpy().shape,
                             len(pb_utils.get_input_tensor_by_name(r, "X").as_numpy()) * 10
                             + len(requests), dtype=np.float32))])
            for r in requests
        ]
"""


async def test_each_request_reaches_execute_as_sent(tmp_path: Path) -> None:
    """With dynamic batching, queued requests reach one execute as a list, as on Triton:
    each request as its client sent it (its own rows, never concatenated), at most
    max_batch_size rows in all, each answered by its own response."""
    write(
        tmp_path, "rows", ROWS, CONFIG + "dynamic_batching { max_queue_delay_microseconds: 50000 }"
    )
    runtime = await serve(tmp_path)
    sizes = [1, 2, 3, 1, 2]
    answers = await asyncio.gather(*(infer(runtime, "rows", np.zeros((n, 2))) for n in sizes))
    listed = []
    for rows, outputs in zip(sizes, answers, strict=True):
        assert outputs["Y"].shape == (rows, 2)
        (value,) = set(outputs["Y"].ravel().tolist())
        assert value // 10 == rows  # its own rows
        listed.append(int(value) % 10)  # len(requests) of the execute that answered it
    assert max(listed) > 1  # the requests queued behind the first went in together
    (version,) = runtime.models.versions("rows")
    assert version.scheduler.stats.largest <= 8
    # Statistics as Triton counts them: one execution per execute, every row inferred.
    stats = runtime.statistics.of("rows", "1")
    assert stats.executions == round(sum(1 / n for n in listed)) < len(sizes)
    assert stats.rows == sum(sizes)
    await runtime.models.unload_all()


LIFE = """
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_output({"name": "ARGS", "data_type": "TYPE_STRING", "dims": [1]})
        return config

    def initialize(self, args):
        self.args = args
        with open(args["model_repository"] + "/initialized", "a") as f:
            f.write(args["model_instance_name"] + "\\n")

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            args = json.dumps(self.args, sort_keys=True)
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", x * 2),
                pb_utils.Tensor("ARGS", np.array([[args]] * len(x))),  # str: sent as bytes
            ]))
        return out

    def finalize(self):
        with open(self.args["model_repository"] + "/finalized", "a") as f:
            f.write(self.args["model_instance_name"] + "\\n")
"""


async def test_life_cycle(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "life",
        LIFE,
        CONFIG + "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
        'parameters [ { key: "k" value: { string_value: "v" } } ]',
    )
    runtime = await serve(tmp_path)
    outputs = await infer(runtime, "life", [[1.0, 2.0]])
    np.testing.assert_array_equal(outputs["Y"], [[2.0, 4.0]])
    assert outputs["ARGS"].dtype == np.object_
    args = json.loads(outputs["ARGS"][0][0])
    assert {k: v for k, v in args.items() if k != "model_config"} == {
        "model_instance_device_id": "0",
        "model_instance_kind": "CPU",
        "model_instance_name": args["model_instance_name"],
        "model_name": "life",
        "model_repository": str(folder),
        "model_version": "1",
    }
    config = json.loads(args["model_config"])
    assert config["name"] == "life" and config["max_batch_size"] == 8
    assert config["parameters"] == {"k": {"string_value": "v"}}
    assert [o["name"] for o in config["output"]] == ["Y", "ARGS"]  # auto-completed
    metadata = runtime.models.metadata("life")
    assert [o.name for o in metadata.outputs] == ["Y", "ARGS"]
    assert metadata.platform == "python"
    # One model object per instance, each initialized; each finalized on unload.
    assert sorted((folder / "initialized").read_text().split()) == ["life_0_0", "life_0_1"]
    await runtime.models.unload_all()
    assert sorted((folder / "finalized").read_text().split()) == ["life_0_0", "life_0_1"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return []", "execute() must return a list of one InferenceResponse per request"),
        (
            "return None",
            "execute() must return a list of one InferenceResponse per request "
            "(1 request, got NoneType)",
        ),
        ("return ['x']", "returned str for a request"),
        (
            "return [pb_utils.InferenceResponse(error=pb_utils.TritonError('boom'))]",
            "boom",
        ),
        ("raise pb_utils.TritonModelException('broken')", "broken"),
    ],
)
async def test_execute_faults_fail_the_request(tmp_path: Path, body: str, expected: str) -> None:
    write(
        tmp_path,
        "bad",
        f"class TritonPythonModel:\n    def execute(self, requests):\n        {body}\n",
    )
    runtime = await serve(tmp_path)
    with pytest.raises(BackendError, match=re.escape(expected)):
        await infer(runtime, "bad", [[1.0]])
    await runtime.models.unload_all()


async def test_invalid_arg_is_a_client_error(tmp_path: Path) -> None:
    code = """
    class TritonPythonModel:
        def execute(self, requests):
            error = pb_utils.TritonError("no negatives", pb_utils.TritonError.INVALID_ARG)
            return [pb_utils.InferenceResponse(output_tensors=[], error=error)]
    """
    write(tmp_path, "refusing", code)
    runtime = await serve(tmp_path)
    with pytest.raises(InvalidInput, match="no negatives"):
        await infer(runtime, "refusing", [[-1.0]])
    await runtime.models.unload_all()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("class Other:\n    pass\n", "defines no class TritonPythonModel"),
        (
            "class TritonPythonModel:\n"
            "    @staticmethod\n"
            "    def auto_complete_config(c):\n"
            "        c.set_max_batch_size(2)\n"
            "        return c\n",
            "auto_complete_config set max_batch_size 2",
        ),
        (
            "class TritonPythonModel:\n"
            "    @staticmethod\n"
            "    def auto_complete_config(c):\n"
            "        c.add_input({'name': 'X', 'data_type': 'TYPE_INT8', 'dims': [-1]})\n"
            "        return c\n",
            "data_type 'TYPE_INT8' given",
        ),
        (
            "class TritonPythonModel:\n"
            "    def initialize(self, args):\n"
            "        raise OSError('no file')\n",
            "no file",
        ),
    ],
)
async def test_load_failures_name_the_cause(tmp_path: Path, code: str, expected: str) -> None:
    write(tmp_path, "broken", code)
    runtime = await serve(tmp_path)
    assert expected in reason(runtime, "broken")


async def test_default_model_filename(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "named",
        "raise RuntimeError('model.py must not be read')\n",
        CONFIG + 'default_model_filename: "net.py"',
    )
    (folder / "1" / "net.py").write_text(
        HEAD + "class TritonPythonModel:\n    def execute(self, requests):\n"
        "        return [pb_utils.InferenceResponse([pb_utils.Tensor('Y', "
        "pb_utils.get_input_tensor_by_name(r, 'X').as_numpy() + 1)]) for r in requests]\n"
    )
    runtime = await serve(tmp_path)
    np.testing.assert_array_equal((await infer(runtime, "named", [[1.0]]))["Y"], [[2.0]])
    await runtime.models.unload_all()


# -- triton_python_backend_utils ------------------------------------------------------------


def test_type_tables() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.object_) == 13
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.triton_to_numpy_type(8) is np.int32
    assert pb_utils.numpy_to_triton_type(np.complex64) is None


def test_bytes_serialization_round_trip() -> None:
    items = np.array([b"a", "\u00e9".encode(), b""], dtype=np.object_)
    encoded = pb_utils.serialize_byte_tensor(items)
    assert encoded is not None and encoded.dtype == np.uint8
    assert bytes(encoded) == b"\x01\x00\x00\x00a\x02\x00\x00\x00\xc3\xa9\x00\x00\x00\x00"
    assert pb_utils.deserialize_bytes_tensor(encoded).tolist() == items.tolist()


def test_tensors_requests_responses() -> None:
    tensor = pb_utils.Tensor("T", np.array(["ab", "c"]))
    assert tensor.as_numpy().dtype == np.object_ and tensor.as_numpy().tolist() == [b"ab", b"c"]
    request = pb_utils.InferenceRequest([tensor], request_id="r1", parameters={"a": 1})
    assert pb_utils.get_input_tensor_by_name(request, "T") is tensor
    assert pb_utils.get_input_tensor_by_name(request, "U") is None
    assert json.loads(request.parameters()) == {"a": 1} and request.request_id() == "r1"
    response = pb_utils.InferenceResponse([tensor])
    assert pb_utils.get_output_tensor_by_name(response, "T") is tensor
    assert not response.has_error()
    error = pb_utils.TritonError("m")
    assert (error.message(), error.code()) == ("m", pb_utils.TritonError.INTERNAL)
    with pytest.raises(pb_utils.TritonModelException, match="not supported"):
        request.exec()


def test_config_helpers() -> None:
    config = {"input": [{"name": "X", "dims": [2]}], "output": [{"name": "Y", "dims": [3]}]}
    assert pb_utils.get_input_config_by_name(config, "X") == {"name": "X", "dims": [2]}
    assert pb_utils.get_output_config_by_name(config, "Y") == {"name": "Y", "dims": [3]}
    assert pb_utils.get_output_config_by_name(config, "X") is None
    completed = pb_utils.ModelConfig(json.dumps(config))
    completed.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [2]})
    with pytest.raises(ValueError, match="dims"):
        completed.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [4]})
    completed.set_max_batch_size(4)
    assert completed.as_dict()["max_batch_size"] == 4
    assert completed.as_dict()["input"][0]["data_type"] == "TYPE_FP32"


async def test_model_warmup_runs_before_ready(tmp_path: Path) -> None:
    code = """
    class TritonPythonModel:
        def initialize(self, args):
            self.log = args["model_repository"] + "/executed"

        def execute(self, requests):
            x = pb_utils.get_input_tensor_by_name(requests[0], "X").as_numpy()
            with open(self.log, "a") as f:
                f.write(f"{list(x.shape)} {float(x.sum())}\\n")
            return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)])]
    """
    warmup = """
    model_warmup [ { name: "zeros" batch_size: 2 count: 3
      inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 5 ] zero_data: true } } } ]
    """
    folder = write(tmp_path, "warm", code, CONFIG + warmup)
    runtime = await serve(tmp_path)
    assert runtime.models.versions("warm")[0].state is ModelState.READY
    assert (folder / "executed").read_text().splitlines() == ["[2, 5] 0.0"] * 3
    await runtime.models.unload_all()
