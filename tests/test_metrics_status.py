"""Prometheus metrics at /metrics and the status feed at /api/status, after real requests."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dl_inference.testing import ServerProcess, write_python_model

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            if (inputs["x"] < 0).any():
                raise ValueError("negative input")
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    max_batch_size: 8
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("models")
    write_python_model(root, "add_one", ADD_ONE, CONFIG)
    with ServerProcess(["--model-repository", str(root)]) as srv:
        yield srv


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read()


def infer(server: ServerProcess, value: float) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("x", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.full((1, 2), value, np.float32))
    client.infer("add_one", [tensor])


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_requests_and_failures_are_counted(server: ServerProcess) -> None:
    before = get(server.http_url + "/metrics").decode()
    for _ in range(3):
        infer(server, 1.0)
    with pytest.raises(Exception, match="negative input"):
        infer(server, -1.0)
    after = get(server.http_url + "/metrics").decode()
    ok = dict(model="add_one", protocol="v2", status="OK")
    failed = dict(model="add_one", protocol="v2", status="INTERNAL")
    assert (
        metric(after, "dli_requests_total", **ok) - metric(before, "dli_requests_total", **ok) == 3
    )
    assert (
        metric(after, "dli_requests_total", **failed)
        - metric(before, "dli_requests_total", **failed)
        == 1
    )
    # By version: the answered calls the version that ran, the failed one "" (it named none).
    latency = "dli_request_duration_seconds_count"
    assert metric(after, latency, model="add_one", version="1") >= 3
    assert metric(after, latency, model="add_one", version="") >= 1
    assert metric(after, "dli_batch_size_count", model="add_one") >= 3
    assert metric(after, "dli_model_ready", model="add_one", version="1") == 1
    assert (
        metric(after, "process_resident_memory_bytes") > 0
        or "process_resident_memory_bytes " in after
    )


def test_status_feed_shows_recent_figures(server: ServerProcess) -> None:
    for _ in range(5):
        infer(server, 2.0)
    doc = json.loads(get(server.http_url + "/api/status"))
    assert doc["server"]["ready"] is True
    (model,) = [m for m in doc["models"] if m["name"] == "add_one"]
    assert model["backend"] == "python" and model["versions"][0]["state"] == "READY"
    assert model["count"] >= 5 and model["qps"] > 0
    assert model["p50_ms"] is not None and model["p99_ms"] >= model["p50_ms"]
    assert doc["routes"] == []


def test_status_feed_keeps_its_form(server: ServerProcess) -> None:
    """The fields and types the page (and anyone polling the feed) reads, per model."""
    infer(server, 3.0)
    doc = json.loads(get(server.http_url + "/api/status"))
    (model,) = [m for m in doc["models"] if m["name"] == "add_one"]
    assert set(model) == {
        "name", "ready", "backend", "device", "versions", "in_flight",
        "qps", "p50_ms", "p99_ms", "errors", "count",
    }  # fmt: skip
    assert set(model["versions"][0]) == {"version", "state", "reason"}
    assert isinstance(model["qps"], float) and model["qps"] > 0
    assert isinstance(model["p50_ms"], float) and isinstance(model["p99_ms"], float)
    assert isinstance(model["count"], int) and isinstance(model["errors"], int)
    assert set(doc["server"]) >= {"name", "version", "ready", "draining"}


def test_status_page_is_served(server: ServerProcess) -> None:
    page = get(server.http_url + "/").decode()
    assert "<title>dl-inference status</title>" in page
    assert "/api/status" in page


def test_request_id_is_returned_and_garbage_is_counted(server: ServerProcess) -> None:
    before = get(server.http_url + "/metrics").decode()
    request = urllib.request.Request(
        server.http_url + "/v2/models/add_one/infer",
        data=b"{not json",
        headers={"Content-Type": "application/json", "x-request-id": "trace-7"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    assert info.value.headers["x-request-id"] == "trace-7"
    after = get(server.http_url + "/metrics").decode()
    bad = dict(model="add_one", protocol="v2", status="INVALID_ARGUMENT")
    assert (
        metric(after, "dli_requests_total", **bad) - metric(before, "dli_requests_total", **bad)
        == 1
    )
    assert "trace-7" in server.output()  # the access log line carries the id

    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("x", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
    result = client.infer("add_one", [tensor], headers={"x-request-id": "trace-8"})
    assert result.get_response().id == "trace-8"
