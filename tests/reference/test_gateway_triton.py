"""A dl-inference gateway in front of a real Triton 2.51 node (the seed's topology: its
gateway forwarded ``TisPredict`` to Triton).

Every reply through the gateway is compared with Triton's own reply to the same bytes:
gRPC byte for byte (ModelInfer, the seed's TisPredict, metadata, errors), REST body and
headers (JSON and binary tensors, compressed requests, malformed JSON, a model's
exception). A client's bad calls do not take the node out; Triton killed answers
UNAVAILABLE / 503 at once, and Triton restarted takes traffic again within the health
interval. Skips when the Triton reference server is not installed
(``scripts/install_reference_servers.sh``).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import yaml
from tritonclient.grpc import service_pb2

from dl_inference.testing import ServerProcess

from .triton import TritonServer, skip_without_triton

V2 = "/inference.GRPCInferenceService"
TIS_PREDICT = "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/TisPredict"
HEALTH_INTERVAL_S = 0.5

# y = x + 1; a negative first element makes execute() raise (Triton: INTERNAL / HTTP 500).
TRITON_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        replies = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if x.size and x.flat[0] < 0:
                raise ValueError("negative input")
            y = pb_utils.Tensor("y", (x + 1).astype(np.float32))
            replies.append(pb_utils.InferenceResponse([y]))
        return replies
"""
TRITON_CONFIG = """name: "addone"
backend: "python"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


@dataclass
class Setup:
    triton: TritonServer
    gateway: ServerProcess


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Triton serving ``addone``, and a gateway routing ``addone`` to it (gRPC and REST)."""
    skip_without_triton()
    root = tmp_path_factory.mktemp("gateway-triton")
    (root / "repo" / "addone" / "1").mkdir(parents=True)
    (root / "repo" / "addone" / "config.pbtxt").write_text(TRITON_CONFIG)
    (root / "repo" / "addone" / "1" / "model.py").write_text(TRITON_MODEL)
    triton = TritonServer(root / "repo", root / "triton.log")
    try:
        triton.start()
    except (RuntimeError, TimeoutError, OSError) as exc:
        pytest.skip(f"the Triton reference server did not start here: {exc}")
    route = {
        "model": "addone",
        "retries": 2,
        "nodes": [{"address": triton.grpc_address, "http_address": triton.http_address}],
        "health": {"interval_s": HEALTH_INTERVAL_S, "timeout_s": 0.5, "unhealthy_threshold": 1},
        # The default ejection (5 consecutive failures, 10 s): what the client-error test
        # must not trigger.
    }
    config = root / "gateway.yaml"
    config.write_text(yaml.safe_dump({"routes": [route]}))
    try:
        with ServerProcess(["-c", str(config)]) as gateway:
            yield Setup(triton, gateway)
    finally:
        triton.stop()


# -- helpers ---------------------------------------------------------------------------


def infer_request(x: list[float], request_id: str = "") -> bytes:
    request = service_pb2.ModelInferRequest(model_name="addone", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[len(x)])
    request.raw_input_contents.append(np.array(x, dtype=np.float32).tobytes())
    return request.SerializeToString()


def grpc_call(address: str, method: str, body: bytes, timeout: float = 30) -> tuple[Any, ...]:
    """(status name, reply bytes or details, initial and trailing metadata) of a raw call."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply, call = channel.unary_unary(method).with_call(body, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details(), exc.initial_metadata(), exc.trailing_metadata()
        return "OK", reply, call.initial_metadata(), call.trailing_metadata()


# Headers a reply's meaning rests on; Date, Server and Connection are each hop's own.
RELEVANT = ("content-type", "content-length", "content-encoding", "inference-header-content-length")


def http_call(
    address: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, relevant headers, body) of a GET, or a POST of ``body``."""
    request = urllib.request.Request(f"http://{address}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, found, payload = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        status, found, payload = exc.code, exc.headers, exc.read()
    return status, {k.lower(): v for k, v in found.items() if k.lower() in RELEVANT}, payload


def node_row(setup: Setup) -> dict[str, Any]:
    with urllib.request.urlopen(f"{setup.gateway.http_url}/api/status", timeout=10) as reply:
        (row,) = json.loads(reply.read())["routes"]
    return row


def json_infer(x: list[float]) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [len(x)], "data": x}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_infer(x: list[float]) -> tuple[bytes, dict[str, str]]:
    """A V2 binary-data request (as tritonclient.http sends it) and its headers."""
    tensor = triton_http.InferInput("x", [len(x)], "FP32")
    tensor.set_data_from_numpy(np.array(x, dtype=np.float32), binary_data=True)
    output = triton_http.InferRequestedOutput("y", binary_data=True)
    body, json_size = triton_http.InferenceServerClient.generate_request_body(
        [tensor], outputs=[output]
    )
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


# -- byte-for-byte answers ---------------------------------------------------------------


GRPC_CASES = {
    "infer": (f"{V2}/ModelInfer", infer_request([1.0, 2.5], "id-7")),
    "model exception": (f"{V2}/ModelInfer", infer_request([-1.0])),
    "wrong datatype": (
        f"{V2}/ModelInfer",
        service_pb2.ModelInferRequest(
            model_name="addone",
            inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="INT8")],
            raw_input_contents=[b"\x01"],
        ).SerializeToString(),
    ),
    "unknown version": (
        f"{V2}/ModelInfer",
        service_pb2.ModelInferRequest(model_name="addone", model_version="9").SerializeToString(),
    ),
    "metadata": (
        f"{V2}/ModelMetadata",
        service_pb2.ModelMetadataRequest(name="addone").SerializeToString(),
    ),
    "config": (
        f"{V2}/ModelConfig",
        service_pb2.ModelConfigRequest(name="addone").SerializeToString(),
    ),
    "ready": (f"{V2}/ModelReady", service_pb2.ModelReadyRequest(name="addone").SerializeToString()),
}

# Triton's status for the cases that are errors (the others answer OK).
GRPC_CODES = {
    "model exception": "INTERNAL",
    "wrong datatype": "INVALID_ARGUMENT",
    "unknown version": "NOT_FOUND",
}


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_grpc_answers_through_the_gateway_are_tritons_byte_for_byte(
    setup: Setup, case: str
) -> None:
    method, body = GRPC_CASES[case]
    direct = grpc_call(setup.triton.grpc_address, method, body)
    assert direct[0] == GRPC_CODES.get(case, "OK"), direct
    assert grpc_call(setup.gateway.grpc_address, method, body) == direct


def test_the_seeds_tis_predict_reaches_triton_as_model_infer(setup: Setup) -> None:
    body = infer_request([3.0, -0.5], "seed")
    direct = grpc_call(setup.triton.grpc_address, f"{V2}/ModelInfer", body)
    assert direct[0] == "OK"
    # Triton has no seed service: the gateway sends the same bytes as ModelInfer.
    assert grpc_call(setup.gateway.grpc_address, TIS_PREDICT, body) == direct
    reply = service_pb2.ModelInferResponse.FromString(direct[1])
    assert reply.id == "seed"
    np.testing.assert_array_equal(
        np.frombuffer(reply.raw_output_contents[0], np.float32), [4.0, 0.5]
    )


def test_a_stream_through_the_gateway_is_tritons_byte_for_byte(setup: Setup) -> None:
    # Triton puts a model's exception in the stream's reply and keeps the stream open.
    bodies = [infer_request([1.0], "a"), infer_request([-1.0], "b"), infer_request([2.0], "c")]
    replies = []
    for address in (setup.triton.grpc_address, setup.gateway.grpc_address):
        with grpc.insecure_channel(address) as channel:
            call = channel.stream_stream(f"{V2}/ModelStreamInfer")(iter(bodies), timeout=30)
            replies.append(list(call))
    assert len(replies[0]) == 3 and replies[1] == replies[0]
    failed = service_pb2.ModelStreamInferResponse.FromString(replies[0][1])
    assert "negative input" in failed.error_message


REST_CASES: dict[str, tuple[str, bytes | None, dict[str, str]]] = {
    "json infer": ("/v2/models/addone/infer", json_infer([1.0, 2.0]), {}),
    "binary infer": ("/v2/models/addone/infer", *binary_infer([0.25, 7.0])),
    "gzip": (
        "/v2/models/addone/infer",
        gzip.compress(json_infer([5.0])),
        {"Content-Encoding": "gzip"},
    ),
    "deflate": (
        "/v2/models/addone/infer",
        zlib.compress(json_infer([5.0])),
        {"Content-Encoding": "deflate"},
    ),
    "malformed json": ("/v2/models/addone/infer", b'{"inputs": [', {}),
    "model exception": ("/v2/models/addone/infer", json_infer([-2.0]), {}),
    "metadata": ("/v2/models/addone", None, {}),
    "config": ("/v2/models/addone/config", None, {}),
    "ready": ("/v2/models/addone/ready", None, {}),
}


@pytest.mark.parametrize("case", list(REST_CASES))
def test_rest_answers_through_the_gateway_are_tritons(setup: Setup, case: str) -> None:
    path, body, headers = REST_CASES[case]
    direct = http_call(setup.triton.http_address, path, body, headers)
    assert direct[0] == (500 if case in ("malformed json", "model exception") else 200), direct
    assert http_call(setup.gateway.http_address, path, body, headers) == direct


# Bodies Triton reads in its own way: the gateway forwards them as they came, so the
# answer is Triton's (plain JSON labelled gzip or deflate reaches the model as no data; an
# unknown coding is Triton's 501; a corrupt gzip body Triton's 500 from its JSON parser).
ODD_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "plain json labelled gzip": (json_infer([5.0]), {"Content-Encoding": "gzip"}),
    "plain json labelled deflate": (json_infer([5.0]), {"Content-Encoding": "deflate"}),
    "corrupt gzip": (b"\x1f\x8b\x08\x00 not gzip at all", {"Content-Encoding": "gzip"}),
    "br": (json_infer([5.0]), {"Content-Encoding": "br"}),
    "gzip in capitals": (gzip.compress(json_infer([5.0])), {"Content-Encoding": "GZIP"}),
}


@pytest.mark.parametrize("case", list(ODD_BODIES))
def test_odd_compressed_bodies_get_tritons_own_answer(setup: Setup, case: str) -> None:
    body, headers = ODD_BODIES[case]
    path = "/v2/models/addone/infer"
    direct = http_call(setup.triton.http_address, path, body, headers)
    assert http_call(setup.gateway.http_address, path, body, headers) == direct
    if case.startswith("plain json"):
        assert direct[0] == 200, direct  # Triton 2.51 reads it as a request without data


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclients_request_compression_passes_the_gateway(setup: Setup, algorithm: str) -> None:
    x = np.array([1.5, -0.5, 9.0], dtype=np.float32)
    results = []
    for address in (setup.triton.http_address, setup.gateway.http_address):
        with triton_http.InferenceServerClient(address) as client:
            tensor = triton_http.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            results.append(
                client.infer(
                    "addone",
                    [tensor],
                    request_compression_algorithm=algorithm,
                    response_compression_algorithm=algorithm,
                )
            )
    assert results[0].get_response() == results[1].get_response()
    np.testing.assert_array_equal(results[1].as_numpy("y"), x + 1)
    # gRPC message compression: the gateway takes the call compressed, forwards it plain.
    with triton_grpc.InferenceServerClient(setup.gateway.grpc_address) as client:
        tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("addone", [tensor], compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)


# -- health ---------------------------------------------------------------------------------


def test_a_clients_bad_calls_do_not_take_triton_out(setup: Setup) -> None:
    before = node_row(setup)
    gateway = setup.gateway
    for _ in range(10):
        status, _, _ = http_call(gateway.http_address, "/v2/models/addone/infer", b"{bad")
        assert status == 500  # Triton's answer to malformed JSON
        status, _, _ = http_call(gateway.http_address, *REST_CASES["model exception"][:2])
        assert status == 500
        for case, code in (("model exception", "INTERNAL"), ("wrong datatype", "INVALID_ARGUMENT")):
            assert grpc_call(gateway.grpc_address, *GRPC_CASES[case])[0] == code
    row = node_row(setup)
    assert row["requests"] - before["requests"] == 40  # none retried
    assert row["state"] == "healthy", row
    assert row["probe"] == "SERVING", row  # Triton answers grpc.health.v1 itself
    assert row["times_ejected"] == before["times_ejected"] and row["failures"] == 0, row
    assert grpc_call(gateway.grpc_address, *GRPC_CASES["infer"])[0] == "OK"


def test_triton_killed_answers_unavailable_at_once_and_restarted_takes_traffic(
    setup: Setup,
) -> None:
    """Runs last: it kills Triton (kill -9, its python stubs too) and starts it again."""
    gateway, triton = setup.gateway, setup.triton
    assert grpc_call(gateway.grpc_address, *GRPC_CASES["infer"])[0] == "OK"  # connected
    assert triton.process is not None
    os.killpg(triton.process.pid, signal.SIGKILL)
    triton.process.wait()
    for attempt in range(3):
        started = time.monotonic()
        code, details, _, _ = grpc_call(gateway.grpc_address, *GRPC_CASES["infer"])
        # No hang until the client's 30 s deadline: no node, no wait.
        assert code == "UNAVAILABLE" and time.monotonic() - started < 5, (attempt, details)
        assert "addone" in details, details
        started = time.monotonic()
        status, _, body = http_call(gateway.http_address, *REST_CASES["json infer"][:2])
        assert status == 503 and time.monotonic() - started < 5, (status, body)
        assert b"addone" in body

    triton.start()  # the same ports; returns once Triton answers ready
    back = time.monotonic()
    # Within a few probe intervals and gRPC's reconnect back-off (at most 2 s).
    deadline = back + 4 * HEALTH_INTERVAL_S + 2
    while grpc_call(gateway.grpc_address, *GRPC_CASES["infer"])[0] != "OK":
        assert time.monotonic() < deadline, node_row(setup)
        time.sleep(0.05)
    assert http_call(gateway.http_address, *REST_CASES["json infer"][:2])[0] == 200
