"""TF Serving's HandleReloadConfigRequest through the kernel's guarded model management."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dl_inference.testing import ServerProcess

TOKEN = "reload-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def server(built: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("reload")
    repo = base / "models"
    for name in ("keras", "text"):
        shutil.copytree(built.root / name, repo / name)
    shutil.copytree(built.root / "census", base / "outside" / "census")
    (base / "server.yaml").write_text(
        "model_repository: models\n"
        "server: {repository_poll_s: 0}\n"
        "management: {enabled: true, grpc_port: 0, http_port: 0}\n"
    )
    with ServerProcess(
        ["-c", str(base / "server.yaml")], env={"DLI_MANAGEMENT_TOKEN": TOKEN}
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as chan:
        yield chan


def reload_request(*configs: dict[str, Any]) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    listing = request.config.model_config_list
    for spec in configs:
        config = listing.config.add(name=spec["name"], base_path=spec["base_path"])
        for label, version in spec.get("labels", {}).items():
            config.version_labels[label] = version
        if "specific" in spec:
            config.model_version_policy.specific.versions.extend(spec["specific"])
    return request


def predict_text(channel: grpc.Channel, model: str, label: str = "") -> np.ndarray:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if label:
        request.model_spec.version_label = label
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"ab"], dtype=object)))
    request.inputs["scale"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float32)))
    reply = stub.Predict(request, timeout=30)
    return {k: tf.make_ndarray(v) for k, v in reply.outputs.items()}


def test_reload_needs_the_management_token(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(reload_request(), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reload_serves_exactly_the_listed_models(channel: grpc.Channel, built: Any) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    before = predict_text(channel, "text")
    request = reload_request(
        {"name": "keras", "base_path": "keras"},
        {"name": "words", "base_path": "text", "specific": [1], "labels": {"stable": 1}},
    )
    stub.HandleReloadConfigRequest(request, metadata=AUTH, timeout=120)
    after = predict_text(channel, "words", label="stable")  # version 1 of the text model
    assert set(after) == set(before)
    with pytest.raises(grpc.RpcError) as info:
        predict_text(channel, "text")  # not listed any more: unloaded
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("base_path", "code"),
    [
        ("../outside/census", grpc.StatusCode.PERMISSION_DENIED),
        ("missing", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_base_paths_outside_the_roots_are_refused(
    channel: grpc.Channel, base_path: str, code: grpc.StatusCode
) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = reload_request({"name": "census", "base_path": base_path})
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(request, metadata=AUTH, timeout=60)
    assert info.value.code() == code
    assert predict_text(channel, "words")  # the server keeps serving
