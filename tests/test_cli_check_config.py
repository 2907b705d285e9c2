"""``check-config`` as serve resolves a config (no secrets, ``--load``) and ``models -c``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dl_inference.testing import ServerProcess, free_port, write_python_model

TOKEN = "check-config-token-1234"
GOOD = """
    from pathlib import Path

    from dl_inference import PythonModel

    class Good(PythonModel):
        def load(self):
            (Path(__file__).parents[3] / "loaded.log").open("a").write("load\\n")

        def unload(self):
            (Path(__file__).parents[3] / "loaded.log").open("a").write("unload\\n")

        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
BAD = """
    from dl_inference import PythonModel

    class Bad(PythonModel):
        def load(self):
            raise RuntimeError("weights missing")

        def predict(self, inputs, **parameters):
            return {"y": inputs["x"]}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def run_cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it; the management token set only when ``token`` is."""
    env = {k: v for k, v in os.environ.items() if k != "DLI_MANAGEMENT_TOKEN"}
    if token is not None:
        env["DLI_MANAGEMENT_TOKEN"] = token
    command = [sys.executable, "-m", "dl_inference", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return path


# -- check-config ------------------------------------------------------------------------------


def test_check_config_needs_no_management_token(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "good", GOOD, CONFIG)
    path = write_config(
        tmp_path, "model_repository: models\nmanagement: {enabled: true, http_port: 9911}\n"
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "management: on 127.0.0.1, gRPC port 8510, HTTP port 9911" in result.stdout
    assert "token from $DLI_MANAGEMENT_TOKEN when serving (not read here)" in result.stdout
    # serve itself still refuses to start without it.
    served = run_cli("serve", "-c", str(path), "--grpc-port", "0", "--http-port", "0")
    assert served.returncode == 2 and "DLI_MANAGEMENT_TOKEN" in served.stderr


def test_check_config_lists_plugins_models_and_routes(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "good", GOOD, CONFIG)
    path = write_config(
        tmp_path,
        "model_repository: models\n"
        "server: {grpc: {port: 9500}, http: {host: 127.0.0.1, port: 9501}}\n"
        "routes:\n"
        "  - model: remote\n"
        "    balancer: round_robin\n"
        "    protocols: [v2]\n"
        "    timeout_ms: 250\n"
        "    nodes: [{address: '10.0.0.5:8500', weight: 100},\n"
        "            {address: '10.0.0.6:8500', weight: 50}]\n",
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    loaded = next(line for line in lines if line.startswith("plugins loaded: "))
    assert "dl_inference" in loaded.split(": ", 1)[1].split(", ")
    assert "listeners: gRPC 0.0.0.0:9500, HTTP 127.0.0.1:9501" in lines
    assert "management: off" in lines
    assert "model good: backend python, version(s) 1" in lines
    assert (
        "route remote: balancer round_robin, v2, nodes 10.0.0.5:8500 (weight 100), "
        "10.0.0.6:8500 (weight 50), retries 2, timeout 250 ms"
    ) in lines
    assert lines[-1] == f"{path}: OK (1 model(s): good)"
    # Without --load nothing is loaded.
    assert not (tmp_path / "loaded.log").exists()


def test_check_config_resolves_the_file_as_serve_does(tmp_path: Path) -> None:
    # Neither a repository nor routes: serve serves the demo repository, so that is checked.
    path = write_config(tmp_path, "server: {http: {port: 9601}}\n")
    result = run_cli("check-config", "--load", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        "model repository: the built-in demo (the file names neither one nor routes, "
        "and no plugin offers a model)"
    ) in lines
    assert "load simple: OK (version(s) 1)" in lines
    assert lines[-1] == f"{path}: OK (2 model(s): simple, text_upper)"


def test_check_config_load_loads_and_unloads_every_model(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "good", GOOD, CONFIG)
    write_python_model(tmp_path / "models", "other", GOOD, CONFIG)
    path = write_config(tmp_path, "model_repository: models\n")
    result = run_cli("check-config", "--load", str(path))
    assert result.returncode == 0, result.stderr
    assert "load good: OK (version(s) 1)" in result.stdout.splitlines()
    assert "load other: OK (version(s) 1)" in result.stdout.splitlines()
    # Each model was loaded by its backend and unloaded again.
    assert sorted((tmp_path / "loaded.log").read_text().split()) == ["load"] * 2 + ["unload"] * 2


def test_check_config_load_reports_a_model_that_fails_and_exits_2(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "good", GOOD, CONFIG)
    write_python_model(tmp_path / "models", "bad", BAD, CONFIG)
    path = write_config(tmp_path, "model_repository: models\n")
    result = run_cli("check-config", "--load", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "load good: OK (version(s) 1)" in lines
    assert (
        "load bad: FAILED (version 1: failed to load: RuntimeError: weights missing (model.py:6))"
    ) in lines
    assert lines[-1] == f"{path}: 1 of 2 model(s) failed to load"


# -- models ------------------------------------------------------------------------------------


def test_models_finds_a_non_default_management_port_in_the_config(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "good", GOOD, CONFIG)
    port = free_port()
    path = write_config(
        tmp_path,
        "model_repository: models\nserver: {repository_poll_s: 0}\n"
        f"management: {{enabled: true, http_port: {port}, grpc_port: 0}}\n",
    )
    with ServerProcess(["-c", str(path)], env={"DLI_MANAGEMENT_TOKEN": TOKEN}) as server:
        assert f"Management HTTP listening on 127.0.0.1:{port}" in server.output()
        listed = run_cli("models", "list", "-c", str(path), token=TOKEN)
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"^good\s+1\s+READY$", listed.stdout, re.M)
        # The token is read as the server reads it: a wrong one is refused by the server.
        refused = run_cli("models", "list", "-c", str(path), token="another-token-of-16+")
        assert refused.returncode == 1 and "401" in refused.stderr
    stopped = run_cli("models", "list", "-c", str(path), token=TOKEN)
    assert stopped.returncode == 1
    assert f"nothing answers at http://127.0.0.1:{port}" in stopped.stderr
    assert f"the management address {path} gives: is a server running" in stopped.stderr


def test_models_against_a_server_without_management_says_how_to_enable_it(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("models", "list", "--url", url, token=TOKEN)
    assert result.returncode == 1
    assert f"nothing answers at {url}" in result.stderr
    assert "management may be disabled on this server" in result.stderr
    assert "`management: {enabled: true}`" in result.stderr
    assert "management.http_port" in result.stderr
    # With the server's config the answer is certain, before any connection.
    path = write_config(tmp_path, "model_repository: models\n")
    result = run_cli("models", "list", "-c", str(path), token=TOKEN)
    assert result.returncode == 2
    assert f"{path}: management is disabled in this config;" in result.stderr
    assert "`management: {enabled: true}`" in result.stderr
