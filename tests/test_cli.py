"""The ``dl-inference`` command as users run it: exit codes, messages, serving the demo."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dl_inference.testing import ServerProcess, write_python_model

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dl_inference", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return path


def test_check_config_accepts_a_valid_file(tmp_path: Path, repo: Path) -> None:
    path = write_config(
        tmp_path, f"model_repository: {repo}\nmodels:\n  add_one: {{instances: 2}}\n"
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK (1 model(s): add_one)" in result.stdout


def test_check_config_broken_yaml_exits_2_with_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server:\n  grpc: [port: 1\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert f"{path}: not valid YAML at line" in result.stderr


def test_check_config_unknown_key_exits_2_with_a_suggestion(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server:\n  http: {hots: 127.0.0.1}\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "server.http.hots: unknown key (did you mean host?)" in result.stderr


def test_missing_backend_plugin_names_the_pip_package(tmp_path: Path) -> None:
    write_python_model(tmp_path / "models", "net", ADD_ONE, "backend: onnx\n")
    # Blocking the plugin stands for "not installed", whatever this venv holds.
    path = write_config(tmp_path, "model_repository: models\nplugins: {block: [onnx]}\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "no installed plugin provides backend 'onnx'" in result.stderr
    assert "pip install dl-inference-onnx" in result.stderr


def test_serve_refuses_a_bad_config_before_listening(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server: {grpc: {port: 99999}}\n")
    result = run_cli("serve", "-c", str(path))
    assert result.returncode == 2
    assert "server.grpc.port" in result.stderr
    assert "listening" not in result.stdout


def test_serve_reports_a_port_in_use(repo: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "serve",
            "--model-repository",
            str(repo),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(port),
            "--http-port",
            "0",
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_plugins_lists_the_builtins() -> None:
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    kernel = rows["dl_inference"]
    assert kernel["status"] == "loaded"
    assert "python" in kernel["registers"]["backends"]
    assert "v2" in kernel["registers"]["protocols"]
    text = run_cli("plugins").stdout
    assert "backends: ensemble, python" in text


@pytest.fixture(scope="module")
def demo_server():
    with ServerProcess(["--log-format", "json"]) as server:
        yield server


def test_serve_without_config_serves_the_demo_repository(demo_server: ServerProcess) -> None:
    with grpc.insecure_channel(demo_server.grpc_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "simple", "text_upper", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no_such_model"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_standard_service_names(demo_server: ServerProcess) -> None:
    with grpc.insecure_channel(demo_server.grpc_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
        names = {service.name for service in reply.list_services_response.service}
    assert "grpc.health.v1.Health" in names
    assert "inference.GRPCInferenceService" in names


def test_json_logs_are_one_object_per_line(demo_server: ServerProcess) -> None:
    # "server ready" follows the listening lines the fixture waits for.
    printed = demo_server.wait_for_output('"server ready"')
    lines = [line for line in printed.splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in lines]
    assert any(e["event"] == "server ready" and e["level"] == "info" for e in events)
    assert any(e["event"] == "model ready" and e["model"] == "simple" for e in events)


def test_wait_for_output_waits_for_a_request_s_log_line(demo_server: ServerProcess) -> None:
    """The log line of a request may reach the test after the reply: the helper waits (here
    for a request sent half a second after it starts waiting)."""
    tensors = [
        {"name": name, "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}
        for name in ("INPUT0", "INPUT1")
    ]
    request = urllib.request.Request(
        f"{demo_server.http_url}/v2/models/simple/infer",
        data=json.dumps({"inputs": tensors}).encode(),
        headers={"Content-Type": "application/json", "x-request-id": "probe-4711"},
    )
    statuses: list[int] = []

    def send() -> None:
        with urllib.request.urlopen(request, timeout=10) as answer:
            statuses.append(answer.status)

    later = threading.Timer(0.5, send)
    later.start()
    try:
        assert "probe-4711" in demo_server.wait_for_output("probe-4711", "server ready")
    finally:
        later.join()
    assert statuses == [200]
    with pytest.raises(AssertionError, match="never printed: \\['no-such-line'\\]"):
        demo_server.wait_for_output("no-such-line", timeout=0.3)


def test_sigterm_exits_0(repo: Path) -> None:
    server = ServerProcess(["--model-repository", str(repo)]).start()
    assert server.stop() == 0
    assert "stopped" in server.output()


def test_convert_without_a_matching_converter_names_the_plugins(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\0")
    result = run_cli("convert", str(source), str(tmp_path / "out.xyz"), "--converter", "nope")
    assert result.returncode == 2
    assert "no converter named 'nope'" in result.stderr
    result = run_cli("convert", str(source), str(tmp_path / "out.xyz"))
    assert result.returncode == 2
    assert "no installed converter turns weights.bin into out.xyz" in result.stderr


def test_convert_sample_input_syntax_is_explained(tmp_path: Path) -> None:
    from dl_inference.cli import parse_sample_input
    from dl_inference.spi.errors import ConfigError

    name, array = parse_sample_input("x:FP32:2,3")
    assert name == "x" and array.shape == (2, 3) and array.dtype.name == "float32"
    with pytest.raises(ConfigError, match="NAME:DATATYPE:SHAPE"):
        parse_sample_input("x-FP32")
