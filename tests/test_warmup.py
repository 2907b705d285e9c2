"""Model warm-up (config.yaml ``warmup:``): samples run through a model before it turns ready."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dl_inference.kernel.config.loader import load_model_config_file
from dl_inference.kernel.models import ModelRegistry, ModelState
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.errors import ConfigError
from dl_inference.spi.types import InferRequest, RequestContext
from dl_inference.testing import free_port, wait_for, write_python_model

# predict() appends one JSON line per call (input shapes and dtypes) to calls.txt beside
# the model; while the file GATE is missing it waits, so a test can watch the server
# between the first warm-up call and readiness.
RECORDING = """
    import json
    import time
    from pathlib import Path
    from dl_inference import PythonModel

    GATE = Path(GATE_PATH) if GATE_PATH else None

    class Recording(PythonModel):
        def predict(self, inputs):
            record = {k: [list(v.shape), str(v.dtype)] for k, v in inputs.items()}
            with (self.path.parent / "calls.txt").open("a") as calls:
                calls.write(json.dumps(record) + "\\n")
            while GATE is not None and not GATE.exists():
                time.sleep(0.02)
            return {"y": inputs["x"] * 2}
"""

TENSORS = """
    inputs: [{name: x, datatype: FP32, shape: [4]}]
    outputs: [{name: y, datatype: FP32, shape: [4]}]
"""


def recording_model(root: Path, name: str, *config: str, gate: Path | None = None) -> Path:
    code = RECORDING.replace("GATE_PATH", json.dumps(str(gate) if gate else ""))
    return write_python_model(root, name, code, yaml(*config))


def yaml(*parts: str) -> str:
    """config.yaml from indented pieces (each dedented on its own)."""
    return "\n".join(textwrap.dedent(part).strip("\n") for part in parts) + "\n"


def calls(folder: Path) -> list[dict[str, Any]]:
    path = folder / "calls.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- end to end: the server as users run it ----------------------------------------------------


def http(url: str, body: dict[str, Any] | None = None) -> tuple[int | None, Any]:
    """(status, JSON reply) of GET, or POST with ``body``; (None, None) when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = reply.read()
            return reply.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return None, None


def test_warmup_runs_before_ready_and_counts_in_no_statistics(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    gate = tmp_path / "gate"
    warm = recording_model(
        repo,
        "warm",
        TENSORS,
        """
        warmup:
          - name: zeros
            count: 3
            inputs: {x: {datatype: FP32, shape: [4], zero_data: true}}
        """,
        gate=gate,
    )
    # A sample of the wrong shape: the load fails, as on Triton, with the reason shown.
    recording_model(
        repo,
        "misfit",
        TENSORS,
        """
        warmup:
          - name: zeros
            inputs: {x: {datatype: FP32, shape: [5], zero_data: true}}
        """,
    )
    grpc_port, http_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "dl_inference", "serve", "--model-repository", str(repo),
        "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", str(http_port),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        # The first warm-up call runs (and waits at the gate): the model is not ready yet.
        wait_for(lambda: len(calls(warm)) == 1, "the first warm-up call", timeout=60)
        assert http(f"{url}/v2/models/warm/ready")[0] != 200
        gate.touch()
        wait_for(
            lambda: http(f"{url}/v2/models/warm/ready")[0] == 200, "model warm ready", timeout=60
        )
        assert calls(warm) == [{"x": [[4], "float32"]}] * 3  # all before readiness

        status, reply = http(
            f"{url}/v2/models/warm/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}]},
        )
        assert status == 200 and reply["outputs"][0]["data"] == [2, 4, 6, 8]
        assert len(calls(warm)) == 4
        status, stats = http(f"{url}/v2/models/warm/stats")
        assert status == 200
        (version,) = stats["model_stats"]
        # Only the client's call: warm-up runs are not requests (nor executions).
        assert version["inference_stats"]["success"]["count"] == 1
        assert version["inference_count"] == 1
        assert version["execution_count"] == 1

        # The reason, as the status page shows it (/v2/repository/index is management's).
        status, document = http(f"{url}/api/status")
        assert status == 200
        misfit = next(row for row in document["models"] if row["name"] == "misfit")
        (version,) = misfit["versions"]
        assert version["state"] == "UNAVAILABLE"
        assert version["reason"].startswith("warm-up 'zeros' failed: input 'x'")
        assert "shape [5] given, [4] expected" in version["reason"]
        assert http(f"{url}/v2/models/misfit/ready")[0] != 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    lines = [line for line in output.splitlines() if "model warm-up" in line]
    assert len(lines) == 1 and "model=warm" in lines[0] and "runs=3" in lines[0], output
    assert "duration_ms=" in lines[0]


# -- the kernel: samples, defaults, the request path ----------------------------------------------


async def load(root: Path) -> tuple[ModelRegistry, Runtime]:
    plugins = PluginHost(entry_points=[]).load()
    models = ModelRegistry(plugins)
    runtime = Runtime(plugins, models, access_log=False)
    models.prepare(scan_repository(root))
    await models.load_all()
    return models, runtime


async def test_inputs_left_out_are_zeros_of_every_declared_input(tmp_path: Path) -> None:
    folder = recording_model(
        tmp_path,
        "m",
        """
        max_batch_size: 8
        inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]
        outputs: [{name: y, datatype: FP32, shape: [-1, 3]}]
        warmup: [{batch_size: 2}, {name: one}]
        """,
    )
    models, _ = await load(tmp_path)
    assert models.resolve("m").ready
    # Batch dimension from batch_size; a variable dimension as 1.
    assert calls(folder) == [{"x": [[2, 1, 3], "float32"]}, {"x": [[1, 1, 3], "float32"]}]


async def test_no_inputs_and_none_declared_fails_with_a_hint(tmp_path: Path) -> None:
    recording_model(tmp_path, "m", "warmup: [{name: guess}]")
    models, _ = await load(tmp_path)
    (version,) = models.versions("m")
    assert version.state is ModelState.UNAVAILABLE
    assert version.reason.startswith("warm-up 'guess' failed: the sample gives no inputs")


async def test_random_data_and_input_data_file(tmp_path: Path) -> None:
    folder = recording_model(
        tmp_path,
        "m",
        """
        inputs: [{name: x, datatype: FP32, shape: [4]}, {name: n, datatype: INT64, shape: [2]}]
        warmup:
          - inputs:
              x: {datatype: FP32, shape: [4], random_data: true}
              n: {input_data_file: n.npy}
        """,
    )
    # In the model folder; the version folder would win.
    np.save(folder / "n.npy", np.array([7, 8], np.int64))
    models, _ = await load(tmp_path)
    assert models.resolve("m").ready, models.index()
    assert calls(folder) == [{"x": [[4], "float32"], "n": [[2], "int64"]}]


async def test_a_missing_data_file_names_where_it_looked(tmp_path: Path) -> None:
    recording_model(
        tmp_path,
        "m",
        TENSORS,
        "warmup: [{name: file, inputs: {x: {input_data_file: x.npy}}}]",
    )
    models, _ = await load(tmp_path)
    (version,) = models.versions("m")
    assert version.state is ModelState.UNAVAILABLE
    assert "warm-up 'file' failed: input_data_file 'x.npy' not found" in version.reason
    assert str(tmp_path / "m" / "1" / "x.npy") in version.reason


async def test_a_model_that_raises_fails_the_load(tmp_path: Path) -> None:
    write_python_model(
        tmp_path,
        "m",
        """
        from dl_inference import PythonModel

        class Broken(PythonModel):
            def predict(self, inputs):
                raise RuntimeError("cold start broke")
        """,
        yaml(TENSORS, "warmup: [{name: zeros}]"),
    )
    models, runtime = await load(tmp_path)
    (version,) = models.versions("m")
    assert version.state is ModelState.UNAVAILABLE
    assert version.reason.startswith("warm-up 'zeros' failed: model 'm' failed: RuntimeError")
    assert "cold start broke" in version.reason
    # Counted nowhere: the failed warm-up is no client's failed request.
    assert runtime.model_statistics("m")[0].fail.count == 0


async def test_warmup_runs_through_processor_py(tmp_path: Path) -> None:
    folder = recording_model(
        tmp_path,
        "m",
        """
        inputs: [{name: text, datatype: BYTES, shape: [1]}]
        outputs: [{name: y, datatype: FP32, shape: [4]}]
        warmup: [{name: strings}]
        """,
    )
    # preprocess() turns what clients send (config.yaml's inputs) into the model's input;
    # one BYTES element reaches it as bytes (the seed's rule), the warm-up's empty string too.
    (folder / "processor.py").write_text(
        "import numpy as np\n"
        "def preprocess(x):\n"
        "    assert x == b'', x\n"
        "    return {'x': np.zeros(4, np.float32)}\n"
    )
    models, runtime = await load(tmp_path)
    assert models.resolve("m").ready, models.index()
    assert calls(folder) == [{"x": [[4], "float32"]}]
    response = await runtime.infer(
        InferRequest("m", {"text": np.array([b""], dtype=object)}), RequestContext("test", "t")
    )
    assert response.outputs["y"].tolist() == [0, 0, 0, 0]


# -- config.yaml validation ------------------------------------------------------------------------


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_model_config_file(path)
    return str(caught.value)


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, "warmup: [{name: a, counts: 2}]")
    assert "warmup[0].counts" in message or "warmup.0.counts" in message, message


def test_exactly_one_data_source(tmp_path: Path) -> None:
    both = "warmup: [{inputs: {x: {datatype: FP32, shape: [1], zero_data: 1, random_data: 1}}}]"
    assert "exactly one of zero_data" in config_error(tmp_path, both)
    none = "warmup: [{inputs: {x: {datatype: FP32, shape: [1]}}}]"
    assert "exactly one of zero_data" in config_error(tmp_path, none)
    untyped = "warmup: [{inputs: {x: {zero_data: true}}}]"
    assert "need a datatype and a shape" in config_error(tmp_path, untyped)


def test_datatype_and_fixed_shape(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, "warmup: [{inputs: {x: {datatype: FLOAT, shape: [1], zero_data: true}}}]"
    )
    assert "unknown datatype 'FLOAT'" in message
    message = config_error(
        tmp_path, "warmup: [{inputs: {x: {datatype: FP32, shape: [-1], zero_data: true}}}]"
    )
    assert "-1 is not allowed" in message


def test_batch_size_fits_the_model(tmp_path: Path) -> None:
    assert "does not batch" in config_error(tmp_path, "warmup: [{batch_size: 2}]")
    message = config_error(tmp_path, "max_batch_size: 4\nwarmup: [{batch_size: 8}]")
    assert "over max_batch_size 4" in message
    path = tmp_path / "config.yaml"
    path.write_text("max_batch_size: 4\nwarmup: [{batch_size: 4, count: 2}, {}]")
    config = load_model_config_file(path)
    assert [(s.name, s.batch_size, s.count) for s in config.warmup] == [
        ("warmup[0]", 4, 2),
        ("warmup[1]", 1, 1),
    ]
