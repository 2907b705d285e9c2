"""The access log follows the server's log level: at warning, answered calls write no line
(and build none) while failed calls still do; a reload back to info brings the lines back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from dl_inference.testing import ServerProcess, write_python_model

ECHO = """
    from dl_inference import PythonModel

    class Echo(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"]}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""
BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})


def call(server: ServerProcess, model: str, request_id: str) -> int:
    reply = requests.post(
        f"http://{server.http_address}/v2/models/{model}/infer",
        data=BODY,
        headers={"x-request-id": request_id},
        timeout=10,
    )
    return reply.status_code


def wait_for(server: ServerProcess, text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in server.output():
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.1)


def test_access_log_lines_follow_the_log_level(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "echo", ECHO, CONFIG)
    config = tmp_path / "server.yaml"
    yaml = "model_repository: models\nserver: {{log_level: {level}, config_poll_s: 0.5}}\n"
    config.write_text(yaml.format(level="warning"))
    with ServerProcess(["-c", str(config)]) as server:
        assert call(server, "echo", "quiet-ok") == 200
        assert call(server, "missing", "loud-failure") == 404
        wait_for(server, "loud-failure")
        assert "request failed" in server.output()
        assert "quiet-ok" not in server.output()  # no access line at warning
        config.write_text(yaml.format(level="info"))
        wait_for(server, "config reloaded")
        deadline = time.monotonic() + 20
        while "back-to-info" not in server.output():
            assert time.monotonic() < deadline, "no access line after the reload to info"
            assert call(server, "echo", "back-to-info") == 200
            time.sleep(0.2)
