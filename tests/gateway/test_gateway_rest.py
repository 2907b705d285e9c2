"""REST through the gateway: V2 (tritonclient.http) and TF Serving REST (plain HTTP) calls
for routed models reach the nodes' HTTP listeners, balanced and retried like gRPC."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, write_python_model

from .conftest import LOCAL, gateway, write_config


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, remote_workers: list[ServerProcess]
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("rest_gw")
    # Declared inputs, so that Seldon's ndarray reaches it as x.
    local_config = """
        inputs: [{name: x, datatype: FP32, shape: [-1]}]
        outputs: [{name: y, datatype: FP32, shape: [-1]}]
    """
    write_python_model(folder / "models", "local", LOCAL, local_config)
    nodes = [{"address": w.grpc_address, "http_address": w.http_address} for w in remote_workers]
    config = write_config(
        folder / "gateway.yaml",
        [
            {"model": "remote", "balancer": "round_robin", "nodes": nodes},
            # Forwarded over gRPC only: REST calls for it get a clear refusal.
            {"model": "grpconly", "nodes": [{"address": remote_workers[0].grpc_address}]},
        ],
        model_repository=str(folder / "models"),
        # Bodies over 1 MB (once decoded) are refused, by the gateway as by a worker.
        server={"grpc": {"max_message_mb": 1}},
    )
    with gateway(config) as srv:
        yield srv


def http(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, JSON answer) of a GET, or a POST of ``body`` (JSON-encoded unless bytes)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def v2_infer(server: ServerProcess, x: np.ndarray) -> Any:
    with triton_http.InferenceServerClient(server.http_address) as client:
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        return client.infer("remote", [tensor])


def test_v2_rest_calls_are_balanced_over_the_nodes(server: ServerProcess) -> None:
    x = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    served: Counter[str] = Counter()
    for _ in range(10):
        result = v2_infer(server, x)  # binary tensors both ways, through the gateway
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
        served[result.as_numpy("node")[0].decode()] += 1
    assert served == {"w1": 5, "w2": 5}  # round robin
    with triton_http.InferenceServerClient(server.http_address) as client:
        assert client.is_model_ready("remote")
        assert client.get_model_metadata("remote")["name"] == "remote"
        # Local models on the gateway stay served locally.
        assert client.is_model_ready("local")


def test_tf_serving_rest_calls_reach_the_nodes(server: ServerProcess) -> None:
    status, body = http(
        f"{server.http_url}/v1/models/remote:predict", {"inputs": {"x": [1.0, 2.5]}}
    )
    assert status == 200, body
    np.testing.assert_array_equal(np.float32(body["outputs"]["y"]), np.float32([2.0, 5.0]))
    status, body = http(f"{server.http_url}/v1/models/remote")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


def test_upstream_errors_come_back_unchanged_and_the_gateway_keeps_serving(
    server: ServerProcess, remote_workers: list[ServerProcess]
) -> None:
    wrong = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}
    status, body = http(f"{server.http_url}/v2/models/remote/infer", wrong)
    direct_status, direct_body = http(f"{remote_workers[0].http_url}/v2/models/remote/infer", wrong)
    assert (status, body) == (direct_status, direct_body)
    assert status == 400 and "'x'" in body["error"]
    x = np.ones(2, dtype=np.float32)
    np.testing.assert_array_equal(v2_infer(server, x).as_numpy("y"), x * 2)


def seldon(server: ServerProcess, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return http(f"{server.http_url}/api/v1.0/predictions", body, headers)


def test_seldon_rest_calls_reach_the_nodes_by_tag_or_header(server: ServerProcess) -> None:
    # Seldon's REST path names no model: the gateway reads meta.tags.model or the header.
    def tagged(**tags: str) -> bytes:
        message = {"data": {"names": ["x"], "ndarray": [1.0, 2.5]}, "meta": {"tags": tags}}
        return json.dumps(message).encode()

    status, body = seldon(server, tagged(model="remote"))
    assert status == 200, body
    np.testing.assert_array_equal(np.float32(body["data"]["ndarray"]), np.float32([2.0, 5.0]))
    served: Counter[str] = Counter()
    for _ in range(4):  # the "output" tag picks the tensor that names the node
        status, body = seldon(server, tagged(model="remote", output="node"))
        assert status == 200, body
        served[body["data"]["ndarray"][0]] += 1
    assert served == {"w1": 2, "w2": 2}  # forwarded and balanced, not served here
    plain = json.dumps({"data": {"names": ["x"], "ndarray": [3.0]}}).encode()
    status, body = seldon(server, plain, {"Seldon-Model": "remote"})
    assert status == 200 and body["data"]["ndarray"] == [6.0], body
    # An unrouted model stays here; a body that is not JSON gets the local, clear 400.
    status, body = seldon(server, tagged(model="nosuch"))
    assert status == 404 and "nosuch" in body["status"]["info"], body
    status, body = seldon(server, b"\xff not json")
    assert status == 400 and "not a JSON SeldonMessage" in body["status"]["info"], body
    status, body = seldon(server, tagged(model="remote"))
    assert status == 200, body


V2_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.5]}]}
SELDON_BODY = {"data": {"names": ["x"], "ndarray": [1.0, 2.5]}, "meta": {"tags": {}}}


def seldon_body(model: str) -> bytes:
    return json.dumps({**SELDON_BODY, "meta": {"tags": {"model": model}}}).encode()


def test_compressed_bodies_reach_the_nodes_as_they_came(server: ServerProcess) -> None:
    # The gateway forwards a compressed body compressed, with its Content-Encoding: the node
    # decodes it (tests/gateway/test_gateway_compressed.py checks the bytes themselves).
    v2 = f"{server.http_url}/v2/models/remote/infer"
    for coding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
        status, body = http(v2, compress(json.dumps(V2_BODY).encode()), headers)
        assert status == 200, body
        assert body["outputs"][0]["data"] == [2.0, 5.0], body
        status, body = seldon(server, compress(seldon_body("remote")), headers)
        assert status == 200 and body["data"]["ndarray"] == [2.0, 5.0], body
    # A Seldon body decoded for its routing tag still reaches a local model whole.
    status, body = seldon(server, gzip.compress(seldon_body("local")), {"Content-Encoding": "gzip"})
    assert status == 200 and body["data"]["ndarray"] == [2.0, 3.5], body


def error_text(body: Any) -> str:
    """The message of a V2 error (``{"error": ...}``) or a Seldon one (``status.info``)."""
    return body["error"] if "error" in body else body["status"]["info"]


@pytest.mark.parametrize("path", ["/v2/models/remote/infer", "/api/v1.0/predictions"])
def test_bodies_that_cannot_be_read_are_client_errors(server: ServerProcess, path: str) -> None:
    # A routed V2 body that does not decode is the node's to refuse; a Seldon body that
    # names no routed model is served (and refused) here, in Seldon's error format.
    url = server.http_url + path
    status, body = http(url, b"\x1f\x8b\x08\x00 not gzip at all", {"Content-Encoding": "gzip"})
    assert status == 400, body
    assert "the request body could not be read" in error_text(body), body
    # Over the limit as received: the gateway's own 413, on either path.
    too_big = b"[" + b"0," * 600_000 + b"0]"  # 1.2 MB
    status, body = http(url, too_big, {"Content-Type": "application/json"})
    assert status == 413, body
    assert "larger than this server accepts" in body["error"], body
    assert "max_message_mb" in body["error"], body
    # The gateway keeps serving.
    status, body = http(server.http_url + "/v2/models/remote/infer", V2_BODY)
    assert status == 200, body


def test_the_decoded_size_limit_is_the_servers_that_decode(server: ServerProcess) -> None:
    # 1.2 MB once decoded: the local Seldon handler refuses it with the gateway's 1 MB limit;
    # a routed V2 body goes on compressed, and the node (64 MB) reads it and answers itself.
    squeezed = gzip.compress(b"[" + b"0," * 600_000 + b"0]")
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    status, body = seldon(server, squeezed, headers)
    assert status == 413 and "larger than this server accepts" in error_text(body), body
    status, body = http(f"{server.http_url}/v2/models/remote/infer", squeezed, headers)
    assert status == 400 and "must be a JSON object" in body["error"], body


def test_a_route_without_rest_refuses_rest_calls_clearly(server: ServerProcess) -> None:
    status, body = http(f"{server.http_url}/v2/models/grpconly/ready")
    assert status == 501
    assert "over gRPC only" in body["error"] and "http_port" in body["error"]
    status, body = http(f"{server.http_url}/v2/models/missing/ready")
    assert status == 404 and "missing" in body["error"]  # unrouted: the local answer


def test_a_stopped_node_costs_no_failed_rest_call(
    server: ServerProcess, remote_workers: list[ServerProcess]
) -> None:
    remote_workers[1].stop()  # refuses connections from now on: the calls go to w1 instead
    x = np.array([1.0], dtype=np.float32)
    for _ in range(10):
        try:
            result = v2_infer(server, x)
        except InferenceServerException as exc:  # pragma: no cover - the failure reported
            pytest.fail(f"a REST call failed after a node stopped: {exc}")
        assert result.as_numpy("node")[0] == b"w1"


def test_rest_addresses_come_from_the_node_or_the_routes_http_port() -> None:
    from pydantic import ValidationError

    from dl_inference.gateway.config import RouteConfig
    from dl_inference.gateway.rest_forward import routed_model
    from dl_inference.gateway.route import Route

    config = RouteConfig(
        model="m",
        http_port=8501,
        nodes=[
            {"address": "10.0.0.5:8500"},
            {"address": "[::1]:8500"},
            {"address": "10.0.0.6:9000", "http_address": "10.0.0.6:9001"},
        ],
    )
    route = Route(config, balancer=object())  # type: ignore[arg-type]
    assert route.reaches_rest
    assert route.nodes["10.0.0.5:8500"].http_address == "10.0.0.5:8501"
    assert route.nodes["[::1]:8500"].http_address == "[::1]:8501"
    assert route.nodes["10.0.0.6:9000"].http_address == "10.0.0.6:9001"
    grpc_only = Route(RouteConfig(model="m", nodes=[{"address": "h:1"}]), object())  # type: ignore[arg-type]
    assert not grpc_only.reaches_rest and grpc_only.nodes["h:1"].http_address is None
    with pytest.raises(ValidationError, match="is not host:port"):
        RouteConfig(model="m", nodes=[{"address": "h:1", "http_address": "nope"}])
    assert routed_model("/v2/models/resnet/versions/2/infer") == ("v2", "resnet")
    # TF Serving's /v1/models/<name> is the tfserving plugin's rule (rest_model_paths).
    assert routed_model("/v1/models/resnet:predict") is None
    assert routed_model("/v1/models/resnet:predict", {"/v1/models/": "tfserving"}) == (
        "tfserving",
        "resnet",
    )
    assert routed_model("/v2/health/ready") is None
