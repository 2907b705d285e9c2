"""``--metrics-port`` / ``server.metrics.port``: ``/metrics`` on a listener of its own, as
Triton's ``--metrics-port`` (8002) and TorchServe's ``metrics_address`` (8082) serve it, so
that a Prometheus scrape pointed at those ports keeps working. Real servers, real scrapes;
the same figures as ``/metrics`` on the HTTP listener, with ``--workers 2`` every worker's."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dl_inference.testing import ServerProcess, free_port, write_python_model

ECHO = """
    from dl_inference import PythonModel

    class Echo(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"]}
"""
ECHO_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""
ONE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET on a new connection."""
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def infer(server: ServerProcess) -> None:
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/echo/infer", data=json.dumps(ONE).encode()
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200


def served(text: str, **labels: str) -> float:
    """``dli_requests_total`` of the echo model, summed over the series matching ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "dli_requests_total" or sample.labels.get("model") != "echo":
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics-listener")
    write_python_model(root / "models", "echo", ECHO, ECHO_CONFIG)
    (root / "server.yaml").write_text(
        "model_repository: models\nserver: {repository_poll_s: 0, metrics: {triton_names: true}}\n"
    )
    return root


def test_metrics_have_a_listener_of_their_own(repository: Path) -> None:
    args = ["-c", str(repository / "server.yaml"), "--metrics-port", "0"]
    with ServerProcess(args, cwd=repository) as server:
        assert server.metrics_port, server.output()
        assert f"Metrics listening on 127.0.0.1:{server.metrics_port}" in server.output()
        metrics_url = f"http://127.0.0.1:{server.metrics_port}"
        for _ in range(3):
            infer(server)
        status, content_type, text = get(f"{metrics_url}/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        assert served(text, protocol="v2", status="OK") == 3
        # Triton's families too (server.metrics.triton_names), as a Triton scrape expects.
        assert 'nv_inference_request_success{model="echo",version="1"} 3.0' in text
        # The same figures as the HTTP listener's /metrics, which stays.
        _, _, on_http = get(f"{server.http_url}/metrics")
        assert served(on_http, status="OK") == served(text, status="OK") == 3
        # /metrics alone: nothing else of the HTTP listener answers there.
        for path in ("/", "/v2/health/ready", "/api/status", "/v2/models/echo"):
            assert get(f"{metrics_url}{path}")[0] == 404, path


def test_without_the_setting_there_is_no_metrics_listener(repository: Path) -> None:
    with ServerProcess(["-c", str(repository / "server.yaml")], cwd=repository) as server:
        assert server.metrics_port == 0
        assert "Metrics listening" not in server.output()


def test_every_worker_answers_on_the_metrics_port_with_every_workers_figures(
    repository: Path,
) -> None:
    args = ["-c", str(repository / "server.yaml"), "--workers", "2", "--metrics-port", "0"]
    with ServerProcess(args, cwd=repository) as server:
        assert server.metrics_port, server.output()
        # Announced once, by the parent, as the other listeners are.
        assert server.output().count("Metrics listening on") == 1, server.output()
        for _ in range(20):
            infer(server)  # a new connection each: SO_REUSEPORT spreads them
        for _ in range(6):  # each scrape lands on either worker
            _, _, text = get(f"http://127.0.0.1:{server.metrics_port}/metrics")
            assert served(text, status="OK") == 20
            workers = {
                s.labels["worker"]
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "dli_worker_up" and s.value == 1.0
            }
            assert workers == {"0", "1"}


def test_a_metrics_port_in_use_stops_the_server_naming_the_setting(repository: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        flags = ["--host", "127.0.0.1", "--grpc-port", str(free_port())]
        flags += ["--http-port", str(free_port()), "--metrics-port", str(port)]
        started = subprocess.run(
            [sys.executable, "-m", "dl_inference", "serve", "-c", "server.yaml", *flags],
            cwd=repository,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert started.returncode == 2, started.stdout + started.stderr
    assert f"cannot listen on 127.0.0.1:{port} (metrics)" in started.stderr
    assert "--metrics-port or server.metrics.port" in started.stderr
