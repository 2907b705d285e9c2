"""End to end without a framework: `dl-inference serve` in a subprocess where torch and
TensorFlow cannot be imported, python-backend models, Seldon clients over gRPC (our
messages and Seldon's real package names) and REST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
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
from google.protobuf import json_format

from dl_inference.testing import ServerProcess, write_python_model
from dl_inference_seldon._proto import seldon_pb2 as pb
from dl_inference_seldon.protocol import PREDICT_PATHS, REST_PATH, STATUS_TRAILER

MODEL_PREDICT = "/seldon.protos.Model/Predict"
SEED_SERVICE = "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"
SEED_PREDICT = f"{SEED_SERVICE}/PytorchPredict"
CAFFE_PREDICT = f"{SEED_SERVICE}/CaffePredict"
FRAMEWORKS = ("torch", "tensorflow")

AFFINE = """
    import numpy as np
    from dl_inference import PythonModel

    class Affine(PythonModel):
        def predict(self, inputs, scale=1.0, fail=False, **parameters):
            if fail:
                raise RuntimeError("failure requested by the fail tag")
            x = inputs["x"]
            return {"y": x * np.float32(scale) + 1, "sum": x.sum(axis=1, keepdims=True)}
"""
AFFINE_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]
    outputs:
      - {name: y, datatype: FP32, shape: [-1, 3]}
      - {name: sum, datatype: FP32, shape: [-1, 1]}
"""
REVERSE = """
    import numpy as np
    from dl_inference import PythonModel

    class Reverse(PythonModel):
        def predict(self, inputs, **parameters):
            out = np.empty(inputs["data"].shape, dtype=object)
            for index, item in np.ndenumerate(inputs["data"]):
                out[index] = bytes(item)[::-1]
            return {"out": out}
"""
REVERSE_CONFIG = """
    inputs: [{name: data, datatype: BYTES, shape: [-1]}]
    outputs: [{name: out, datatype: BYTES, shape: [-1]}]
"""
TWO_INPUTS = """
    from dl_inference import PythonModel

    class Two(PythonModel):
        def predict(self, inputs, **parameters):
            return {"c": inputs["a"] * inputs["b"]}
"""
TWO_INPUTS_CONFIG = """
    inputs: [{name: a, datatype: INT64, shape: [-1]}, {name: b, datatype: INT64, shape: [-1]}]
    outputs: [{name: c, datatype: INT64, shape: [-1]}]
"""
VERSIONED = """
    import numpy as np
    from dl_inference import PythonModel

    class Version(PythonModel):
        def predict(self, inputs, **parameters):
            return {{"v": np.full(inputs["x"].shape, {version}, dtype=np.float32)}}
"""
VERSIONED_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: v, datatype: FP32, shape: [-1]}]
"""


def block_frameworks(folder: Path) -> dict[str, str]:
    """An environment in which ``import torch`` / ``import tensorflow`` fail."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FRAMEWORKS:
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    return {"PYTHONPATH": str(folder)}


def write_repository(root: Path) -> None:
    write_python_model(root, "affine", AFFINE, AFFINE_CONFIG)
    write_python_model(root, "reverse", REVERSE, REVERSE_CONFIG)
    write_python_model(root, "two", TWO_INPUTS, TWO_INPUTS_CONFIG)
    for version in (1, 2):
        write_python_model(
            root, "versioned", VERSIONED.format(version=version), VERSIONED_CONFIG, version
        )
    (root / "versioned" / "config.yaml").write_text(
        textwrap.dedent(VERSIONED_CONFIG) + "version_policy: {all: true}\n"
    )


@dataclass
class Served:
    server: ServerProcess
    channel: grpc.Channel

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

    def post(
        self, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(
            self.server.http_url + REST_PATH,
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("repo")
    write_repository(root)
    env = block_frameworks(tmp_path_factory.mktemp("blocked"))
    with ServerProcess(["--model-repository", str(root)], env=env) as server:
        channel = grpc.insecure_channel(server.grpc_address)
        try:
            yield Served(server, channel)
        finally:
            channel.close()


@pytest.fixture(scope="module")
def gateway(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A gateway with no models of its own, routing ``affine`` to the ``served`` worker."""
    config = tmp_path_factory.mktemp("gateway") / "gateway.yaml"
    routes = [{"model": "affine", "nodes": [{"address": served.server.grpc_address}]}]
    config.write_text(json.dumps({"routes": routes}))  # JSON is YAML
    env = block_frameworks(tmp_path_factory.mktemp("blocked-gateway"))
    with ServerProcess(["-c", str(config)], env=env) as server:
        channel = grpc.insecure_channel(server.grpc_address)
        try:
            yield Served(server, channel)
        finally:
            channel.close()


def tensor_request(model: str | None, array: np.ndarray, **tags: Any) -> pb.SeldonMessage:
    message = pb.SeldonMessage()
    message.meta.puid = "puid-42"
    if model is not None:
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


def seldon_status(error: grpc.RpcError) -> Any:
    trailers = dict(error.trailing_metadata() or ())
    return real_messages()["seldon.protos.Status"].FromString(trailers[STATUS_TRAILER])


X = np.array([[1.0, -2.0, 0.5], [3.0, 4.0, 5.5]])


# -- no framework ----------------------------------------------------------------------------


def test_the_plugin_imports_no_framework_nor_the_pytorch_plugin() -> None:
    code = textwrap.dedent(
        """
        import sys
        from dl_inference.kernel.plugins import PluginHost

        import dl_inference_seldon
        from dl_inference_seldon.protocol import SeldonProtocol

        host = PluginHost(allow=["seldon"]).load()
        assert SeldonProtocol in list(host.protocols), list(host.protocols)
        protocol = SeldonProtocol()
        protocol.routing_keys(), protocol.rest_routing_keys(), protocol.reflection_files()
        loaded = sorted(
            name for name in sys.modules
            if name.split(".")[0] in ("torch", "tensorflow", "dl_inference_pytorch")
        )
        assert not loaded, loaded
        print("clean")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "clean", result.stderr


def test_plugins_lists_seldon_from_its_own_distribution(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "plugins"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **block_frameworks(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (row,) = [n for n, line in enumerate(lines) if line.startswith("seldon ")]
    assert "dl-inference-seldon" in lines[row] and "[loaded]" in lines[row]
    assert lines[row + 1].split() == ["protocols:", "seldon"]


# -- gRPC ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PREDICT_PATHS)
def test_every_seldon_path_reaches_a_python_model(served: Served, path: str) -> None:
    reply = served.call(tensor_request("affine", X), path=path)
    np.testing.assert_allclose(tensor_of(reply), X + 1)
    assert reply.meta.puid == "puid-42"
    assert reply.meta.tags["model"].string_value == "affine"
    assert not reply.HasField("status")


def test_caffe_predict_answers_as_pytorch_predict(served: Served) -> None:
    text = pb.SeldonMessage(strData="bonjour")
    text.meta.puid = "p-1"
    text.meta.tags["model"].string_value = "reverse"
    for message in (tensor_request("affine", X, scale=2.0), text):
        caffe = served.call(message, path=CAFFE_PREDICT)
        assert caffe == served.call(message, path=SEED_PREDICT)
        assert caffe.WhichOneof("data_oneof") in ("data", "strData")
    assert caffe.strData == "ruojnob"


@pytest.mark.parametrize("path", [SEED_PREDICT, CAFFE_PREDICT])
def test_the_seeds_methods_are_routed_through_a_gateway_to_a_worker(
    served: Served, gateway: Served, path: str
) -> None:
    message = tensor_request("affine", X)
    reply = gateway.call(message, path=path)  # the gateway serves no model itself
    np.testing.assert_allclose(tensor_of(reply), X + 1)
    assert reply == served.call(message, path=path)
    error = failure(gateway, tensor_request("unrouted", X), path=path)
    assert error.code() is grpc.StatusCode.NOT_FOUND and "unrouted" in error.details()


def test_tags_reach_the_model_as_parameters_and_pick_the_output(served: Served) -> None:
    reply = served.call(tensor_request("affine", X, scale=-3.0))
    np.testing.assert_allclose(tensor_of(reply), X * -3 + 1)
    reply = served.call(tensor_request("affine", X, output="sum"))
    np.testing.assert_allclose(tensor_of(reply), X.sum(axis=1, keepdims=True))


def test_model_version_tag_picks_the_version(served: Served) -> None:
    for version in ("1", "2"):
        reply = served.call(tensor_request("versioned", np.ones(2), model_version=version))
        assert tensor_of(reply).tolist() == [float(version)] * 2


def test_ndarray_tftensor_and_json_requests_get_replies_of_their_kind(served: Served) -> None:
    ndarray = pb.SeldonMessage()
    ndarray.meta.tags["model"].string_value = "affine"
    ndarray.data.ndarray.extend(X.tolist())
    reply = served.call(ndarray)
    assert reply.data.WhichOneof("data_oneof") == "ndarray"
    np.testing.assert_allclose(json_format.MessageToDict(reply.data.ndarray), X + 1)

    tftensor = pb.SeldonMessage()
    tftensor.meta.tags["model"].string_value = "affine"
    tftensor.data.tftensor.dtype = pb.DT_FLOAT
    tftensor.data.tftensor.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=d) for d in X.shape)
    tftensor.data.tftensor.tensor_content = X.astype("<f4").tobytes()
    out = served.call(tftensor).data.tftensor
    assert out.dtype == pb.DT_FLOAT and [d.size for d in out.tensor_shape.dim] == [2, 3]
    np.testing.assert_allclose(np.frombuffer(out.tensor_content, "<f4").reshape(2, 3), X + 1)

    as_json = pb.SeldonMessage()
    as_json.meta.tags["model"].string_value = "two"
    json_format.ParseDict({"a": [1, 2, 3], "b": [4, 5, 6]}, as_json.jsonData)
    reply = served.call(as_json)
    assert json_format.MessageToDict(reply.jsonData) == {"c": [4, 10, 18]}


def test_bin_and_str_data_are_answered_in_kind(served: Served) -> None:
    message = pb.SeldonMessage(binData=b"\x00\x01\xffraw")
    message.meta.tags["model"].string_value = "reverse"
    assert served.call(message, path=SEED_PREDICT).binData == b"war\xff\x01\x00"
    text = pb.SeldonMessage(strData="bonjour")
    text.meta.tags["model"].string_value = "reverse"
    assert served.call(text).strData == "ruojnob"


def test_model_named_by_grpc_metadata_and_by_the_seed_task_id(served: Served) -> None:
    reply = served.call(tensor_request(None, X), metadata=(("seldon-model", "affine"),))
    np.testing.assert_allclose(tensor_of(reply), X + 1)
    seed = tensor_request(None, np.ones(2))
    seed.meta.tags["taskId"].number_value = 2  # no such model: the task id names it
    error = failure(served, seed)
    assert error.code() is grpc.StatusCode.NOT_FOUND and "'2'" in error.details()


def test_client_using_seldons_real_package_names(served: Served) -> None:
    """Bytes made by a message class named seldon.protos.SeldonMessage, as a client's are."""
    real = real_messages()["seldon.protos.SeldonMessage"]
    request = real()
    request.meta.tags["model"].string_value = "affine"
    request.data.tensor.shape.extend(X.shape)
    request.data.tensor.values.extend(X.ravel().tolist())
    stub = served.channel.unary_unary(
        "/seldon.protos.Seldon/Predict",
        request_serializer=real.SerializeToString,
        response_deserializer=real.FromString,
    )
    reply = stub(request, timeout=60)
    got = np.array(reply.data.tensor.values).reshape(tuple(reply.data.tensor.shape))
    np.testing.assert_allclose(got, X + 1)


# -- gRPC errors -----------------------------------------------------------------------------


def test_wrong_shape_is_invalid_argument_with_a_seldon_status(served: Served) -> None:
    error = failure(served, tensor_request("affine", np.ones((1, 4))))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "[1, 4]" in error.details() and "'x'" in error.details()
    status = seldon_status(error)
    assert (status.code, status.status, status.reason) == (400, 1, "MICROSERVICE_BAD_DATA")
    assert "[1, 4]" in status.info


def test_error_in_the_model_is_internal_with_its_message(served: Served) -> None:
    error = failure(served, tensor_request("affine", X, fail=True))
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "failure requested by the fail tag" in error.details()
    assert seldon_status(error).reason == "MICROSERVICE_INTERNAL_ERROR"


def test_model_choice_errors(served: Served) -> None:
    error = failure(served, tensor_request(None, X))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "several models" in error.details() and "meta.tags.model" in error.details()
    assert "affine" in error.details()
    error = failure(served, tensor_request("no_such_model", X))
    assert error.code() is grpc.StatusCode.NOT_FOUND and "no_such_model" in error.details()
    empty = pb.SeldonMessage()
    empty.meta.tags["model"].string_value = "affine"
    error = failure(served, empty)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "carries no data" in error.details()


def test_server_keeps_serving_after_errors(served: Served) -> None:
    failure(served, tensor_request("affine", X, fail=True))
    failure(served, tensor_request("affine", np.zeros((1, 2))))
    np.testing.assert_allclose(tensor_of(served.call(tensor_request("affine", X))), X + 1)


# -- REST ------------------------------------------------------------------------------------


def test_rest_predictions_by_tag_or_header(served: Served) -> None:
    tagged = {"meta": {"tags": {"model": "affine"}}, "data": {"ndarray": X.tolist()}}
    code, body = served.post(tagged)
    assert code == 200, body
    np.testing.assert_allclose(body["data"]["ndarray"], X + 1)
    assert body["meta"]["tags"] == {"model": "affine"}

    code, body = served.post({"strData": "abc"}, {"Seldon-Model": "reverse"})
    assert (code, body["strData"]) == (200, "cba")


def test_rest_errors_are_seldon_status_bodies(served: Served) -> None:
    code, body = served.post({"meta": {"tags": {"model": "affine"}}, "data": {"ndarray": [[1, 2]]}})
    assert code == 400
    assert body["status"]["status"] == 1 and body["status"]["code"] == 400
    assert body["status"]["reason"] == "MICROSERVICE_BAD_DATA"
    assert "[1, 2]" in body["status"]["info"]

    code, body = served.post({"meta": {"tags": {"model": "nosuch"}}, "data": {"ndarray": [1]}})
    assert code == 404 and "nosuch" in body["status"]["info"]
    code, body = served.post(b"{not json")
    assert code == 400 and "not a JSON SeldonMessage" in body["status"]["info"]
    code, body = served.post(b"\xff\xfe garbage bytes")  # not even UTF-8
    assert code == 400 and "not a JSON SeldonMessage" in body["status"]["info"]


# -- a server with one model -----------------------------------------------------------------


def test_single_model_needs_no_name(tmp_path: Path) -> None:
    write_python_model(tmp_path / "repo", "affine", AFFINE, AFFINE_CONFIG)
    message = pb.SeldonMessage()
    message.data.ndarray.extend([[1, 2, 3]])
    env = block_frameworks(tmp_path / "blocked")
    with (
        ServerProcess(["--model-repository", str(tmp_path / "repo")], env=env) as server,
        grpc.insecure_channel(server.grpc_address) as channel,
    ):
        stub = channel.unary_unary(
            "/seldon.protos.Seldon/Predict",
            request_serializer=pb.SeldonMessage.SerializeToString,
            response_deserializer=pb.SeldonMessage.FromString,
        )
        reply = stub(message, timeout=60)
    assert json_format.MessageToDict(reply.data.ndarray) == [[2, 3, 4]]
