"""One gateway, three client libraries: tritonclient to dl-inference workers, TF Serving
stubs to a non-dl-inference upstream, a Seldon message; local and routed models side by side."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from dl_inference.spi.wire import len_field_header
from dl_inference.testing import ServerProcess, write_python_model

from .conftest import (
    LOCAL,
    REMOTE,
    FakeUpstream,
    gateway,
    named_workers,
    output_floats,
    output_text,
    predict_request,
    write_config,
)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    repo = tmp_path_factory.mktemp("worker_repo")
    write_python_model(repo, "remote", REMOTE)
    with named_workers(repo, ("w1", "w2")) as procs:
        yield procs


@pytest.fixture(scope="module")
def tfs() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream("T").start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, workers: list[ServerProcess], tfs: FakeUpstream
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("gw")
    write_python_model(folder / "models", "local", LOCAL)
    config = write_config(
        folder / "gateway.yaml",
        [
            {
                "model": "remote",
                "nodes": [
                    {"address": w.grpc_address, "weight": 30 * (i + 1)}
                    for i, w in enumerate(workers)
                ],
            },
            {"model": "tfmodel", "protocols": ["tfserving"], "nodes": [{"address": tfs.address}]},
            {"model": "seldonmodel", "nodes": [{"address": tfs.address}]},
        ],
        model_repository=str(folder / "models"),
    )
    with gateway(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.grpc_address) as c:
        yield c


def infer(client: triton.InferenceServerClient, model: str, x: np.ndarray) -> Any:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], client_timeout=10)


def test_tritonclient_reaches_workers_through_the_gateway_by_weight(
    client: triton.InferenceServerClient,
) -> None:
    x = np.array([[0.5, -1.25, 3.0]], dtype=np.float32)
    served: Counter[str] = Counter()
    for _ in range(30):
        result = infer(client, "remote", x)
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
        served[result.as_numpy("node")[0].decode()] += 1
    assert served == {"w1": 10, "w2": 20}  # weights 30 : 60


def test_local_models_are_served_beside_routed_ones(client: triton.InferenceServerClient) -> None:
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(infer(client, "local", x).as_numpy("y"), x + 1)
    assert client.is_model_ready("local")
    assert client.is_model_ready("remote")  # answered by a worker
    assert client.get_model_metadata("remote").name == "remote"


def test_unknown_model_is_not_found_with_its_name(client: triton.InferenceServerClient) -> None:
    with pytest.raises(Exception) as info:
        infer(client, "missing", np.ones((1, 3), dtype=np.float32))
    assert "missing" in str(info.value)


def test_tf_serving_client_passes_through_the_same_gateway(
    server: ServerProcess, tfs: FakeUpstream
) -> None:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    x = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    request = predict_request(predict_pb2, "tfmodel", x)
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=10
        )
    np.testing.assert_array_equal(output_floats(reply, "y"), x * 2)
    assert output_text(reply, "sha256") == hashlib.sha256(request.SerializeToString()).hexdigest()


def seldon_message(model: str, payload: bytes) -> bytes:
    """SeldonMessage{meta{tags{"model_name": Value{string_value}}}, binData} by field number."""
    value = len_field_header(3, len(model)) + model.encode()
    key = b"model_name"
    entry = len_field_header(1, len(key)) + key + len_field_header(2, len(value)) + value
    meta = len_field_header(2, len(entry)) + entry
    return len_field_header(2, len(meta)) + meta + len_field_header(4, len(payload)) + payload


def test_seldon_message_is_routed_by_its_meta_tag(server: ServerProcess, tfs: FakeUpstream) -> None:
    body = seldon_message("seldonmodel", bytes(range(256)) * 4)
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply, call = channel.unary_unary("/seldon.protos.Seldon/Predict").with_call(
            body, timeout=10
        )
    assert reply == body  # the upstream echoes exactly what it received
    assert dict(call.trailing_metadata())["x-upstream-name"] == "T"


def test_route_protocol_filter_keeps_other_protocols_local(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    # tfmodel is routed for TF Serving only: a V2 call for it is answered locally (not found).
    with pytest.raises(Exception) as info:
        infer(client, "tfmodel", np.ones((1, 3), dtype=np.float32))
    assert "tfmodel" in str(info.value)
