"""``dl-inference serve`` on a store of .mar archives, end to end over HTTP: batching from the
archive's model-config.yaml and from config.properties ``models=``, ``load_models``, and a
model whose handler cannot load."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from _ts_archives import write_mar

from dl_inference.testing import ServerProcess

BATCHER = """
    import threading
    import time

    _held = threading.Event()


    def handle(data, context):
        if data is None:
            return None
        if not _held.is_set():
            _held.set()
            time.sleep(1.0)  # hold the model: the requests sent meanwhile queue up
        return [
            {
                "batch": len(data),
                "echo": row["body"].decode(),
                "batch_size": context.system_properties["batch_size"],
                "id": context.get_request_id(index),
            }
            for index, row in enumerate(data)
        ]
"""


REFUSING = """
    from ts.utils.util import PredictionException


    def handle(data, context):
        if data is None:
            return None
        raise PredictionException("not for me", 422)
"""


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    work = tmp_path_factory.mktemp("torchserve-serve")
    store = work / "store"
    write_mar(
        store,
        "batcher",
        {"batcher.py": BATCHER, "model-config.yaml": "batchSize: 8\nmaxBatchDelay: 200\n"},
        "batcher.py",
        configFile="model-config.yaml",
    )
    write_mar(store, "tuned", {"tuned.py": BATCHER}, "tuned.py")
    write_mar(store, "skipped", {"tuned.py": BATCHER}, "tuned.py")
    write_mar(store, "broken", {"other.py": "x = 1\n"}, "missing_handler.py")
    write_mar(store, "refusing", {"refusing.py": REFUSING}, "refusing.py")
    properties = work / "config.properties"
    properties.write_text(
        "inference_address=http://127.0.0.1:8080\n"
        "load_models=batcher.mar,tuned,broken=broken.mar,refusing\n"
        'models={"tuned": {"1.0": {"batchSize": 4, \\\n'
        '    "maxBatchDelay": 5}}}\n'
    )
    config = work / "server.yaml"
    config.write_text(
        f"model_repository: {store}\n"
        f"plugin_settings:\n  torchserve:\n    config_properties: {properties}\n"
    )
    env = {"DLI_TORCHSERVE_CACHE": str(work / "cache")}
    with ServerProcess(["-c", str(config)], env=env) as server:
        deadline = time.monotonic() + 60
        while post(f"{server.http_url}/predictions/batcher", b"warm")[0] != 200:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        yield server


def test_concurrent_requests_reach_the_handler_as_one_batch(served: ServerProcess) -> None:
    # The handler holds its first call for a second: the requests sent meanwhile queue up.
    url = f"{served.http_url}/predictions/tuned"
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(post, url, b"first")
        time.sleep(0.3)  # the first call holds the model for a second
        rest = [pool.submit(post, url, f"r{i}".encode()) for i in range(5)]
        answers = [first.result()] + [f.result() for f in rest]
    assert all(status == 200 for status, _ in answers)
    assert [a["echo"] for _, a in answers] == ["first"] + [f"r{i}" for i in range(5)]
    assert answers[0][1]["batch"] == 1
    assert max(a["batch"] for _, a in answers[1:]) > 1  # merged while the model was held
    assert all(a["batch"] <= 4 for _, a in answers)  # config.properties' batchSize
    assert {a["batch_size"] for _, a in answers} == {4}
    assert len({a["id"] for _, a in answers}) == 6  # each request its own id


def test_model_config_yaml_sets_the_batch_size(served: ServerProcess) -> None:
    status, answer = post(f"{served.http_url}/predictions/batcher", b"x")
    assert status == 200 and answer["batch_size"] == 8 and answer["echo"] == "x"


def test_load_models_leaves_other_archives_out(served: ServerProcess) -> None:
    status, error = post(f"{served.http_url}/predictions/skipped", b"x")
    assert (status, error["type"]) == (404, "ModelNotFoundException")


def test_a_handler_that_cannot_load_is_unavailable(served: ServerProcess) -> None:
    status, error = post(f"{served.http_url}/predictions/broken", b"x")
    assert (status, error["code"], error["type"]) == (503, 503, "ServiceUnavailableException")
    assert "missing_handler.py" in served.output()


def test_a_v2_client_reaches_the_handler(served: ServerProcess) -> None:
    meta = json.dumps({"headers": {"Content-Type": "application/octet-stream"}, "id": "v2-1"})
    body = {
        "inputs": [
            {"name": "body", "datatype": "BYTES", "shape": [1], "data": ["via-v2"]},
            {"name": "headers", "datatype": "BYTES", "shape": [1], "data": [meta]},
        ]
    }
    request = urllib.request.Request(
        f"{served.http_url}/v2/models/tuned/infer", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        outputs = {o["name"]: o["data"] for o in json.loads(reply.read())["outputs"]}
    assert outputs["status"] == [200]
    answer = json.loads(outputs["body"][0])
    assert (answer["echo"], answer["id"], answer["batch"]) == ("via-v2", "v2-1", 1)


def test_a_form_without_its_boundary_is_a_client_error(served: ServerProcess) -> None:
    request = urllib.request.Request(
        f"{served.http_url}/predictions/batcher", data=b"--x\r\n\r\n", method="POST"
    )
    request.add_header("Content-Type", "multipart/form-data")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    error = json.loads(caught.value.read())
    assert (caught.value.code, error["type"]) == (400, "BadRequestException")
    assert "boundary" in error["message"]
    assert post(f"{served.http_url}/predictions/batcher", b"after")[0] == 200


def test_grpc_predictions_and_ping(served: ServerProcess) -> None:
    import grpc
    from dl_inference_torchserve._proto import torchserve_pb2 as pb
    from google.protobuf import empty_pb2

    service = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"
    with grpc.insecure_channel(served.grpc_address) as channel:
        ping = channel.unary_unary(
            service + "Ping",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=pb.TorchServeHealthResponse.FromString,
        )
        # The "broken" model keeps the server not ready: both transports say so alike.
        health = json.loads(ping(empty_pb2.Empty(), timeout=30).health)
        with pytest.raises(urllib.error.HTTPError) as rest:
            urllib.request.urlopen(f"{served.http_url}/ping", timeout=30)
        assert health == json.loads(rest.value.read()) == {"status": "Unhealthy"}
        assert rest.value.code == 500
        predict = channel.unary_unary(
            service + "Predictions",
            request_serializer=pb.PredictionsRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        request = pb.PredictionsRequest(model_name="batcher", input={"body": b"\x00grpc"})
        answer = json.loads(predict(request, timeout=30).prediction)
        assert answer["echo"] == "\x00grpc" and answer["batch"] == 1
        expected = {
            "nope": (grpc.StatusCode.NOT_FOUND, "Model not found: nope"),
            "refusing": (grpc.StatusCode.FAILED_PRECONDITION, "not for me"),
            "broken": (grpc.StatusCode.UNAVAILABLE, 'Model "broken" has no worker'),
        }
        for model, (code, text) in expected.items():
            with pytest.raises(grpc.RpcError) as caught:
                predict(pb.PredictionsRequest(model_name=model, input={"d": b"1"}), timeout=30)
            assert caught.value.code() == code, (model, caught.value)
            assert caught.value.details().startswith(text), caught.value.details()
