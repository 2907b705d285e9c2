"""deploy/k8s: rendered overlays pass Kubernetes' schema and dl-inference's deployment rules."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from dl_inference.kernel.config import parse_server_config

ROOT = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]
OVERLAYS = ["cpu", "gpu"]
WORKER_DNS = "workers-cv.dl-inference.svc.cluster.local:8500"


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    """The object of ``kind`` whose name is ``name`` (or, for generated ConfigMaps, starts so)."""
    for obj in objects:
        actual = obj["metadata"]["name"]
        if obj["kind"] == kind and (actual == name or actual.startswith(f"{name}-")):
            return obj
    raise AssertionError(f"no {kind}/{name} in {[o['metadata']['name'] for o in objects]}")


def container(objects: list[Obj], deployment: str) -> Obj:
    return find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def config_of(objects: list[Obj], config_map: str) -> Obj:
    return yaml.safe_load(find(objects, "ConfigMap", config_map)["data"]["config.yaml"])


# -- rendering -----------------------------------------------------------------------------


def test_every_overlay_is_tested() -> None:
    # A new overlay must be added to OVERLAYS (and so to the checks below).
    assert sorted(p.name for p in (ROOT / "deploy/k8s/overlays").iterdir()) == OVERLAYS


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not on PATH")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_loader_renders_exactly_what_kustomize_renders(vm: ModuleType, overlay: str) -> None:
    def keyed(objects: list[Obj]) -> dict[tuple[str, str, str], Obj]:
        return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
                for o in objects}

    real = keyed(vm.render_with_kubectl(vm.OVERLAYS / overlay))
    ours = keyed(vm.build_kustomization(vm.OVERLAYS / overlay))
    assert sorted(ours) == sorted(real)
    for key, obj in real.items():
        assert ours[key] == obj, key


def test_config_map_hash_is_kustomizes(vm: ModuleType) -> None:
    # Suffixes kustomize v5 gives generated ConfigMaps with these data (kubectl kustomize).
    assert vm.config_map_hash({}) == "42745tchd9"
    assert vm.config_map_hash({"a": "b"}) == "4h2mbtbbt6"


def test_loader_refuses_kustomize_features_it_does_not_implement(vm: ModuleType, tmp_path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(ValueError, match="commonLabels not supported"):
        vm.build_kustomization(tmp_path)


# -- schema --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_match_the_pinned_kubernetes_schema(
    vm: ModuleType, rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "PersistentVolumeClaim"} <= kinds
    assert vm.schema_errors(objects, vm.KUBERNETES_VERSION) == []


def test_schema_check_is_strict(vm: ModuleType, rendered: dict[str, list[Obj]]) -> None:
    objects = copy.deepcopy(rendered["cpu"])
    container(objects, "workers-cv")["readinessProbe"]["grpc"]["prot"] = 8500
    find(objects, "HorizontalPodAutoscaler", "workers-cv")["spec"]["minReplicas"] = "two"
    errors = vm.schema_errors(objects)
    assert any("'prot' was unexpected" in e and "workers-cv" in e for e in errors), errors
    assert any("minReplicas" in e and "HorizontalPodAutoscaler" in e for e in errors), errors


# -- dl-inference's rules ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_project_rules_hold(vm: ModuleType, rendered: dict[str, list[Obj]], overlay: str) -> None:
    assert vm.project_errors(copy.deepcopy(rendered[overlay])) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_sit_behind_a_headless_grpc_service(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    service = find(objects, "Service", "workers-cv")
    assert service["spec"]["clusterIP"] == "None"
    assert {"name": "grpc", "port": 8500, "targetPort": "grpc", "appProtocol": "grpc"} in (
        service["spec"]["ports"]
    )
    pod_labels = find(objects, "Deployment", "workers-cv")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The gateway's Service is the one clients use: a normal ClusterIP.
    assert find(objects, "Service", "gateway")["spec"].get("clusterIP") is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_grpc_health_on_8500(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for deployment in ("workers-cv", "gateway"):
        spec = container(rendered[overlay], deployment)
        # Readiness and start-up ask about the whole server (""), liveness about a service
        # that stays SERVING while the process answers (tests/deploy/test_shipped_configs
        # checks both answers on real servers).
        assert spec["readinessProbe"]["grpc"] == {"port": 8500}
        assert spec["startupProbe"]["grpc"] == {"port": 8500}
        assert spec["livenessProbe"]["grpc"] == {
            "port": 8500, "service": "inference.GRPCInferenceService"
        }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_group_has_pdb_and_cpu_hpa(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    deployment = find(objects, "Deployment", "workers-cv")
    assert "replicas" not in deployment["spec"]
    pdb = find(objects, "PodDisruptionBudget", "workers-cv")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = find(objects, "HorizontalPodAutoscaler", "workers-cv")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "workers-cv"
    }
    assert hpa["spec"]["metrics"] == [{
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }]
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_config_routes_models_to_the_worker_service_by_dns(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    config = parse_server_config(config_of(objects, "gateway-config"), "gateway-config")
    assert config.model_repository is None
    assert [r.model for r in config.routes] == ["resnet50", "mobilenet_v3"]
    for route in config.routes:
        assert route.nodes == []
        assert route.discovery is not None
        assert route.discovery.dns == WORKER_DNS
        assert route.discovery.refresh_s == 10
    # The gateway pod mounts exactly this (hash-named) ConfigMap.
    volumes = find(objects, "Deployment", "gateway")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {
        "name": find(objects, "ConfigMap", "gateway-config")["metadata"]["name"]}} in volumes


def test_gateway_balancers_come_with_the_gateway_image(rendered: dict[str, list[Obj]]) -> None:
    # The gateway image installs the kernel and dl-inference-balancers only.
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "plugins", "--json"],
        capture_output=True, text=True, check=True,
    )
    in_image = {
        name
        for row in json.loads(result.stdout)
        if row["distribution"] in {"dl-inference", "dl-inference-balancers"}
        for name in row["registers"].get("balancers", [])
    }
    routes = config_of(rendered["cpu"], "gateway-config")["routes"]
    assert {r["balancer"] for r in routes} <= in_image


def test_worker_config_is_valid_and_matches_the_pod(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["cpu"]
    config = parse_server_config(config_of(objects, "workers-cv-config"), "workers-cv-config")
    spec = container(objects, "workers-cv")
    assert str(config.model_repository) == "/models"
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in spec["volumeMounts"]
    assert config.server.grpc.port == 8500 and config.server.http.port == 8501
    # One server process per requested CPU.
    assert config.server.workers == int(spec["resources"]["requests"]["cpu"])
    assert config.server.strict_model_loading is True


def test_gpu_overlay_puts_workers_on_gpu_nodes(rendered: dict[str, list[Obj]]) -> None:
    gpu = rendered["gpu"]
    pod = find(gpu, "Deployment", "workers-cv")["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["image"] == "dl-inference/worker-gpu:0.2.0"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    # One process per GPU pod (the flag overrides server.workers), probes kept from the base.
    assert worker["args"][-2:] == ["--workers", "1"]
    assert worker["readinessProbe"]["grpc"] == {"port": 8500}
    assert worker["startupProbe"]["failureThreshold"] == 180
    # The gateway needs no GPU and keeps its image.
    gateway = container(gpu, "gateway")
    assert gateway["image"] == "dl-inference/gateway:0.2.0"
    assert "nvidia.com/gpu" not in json.dumps(gateway)


def test_cpu_overlay_asks_for_no_gpu(rendered: dict[str, list[Obj]]) -> None:
    cpu = rendered["cpu"]
    assert container(cpu, "workers-cv")["image"] == "dl-inference/worker-cpu:0.2.0"
    assert "nvidia.com" not in json.dumps(cpu)


# Each breaks one rule; the validator must say which.
def _not_headless(objects: list[Obj]) -> None:
    del find(objects, "Service", "workers-cv")["spec"]["clusterIP"]


def _http_probe(objects: list[Obj]) -> None:
    container(objects, "workers-cv")["readinessProbe"] = {"httpGet": {"path": "/", "port": 8501}}


def _no_requests(objects: list[Obj]) -> None:
    del container(objects, "gateway")["resources"]["requests"]


def _typo_in_gateway_config(objects: list[Obj]) -> None:
    config_map = find(objects, "ConfigMap", "gateway-config")
    config_map["data"]["config.yaml"] = config_map["data"]["config.yaml"].replace(
        "refresh_s:", "refresh_secs:", 1
    )


def _dns_in_another_namespace(objects: list[Obj]) -> None:
    config_map = find(objects, "ConfigMap", "gateway-config")
    config_map["data"]["config.yaml"] = config_map["data"]["config.yaml"].replace(
        "workers-cv.dl-inference.", "workers-cv.other."
    )


def _replicas_and_hpa(objects: list[Obj]) -> None:
    find(objects, "Deployment", "workers-cv")["spec"]["replicas"] = 3


def _no_pdb(objects: list[Obj]) -> None:
    objects.remove(find(objects, "PodDisruptionBudget", "workers-cv"))


def _short_grace(objects: list[Obj]) -> None:
    find(objects, "Deployment", "workers-cv")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] = 20


def _root_user(objects: list[Obj]) -> None:
    find(objects, "Deployment", "gateway")["spec"]["template"]["spec"]["securityContext"][
        "runAsUser"] = 0


def _repository_not_mounted(objects: list[Obj]) -> None:
    spec = container(objects, "workers-cv")
    spec["volumeMounts"] = [m for m in spec["volumeMounts"] if m["name"] != "models"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_not_headless, "must be headless"),
        (_http_probe, "readinessProbe must be a grpc probe on port 8500"),
        (_no_requests, "resources.requests lacks cpu, memory"),
        (_typo_in_gateway_config, "refresh_secs"),
        (_dns_in_another_namespace, "names no headless worker Service"),
        (_replicas_and_hpa, "fights the HPA"),
        (_no_pdb, "no PodDisruptionBudget"),
        (_short_grace, "leaves no time to drain"),
        (_root_user, "runAsUser: 10001"),
        (_repository_not_mounted, "model_repository /models is not a volume mounted"),
    ],
)
def test_project_rules_catch_broken_manifests(
    vm: ModuleType, rendered: dict[str, list[Obj]],
    breakage: Callable[[list[Obj]], None], message: str,
) -> None:
    objects = copy.deepcopy(rendered["cpu"])
    breakage(objects)
    errors = vm.project_errors(objects)
    assert any(message in e for e in errors), errors


def test_validate_manifests_script_passes(vm: ModuleType) -> None:
    for renderer in ("auto", "loader"):
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts/validate_manifests.py"), "--renderer", renderer],
            capture_output=True, text=True, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # Every overlay, then deploy/kserve (tests/deploy/test_kserve_manifests.py).
        assert result.stdout.count(": OK") == len(OVERLAYS) + 1, result.stdout
