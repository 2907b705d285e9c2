"""The configs and checks deploy/ ships, run for real: a worker started from the rendered
workers-cv ConfigMap, a gateway started from the rendered gateway ConfigMap (its DNS name
pointed at that worker), a Triton client calling through both, and the Kubernetes probes
and Docker HEALTHCHECK asked the questions they ask in a cluster."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from dockerfile_parse import DockerfileParser
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dl_inference.testing import ServerProcess, free_port, write_python_model

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"

AFFINE = """
    from dl_inference import PythonModel

    class Affine(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] * 2 + 1}
"""
AFFINE_CONFIG = """
    max_batch_size: 8
    inputs: [{name: x, datatype: FP32, shape: [4]}]
    outputs: [{name: y, datatype: FP32, shape: [4]}]
"""
FAILING = """
    from dl_inference import PythonModel

    class Broken(PythonModel):
        def load(self):
            raise RuntimeError("weights missing")

        def predict(self, inputs, **parameters):
            return inputs
"""


def config_text(objects: list[dict[str, Any]], prefix: str) -> str:
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"
                     and o["metadata"]["name"].startswith(f"{prefix}-")]
    return config_map["data"]["config.yaml"]


def probes(objects: list[dict[str, Any]], deployment: str) -> dict[str, dict[str, Any]]:
    (obj,) = [o for o in objects if o["kind"] == "Deployment"
              and o["metadata"]["name"] == deployment]
    container = obj["spec"]["template"]["spec"]["containers"][0]
    return {k: container[k]["grpc"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}


def health(address: str, service: str) -> int:
    """What a Kubernetes grpc probe asks: grpc.health.v1 Check(service)."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return reply.status


@pytest.fixture(scope="module")
def cluster(rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory):
    """(worker, gateway) servers running the cpu overlay's configs on 127.0.0.1."""
    objects = rendered["cpu"]
    tmp = tmp_path_factory.mktemp("shipped")
    repo = tmp / "models"
    write_python_model(repo, "resnet50", AFFINE, AFFINE_CONFIG)
    worker_config = tmp / "worker.yaml"
    worker_config.write_text(config_text(objects, "workers-cv-config"))
    # The file as shipped; only the repository path and the listeners differ from a pod.
    worker = ServerProcess(["-c", str(worker_config), "--model-repository", str(repo)])
    with worker:
        gateway_data = yaml.safe_load(config_text(objects, "gateway-config"))
        for route in gateway_data["routes"]:
            # In the cluster this name resolves to the worker pods' addresses.
            route["discovery"]["dns"] = worker.grpc_address
        gateway_config = tmp / "gateway.yaml"
        gateway_config.write_text(yaml.safe_dump(gateway_data))
        with ServerProcess(["-c", str(gateway_config)]) as gateway:
            yield worker, gateway


def test_client_reaches_the_worker_through_the_shipped_gateway_config(cluster) -> None:
    _, gateway = cluster
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    client = grpcclient.InferenceServerClient(gateway.grpc_address)
    infer_input = grpcclient.InferInput("x", [2, 4], "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer("resnet50", [infer_input])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2 + 1)
    # The second routed model has no worker serving it: the worker's answer comes back.
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        client.infer("mobilenet_v3", [infer_input])
    assert "mobilenet_v3" in caught.value.message()
    assert "StatusCode.NOT_FOUND" in caught.value.status()
    client.close()


def test_worker_config_runs_the_configured_number_of_processes(cluster, rendered) -> None:
    worker, _ = cluster
    children = subprocess.run(
        ["ps", "--ppid", str(worker.process.pid), "-o", "args="],
        capture_output=True, text=True, check=False,
    ).stdout.splitlines()
    config = yaml.safe_load(config_text(rendered["cpu"], "workers-cv-config"))
    assert len([c for c in children if "dl_inference serve" in c]) == config["server"]["workers"]


@pytest.mark.parametrize("deployment", ["workers-cv", "gateway"])
def test_kubernetes_probes_see_serving(cluster, rendered, deployment: str) -> None:
    worker, gateway = cluster
    address = worker.grpc_address if deployment == "workers-cv" else gateway.grpc_address
    for name, probe in probes(rendered["cpu"], deployment).items():
        status = health(address, probe.get("service", ""))
        assert status == health_pb2.HealthCheckResponse.SERVING, name


def healthcheck_command(name: str) -> list[str]:
    parser = DockerfileParser(fileobj=io.BytesIO((DOCKER / f"{name}.Dockerfile").read_bytes()))
    (value,) = [i["value"] for i in parser.structure if i["instruction"] == "HEALTHCHECK"]
    command = json.loads(value.partition("CMD ")[2])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def run_healthcheck(name: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        healthcheck_command(name), env={"DLI_HEALTH_ADDRESS": address},
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("name", ["worker-cpu", "worker-gpu", "gateway"])
def test_docker_healthcheck_passes_on_a_serving_server(cluster, name: str) -> None:
    worker, gateway = cluster
    address = gateway.grpc_address if name == "gateway" else worker.grpc_address
    result = run_healthcheck(name, address)
    assert result.returncode == 0, result.stderr


def test_docker_healthcheck_fails_when_nothing_listens() -> None:
    result = run_healthcheck("worker-cpu", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


def test_probes_and_healthcheck_fail_while_a_model_is_not_loaded(
    rendered, tmp_path: Path
) -> None:
    # Without strict_model_loading the server starts with the model failed: readiness
    # and the Docker health check must say so, liveness must not (no restart loop).
    repo = tmp_path / "models"
    write_python_model(repo, "broken", FAILING, AFFINE_CONFIG)
    with ServerProcess(["--model-repository", str(repo)]) as server:
        result = run_healthcheck("worker-cpu", server.grpc_address)
        assert result.returncode == 1, result.stderr
        wanted = probes(rendered["cpu"], "workers-cv")
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert health(server.grpc_address, "") == not_serving
        assert wanted["readinessProbe"].get("service", "") == ""
        assert health(server.grpc_address, wanted["livenessProbe"]["service"]) == (
            health_pb2.HealthCheckResponse.SERVING
        )
