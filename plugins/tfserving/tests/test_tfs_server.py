"""End to end without TensorFlow on the server: ``dl-inference serve`` with only the kernel and
this plugin (``plugins.allow: [tfserving]``), python-backend models, TF Serving's own clients;
and a gateway with only this plugin and the balancers in front of it.

gRPC through the stubs of ``tensorflow_serving.apis`` (the client may import TensorFlow; the
server must not, which a model reports from inside the server process); REST through urllib.
"""

from __future__ import annotations

import base64
import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dl_inference.testing import ServerProcess, write_python_model

SEED_PREDICT = "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/Predict"
PREDICT_METHOD = "tensorflow/serving/predict"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tfs")
    repo = root / "models"
    write_python_model(
        repo,
        "pyadd",
        """
        import sys

        import numpy as np
        from dl_inference import PythonModel

        class AddOne(PythonModel):
            def predict(self, inputs):
                # One flag per row, so TF Serving's row format can answer too.
                imported = np.full(len(inputs["x"]), "tensorflow" in sys.modules)
                return {"y": inputs["x"] + np.float32(1), "tensorflow_imported": imported}
        """,
        config="""
        backend: python
        inputs: [{name: x, datatype: FP32, shape: [-1]}]
        outputs:
          - {name: y, datatype: FP32, shape: [-1]}
          - {name: tensorflow_imported, datatype: BOOL, shape: [-1]}
        """,
    )
    write_python_model(
        repo,
        "words",
        """
        import numpy as np
        from dl_inference import PythonModel

        class Words(PythonModel):
            def predict(self, inputs):
                text = inputs["text"]
                upper = np.array([t.upper() for t in text.reshape(-1)], dtype=object)
                lengths = np.array([len(t) for t in text.reshape(-1)], dtype=np.int32)
                return {"upper_bytes": upper.reshape(text.shape), "length": lengths}
        """,
        config="""
        backend: python
        inputs: [{name: text, datatype: BYTES, shape: [-1]}]
        outputs:
          - {name: upper_bytes, datatype: BYTES, shape: [-1]}
          - {name: length, datatype: INT32, shape: [-1]}
        """,
    )
    config = root / "server.yaml"
    config.write_text(f"model_repository: {repo}\nplugins: {{allow: [tfserving]}}\n")
    with ServerProcess(["-c", str(config)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def gateway(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A gateway-only server (no models of its own) routing ``pyadd`` to ``server``."""
    config = tmp_path_factory.mktemp("tfs_gateway") / "gateway.yaml"
    route = {
        "model": "pyadd",
        "nodes": [{"address": server.grpc_address, "http_address": server.http_address}],
    }
    document = {"routes": [route], "plugins": {"allow": ["tfserving", "balancers"]}}
    config.write_text(json.dumps(document))  # JSON is YAML
    with ServerProcess(["-c", str(config)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as chan:
        yield chan


@pytest.fixture(scope="module")
def predictor(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def tensor(array: np.ndarray) -> Any:
    """A TensorProto as TF Serving clients build it (``tf.make_tensor_proto``)."""
    import tensorflow as tf

    return tf.make_tensor_proto(array)


def ndarray(proto: Any) -> np.ndarray:
    import tensorflow as tf

    return tf.make_ndarray(proto)


def predict_request(name: str, inputs: dict[str, np.ndarray], **spec: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tensor(value))
    return request


def rpc_error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value


# -- gRPC ----------------------------------------------------------------------------------


def test_grpc_predict_of_a_python_model(predictor: Any) -> None:
    x = np.float32([1.5, -2.0, 0.0])
    response = predictor.Predict(predict_request("pyadd", {"x": x}), timeout=30)
    np.testing.assert_array_equal(ndarray(response.outputs["y"]), x + 1)
    assert response.model_spec.name == "pyadd"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    # Answered by a server that never imported TensorFlow.
    assert ndarray(response.outputs["tensorflow_imported"]).tolist() == [False] * 3


def test_grpc_predict_bytes_and_output_filter(predictor: Any) -> None:
    text = np.array([b"ab", b"\xff\x00c"], dtype=object)
    request = predict_request("words", {"text": text})
    request.output_filter.append("upper_bytes")
    response = predictor.Predict(request, timeout=30)
    assert set(response.outputs) == {"upper_bytes"}
    assert list(ndarray(response.outputs["upper_bytes"])) == [b"AB", b"\xff\x00C"]


def test_seed_unified_predict_takes_a_name_with_task_id(channel: grpc.Channel) -> None:
    call = channel.unary_unary(
        SEED_PREDICT,
        request_serializer=predict_pb2.PredictRequest.SerializeToString,
        response_deserializer=predict_pb2.PredictResponse.FromString,
    )
    response = call(predict_request("pyadd-20931", {"x": np.float32([2.0])}), timeout=30)
    np.testing.assert_array_equal(ndarray(response.outputs["y"]), [3.0])
    assert response.model_spec.name == "pyadd"


def test_metadata_synthesizes_a_serving_default_signature(predictor: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "pyadd"
    response = predictor.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default"}
    default = signatures.signature_def["serving_default"]
    assert default.method_name == PREDICT_METHOD
    assert default.inputs["x"].dtype == 1  # DT_FLOAT
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1]
    assert set(default.outputs) == {"y", "tensorflow_imported"}
    assert response.model_spec.version.value == 1


def test_model_status(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "words"
    (status,) = stub.GetModelStatus(request, timeout=30).model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    request.model_spec.name = "nope"
    assert rpc_error(stub.GetModelStatus, request).code() == grpc.StatusCode.NOT_FOUND


def test_reload_config_needs_model_management(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    error = rpc_error(stub.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "management.enabled" in error.details()


def test_reflection_describes_tf_serving_well_enough_to_call_it(channel: grpc.Channel) -> None:
    """A reflection client (as grpcurl) builds a Predict call from what the server lists."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from google.protobuf.message_factory import GetMessageClass
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"} <= services
    pool = DescriptorPool(database)
    predict = pool.FindServiceByName("tensorflow.serving.PredictionService").methods_by_name[
        "Predict"
    ]
    assert predict.input_type.full_name == "tensorflow.serving.PredictRequest"
    tensor_type = predict.input_type.fields_by_name["inputs"].message_type.fields_by_name["value"]
    assert tensor_type.message_type.full_name == "tensorflow.TensorProto"
    status = pool.FindServiceByName("tensorflow.serving.ModelService")
    assert set(status.methods_by_name) == {"GetModelStatus", "HandleReloadConfigRequest"}

    request = GetMessageClass(predict.input_type)()
    request.model_spec.name = "pyadd"
    x = request.inputs["x"]
    x.dtype = 1  # DT_FLOAT, by number as a JSON-driven client would send it
    x.tensor_shape.dim.add(size=3)
    x.float_val.extend([1.5, -2.0, 0.0])
    call = channel.unary_unary(
        "/tensorflow.serving.PredictionService/Predict",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=GetMessageClass(predict.output_type).FromString,
    )
    reply = call(request, timeout=30)
    # The reflected response type reads the same bytes as TF Serving's own.
    again = predict_pb2.PredictResponse.FromString(reply.SerializeToString())
    np.testing.assert_array_equal(ndarray(again.outputs["y"]), np.float32([2.5, -1.0, 1.0]))


def test_grpc_bad_input_gets_clear_errors_and_server_keeps_serving(predictor: Any) -> None:
    x = np.float32([1.0])
    cases = [
        (
            predict_request("pyadd", {"x": x}, signature_name="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["nope", "serving_default"],
        ),
        (
            predict_request("pyadd", {"x": x.astype(np.float64)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["FP64", "FP32"],
        ),
        (predict_request("pyadd", {"z": x}), grpc.StatusCode.INVALID_ARGUMENT, ["x"]),
        (predict_request("missing", {"x": x}), grpc.StatusCode.NOT_FOUND, ["missing"]),
        (predict_request("pyadd", {"x": x}, version=9), grpc.StatusCode.NOT_FOUND, ["9"]),
    ]
    for request, code, words in cases:
        error = rpc_error(predictor.Predict, request)
        assert error.code() == code, (request.model_spec, error.details())
        for word in words:
            assert word in error.details(), (word, error.details())
    filtered = predict_request("pyadd", {"x": x})
    filtered.output_filter.append("nope")
    assert rpc_error(predictor.Predict, filtered).code() == grpc.StatusCode.INVALID_ARGUMENT
    response = predictor.Predict(predict_request("pyadd", {"x": x}), timeout=30)
    np.testing.assert_array_equal(ndarray(response.outputs["y"]), [2.0])


# -- REST ----------------------------------------------------------------------------------


def http(server: ServerProcess, path: str, body: Any = None) -> tuple[int, Any]:
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        server.http_url + path, data=data, method="POST" if data else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_rest_predict_of_a_python_model(server: ServerProcess) -> None:
    status, body = http(server, "/v1/models/pyadd:predict", {"instances": [1.0, 2.5]})
    assert status == 200, body
    assert [p["y"] for p in body["predictions"]] == [2.0, 3.5]
    status, body = http(server, "/v1/models/pyadd/versions/1:predict", {"inputs": {"x": [0.5]}})
    assert status == 200, body
    assert body["outputs"]["y"] == [1.5]
    assert body["outputs"]["tensorflow_imported"] == [False]


def test_rest_binary_inputs_and_outputs(server: ServerProcess) -> None:
    raw = base64.b64encode(b"\xfeok").decode()
    body = {"inputs": {"text": ["hi", {"b64": raw}]}}
    status, body = http(server, "/v1/models/words:predict", body)
    assert status == 200, body
    assert body["outputs"]["length"] == [2, 3]
    # Outputs whose key ends in _bytes come back base64-encoded, as in TF Serving.
    upper = [base64.b64decode(v["b64"]) for v in body["outputs"]["upper_bytes"]]
    assert upper == [b"HI", b"\xfeOK"]


def test_rest_status_and_metadata(server: ServerProcess) -> None:
    status, body = http(server, "/v1/models/pyadd")
    assert status == 200, body
    assert [(s["version"], s["state"]) for s in body["model_version_status"]] == [
        ("1", "AVAILABLE")
    ]
    status, body = http(server, "/v1/models/pyadd/metadata")
    assert status == 200, body
    default = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert default["method_name"] == PREDICT_METHOD
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"


def test_rest_errors_look_like_tf_serving(server: ServerProcess) -> None:
    cases = [
        ("/v1/models/pyadd:predict", b'{"instances": [1, 2', 400, "JSON"),
        ("/v1/models/pyadd:predict", {"signature_name": "nope", "instances": [1.0]}, 400, "nope"),
        ("/v1/models/pyadd:predict", {"instances": [1], "inputs": {"x": [1]}}, 400, "exactly one"),
        ("/v1/models/words:predict", {"instances": [{"b64": "!!not base64"}]}, 400, "base64"),
        ("/v1/models/nope:predict", {"instances": [1.0]}, 404, "nope"),
        ("/v1/models/pyadd:explode", {"instances": [1.0]}, 404, "Malformed request"),
    ]
    for path, body, code, word in cases:
        status, reply = http(server, path, body)
        assert status == code, (path, body, reply)
        assert set(reply) == {"error"} and word in reply["error"], reply
    status, reply = http(server, "/v1/models/pyadd:predict", {"instances": [1.0]})
    assert status == 200 and reply["predictions"][0]["y"] == 2.0


# -- through a gateway that has only this plugin ---------------------------------------------


def test_a_gateway_routes_tf_serving_calls_with_this_plugins_readers(
    gateway: ServerProcess,
) -> None:
    with grpc.insecure_channel(gateway.grpc_address) as chan:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(chan)
        x = np.float32([4.0, 5.0])
        response = stub.Predict(predict_request("pyadd", {"x": x}), timeout=30)
        np.testing.assert_array_equal(ndarray(response.outputs["y"]), x + 1)
        # Not a model of the gateway's: a name it does not route is answered there.
        error = rpc_error(stub.Predict, predict_request("elsewhere", {"x": x}))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    status, body = http(gateway, "/v1/models/pyadd:predict", {"inputs": {"x": [1.0]}})
    assert status == 200 and body["outputs"]["y"] == [2.0], body
    status, body = http(gateway, "/v1/models/pyadd")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE", body


def test_server_output_mentions_no_internal_errors(server: ServerProcess) -> None:
    # Every failure above was the client's: none may have become an INTERNAL error.
    assert "unexpected error" not in server.output(), textwrap.shorten(server.output(), 4000)
