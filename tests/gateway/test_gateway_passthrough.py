"""A gateway in front of TF Serving look-alikes: bytes, deadlines, metadata, status codes."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from dl_inference.testing import ServerProcess, free_port

from .conftest import (
    FakeUpstream,
    gateway,
    output_floats,
    output_text,
    predict_request,
    wait_until,
    write_config,
)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream("A"), FakeUpstream("B", health=False)
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def dead_ports() -> list[int]:
    return [free_port(), free_port()]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstreams: Any, dead_ports: list[int]
) -> Iterator[ServerProcess]:
    a, b = upstreams
    config = write_config(
        tmp_path_factory.mktemp("gw") / "gateway.yaml",
        [
            {
                "model": "tfmodel",
                "balancer": "round_robin",
                "timeout_ms": 4000,
                "nodes": [{"address": a.address}, {"address": b.address}],
            },
            {
                "model": "deadmodel",
                "retries": 1,
                "nodes": [{"address": f"127.0.0.1:{p}"} for p in dead_ports],
            },
        ],
    )
    with gateway(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: ServerProcess, tf_apis: Any) -> Iterator[Any]:
    _, services = tf_apis
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield services.PredictionServiceStub(channel)


def test_bytes_pass_unchanged_and_results_match_numpy(stub: Any, tf_apis: Any) -> None:
    predict_pb2, _ = tf_apis
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    request = predict_request(predict_pb2, "tfmodel", x)
    sent = request.SerializeToString()
    nodes = []
    for _ in range(4):
        reply = stub.Predict(request, timeout=10)
        assert output_text(reply, "sha256") == hashlib.sha256(sent).hexdigest()
        np.testing.assert_array_equal(output_floats(reply, "y"), x * 2)
        nodes.append(output_text(reply, "node"))
    assert nodes == ["A", "B", "A", "B"]  # round robin over both upstreams


def test_client_deadline_reaches_the_upstream_as_remaining_budget(stub: Any, tf_apis: Any) -> None:
    predict_pb2, _ = tf_apis
    reply = stub.Predict(predict_request(predict_pb2, "tfmodel", np.ones(2)), timeout=2.5)
    remaining = float(output_floats(reply, "time_remaining")[0])
    # The client's 2.5 s, less what was spent (gRPC rounds the header up a little), and
    # not the route's 4 s timeout nor a fresh one.
    assert 0 < remaining < 2.6


def test_route_timeout_applies_when_the_client_sets_none(stub: Any, tf_apis: Any) -> None:
    predict_pb2, _ = tf_apis
    reply = stub.Predict(predict_request(predict_pb2, "tfmodel", np.ones(2)))
    remaining = float(output_floats(reply, "time_remaining")[0])
    assert 0 < remaining < 4.1  # the route's timeout_ms, not "no deadline" (-1)


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_metadata_travels_both_ways(stub: Any, tf_apis: Any) -> None:
    predict_pb2, _ = tf_apis
    reply, call = stub.Predict.with_call(
        predict_request(predict_pb2, "tfmodel", np.ones(2)),
        metadata=(
            ("x-trace-id", "trace-42"),
            ("authorization", "Bearer t"),
            # W3C trace context (what OpenTelemetry propagates) reaches the upstream as is.
            ("traceparent", TRACEPARENT),
            ("tracestate", "dli=1"),
        ),
        timeout=10,
    )
    seen = json.loads(output_text(reply, "metadata"))
    assert seen["x-trace-id"] == "trace-42"
    assert seen["traceparent"] == TRACEPARENT and seen["tracestate"] == "dli=1"
    assert seen["authorization"] == "Bearer t"
    trailers = dict(call.trailing_metadata())
    assert trailers["x-upstream-name"] == output_text(reply, "node")


def test_upstream_status_and_message_reach_the_client_unchanged(stub: Any, tf_apis: Any) -> None:
    predict_pb2, _ = tf_apis
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tfmodel"
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "model 'tfmodel' needs an input named 'x' (float32); got []"


def test_other_prediction_methods_are_routed_too(stub: Any, tf_apis: Any) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "tfmodel"
    request.metadata_field.append("signature_def")
    reply = stub.GetModelMetadata(request, timeout=10)
    assert reply.model_spec.name == "tfmodel"


def test_the_seeds_predict_goes_upstream_as_tf_servings_own(
    server: ServerProcess, tf_apis: Any
) -> None:
    # TF Serving has no seed service: the seed's gateway sent Predict on under TF Serving's
    # own path, the same bytes.
    predict_pb2, _ = tf_apis
    x = np.arange(4, dtype=np.float32)
    request = predict_request(predict_pb2, "tfmodel", x)
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary(
            "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/Predict",
            request_serializer=predict_pb2.PredictRequest.SerializeToString,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )
        reply = call(request, timeout=10)
    assert output_text(reply, "sha256") == hashlib.sha256(request.SerializeToString()).hexdigest()
    np.testing.assert_array_equal(output_floats(reply, "y"), x * 2)


def test_unavailable_names_the_model_and_every_node_tried(
    stub: Any, tf_apis: Any, dead_ports: list[int], server: ServerProcess
) -> None:
    predict_pb2, _ = tf_apis
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_request(predict_pb2, "deadmodel", np.ones(2)), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    message = info.value.details()
    assert "deadmodel" in message
    for port in dead_ports:
        assert f"127.0.0.1:{port}" in message
    # The gateway keeps serving the healthy route afterwards.
    reply = stub.Predict(predict_request(predict_pb2, "tfmodel", np.ones(2)), timeout=10)
    assert output_text(reply, "node") in {"A", "B"}


def test_a_model_without_route_or_local_model_is_not_found(stub: Any, tf_apis: Any) -> None:
    predict_pb2, _ = tf_apis
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_request(predict_pb2, "nosuchmodel", np.ones(2)), timeout=10)
    assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED)
    assert "nosuchmodel" in info.value.details()


def test_cancellation_propagates_to_the_upstream(
    stub: Any, tf_apis: Any, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    predict_pb2, _ = tf_apis
    before = {u.name: u.stats() for u in upstreams}
    future = stub.Predict.future(
        predict_request(predict_pb2, "tfmodel", np.ones(2)),
        metadata=(("x-sleep-ms", "5000"),),
        timeout=30,
    )

    def started() -> bool:
        return any(u.stats()["predict"] > before[u.name]["predict"] for u in upstreams)

    assert wait_until(started)
    future.cancel()

    def cancelled_upstream() -> bool:
        return any(u.stats()["cancelled"] > before[u.name]["cancelled"] for u in upstreams)

    assert wait_until(cancelled_upstream, timeout=4)  # well before the 5 s sleep ends
    time.sleep(0)  # nothing else to wait for
