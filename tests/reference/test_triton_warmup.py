"""Model warm-up side by side with Triton 2.51: its ``model_warmup``, our ``warmup:``.

Both servers serve ``warm`` (three zero-data runs before ready; each execution appends a
line to a file) and ``cold_break`` (its model raises, so its one warm-up run fails). What
must agree: the warm-up runs before the model is ready, ``count`` times, and not again; a
failed warm-up fails the load. Where they differ on purpose (docs/triton-differences.md,
"Warm-up runs in statistics"): Triton counts warm-up executions in the model's statistics,
dl-inference counts only clients' requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from dl_inference.testing import ServerProcess, write_python_model

from .triton import TritonServer, skip_without_triton

TRITON_MODEL = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            with open(CALLS, "a") as calls:
                calls.write("call\\n")
            if BREAK:
                raise RuntimeError("cold start broke")
            return [
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]
                )
                for r in requests
            ]
"""
TRITON_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
    model_warmup [ {
      name: "zeros" batch_size: 1 count: COUNT
      inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
    } ]
"""
OUR_MODEL = """
    from dl_inference import PythonModel

    class Recording(PythonModel):
        def predict(self, inputs):
            with open(CALLS, "a") as calls:
                calls.write("call\\n")
            if BREAK:
                raise RuntimeError("cold start broke")
            return {"y": inputs["x"]}
"""
OUR_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [4]}]
    outputs: [{name: y, datatype: FP32, shape: [4]}]
    warmup:
      - {name: zeros, count: COUNT, inputs: {x: {datatype: FP32, shape: [4], zero_data: true}}}
"""
MODELS = {"warm": (3, False), "cold_break": (1, True)}


def code(template: str, calls: Path, broken: bool) -> str:
    text = textwrap.dedent(template)
    return text.replace("CALLS", json.dumps(str(calls))).replace("BREAK", str(broken))


def triton_repository(root: Path, calls: Path, names: list[str]) -> Path:
    for name in names:
        count, broken = MODELS[name]
        (root / name / "1").mkdir(parents=True)
        config = textwrap.dedent(TRITON_CONFIG).replace("COUNT", str(count))
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\n{config}')
        (root / name / "1" / "model.py").write_text(code(TRITON_MODEL, calls / name, broken))
    return root


def our_repository(root: Path, calls: Path) -> Path:
    for name, (count, broken) in MODELS.items():
        config = OUR_CONFIG.replace("COUNT", str(count))
        write_python_model(root, name, code(OUR_MODEL, calls / name, broken), config)
    return root


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def statistics(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/v2/models/warm/stats", timeout=10) as reply:
        (version,) = json.load(reply)["model_stats"]
    return {
        "inference_count": version["inference_count"],
        "execution_count": version["execution_count"],
        "success": version["inference_stats"]["success"]["count"],
    }


def model_ready(url: str, name: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/models/{name}/ready", timeout=10) as reply:
            return reply.status == 200
    except urllib.error.HTTPError:
        return False


def wait_unavailable(url: str, name: str, timeout: float = 60.0) -> None:
    """Until Triton's repository index says ``name`` failed to load (it loads in parallel)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            states = {row["name"]: row.get("state") for row in json.load(reply)}
        if states.get(name) == "UNAVAILABLE":
            return
        time.sleep(0.1)
    raise AssertionError(f"Triton did not mark {name} UNAVAILABLE: {states}")


def observe(http_address: str, url: str, calls: Path) -> dict[str, Any]:
    """Calls made by warm-up, readiness, statistics before and after one client call."""
    seen: dict[str, Any] = {
        "warm calls at ready": lines(calls / "warm"),
        "warm ready": model_ready(url, "warm"),
        "statistics before": statistics(url),
    }
    client = httpclient.InferenceServerClient(http_address)
    tensor = httpclient.InferInput("x", [4], "FP32")
    tensor.set_data_from_numpy(np.ones(4, np.float32))
    client.infer("warm", [tensor])
    seen["warm calls after one request"] = lines(calls / "warm")
    seen["statistics after"] = statistics(url)
    return seen


def test_warmup_runs_before_ready_as_on_triton(tmp_path: Path) -> None:
    skip_without_triton()
    triton_calls, our_calls = tmp_path / "triton_calls", tmp_path / "our_calls"
    triton_calls.mkdir()
    our_calls.mkdir()
    repo = triton_repository(tmp_path / "triton", triton_calls, ["warm"])
    with TritonServer(repo, tmp_path / "triton.log") as triton:
        theirs = observe(triton.http_address, triton.http_url, triton_calls)
    ours_repo = our_repository(tmp_path / "ours", our_calls)
    with ServerProcess(["--model-repository", str(ours_repo)]) as server:
        ours = observe(server.http_address, server.http_url, our_calls)

    same = {"warm calls at ready": 3, "warm ready": True, "warm calls after one request": 4}
    assert {key: theirs[key] for key in same} == same, theirs
    assert {key: ours[key] for key in same} == same, ours
    # The difference on purpose: Triton counts its three warm-up executions.
    assert theirs["statistics before"] == {"inference_count": 3, "execution_count": 3, "success": 3}
    assert theirs["statistics after"] == {"inference_count": 4, "execution_count": 4, "success": 4}
    assert ours["statistics before"] == {"inference_count": 0, "execution_count": 0, "success": 0}
    assert ours["statistics after"] == {"inference_count": 1, "execution_count": 1, "success": 1}


def test_a_failed_warmup_fails_the_load_as_on_triton(tmp_path: Path) -> None:
    skip_without_triton()
    # Triton 2.51's python backend sometimes dies (SIGSEGV) after a warm-up that raised:
    # a few tries, then a skip that says so, rather than a flaky failure.
    theirs: dict[str, Any] | None = None
    for attempt in range(3):
        calls = tmp_path / f"triton_calls_{attempt}"
        calls.mkdir()
        repo = triton_repository(tmp_path / f"triton_{attempt}", calls, ["cold_break", "warm"])
        triton = TritonServer(
            repo, tmp_path / f"triton_{attempt}.log", args=["--exit-on-error=false"],
            wait_for="/v2/models/warm/ready",
        )  # fmt: skip
        try:
            with triton:
                wait_unavailable(triton.http_url, "cold_break")
                theirs = {
                    "calls": lines(calls / "cold_break"),
                    "ready": model_ready(triton.http_url, "cold_break"),
                }
            break
        except RuntimeError as exc:
            if "exited with -11" not in str(exc):
                raise
            # The crashed server leaves its python stubs behind, in its process group.
            assert triton.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(triton.process.pid, signal.SIGKILL)
    if theirs is None:
        pytest.skip("Triton 2.51 crashed (SIGSEGV) after the failing warm-up, three times")
    our_calls = tmp_path / "our_calls"
    our_calls.mkdir()
    with ServerProcess(
        ["--model-repository", str(our_repository(tmp_path / "ours", our_calls))]
    ) as server:
        ours = {
            "calls": lines(our_calls / "cold_break"),
            "ready": model_ready(server.http_url, "cold_break"),
        }
        with urllib.request.urlopen(f"{server.http_url}/api/status", timeout=10) as reply:
            document = json.load(reply)
    assert theirs == ours == {"calls": 1, "ready": False}
    (row,) = [model for model in document["models"] if model["name"] == "cold_break"]
    assert row["versions"][0]["reason"].startswith(
        "warm-up 'zeros' failed: model 'cold_break' failed: RuntimeError: cold start broke"
    )
