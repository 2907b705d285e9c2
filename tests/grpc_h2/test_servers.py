"""dl-inference itself on each gRPC engine (``server.grpc.engine``), called by the clients
users run: tritonclient.grpc (infer, a 100 MB tensor, ModelStreamInfer, metadata, health),
TF Serving's Predict stubs and grpcio's health client. Same answers from both engines."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dl_inference.testing import ServerProcess, write_python_model

IDENTITY = """
    from dl_inference import PythonModel

    class Identity(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] * 2}
"""


@pytest.fixture(scope="module", params=["grpcio", "asyncio"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp(f"engine-{request.param}")
    write_python_model(root / "models", "double", IDENTITY)
    config = root / "server.yaml"
    config.write_text(
        f"model_repository: {root / 'models'}\n"
        f"server: {{grpc: {{engine: {request.param}, max_message_mb: 256}}}}\n"
    )
    with ServerProcess(["-c", str(config)], env={"DLI_GRPC_ENGINE": ""}) as process:
        yield process


def tensor(array: np.ndarray) -> grpcclient.InferInput:
    item = grpcclient.InferInput("x", list(array.shape), "FP32")
    item.set_data_from_numpy(array)
    return item


def test_tritonclient_infer_metadata_and_health(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("double")
    assert client.get_model_metadata("double").name == "double"
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    reply = client.infer("double", [tensor(array)], client_timeout=30)
    np.testing.assert_array_equal(reply.as_numpy("y"), array * 2)
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        client.infer("missing", [tensor(array)])
    assert "missing" in caught.value.message()
    with grpc.insecure_channel(server.grpc_address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_tritonclient_100_mb_tensor_both_ways(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(
        server.grpc_address,
        channel_args=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20),
        ],
    )
    array = np.ones((25 * 1024 * 1024,), np.float32)  # 100 MiB
    reply = client.infer("double", [tensor(array)], client_timeout=300)
    assert reply.as_numpy("y").sum() == 2 * array.size


def test_tritonclient_stream_infer(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(3):
            client.async_stream_infer("double", [tensor(np.full((1, 2), i, np.float32))])
        for i in range(3):
            result, error = answers.get(timeout=30)
            assert error is None
            np.testing.assert_array_equal(result.as_numpy("y"), np.full((1, 2), 2 * i))
    finally:
        client.stop_stream()


def test_tf_serving_predict(server: ServerProcess) -> None:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "double"
    request.inputs["x"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]
            ),
            float_val=[1.0, 2.0, 3.0],
        )
    )
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30
        )
    assert list(reply.outputs["y"].float_val) == [2.0, 4.0, 6.0]


def test_engine_is_named_in_config(tmp_path: Path) -> None:
    from dl_inference.kernel.config.schema import GrpcConfig

    assert GrpcConfig().engine == "asyncio"
    assert GrpcConfig(engine="grpcio").engine == "grpcio"
    with pytest.raises(ValueError):
        GrpcConfig(engine="h3")
