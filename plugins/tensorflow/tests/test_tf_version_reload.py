"""New SavedModel versions that appear on disk serve without a failed request in between."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dl_inference.testing import ServerProcess


@pytest.fixture
def repo(built: Any, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(built.root / "text" / "1", root / "text" / "1")
    return root


def publish(source: Path, target: Path) -> None:
    """Copy beside the repository, then rename: the poller never sees half a version."""
    staging = target.parent / f".staging-{target.name}"
    shutil.copytree(source, staging)
    os.rename(staging, target)


def predict(stub: Any) -> int:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"abc"], dtype=object)))
    request.inputs["scale"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    return stub.Predict(request, timeout=30).model_spec.version.value


def test_versions_swap_under_traffic_and_a_broken_one_is_skipped(built: Any, repo: Path) -> None:
    config = repo.parent / "server.yaml"
    config.write_text("model_repository: models\nserver: {repository_poll_s: 0.2}\n")
    with (
        ServerProcess(["-c", str(config)]) as server,
        grpc.insecure_channel(server.grpc_address) as channel,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        seen: list[int] = []
        errors: list[Exception] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    seen.append(predict(stub))
                except Exception as exc:  # every failure is a test failure below
                    errors.append(exc)

        clients = [threading.Thread(target=traffic) for _ in range(3)]
        for client in clients:
            client.start()

        def wait_for(condition, what: str) -> None:
            deadline = time.monotonic() + 60
            while not condition():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.05)

        try:
            wait_for(lambda: len(seen) > 20, "traffic")
            publish(built.root / "text" / "2", repo / "text" / "2")
            wait_for(lambda: seen[-1] == 2 and "model unloaded" in server.output(), "v2")
            broken = repo.parent / "broken"
            broken.mkdir()
            (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
            publish(broken, repo / "text" / "3")
            wait_for(lambda: "model failed to load" in server.output(), "the broken v3")
            count = len(seen)
            wait_for(lambda: len(seen) > count + 20, "traffic after v3")
        finally:
            stop.set()
            for client in clients:
                client.join(30)
        assert errors == []
        assert seen[0] == 1
        first_two = seen.index(2)
        assert set(seen[first_two + 10 :]) == {2}  # v3 never served; v1 retired
