"""A served model follows its folder: config.yaml edits apply, failed loads are retried with
back-off, and a folder no backend can serve is held UNAVAILABLE while the others serve."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dl_inference.testing import ServerProcess, wait_for, write_python_model

OFFSET = """
    from dl_inference import PythonModel

    class Offset(PythonModel):
        def load(self):
            self.offset = self.config["parameters"]["offset"]

        def predict(self, inputs):
            return {"y": inputs["x"] + self.offset}
"""
TENSORS = """
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""
# Loads only once a flag file outside the model folder exists: nothing of the model changes.
NEEDS_FLAG = """
    from pathlib import Path
    from dl_inference import PythonModel

    class NeedsFlag(PythonModel):
        def load(self):
            if not Path(%r).exists():
                raise RuntimeError("the GPU is not there yet")

        def predict(self, inputs):
            return {"y": inputs["x"] + 1}
"""
POLL = "server: {repository_poll_s: 0.2}\n"


def offset_config(offset: int) -> str:
    return TENSORS + f"    parameters: {{offset: {offset}}}\n"


def http(server: ServerProcess, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.http_url + path, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status, text = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    return status, json.loads(text) if text else None


def infer(server: ServerProcess, model: str) -> tuple[int, Any]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [0, 0]}]}
    status, reply = http(server, f"/v2/models/{model}/infer", body)
    return status, reply["outputs"][0]["data"][0] if status == 200 else reply["error"]


def versions(server: ServerProcess, model: str) -> list[dict[str, str]]:
    """The model's versions as the status page's feed lists them (state and reason)."""
    document = http(server, "/api/status")[1]
    return next(m["versions"] for m in document["models"] if m["name"] == model)


def write_config(folder: Path, text: str) -> None:
    (folder / "config.yaml").write_text(text.replace("\n    ", "\n").lstrip())


def serve_args(tmp_path: Path) -> list[str]:
    config = tmp_path / "server.yaml"
    config.write_text(f"model_repository: models\n{POLL}")
    return ["-c", str(config)]


def test_a_config_yaml_edit_reloads_the_model(tmp_path: Path) -> None:
    folder = write_python_model(tmp_path / "models", "m", OFFSET, offset_config(1))
    with ServerProcess(serve_args(tmp_path)) as server:
        assert infer(server, "m") == (200, 1)
        # What an error message tells a user to do: edit config.yaml, nothing else.
        write_config(folder, offset_config(10))
        wait_for(lambda: infer(server, "m") == (200, 10), "the edited config.yaml to apply")

        # An invalid edit: the old version keeps serving and says why the new one is not.
        write_config(folder, offset_config(20) + "max_batch_sise: 4\n")
        reason = wait_for(
            lambda: versions(server, "m")[0]["reason"], "the invalid config.yaml's reason"
        )
        assert str(folder / "config.yaml") in reason, reason
        assert "did you mean max_batch_size" in reason, reason
        assert versions(server, "m")[0]["state"] == "READY"
        assert infer(server, "m") == (200, 10)
        assert http(server, "/v2/health/ready")[0] == 200
        server.wait_for_output("model cannot be prepared")

        write_config(folder, offset_config(3))
        wait_for(lambda: infer(server, "m") == (200, 3), "the repaired config.yaml to apply")
        assert versions(server, "m") == [{"version": "1", "state": "READY", "reason": ""}]


def test_a_failed_load_is_retried_with_back_off_without_any_change(tmp_path: Path) -> None:
    flag = tmp_path / "gpu-ready"
    write_python_model(tmp_path / "models", "late", NEEDS_FLAG % str(flag), TENSORS)
    write_python_model(tmp_path / "models", "m", OFFSET, offset_config(1))
    with ServerProcess(serve_args(tmp_path)) as server:
        assert infer(server, "m") == (200, 1)
        assert http(server, "/v2/health/ready")[0] == 503
        # The reason stays visible, with when the next attempt comes.
        reason = wait_for(
            lambda: (
                "next try at" in versions(server, "late")[0]["reason"]
                and versions(server, "late")[0]["reason"]
            ),
            "the retry note",
        )
        assert "the GPU is not there yet" in reason and "failed once" in reason, reason
        status, error = infer(server, "late")
        assert status == 503 and "the GPU is not there yet" in error, (status, error)
        flag.touch()
        wait_for(lambda: infer(server, "late") == (200, 1), "the retried load", timeout=15)
        assert http(server, "/v2/health/ready")[0] == 200
        server.wait_for_output("model load will be retried")


def test_an_unusable_folder_is_unavailable_and_the_others_serve(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_python_model(repo, "good", OFFSET, offset_config(1))
    (repo / "keras" / "1").mkdir(parents=True)
    (repo / "keras" / "1" / "model.keras").write_bytes(b"PK\0\0")
    typo = write_python_model(repo, "typo", OFFSET, offset_config(5) + "max_batch_sise: 4\n")
    with ServerProcess(serve_args(tmp_path)) as server:
        assert infer(server, "good") == (200, 1)
        keras = versions(server, "keras")[0]
        assert keras["state"] == "UNAVAILABLE"
        # The same words a strict start-up prints: the files, and the fix.
        assert "no installed backend recognises its files (model.keras)" in keras["reason"]
        assert "backend:" in keras["reason"] and "install" in keras["reason"]
        broken = versions(server, "typo")[0]
        assert broken["state"] == "UNAVAILABLE"
        assert str(typo / "config.yaml") in broken["reason"], broken
        assert http(server, "/v2/health/ready")[0] == 503  # strict readiness (Triton's)
        status, error = infer(server, "keras")
        assert status == 503 and "model.keras" in error, (status, error)

        # Repaired folders load within a poll or a back-off step, with no restart.
        write_config(typo, offset_config(5))
        (repo / "keras" / "1" / "model.keras").unlink()
        write_python_model(repo, "keras", OFFSET, offset_config(7))
        wait_for(lambda: infer(server, "typo") == (200, 5), "the repaired config.yaml")
        wait_for(lambda: infer(server, "keras") == (200, 7), "the replaced model files")
        assert http(server, "/v2/health/ready")[0] == 200


def test_strict_model_loading_keeps_an_unusable_folder_fatal(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_python_model(repo, "good", OFFSET, offset_config(1))
    (repo / "keras" / "1").mkdir(parents=True)
    (repo / "keras" / "1" / "model.keras").write_bytes(b"PK\0\0")
    config = tmp_path / "server.yaml"
    config.write_text("model_repository: models\nserver: {strict_model_loading: true}\n")
    server = ServerProcess(["-c", str(config)])
    with pytest.raises(RuntimeError, match="exited with 2") as failed:
        server.start()
    assert "no installed backend recognises its files (model.keras)" in str(failed.value)

    # check-config is the check before production: a broken folder fails it either way.
    config.write_text("model_repository: models\n")
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "model.keras" in result.stderr, result.stderr
