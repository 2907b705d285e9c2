"""deploy/kserve: the dl-inference runtime and InferenceService examples pass KServe's API
schema (as the ``kserve`` SDK carries it, with the ``kubernetes`` client's models for the
Kubernetes types inside), KServe's runtime selection, and the runtime's command really
serves a model repository as KServe mounts it."""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dl_inference.testing import ServerProcess, free_port, write_python_model

Obj = dict[str, Any]
MODEL = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


@pytest.fixture
def objects(vm: ModuleType) -> list[Obj]:
    return vm.load_kserve()


def by_kind(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    return next(o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"]))


def runtime_container(objects: list[Obj]) -> Obj:
    return by_kind(objects, "ClusterServingRuntime")["spec"]["containers"][0]


def test_manifests_pass_kserves_schema_and_rules(vm: ModuleType, objects: list[Obj]) -> None:
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ClusterServingRuntime", "InferenceService", "InferenceService"]
    assert vm.kserve_schema_errors(objects) == []
    assert vm.kserve_project_errors(objects) == []


def test_runtime_serves_v2_for_the_formats_asked(objects: list[Obj]) -> None:
    spec = by_kind(objects, "ClusterServingRuntime")["spec"]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == {
        "pytorch",
        "tensorflow",
        "onnx",
        "triton",
    }
    container = runtime_container(objects)
    assert container["command"] == ["dl-inference", "serve"]
    assert container["args"][:2] == ["--model-repository", "/mnt/models"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda o: by_kind(o, "ClusterServingRuntime")["spec"].update(supportedModelFormat=[]),
            "spec.supportedModelFormat: unknown field of V1alpha1ServingRuntimeSpec",
        ),
        (
            lambda o: runtime_container(o).update(args="--model-repository /mnt/models"),
            "containers[0].args: expected a list",
        ),
        (
            lambda o: runtime_container(o).pop("name"),
            "spec.containers[0]: name is required",
        ),
        (
            lambda o: runtime_container(o)["readinessProbe"]["httpGet"].update(paht="/"),
            "readinessProbe.httpGet.paht: unknown field of V1HTTPGetAction",
        ),
        (
            lambda o: by_kind(o, "InferenceService", "cv-models")["spec"]["predictor"][
                "model"
            ].update(storageURI="s3://x"),
            "predictor.model.storageURI: unknown field of V1beta1ModelSpec",
        ),
        (
            lambda o: by_kind(o, "InferenceService", "cv-models")["spec"]["predictor"]["model"].pop(
                "modelFormat"
            ),
            "predictor.model: modelFormat is required",
        ),
        (
            lambda o: by_kind(o, "InferenceService", "cv-models")["spec"]["predictor"].update(
                minReplicas="1"
            ),
            "predictor.minReplicas: expected int",
        ),
    ],
)
def test_schema_check_catches(vm: ModuleType, objects: list[Obj], change, expected: str) -> None:
    broken = copy.deepcopy(objects)
    change(broken)
    errors = vm.kserve_schema_errors(broken)
    assert len(errors) == 1 and expected in errors[0], errors


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda o: by_kind(o, "InferenceService", "cv-models")["spec"]["predictor"][
                "model"
            ].update(runtime="kserve-tritonserver"),
            "names no runtime in deploy/kserve",
        ),
        (
            lambda o: by_kind(o, "InferenceService", "cv-models")["spec"]["predictor"][
                "model"
            ].update(modelFormat={"name": "sklearn"}),
            "does not support modelFormat",
        ),
        (
            lambda o: by_kind(o, "InferenceService", "cv-models")["spec"]["predictor"][
                "model"
            ].update(protocolVersion="v1"),
            "does not speak protocolVersion v1",
        ),
        (
            lambda o: by_kind(o, "InferenceService", "cv-models-grpc")["spec"]["predictor"][
                "model"
            ].pop("ports"),
            "routes the runtime's gRPC port",
        ),
        (
            lambda o: runtime_container(o)["args"].__setitem__(1, "/models"),
            "--model-repository must be /mnt/models",
        ),
        (
            lambda o: runtime_container(o)["args"].append("--no-such-flag"),
            "dl-inference serve refuses its arguments",
        ),
        (
            lambda o: runtime_container(o)["args"].__setitem__(5, "8500"),
            "serve V2 REST on 8080",
        ),
    ],
)
def test_project_rules_catch(vm: ModuleType, objects: list[Obj], change, expected: str) -> None:
    broken = copy.deepcopy(objects)
    change(broken)
    errors = vm.kserve_project_errors(broken)
    assert len(errors) == 1 and expected in errors[0], errors


def test_the_runtime_command_serves_a_repository_as_kserve_mounts_it(
    objects: list[Obj], tmp_path: Path
) -> None:
    """The container's command and args, as KServe starts them, with the storage
    initializer's /mnt/models and the ports swapped for this machine's: the readiness probe
    path answers and the model is served over V2 REST."""
    write_python_model(tmp_path, "add_one", MODEL, CONFIG)
    container = runtime_container(objects)
    http, grpc = free_port(), free_port()
    swap = {"/mnt/models": str(tmp_path), "8080": str(http), "8081": str(grpc),
            "0.0.0.0": "127.0.0.1"}  # fmt: skip
    args = [swap.get(arg, arg) for arg in container["args"]]
    assert container["command"][0] == "dl-inference"
    with ServerProcess(args, extra_flags=False) as server:
        assert server.http_port == http and server.grpc_port == grpc
        probe = container["readinessProbe"]["httpGet"]["path"]
        with urllib.request.urlopen(f"{server.http_url}{probe}", timeout=10) as reply:
            assert reply.status == 200
        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
        ).encode()
        request = urllib.request.Request(
            f"{server.http_url}/v2/models/add_one/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert json.loads(reply.read())["outputs"][0]["data"] == [2, 3]
