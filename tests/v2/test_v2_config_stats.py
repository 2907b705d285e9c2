"""Triton's model-configuration and statistics extensions, and JSON errors on every REST path.

A real server with python-backend models shaped like the Triton models these answers were
recorded from (Triton 2.51: ``addb`` batching with a queue delay, ``addnb`` without
batching), driven by tritonclient over HTTP and gRPC, and by plain HTTP.
"""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.utils import InferenceServerException

from dl_inference.kernel.statistics import VersionCounters
from dl_inference.testing import ServerProcess, write_python_model

ADD_ONE = """
    import time
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            x = inputs["x"]
            if x.size and float(x.reshape(-1)[0]) < 0:
                time.sleep(0.4)  # a negative first value: a slow request, to queue others
            return {"y": x + 1}
"""
# As recorded from Triton: max_batch_size 8, dynamic batching with a 2 ms delay... but with
# a delay long enough here that requests queued behind a slow one are merged.
ADDB_CONFIG = """
    max_batch_size: 8
    max_queue_delay_ms: 50
    inputs: [{name: x, datatype: FP32, shape: [3]}]
    outputs: [{name: y, datatype: FP32, shape: [3]}]
    parameters: {foo: bar, threshold: 0.5}
"""
ADDNB_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]
    outputs: [{name: y, datatype: FP32, shape: [-1, 3]}]
    version_policy: {all: true}
"""
FAILING = """
    from dl_inference import PythonModel

    class Failing(PythonModel):
        def predict(self, inputs, **parameters):
            raise ValueError("no luck")
"""
FAILING_CONFIG = """
    max_batch_size: 4
    inputs: [{name: x, datatype: FP32, shape: [3]}]
    outputs: [{name: y, datatype: FP32, shape: [3]}]
"""

# Recorded from Triton 2.51 (REST /config of a python-backend model; /stats).
TRITON_CONFIG_KEYS = {
    "name", "platform", "backend", "runtime", "version_policy", "max_batch_size", "input",
    "output", "batch_input", "batch_output", "optimization", "instance_group",
    "default_model_filename", "cc_model_filenames", "metric_tags", "parameters",
    "model_warmup",
}  # fmt: skip
TRITON_INPUT_KEYS = {
    "name", "data_type", "format", "dims", "is_shape_tensor", "allow_ragged_batch",
    "optional", "is_non_linear_format_io",
}  # fmt: skip
TRITON_OUTPUT_KEYS = {
    "name", "data_type", "dims", "label_filename", "is_shape_tensor", "is_non_linear_format_io",
}  # fmt: skip
TRITON_DYNAMIC_BATCHING_KEYS = {
    "preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering",
    "priority_levels", "default_priority_level", "priority_queue_policy",
}  # fmt: skip
TRITON_INSTANCE_GROUP_KEYS = {
    "name", "kind", "count", "gpus", "secondary_devices", "profile", "passive", "host_policy",
}  # fmt: skip
TRITON_MODEL_STATS_KEYS = {
    "name", "version", "last_inference", "inference_count", "execution_count",
    "inference_stats", "response_stats", "batch_stats", "memory_usage",
}  # fmt: skip
TRITON_INFERENCE_STATS_KEYS = {
    "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
    "cache_hit", "cache_miss",
}  # fmt: skip
TRITON_BATCH_STATS_KEYS = {"batch_size", "compute_input", "compute_infer", "compute_output"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("config_stats") / "models"
    write_python_model(root, "addb", ADD_ONE, ADDB_CONFIG)
    for version in (1, 2):
        write_python_model(root, "addnb", ADD_ONE, ADDNB_CONFIG, version)
    write_python_model(root, "failing", FAILING, FAILING_CONFIG)
    write_python_model(root, "batches", ADD_ONE, ADDB_CONFIG)
    with ServerProcess(["--model-repository", str(root)]) as process:
        yield process


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(server.http_address, concurrency=8) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        yield client


def request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, Any, Any]:
    """(status, headers, JSON body) of a plain HTTP call; the body must be JSON."""
    call = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(call, timeout=30) as reply:
            return reply.status, reply.headers, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as error:
        text = error.read()
        assert error.headers.get_content_type() == "application/json", text
        return error.code, error.headers, json.loads(text)


def infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray, **kw: Any) -> Any:
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], **kw)


# -- model configuration ------------------------------------------------------------------


def test_rest_config_has_tritons_fields_and_our_values(server: ServerProcess) -> None:
    status, _, config = request(f"{server.http_url}/v2/models/addb/config")
    assert status == 200
    assert set(config) == TRITON_CONFIG_KEYS | {"dynamic_batching"}
    assert (config["name"], config["backend"], config["platform"]) == ("addb", "python", "")
    assert config["max_batch_size"] == 8
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    [tensor] = config["input"]
    assert set(tensor) == TRITON_INPUT_KEYS
    # The batch dimension is left out of dims when max_batch_size > 0, as in config.pbtxt.
    assert (tensor["name"], tensor["data_type"], tensor["dims"]) == ("x", "TYPE_FP32", [3])
    [tensor] = config["output"]
    assert set(tensor) == TRITON_OUTPUT_KEYS
    assert (tensor["name"], tensor["data_type"], tensor["dims"]) == ("y", "TYPE_FP32", [3])
    batching = config["dynamic_batching"]
    assert set(batching) == TRITON_DYNAMIC_BATCHING_KEYS
    assert batching["max_queue_delay_microseconds"] == 50_000
    assert batching["preferred_batch_size"] == [8]
    [group] = config["instance_group"]
    assert set(group) == TRITON_INSTANCE_GROUP_KEYS
    assert (group["kind"], group["count"]) == ("KIND_CPU", 1)
    assert config["parameters"] == {
        "foo": {"string_value": "bar"},
        "threshold": {"string_value": "0.5"},
    }


def test_rest_config_without_batching(server: ServerProcess) -> None:
    status, _, config = request(f"{server.http_url}/v2/models/addnb/versions/1/config")
    assert status == 200
    assert set(config) == TRITON_CONFIG_KEYS  # no dynamic_batching, as Triton
    assert config["max_batch_size"] == 0
    assert config["input"][0]["dims"] == [-1, 3]
    assert config["version_policy"] == {"all": {}}


def test_tritonclient_reads_the_config_on_both_transports(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    assert http.get_model_config("addb")["input"][0]["dims"] == [3]
    config = grpc_client.get_model_config("addb").config
    assert (config.name, config.backend, config.max_batch_size) == ("addb", "python", 8)
    assert list(config.input[0].dims) == [3]
    assert config.input[0].data_type == 11  # TYPE_FP32 in Triton's model_config.proto
    assert config.dynamic_batching.max_queue_delay_microseconds == 50_000
    assert config.instance_group[0].kind == 2  # KIND_CPU
    assert config.parameters["foo"].string_value == "bar"
    assert grpc_client.get_model_config("addnb", "2").config.version_policy.HasField("all")


def test_config_of_an_unknown_model_or_version(
    server: ServerProcess, grpc_client: grpcclient.InferenceServerClient
) -> None:
    # Triton: 404 / NOT_FOUND for both.
    status, _, body = request(f"{server.http_url}/v2/models/nope/config")
    assert status == 404 and "nope" in body["error"]
    status, _, body = request(f"{server.http_url}/v2/models/addb/versions/7/config")
    assert status == 404 and "7" in body["error"]
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.get_model_config("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


# -- statistics -----------------------------------------------------------------------------


def test_counters_after_known_traffic(
    server: ServerProcess,
    http: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
) -> None:
    before = time.time() * 1000
    for rows in (2, 2, 1):
        infer(http, "addnb", np.zeros((rows, 3), np.float32), model_version="1")
    with pytest.raises(InferenceServerException):  # refused before the model: not counted
        infer(http, "addnb", np.zeros((2, 4), np.float32), model_version="1")
    stats = http.get_inference_statistics("addnb", "1")["model_stats"]
    [version] = stats
    assert set(version) == TRITON_MODEL_STATS_KEYS
    assert set(version["inference_stats"]) == TRITON_INFERENCE_STATS_KEYS
    counts = {k: v["count"] for k, v in version["inference_stats"].items()}
    assert counts == {
        "success": 3,
        "fail": 0,
        "queue": 3,
        "compute_input": 3,
        "compute_infer": 3,
        "compute_output": 3,
        "cache_hit": 0,
        "cache_miss": 0,
    }
    # Without batching a request is one execution of one "row", whatever its first dim.
    assert (version["inference_count"], version["execution_count"]) == (3, 3)
    assert before <= version["last_inference"] <= time.time() * 1000
    inference = version["inference_stats"]
    assert inference["success"]["ns"] >= inference["compute_infer"]["ns"] > 0
    assert [b["batch_size"] for b in version["batch_stats"]] == [1]
    assert version["batch_stats"][0]["compute_infer"]["count"] == 3
    # The same figures over gRPC, in Triton's message.
    [message] = grpc_client.get_inference_statistics("addnb", "1").model_stats
    assert (message.name, message.version, message.inference_count) == ("addnb", "1", 3)
    assert message.inference_stats.success.count == 3
    assert message.inference_stats.compute_infer.ns == inference["compute_infer"]["ns"]
    # Version 2 took no traffic: present, with zeros.
    [other] = http.get_inference_statistics("addnb", "2")["model_stats"]
    assert (other["version"], other["inference_count"], other["last_inference"]) == ("2", 0, 0)


def test_every_model_and_every_version(
    server: ServerProcess, grpc_client: grpcclient.InferenceServerClient
) -> None:
    status, _, everything = request(f"{server.http_url}/v2/models/stats")
    assert status == 200
    listed = [(s["name"], s["version"]) for s in everything["model_stats"]]
    expected = [("addb", "1"), ("addnb", "1"), ("addnb", "2"), ("batches", "1"), ("failing", "1")]
    assert listed == expected
    _, _, both = request(f"{server.http_url}/v2/models/addnb/stats")
    assert [s["version"] for s in both["model_stats"]] == ["1", "2"]
    grpc_listed = grpc_client.get_inference_statistics().model_stats
    assert [(s.name, s.version) for s in grpc_listed] == expected


def test_failures_are_counted_as_fail(http: httpclient.InferenceServerClient) -> None:
    for _ in range(2):
        with pytest.raises(InferenceServerException):
            infer(http, "failing", np.zeros((1, 3), np.float32))
    # A batch over max_batch_size (4) is the client's error, refused before the model: as
    # on Triton, it is counted nowhere.
    with pytest.raises(InferenceServerException, match="exceeds its max_batch_size"):
        infer(http, "failing", np.zeros((5, 3), np.float32))
    [version] = http.get_inference_statistics("failing")["model_stats"]
    inference = version["inference_stats"]
    assert inference["fail"]["count"] == 2 and inference["fail"]["ns"] > 0
    assert inference["success"]["count"] == 0
    assert (version["inference_count"], version["execution_count"]) == (0, 0)


def test_batch_stats_under_dynamic_batching(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    # A slow request first; four single-row requests queue behind it and run as one batch.
    slow = grpcclient.InferInput("x", [1, 3], "FP32")
    slow.set_data_from_numpy(np.full((1, 3), -1, np.float32))
    done: queue.Queue[Any] = queue.Queue()
    grpc_client.async_infer("batches", [slow], lambda result, error: done.put(error))
    time.sleep(0.1)
    pending = [
        http.async_infer("batches", [_tensor(np.ones((1, 3), np.float32))]) for _ in range(4)
    ]
    for result in pending:
        np.testing.assert_array_equal(result.get_result().as_numpy("y"), np.full((1, 3), 2))
    assert done.get(timeout=30) is None
    [version] = http.get_inference_statistics("batches")["model_stats"]
    sizes = {b["batch_size"]: b for b in version["batch_stats"]}
    assert sorted(sizes) == [1, 4]
    for batch in sizes.values():
        assert set(batch) == TRITON_BATCH_STATS_KEYS
        assert batch["compute_infer"]["count"] == 1
    assert (version["inference_count"], version["execution_count"]) == (5, 2)
    inference = version["inference_stats"]
    # Per request: five requests, each charged its batch's compute time.
    assert inference["queue"]["count"] == inference["compute_infer"]["count"] == 5
    assert inference["compute_infer"]["ns"] == (
        sizes[1]["compute_infer"]["ns"] + 4 * sizes[4]["compute_infer"]["ns"]
    )
    # The four waited behind the slow one (0.3 s at least, each).
    assert inference["queue"]["ns"] >= 4 * 0.25e9


def _tensor(x: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_one_execution_charges_each_of_its_requests() -> None:
    counters = VersionCounters()
    # Two requests queued at t=1.0 and t=1.5 ran as one batch of 3 rows from 2.0 to 2.5.
    counters.executed(3, [1.0, 1.5], 2.0, 2.5)
    counters.succeeded(1.75)
    stats = counters.snapshot("m", "1")
    assert (stats.inference_count, stats.execution_count) == (3, 1)
    assert (stats.queue.count, stats.queue.ns) == (2, 1_500_000_000)  # 1.0 s + 0.5 s
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (2, 1_000_000_000)
    assert (stats.compute_input.count, stats.compute_output.count) == (2, 2)
    assert (stats.success.count, stats.success.ns) == (1, 1_750_000_000)
    [batch] = stats.batch_stats
    assert (batch.batch_size, batch.compute_infer.count, batch.compute_infer.ns) == (
        3,
        1,
        500_000_000,
    )


def test_statistics_of_an_unknown_model_or_version(
    server: ServerProcess, grpc_client: grpcclient.InferenceServerClient
) -> None:
    # Triton answers 400 / INVALID_ARGUMENT here (not 404).
    status, _, body = request(f"{server.http_url}/v2/models/nope/stats")
    assert status == 400 and "nope" in body["error"]
    status, _, body = request(f"{server.http_url}/v2/models/addb/versions/3/stats")
    assert status == 400 and "3" in body["error"]
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.get_inference_statistics("addb", "3")
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_server_metadata_lists_the_extensions(http: httpclient.InferenceServerClient) -> None:
    extensions = http.get_server_metadata()["extensions"]
    assert {"model_configuration", "statistics"} <= set(extensions)


def test_reflection_describes_the_new_methods(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        method = service.methods_by_name["ModelConfig"]
        assert method.output_type.full_name == "inference.ModelConfigResponse"
        config = method.output_type.fields_by_name["config"].message_type
        assert config.full_name == "inference.ModelConfig"
        assert config.file.name == "model_config.proto"
        assert config.fields_by_name["input"].message_type.fields_by_name["dims"].number == 4


# -- errors: JSON on every REST path; the repository extension is elsewhere ---------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/nope", 404),
        ("GET", "/nope", 404),
        ("GET", "/v2/models/addb/nope", 404),
        ("POST", "/v2/models/addb/config", 405),
        ("DELETE", "/v2/models/addb/stats", 405),
        ("GET", "/v2/models/addb/infer", 405),
        ("POST", "/v2/health/live", 405),
    ],
)
def test_unknown_paths_and_wrong_methods_answer_json(
    server: ServerProcess, method: str, path: str, status: int
) -> None:
    got, headers, body = request(f"{server.http_url}{path}", method)
    assert got == status
    assert path in body["error"]
    if status == 405:
        assert "GET" in headers["Allow"] or "POST" in headers["Allow"]


def test_tritonclient_reads_a_404_as_an_error(http: httpclient.InferenceServerClient) -> None:
    # Extensions not served here (shared memory, logging): tritonclient decodes the error
    # body as JSON; a text/plain 404 became "an exception occurred in the client while
    # decoding the response" instead of the server's message.
    for call in (http.get_system_shared_memory_status, http.get_log_settings):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "404"
        assert caught.value.message().startswith("Not Found: no endpoint at /v2/")


def test_status_page_and_metrics_are_unchanged(server: ServerProcess) -> None:
    with urllib.request.urlopen(f"{server.http_url}/", timeout=30) as reply:
        assert reply.headers.get_content_type() == "text/html"
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=30) as reply:
        assert reply.headers.get_content_type() == "text/plain"


def test_repository_calls_on_the_main_port_name_the_management_listener(
    server: ServerProcess, grpc_client: grpcclient.InferenceServerClient
) -> None:
    for path in ("/v2/repository/index", "/v2/repository/models/addb/load"):
        status, _, body = request(f"{server.http_url}{path}", "POST", b"{}")
        assert status == 503
        assert "management listener" in body["error"]
    for call in (
        grpc_client.get_model_repository_index,
        lambda: grpc_client.load_model("addb"),
        lambda: grpc_client.unload_model("addb"),
    ):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert "management listener" in caught.value.message()
