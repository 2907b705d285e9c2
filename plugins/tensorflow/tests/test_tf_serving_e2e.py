"""End to end: ``dl-inference serve`` in a subprocess, called by TF Serving's own clients.

gRPC through the stubs of ``tensorflow_serving.apis``; REST through plain urllib. Served
outputs are compared with the same SavedModels run in this process. What needs no SavedModel
(python-backend models, reflection, errors) is tested in plugins/tfserving.
"""

from __future__ import annotations

import base64
import json
import shutil
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from dl_inference.testing import ServerProcess

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
SEED_PREDICT = "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/Predict"


@pytest.fixture(scope="module")
def server(built: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    for name in ("keras", "text", "census"):
        shutil.copytree(built.root / name, repo / name)
    (repo / "text" / "config.yaml").write_text(
        "version_policy: {all: true}\nversion_labels: {stable: 1, canary: 2}\n"
    )
    with ServerProcess(["--model-repository", str(repo)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as chan:
        yield chan


@pytest.fixture(scope="module")
def predictor(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(
    name: str,
    inputs: dict[str, Any],
    *,
    signature: str = "",
    version: int | None = None,
    label: str = "",
    output_filter: tuple[str, ...] = (),
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def outputs_of(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}


def example(age: float, hours: float | None = None) -> tf.train.Example:
    feature = {"age": tf.train.Feature(float_list=tf.train.FloatList(value=[age]))}
    if hours is not None:
        feature["hours"] = tf.train.Feature(float_list=tf.train.FloatList(value=[hours]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


ROWS = [(30.0, 40.0), (5.0, -2.0), (0.5, 0.25)]


def serialized_rows() -> tf.Tensor:
    return tf.constant([example(a, h).SerializeToString() for a, h in ROWS])


def rpc_error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value


# -- Predict -------------------------------------------------------------------------------


def test_predict_keras_matches_in_process(predictor: Any, built: Any) -> None:
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    response = predictor.Predict(predict_request("keras", {"x": x}), timeout=30)
    expected = built.keras.predict(x, verbose=0)
    np.testing.assert_allclose(outputs_of(response)["output_0"], expected, rtol=1e-5, atol=1e-6)
    # In the typed field, as TF Serving answers (Java clients read getFloatValList()).
    output = response.outputs["output_0"]
    assert output.tensor_content == b""
    np.testing.assert_allclose(list(output.float_val), expected.ravel(), rtol=1e-5, atol=1e-6)
    assert response.model_spec.name == "keras"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_predict_named_signature_with_string_input(predictor: Any, built: Any) -> None:
    text = np.array([b"abc", "\u00e9t\u00e9".encode(), b"\xff\x00"], dtype=object)
    response = predictor.Predict(predict_request("text", {"text": text}, signature="shout"))
    expected = built.text_v2.shout(tf.constant(text))
    got = outputs_of(response)
    assert list(got["upper"]) == list(expected["upper"].numpy())
    assert list(got["echo_bytes"]) == list(text)
    assert response.model_spec.signature_name == "shout"


def test_predict_two_inputs_versions_and_labels(predictor: Any, built: Any) -> None:
    inputs = {"text": np.array([b"ab", b"abcd"], dtype=object), "scale": np.float32([2.0, 0.5])}
    for spec, module, version in (
        ({}, built.text_v2, 2),
        ({"version": 1}, built.text_v1, 1),
        ({"label": "stable"}, built.text_v1, 1),
        ({"label": "canary"}, built.text_v2, 2),
    ):
        response = predictor.Predict(predict_request("text", inputs, **spec), timeout=30)
        expected = module.serve(tf.constant(inputs["text"]), tf.constant(inputs["scale"]))
        got = outputs_of(response)
        np.testing.assert_array_equal(got["length"], expected["length"].numpy())
        np.testing.assert_allclose(got["scaled"], expected["scaled"].numpy())
        assert response.model_spec.version.value == version


def test_output_filter_returns_only_named_outputs(predictor: Any) -> None:
    inputs = {"text": np.array([b"xyz"], dtype=object), "scale": np.float32([3.0])}
    response = predictor.Predict(predict_request("text", inputs, output_filter=("scaled",)))
    assert set(response.outputs) == {"scaled"}
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scaled"]), [309.0])


def test_typed_value_fields_decode_like_tensor_content(predictor: Any, built: Any) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
    request = predict_request("keras", {})
    tensor = request.inputs["x"]
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.dim.add().size = 2
    tensor.tensor_shape.dim.add().size = 4
    tensor.float_val.extend(x.reshape(-1).tolist())
    got = outputs_of(predictor.Predict(request, timeout=30))["output_0"]
    np.testing.assert_allclose(got, built.keras.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_seed_unified_service_accepts_name_with_task_id(channel: grpc.Channel, built: Any) -> None:
    call = channel.unary_unary(
        SEED_PREDICT,
        request_serializer=predict_pb2.PredictRequest.SerializeToString,
        response_deserializer=predict_pb2.PredictResponse.FromString,
    )
    x = np.ones((1, 4), np.float32)
    response = call(predict_request("keras-20931", {"x": x}), timeout=30)
    np.testing.assert_allclose(
        outputs_of(response)["output_0"], built.keras.predict(x, verbose=0), rtol=1e-5
    )
    assert response.model_spec.name == "keras"


# -- Classify / Regress / MultiInference ---------------------------------------------------------


def test_classify_matches_in_process(predictor: Any, built: Any) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "census"
    request.model_spec.signature_name = "classify"
    request.input.example_list.examples.extend(example(a, h) for a, h in ROWS)
    response = predictor.Classify(request, timeout=30)
    expected = built.census.classify(serialized_rows())
    scores = expected["scores"].numpy()
    assert len(response.result.classifications) == len(ROWS)
    for row, classifications in enumerate(response.result.classifications):
        assert [c.label for c in classifications.classes] == ["cat", "dog", "eel"]
        np.testing.assert_allclose(
            [c.score for c in classifications.classes], scores[row], rtol=1e-6
        )
    assert response.model_spec.signature_name == "classify"


def test_classify_merges_context_features(predictor: Any, built: Any) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "census"
    request.model_spec.signature_name = "classify"
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(example(0.0, 7.0))
    with_context.examples.extend([example(1.0), example(2.0)])
    response = predictor.Classify(request, timeout=30)
    expected = built.census.classify(
        tf.constant([example(1.0, 7.0).SerializeToString(), example(2.0, 7.0).SerializeToString()])
    )["scores"].numpy()
    got = [[c.score for c in cl.classes] for cl in response.result.classifications]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_regress_with_a_tf2_signature(predictor: Any, built: Any) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "census"
    request.model_spec.signature_name = "regress"
    request.input.example_list.examples.extend(example(a, h) for a, h in ROWS)
    response = predictor.Regress(request, timeout=30)
    expected = built.census.regress(serialized_rows())["outputs"].numpy()
    np.testing.assert_allclose([r.value for r in response.result.regressions], expected, rtol=1e-6)


def test_multi_inference_runs_each_task(predictor: Any, built: Any) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify", CLASSIFY), ("regress", REGRESS)):
        task = request.tasks.add()
        task.model_spec.name = "census"
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.example_list.examples.extend(example(a, h) for a, h in ROWS)
    response = predictor.MultiInference(request, timeout=30)
    classes, values = response.results
    expected = built.census.classify(serialized_rows())["scores"].numpy()
    got = [[c.score for c in cl.classes] for cl in classes.classification_result.classifications]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    expected_values = built.census.regress(serialized_rows())["outputs"].numpy()
    got_values = [r.value for r in values.regression_result.regressions]
    np.testing.assert_allclose(got_values, expected_values, rtol=1e-6)
    assert values.model_spec.signature_name == "regress"


def test_multi_inference_refuses_a_signature_named_twice(predictor: Any) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for _ in range(2):
        task = request.tasks.add(method_name=REGRESS)
        task.model_spec.name = "census"
        task.model_spec.signature_name = "regress"
    request.input.example_list.examples.extend(example(a, h) for a, h in ROWS)
    error = rpc_error(predictor.MultiInference, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Duplicate evaluation of signature: regress" in error.details()


# -- metadata and status --------------------------------------------------------------------


def test_get_model_metadata_reports_every_signature(predictor: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "census"
    request.metadata_field.append("signature_def")
    response = predictor.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert set(defs) == {"serving_default", "classify", "regress"}
    assert defs["classify"].method_name == CLASSIFY
    assert defs["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in defs["serving_default"].inputs["x"].tensor_shape.dim] == [-1, 2]
    assert set(defs["classify"].outputs) == {"classes", "scores"}
    assert response.model_spec.version.value == 1


def test_get_model_status_lists_versions(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "text"
    response = stub.GetModelStatus(request, timeout=30)
    states = {s.version: s.state for s in response.model_version_status}
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states == {1: available, 2: available}
    request.model_spec.version_label = "stable"
    only = stub.GetModelStatus(request, timeout=30).model_version_status
    assert [s.version for s in only] == [1]
    request.model_spec.name = "nope"
    assert rpc_error(stub.GetModelStatus, request).code() == grpc.StatusCode.NOT_FOUND


# -- bad input over gRPC ----------------------------------------------------------------------


def test_grpc_bad_input_gets_clear_errors_and_server_keeps_serving(predictor: Any) -> None:
    x = np.ones((1, 4), np.float32)
    cases = [
        (
            predict_request("keras", {"x": x}, signature="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["nope", "serving_default"],
        ),
        (
            predict_request("text", {"text": np.array([b"a"], dtype=object)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["scale"],
        ),
        (
            predict_request("keras", {"x": x.astype(np.float64)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["FP64", "FP32"],
        ),
        (
            predict_request("keras", {"x": np.ones((1, 3), np.float32)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["shape"],
        ),
        (
            predict_request("keras", {"x": x}, output_filter=("nope",)),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["nope"],
        ),
        (predict_request("missing", {"x": x}), grpc.StatusCode.NOT_FOUND, ["missing"]),
        (
            predict_request("text", {"text": np.array([b"a"], dtype=object)}, version=9),
            grpc.StatusCode.NOT_FOUND,
            ["9"],
        ),
    ]
    for request, code, words in cases:
        error = rpc_error(predictor.Predict, request)
        assert error.code() == code, (request.model_spec, error.details())
        for word in words:
            assert word in error.details(), (word, error.details())
    bad_content = predict_request("keras", {"x": x})
    bad_content.inputs["x"].tensor_content = b"\x00" * 3
    error = rpc_error(predictor.Predict, bad_content)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensor_content" in error.details()
    response = predictor.Predict(predict_request("keras", {"x": x}), timeout=30)
    assert tf.make_ndarray(response.outputs["output_0"]).shape == (1, 3)


def test_classify_on_a_predict_signature_is_refused(predictor: Any) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "keras"
    request.input.example_list.examples.append(example(1.0, 2.0))
    error = rpc_error(predictor.Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert CLASSIFY in error.details()


# -- REST --------------------------------------------------------------------------------------


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


def test_rest_status_and_metadata(server: ServerProcess) -> None:
    status, body = http(server, "/v1/models/text")
    assert status == 200
    assert {(s["version"], s["state"]) for s in body["model_version_status"]} == {
        ("1", "AVAILABLE"),
        ("2", "AVAILABLE"),
    }
    assert body["model_version_status"][0]["status"]["error_code"] == "OK"
    status, body = http(server, "/v1/models/text/labels/stable")
    assert [s["version"] for s in body["model_version_status"]] == ["1"]
    status, body = http(server, "/v1/models/census/metadata")
    assert status == 200
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert defs["classify"]["method_name"] == CLASSIFY
    assert defs["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert body["model_spec"] == {"name": "census", "signature_name": "", "version": "1"}


def test_rest_predict_row_and_columnar(server: ServerProcess, built: Any) -> None:
    x = np.random.default_rng(2).random((3, 4), dtype=np.float32)
    expected = built.keras.predict(x, verbose=0)
    status, body = http(server, "/v1/models/keras:predict", {"instances": x.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-5, atol=1e-6)
    status, body = http(
        server, "/v1/models/keras/versions/1:predict", {"inputs": {"x": x.tolist()}}
    )
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"], expected, rtol=1e-5, atol=1e-6)


def test_rest_named_instances_b64_and_labels(server: ServerProcess, built: Any) -> None:
    raw = [b"\xffbin", b"ok"]
    instances = [{"text": {"b64": base64.b64encode(v).decode()}, "scale": 2.0} for v in raw]
    status, body = http(server, "/v1/models/text/labels/stable:predict", {"instances": instances})
    assert status == 200, body
    expected = built.text_v1.serve(tf.constant(raw), tf.constant([2.0, 2.0]))
    assert [p["length"] for p in body["predictions"]] == expected["length"].numpy().tolist()
    status, body = http(
        server,
        "/v1/models/text:predict",
        {
            "signature_name": "shout",
            "inputs": {"text": ["hi", {"b64": base64.b64encode(b"\xfe").decode()}]},
        },
    )
    assert status == 200, body
    assert body["outputs"]["upper"][0] == "HI"
    # Outputs whose key ends in _bytes come back base64-encoded, as in TF Serving.
    assert [base64.b64decode(v["b64"]) for v in body["outputs"]["echo_bytes"]] == [b"hi", b"\xfe"]


def test_rest_classify_and_regress(server: ServerProcess, built: Any) -> None:
    examples = [{"age": a, "hours": h} for a, h in ROWS]
    status, body = http(
        server, "/v1/models/census:classify", {"signature_name": "classify", "examples": examples}
    )
    assert status == 200, body
    scores = built.census.classify(serialized_rows())["scores"].numpy()
    assert [[label for label, _ in row] for row in body["results"]] == [["cat", "dog", "eel"]] * 3
    np.testing.assert_allclose([[s for _, s in row] for row in body["results"]], scores, rtol=1e-6)
    status, body = http(
        server,
        "/v1/models/census:regress",
        {"signature_name": "regress", "context": {"hours": 1.0}, "examples": [{"age": 3.0}]},
    )
    assert status == 200, body
    expected = built.census.regress(tf.constant([example(3.0, 1.0).SerializeToString()]))
    np.testing.assert_allclose(body["results"], expected["outputs"].numpy(), rtol=1e-6)


def test_rest_errors_look_like_tf_serving(server: ServerProcess) -> None:
    x = [[0.0, 0.0, 0.0, 0.0]]
    cases = [
        ("/v1/models/keras:predict", b'{"instances": [1, 2', 400, "JSON"),
        ("/v1/models/keras:predict", {"signature_name": "nope", "instances": x}, 400, "nope"),
        ("/v1/models/text:predict", {"instances": [{"text": "a"}]}, 400, "scale"),
        ("/v1/models/keras:predict", {"instances": [["a", "b", "c", "d"]]}, 400, "x"),
        (
            "/v1/models/text:predict",
            {"instances": [{"text": {"b64": "!!not base64"}, "scale": 1.0}]},
            400,
            "base64",
        ),
        ("/v1/models/keras:predict", {"instances": x, "inputs": {"x": x}}, 400, "exactly one"),
        ("/v1/models/nope:predict", {"instances": x}, 404, "nope"),
        ("/v1/models/keras:explode", {"instances": x}, 404, "Malformed request"),
    ]
    for path, body, code, word in cases:
        status, reply = http(server, path, body)
        assert status == code, (path, body, reply)
        assert set(reply) == {"error"} and word in reply["error"], reply
    status, reply = http(server, "/v1/models/keras:predict", {"instances": x})
    assert status == 200 and len(reply["predictions"]) == 1


# -- other protocols ---------------------------------------------------------------------------


def test_v2_and_seldon_requests_select_a_signature_by_parameter(
    server: ServerProcess, built: Any
) -> None:
    """``parameters.signature_name`` selects the signature the kernel validates and runs."""
    words = ["hi", "yo"]
    text = {"name": "text", "datatype": "BYTES", "shape": [2], "data": words}
    shout = {"signature_name": "shout"}
    status, body = http(server, "/v2/models/text/infer", {"parameters": shout, "inputs": [text]})
    assert status == 200, body
    outputs = {output["name"]: output for output in body["outputs"]}
    expected = built.text_v2.shout(tf.constant([w.encode() for w in words]))["upper"].numpy()
    assert outputs["upper"]["data"] == [v.decode() for v in expected]
    # Validated against that signature's inputs, not the default one's (text, scale).
    scale = {"name": "scale", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    cases = [
        ({"parameters": shout, "inputs": [text, scale]}, "has no input named 'scale'"),
        ({"inputs": [text]}, "needs input 'scale'"),
        ({"parameters": {"signature_name": "nope"}, "inputs": [text]}, "no signature 'nope'"),
    ]
    for document, words_in_error in cases:
        status, body = http(server, "/v2/models/text/infer", document)
        assert status == 400 and words_in_error in body["error"], (document, body)
    status, body = http(server, "/v2/models/text/infer", {"inputs": [text, scale]})
    assert status == 200, body
    assert {output["name"] for output in body["outputs"]} == {"length", "scaled"}
    # Seldon carries parameters as tags.
    seldon = {"jsonData": {"text": words}, "meta": {"tags": {"model": "text", **shout}}}
    status, body = http(server, "/api/v1.0/predictions", seldon)
    assert status == 200, body
    assert body["jsonData"]["upper"] == [v.decode() for v in expected], body


def test_server_output_mentions_no_internal_errors(server: ServerProcess) -> None:
    # Every failure above was the client's: none may have become an INTERNAL error.
    assert "unexpected error" not in server.output(), textwrap.shorten(server.output(), 4000)
