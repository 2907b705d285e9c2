"""End to end: `dl-inference serve` in a subprocess with real PyTorch models, called by
Seldon clients (generic gRPC stubs, our messages and Seldon's real names), REST, and
tritonclient for the Open Inference Protocol."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from _seldon_real import real_messages
from _torch_models import (
    CNN_INPUT,
    CNN_OUTPUT,
    PNG_PROCESSOR,
    digits,
    png_bytes,
    png_reference,
    reference,
    write_cnn,
    write_twice,
)
from google.protobuf import json_format

from dl_inference.testing import ServerProcess, write_python_model
from dl_inference_pytorch._proto import seldon_pb2 as pb
from dl_inference_pytorch.seldon import PREDICT_PATHS, STATUS_TRAILER

MODEL_PREDICT = "/seldon.protos.Model/Predict"
# torch 2.10+ deprecates TorchScript; the backend still serves it (and tests save it).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
ADD_ONE_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


@dataclass
class Served:
    server: ServerProcess
    channel: grpc.Channel
    modules: dict[str, Any]

    def call(
        self,
        message: pb.SeldonMessage,
        path: str = MODEL_PREDICT,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> pb.SeldonMessage:
        stub = self.channel.unary_unary(
            path,
            request_serializer=pb.SeldonMessage.SerializeToString,
            response_deserializer=pb.SeldonMessage.FromString,
        )
        return stub(message, metadata=metadata, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("repo")
    modules = {
        "cnn_pt2": write_cnn(root, "cnn_pt2", "pt2", seed=0),
        "cnn_pth": write_cnn(
            root,
            "cnn_pth",
            "pth",
            {
                "trust_pickle": True,
                "max_batch_size": 8,
                "inputs": [CNN_INPUT],
                "outputs": [CNN_OUTPUT],
            },
            seed=1,
        ),
        "cnn_ts": write_cnn(root, "cnn_ts", "pt", seed=2),
        "png": write_cnn(root, "png", "pt", seed=3, processor=PNG_PROCESSOR),
        "twice": write_twice(root),
    }
    write_cnn(root, "untrusted", "pth")
    write_python_model(root, "add_one", ADD_ONE, ADD_ONE_CONFIG)
    with ServerProcess(["--model-repository", str(root)]) as server:
        channel = grpc.insecure_channel(server.grpc_address)
        try:
            yield Served(server, channel, modules)
        finally:
            channel.close()


def tensor_request(model: str, array: np.ndarray, **tags: Any) -> pb.SeldonMessage:
    message = pb.SeldonMessage()
    message.meta.puid = "puid-42"
    message.meta.tags["model"].string_value = model
    for key, value in tags.items():
        json_format.ParseDict(value, message.meta.tags[key])
    message.data.tensor.shape.extend(array.shape)
    message.data.tensor.values.extend(array.ravel().tolist())
    return message


def tensor_of(reply: pb.SeldonMessage) -> np.ndarray:
    assert reply.data.WhichOneof("data_oneof") == "tensor", reply
    return np.array(reply.data.tensor.values).reshape(tuple(reply.data.tensor.shape))


def failure(served: Served, message: pb.SeldonMessage, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        served.call(message, **kwargs)
    return caught.value


# -- answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PREDICT_PATHS)
def test_every_seldon_path_reaches_the_model(served, path):
    x = digits(2, seed=5)
    reply = served.call(tensor_request("cnn_pt2", x), path=path)
    np.testing.assert_allclose(
        tensor_of(reply), reference(served.modules["cnn_pt2"], x), rtol=1e-5, atol=1e-5
    )
    assert reply.meta.puid == "puid-42"
    assert reply.meta.tags["model"].string_value == "cnn_pt2"
    assert not reply.HasField("status")


@pytest.mark.parametrize("model", ["cnn_pt2", "cnn_pth", "cnn_ts"])
def test_each_saved_format_answers_like_the_module_in_process(served, model):
    x = digits(3, seed=7)
    reply = served.call(tensor_request(model, x))
    assert list(reply.data.tensor.shape) == [3, 10]
    np.testing.assert_allclose(
        tensor_of(reply), reference(served.modules[model], x), rtol=1e-5, atol=1e-5
    )


def test_ndarray_tftensor_and_json_requests_get_replies_of_their_kind(served):
    x = digits(1, seed=9)
    expected = reference(served.modules["cnn_pth"], x)

    ndarray = pb.SeldonMessage()
    ndarray.meta.tags["model"].string_value = "cnn_pth"
    ndarray.data.ndarray.extend(x.tolist())
    reply = served.call(ndarray)
    assert reply.data.WhichOneof("data_oneof") == "ndarray"
    np.testing.assert_allclose(
        json_format.MessageToDict(reply.data.ndarray), expected, rtol=1e-5, atol=1e-5
    )

    tftensor = pb.SeldonMessage()
    tftensor.meta.tags["model"].string_value = "cnn_pth"
    tftensor.data.tftensor.dtype = pb.DT_FLOAT
    tftensor.data.tftensor.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=d) for d in x.shape)
    tftensor.data.tftensor.tensor_content = x.astype("<f4").tobytes()
    reply = served.call(tftensor)
    out = reply.data.tftensor
    assert out.dtype == pb.DT_FLOAT and [d.size for d in out.tensor_shape.dim] == [1, 10]
    np.testing.assert_allclose(
        np.frombuffer(out.tensor_content, "<f4").reshape(1, 10), expected, rtol=1e-5, atol=1e-5
    )

    as_json = pb.SeldonMessage()
    as_json.meta.tags["model"].string_value = "cnn_pth"
    json_format.ParseDict({"x": x.tolist()}, as_json.jsonData)
    reply = served.call(as_json)
    assert list(json_format.MessageToDict(reply.jsonData)) == ["logits"]
    np.testing.assert_allclose(
        json_format.MessageToDict(reply.jsonData)["logits"], expected, rtol=1e-5, atol=1e-5
    )


def test_png_bytes_through_bin_data(served):
    image = (np.arange(784).reshape(28, 28) * 7 % 256).astype(np.uint8)
    message = pb.SeldonMessage(binData=png_bytes(image))
    message.meta.tags["model"].string_value = "png"
    reply = served.call(
        message,
        path="/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/PytorchPredict",
    )
    probabilities = np.array(json_format.MessageToDict(reply.data.ndarray))
    np.testing.assert_allclose(
        probabilities, png_reference(served.modules["png"], image), rtol=1e-5, atol=1e-6
    )


def test_model_named_by_grpc_metadata_and_by_seed_task_id(served):
    x = digits(1, seed=11)
    message = tensor_request("ignored", x)
    del message.meta.tags["model"]
    reply = served.call(message, metadata=(("model", "cnn_ts"),))
    np.testing.assert_allclose(
        tensor_of(reply), reference(served.modules["cnn_ts"], x), rtol=1e-5, atol=1e-5
    )


def test_meta_tags_reach_run_model_as_kwargs(served):
    import torch

    x = np.array([[1.0, -2.0, 0.5, 4.0]])
    reply = served.call(tensor_request("twice", x, scale=-3.0))
    layer = served.modules["twice"]
    with torch.inference_mode():
        expected = (layer(layer(torch.from_numpy(x).float())) * -3.0).numpy()
    np.testing.assert_allclose(tensor_of(reply), expected, rtol=1e-5, atol=1e-5)


def test_any_backend_is_reachable_through_seldon(served):
    reply = served.call(tensor_request("add_one", np.array([1.0, 2.5])))
    assert tensor_of(reply).tolist() == [2.0, 3.5]


def test_client_using_seldons_real_package_names(served):
    """Bytes made by a message class named seldon.protos.SeldonMessage, as a client's are."""
    real = real_messages()["seldon.protos.SeldonMessage"]
    x = digits(1, seed=13)
    request = real()
    request.meta.tags["model"].string_value = "cnn_ts"
    request.data.tensor.shape.extend(x.shape)
    request.data.tensor.values.extend(x.ravel().tolist())
    stub = served.channel.unary_unary(
        "/seldon.protos.Seldon/Predict",
        request_serializer=real.SerializeToString,
        response_deserializer=real.FromString,
    )
    reply = stub(request, timeout=60)
    got = np.array(reply.data.tensor.values).reshape(tuple(reply.data.tensor.shape))
    np.testing.assert_allclose(got, reference(served.modules["cnn_ts"], x), rtol=1e-5, atol=1e-5)


# -- errors --------------------------------------------------------------------------------


def seldon_status(error: grpc.RpcError) -> Any:
    trailers = dict(error.trailing_metadata() or ())
    status_cls = real_messages()["seldon.protos.Status"]
    return status_cls.FromString(trailers[STATUS_TRAILER])


def test_wrong_shape_is_invalid_argument_with_a_seldon_status(served):
    bad = np.zeros((1, 3, 28, 28), np.float32)
    for model in ("cnn_pth", "cnn_pt2"):  # declared in config.yaml / read from the .pt2
        error = failure(served, tensor_request(model, bad))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "shape [1, 3, 28, 28]" in error.details() and "'x'" in error.details()
    status = seldon_status(error)
    assert (status.code, status.status, status.reason) == (400, 1, "MICROSERVICE_BAD_DATA")
    assert "shape [1, 3, 28, 28]" in status.info


def test_non_image_bytes_are_invalid_argument(served):
    message = pb.SeldonMessage(binData=b"GIF? no: just text")
    message.meta.tags["model"].string_value = "png"
    error = failure(served, message)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot identify image file" in error.details() and "processor.py:" in error.details()


def test_error_in_user_code_is_internal_with_message_and_line(served):
    error = failure(served, tensor_request("twice", np.ones((1, 4)), fail=True))
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "failure requested by the fail tag" in error.details()
    assert "processor.py:7" in error.details()
    assert seldon_status(error).reason == "MICROSERVICE_INTERNAL_ERROR"


def test_untrusted_pickle_is_unavailable_and_says_how_to_fix_it(served):
    error = failure(served, tensor_request("untrusted", digits(1)))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "trust_pickle: true" in error.details() and "dl-inference-convert" in error.details()


def test_model_choice_errors(served):
    message = tensor_request("x", np.ones(1))
    del message.meta.tags["model"]
    error = failure(served, message)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "several models" in error.details() and "meta.tags.model" in error.details()
    assert "cnn_pt2" in error.details()
    error = failure(served, tensor_request("no_such_model", np.ones(1)))
    assert error.code() is grpc.StatusCode.NOT_FOUND and "no_such_model" in error.details()
    empty = pb.SeldonMessage()
    empty.meta.tags["model"].string_value = "cnn_ts"
    error = failure(served, empty)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "carries no data" in error.details()


def test_server_keeps_serving_after_errors(served):
    failure(served, tensor_request("twice", np.ones((1, 4)), fail=True))
    failure(served, tensor_request("cnn_pth", np.zeros((1, 2))))
    x = digits(1, seed=17)
    reply = served.call(tensor_request("cnn_pth", x))
    np.testing.assert_allclose(
        tensor_of(reply), reference(served.modules["cnn_pth"], x), rtol=1e-5, atol=1e-5
    )


# -- REST ----------------------------------------------------------------------------------


def post(served: Served, body: dict[str, Any] | str | bytes) -> tuple[int, dict[str, Any]]:
    text = json.dumps(body) if isinstance(body, dict) else body
    data = text.encode() if isinstance(text, str) else text
    request = urllib.request.Request(
        served.server.http_url + "/api/v1.0/predictions",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_rest_predictions_and_seldon_style_error_bodies(served):
    x = digits(1, seed=19)
    code, body = post(
        served, {"meta": {"tags": {"model": "cnn_ts"}}, "data": {"ndarray": x.tolist()}}
    )
    assert code == 200
    np.testing.assert_allclose(
        body["data"]["ndarray"], reference(served.modules["cnn_ts"], x), rtol=1e-5, atol=1e-5
    )

    code, body = post(
        served, {"meta": {"tags": {"model": "cnn_pth"}}, "data": {"ndarray": [[1, 2]]}}
    )
    assert code == 400
    assert body["status"]["status"] == "FAILURE" and body["status"]["code"] == 400
    assert body["status"]["reason"] == "MICROSERVICE_BAD_DATA" and "shape" in body["status"]["info"]

    code, body = post(served, "{not json")
    assert code == 400 and "not a JSON SeldonMessage" in body["status"]["info"]
    code, body = post(served, b"\xff\xfe garbage bytes")  # not even UTF-8
    assert code == 400 and "not a JSON SeldonMessage" in body["status"]["info"]


# -- Open Inference Protocol ----------------------------------------------------------------


def test_v2_client_reaches_the_pytorch_model(served):
    tritonclient = pytest.importorskip("tritonclient.grpc")
    client = tritonclient.InferenceServerClient(served.server.grpc_address)
    x = digits(2, seed=23)
    infer_input = tritonclient.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    try:
        result = client.infer(
            "cnn_pth", [infer_input], outputs=[tritonclient.InferRequestedOutput("logits")]
        )
    except tritonclient.InferenceServerException as exc:
        if "UNIMPLEMENTED" in str(exc.status()):
            pytest.skip("the kernel's V2 gRPC protocol is not served yet")
        raise
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference(served.modules["cnn_pth"], x), rtol=1e-5, atol=1e-5
    )
    metadata = client.get_model_metadata("cnn_pt2", as_json=True)
    assert metadata["inputs"][0]["name"] == "x" and metadata["inputs"][0]["shape"] == [
        "-1",
        "1",
        "28",
        "28",
    ]


# -- a server with one model ----------------------------------------------------------------


def test_single_model_needs_no_name(tmp_path: Path):
    write_python_model(tmp_path, "add_one", ADD_ONE, ADD_ONE_CONFIG)
    message = pb.SeldonMessage()
    message.data.ndarray.extend([1, 2, 3])
    with (
        ServerProcess(["--model-repository", str(tmp_path)]) as server,
        grpc.insecure_channel(server.grpc_address) as channel,
    ):
        stub = channel.unary_unary(
            "/seldon.protos.Seldon/Predict",
            request_serializer=pb.SeldonMessage.SerializeToString,
            response_deserializer=pb.SeldonMessage.FromString,
        )
        reply = stub(message, timeout=60)
    assert json_format.MessageToDict(reply.data.ndarray) == [2, 3, 4]
