"""config.properties' ``model_store`` served as TorchServe's ``--ts-config`` serves it: the
server YAML names only the file (no ``model_repository``), relative paths taken from the
folder of the file that gives them, and the built-in demo models stay out."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from _ts_archives import write_mar

from dl_inference.testing import ServerProcess

ECHO = """
    def handle(data, context):
        if data is None:
            return None
        return ["ok" for _ in data]
"""


def status(url: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def ready(server: ServerProcess, model: str) -> None:
    """Wait until ``model`` answers (the handler loads after the listeners open)."""
    deadline = time.monotonic() + 60
    while status(f"{server.http_url}/predictions/{model}", b"hi") == 503:
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.2)


def write_files(work: Path, server_yaml: str) -> Path:
    """``work/tsconf/store`` with two archives, ``work/tsconf/config.properties`` naming it
    relatively, and ``work/conf/server.yaml``; returns the YAML's path."""
    write_mar(work / "tsconf" / "store", "echo", {"echo.py": ECHO}, "echo.py")
    write_mar(work / "tsconf" / "store", "left_out", {"echo.py": ECHO}, "echo.py")
    (work / "tsconf" / "config.properties").write_text(
        "inference_address=http://127.0.0.1:8080\nmodel_store=store\nload_models=echo.mar\n"
    )
    (work / "conf").mkdir()
    (work / "conf" / "server.yaml").write_text(
        server_yaml
        + "plugin_settings:\n  torchserve:\n    config_properties: ../tsconf/config.properties\n"
    )
    return work / "conf" / "server.yaml"


def test_the_model_store_is_served_without_a_repository_and_no_demo(tmp_path: Path) -> None:
    config = write_files(tmp_path, "")
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    # The working directory is neither folder: the paths resolve against the files.
    with ServerProcess(["-c", str(config)], env=env, cwd=tmp_path) as server:
        ready(server, "echo")
        assert status(f"{server.http_url}/predictions/echo", b"hi") == 200
        assert status(f"{server.http_url}/predictions/left_out", b"hi") == 404
        for demo in ("simple", "text_upper"):
            assert status(f"{server.http_url}/v2/models/{demo}") == 404, demo
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "check-config", str(config)],
        cwd=tmp_path,
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "models offered by plugins' configuration: echo" in result.stdout.splitlines()


def test_the_store_named_as_the_repository_too_is_offered_once(tmp_path: Path) -> None:
    config = write_files(tmp_path, "model_repository: ../tsconf/store\n")
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    with ServerProcess(["-c", str(config)], env=env, cwd=tmp_path) as server:
        ready(server, "echo")
        assert status(f"{server.http_url}/predictions/echo", b"hi") == 200
        assert status(f"{server.http_url}/v2/models/simple") == 404
    assert "given twice" not in server.output()
