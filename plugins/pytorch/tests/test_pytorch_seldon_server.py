"""End to end: `dl-inference serve` in a subprocess with real PyTorch models, called by
Seldon clients over gRPC and REST (the protocol the pytorch plugin brings along), and
tritonclient for the Open Inference Protocol.

The Seldon protocol itself (every path, data kind, model choice, error body) is tested
without torch in plugins/seldon/tests; here: what PyTorch models add to it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
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

from dl_inference.testing import ServerProcess
from dl_inference_seldon._proto import seldon_pb2 as pb
from dl_inference_seldon.protocol import STATUS_TRAILER

MODEL_PREDICT = "/seldon.protos.Model/Predict"
# torch 2.10+ deprecates TorchScript; the backend still serves it (and tests save it).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


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


@pytest.mark.parametrize("model", ["cnn_pt2", "cnn_pth", "cnn_ts"])
def test_each_saved_format_answers_like_the_module_in_process(served, model):
    x = digits(3, seed=7)
    reply = served.call(tensor_request(model, x))
    assert list(reply.data.tensor.shape) == [3, 10]
    np.testing.assert_allclose(
        tensor_of(reply), reference(served.modules[model], x), rtol=1e-5, atol=1e-5
    )


def test_png_bytes_through_bin_data(served):
    image = (np.arange(784).reshape(28, 28) * 7 % 256).astype(np.uint8)
    message = pb.SeldonMessage(binData=png_bytes(image))
    message.meta.tags["model"].string_value = "png"
    reply = served.call(
        message,
        path="/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/PytorchPredict",
    )
    # Numbers for a binData request come back as data.tensor, as from Seldon's wrapper.
    np.testing.assert_allclose(
        tensor_of(reply), png_reference(served.modules["png"], image), rtol=1e-5, atol=1e-6
    )


def test_meta_tags_reach_run_model_as_kwargs(served):
    import torch

    x = np.array([[1.0, -2.0, 0.5, 4.0]])
    reply = served.call(tensor_request("twice", x, scale=-3.0))
    layer = served.modules["twice"]
    with torch.inference_mode():
        expected = (layer(layer(torch.from_numpy(x).float())) * -3.0).numpy()
    np.testing.assert_allclose(tensor_of(reply), expected, rtol=1e-5, atol=1e-5)


# -- errors --------------------------------------------------------------------------------


def seldon_status(error: grpc.RpcError) -> Any:
    trailers = dict(error.trailing_metadata() or ())
    return pb.Status.FromString(trailers[STATUS_TRAILER])


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
    assert "trust_pickle: true" in error.details() and "dl-inference convert" in error.details()


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
    assert body["status"]["status"] == 1 and body["status"]["code"] == 400  # 1: FAILURE
    assert body["status"]["reason"] == "MICROSERVICE_BAD_DATA" and "shape" in body["status"]["info"]


# -- Open Inference Protocol ----------------------------------------------------------------


def test_v2_client_reaches_the_pytorch_model(served):
    tritonclient = pytest.importorskip("tritonclient.grpc")
    client = tritonclient.InferenceServerClient(served.server.grpc_address)
    x = digits(2, seed=23)
    infer_input = tritonclient.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer(
        "cnn_pth", [infer_input], outputs=[tritonclient.InferRequestedOutput("logits")]
    )
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
