"""The requests protocols build for ``dl-inference bench`` parse as the real messages.

Each protocol builds its own (``Protocol.bench_request``): V2 in the kernel, TF Serving and
Seldon in their plugins. Checked against the real client libraries where they are
installed (``tritonclient``, ``tensorflow_serving`` + TensorFlow), and against the bytes
the bench sent before the builders moved into the plugins.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re

import numpy as np
import pytest

from dl_inference import BenchRequest, ConfigError, Protocol, wire
from dl_inference.bench.clients import parse_url
from dl_inference.bench.command import build_request, find_protocol
from dl_inference.bench.inputs import concrete_shape, parse_input_spec
from dl_inference.builtin.v2 import V2Protocol
from dl_inference.builtin.v2.bench import v2_grpc_body, v2_rest_body
from dl_inference.kernel.plugins import PluginHost


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


needs_tf_plugin = pytest.mark.skipif(
    not _installed("dl_inference_tfserving"), reason="dl-inference-tfserving is not installed"
)
needs_seldon_plugin = pytest.mark.skipif(
    not _installed("dl_inference_seldon"), reason="dl-inference-seldon is not installed"
)
needs_tf_serving_api = pytest.mark.skipif(
    not _installed("tensorflow_serving.apis"), reason="tensorflow-serving-api is not installed"
)
needs_tritonclient = pytest.mark.skipif(
    not _installed("tritonclient.grpc"), reason="tritonclient[grpc] is not installed"
)

X = np.arange(6, dtype=np.float32).reshape(2, 3)
WORDS = np.array([b"a", b"bc"], dtype=object)
# What the bench sent before the plugins built these requests (its own hand encoder):
# PredictRequest(mlp, version 7, signature "sig", {"x": X}) and
# SeldonMessage(tags {model: cnn}, tftensor [[1, -2], [3, 4]] int64).
OLD_TFS_PREDICT = bytes.fromhex(
    "0a0e0a036d6c70120208071a03736967122b0a017812260801120812020802120208032218000000000000"
    "803f0000004000004040000080400000a040"
)
OLD_SELDON_MESSAGE = bytes.fromhex(
    "1210120e0a056d6f64656c12051a03636e6e1a30222e08091208120208021202080222200100000000000000"
    "feffffffffffffff03000000000000000400000000000000"
)


def registered(name: str) -> Protocol:
    return find_protocol(name, PluginHost().load())


def test_varint_matches_protobuf() -> None:
    # The kernel's varint writer (dl_inference.wire), as protobuf writes varints.
    from google.protobuf.internal import encoder

    for value in (0, 1, 127, 128, 300, 2**31, 2**63 - 1):
        expected = bytearray()
        encoder._VarintEncoder()(expected.extend, value, False)
        assert wire.encode_varint(value) == bytes(expected)
    assert wire.encode_varint(-1) == b"\xff" * 9 + b"\x01"  # 10 bytes, as protobuf's int64 -1


# -- V2 (the kernel's own protocol) ------------------------------------------------------------


def test_v2_bodies() -> None:
    from dl_inference._proto import kserve_v2_pb2 as pb

    x = np.arange(6, dtype=np.float16).reshape(2, 3)
    text = np.array([b"hi", b"there"], dtype=object)
    request = pb.ModelInferRequest.FromString(v2_grpc_body("m", "3", {"x": x, "t": text}))
    assert (request.model_name, request.model_version) == ("m", "3")
    assert [(i.name, i.datatype, list(i.shape)) for i in request.inputs] == [
        ("x", "FP16", [2, 3]),
        ("t", "BYTES", [2]),
    ]
    np.testing.assert_array_equal(np.frombuffer(request.raw_input_contents[0], "<f2"), x.ravel())
    assert request.raw_input_contents[1] == b"\x02\x00\x00\x00hi\x05\x00\x00\x00there"
    body, headers = v2_rest_body({"x": x})
    head = int(headers["Inference-Header-Content-Length"])
    assert body[head:] == x.tobytes()
    assert b'"binary_data_size": 12' in body[:head]


@needs_tritonclient
def test_v2_grpc_request_is_what_tritonclient_sends() -> None:
    from tritonclient.grpc import service_pb2 as triton

    built = V2Protocol().bench_request("mlp", {"x": X, "w": WORDS}, "grpc", version="2")
    assert built == BenchRequest("grpc", "/inference.GRPCInferenceService/ModelInfer", built.body)
    expected = triton.ModelInferRequest(model_name="mlp", model_version="2")
    expected.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    expected.inputs.add(name="w", datatype="BYTES", shape=[2])
    expected.raw_input_contents.extend([X.tobytes(), b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"])
    assert built.body == expected.SerializeToString()


def test_v2_rest_request() -> None:
    built = V2Protocol().bench_request("mlp", {"x": X}, "http", version="2")
    assert (built.transport, built.path) == ("http", "/v2/models/mlp/versions/2/infer")
    headers = dict(built.headers)
    assert headers["Content-Type"] == "application/octet-stream"
    head = int(headers["Inference-Header-Content-Length"])
    assert json.loads(built.body[:head])["inputs"][0]["name"] == "x"
    assert built.body[head:] == X.tobytes()
    assert V2Protocol().bench_request("mlp", {"x": X}, "http").path == "/v2/models/mlp/infer"
    with pytest.raises(ConfigError, match="v2 protocol takes no request options"):
        V2Protocol().bench_request("mlp", {"x": X}, "grpc", signature_name="s")


# -- TF Serving (dl-inference-tfserving) -------------------------------------------------------


@needs_tf_plugin
def test_tf_serving_predict_request() -> None:
    from dl_inference_tfserving._proto import tfs_pb2

    built = registered("tfserving").bench_request(
        "mlp", {"x": X, "w": WORDS}, "grpc", version="7", signature_name="sig"
    )
    assert (built.transport, built.path) == (
        "grpc",
        "/tensorflow.serving.PredictionService/Predict",
    )
    request = tfs_pb2.PredictRequest.FromString(built.body)
    assert request.model_spec.name == "mlp"
    assert request.model_spec.version.value == 7
    assert request.model_spec.signature_name == "sig"
    tensor = request.inputs["x"]
    assert tensor.dtype == tfs_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [2, 3]
    np.testing.assert_array_equal(np.frombuffer(tensor.tensor_content, "<f4").reshape(2, 3), X)
    assert request.inputs["w"].dtype == tfs_pb2.DT_STRING
    assert list(request.inputs["w"].string_val) == [b"a", b"bc"]
    # One input: the very bytes the bench's own encoder sent before.
    one = registered("tfserving").bench_request(
        "mlp", {"x": X}, "grpc", version="7", signature_name="sig"
    )
    assert one.body == OLD_TFS_PREDICT


@needs_tf_plugin
@needs_tf_serving_api
def test_tf_serving_request_is_what_tensorflow_serving_clients_send() -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    def expected(inputs: dict[str, np.ndarray]) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mlp"
        request.model_spec.version.value = 7
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        return request

    protocol = registered("tfserving")
    one = protocol.bench_request("mlp", {"x": X}, "grpc", version="7")
    assert one.body == expected({"x": X}).SerializeToString()
    # Several inputs: a map, whose entries protobuf may write in any order.
    two = protocol.bench_request("mlp", {"x": X, "w": WORDS}, "grpc", version="7")
    assert predict_pb2.PredictRequest.FromString(two.body) == expected({"x": X, "w": WORDS})


@needs_tf_plugin
def test_tf_serving_rest_request() -> None:
    protocol = registered("tfserving")
    raw = np.array([b"ok", b"\xff\x00"], dtype=object)
    built = protocol.bench_request("mlp", {"x": X, "w": raw}, "http", version="3")
    assert (built.transport, built.path) == ("http", "/v1/models/mlp/versions/3:predict")
    assert dict(built.headers) == {"Content-Type": "application/json"}
    body = json.loads(built.body)
    assert body["inputs"]["x"] == X.tolist()
    # Bytes that are not text travel as TF Serving's {"b64": ...} objects.
    assert body["inputs"]["w"] == ["ok", {"b64": base64.b64encode(b"\xff\x00").decode()}]
    assert "signature_name" not in body
    signed = protocol.bench_request("mlp", {"x": X}, "http", signature_name="serving_default")
    assert signed.path == "/v1/models/mlp:predict"
    assert json.loads(signed.body)["signature_name"] == "serving_default"


@needs_tf_plugin
@pytest.mark.parametrize(
    ("inputs", "version", "options", "message"),
    [
        ({"x": X}, "", {"signatur": "s"}, "takes signature_name"),
        ({"x": X}, "latest", {}, "TF Serving names versions by number"),
        ({"x": X}, str(2**63), {}, "TF Serving names versions by number"),
        ({"x": np.zeros(2, np.complex64)}, "", {}, "cannot carry these inputs"),
    ],
)
def test_tf_serving_refusals(
    inputs: dict[str, np.ndarray], version: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        registered("tfserving").bench_request("m", inputs, "grpc", version=version, **options)


# -- Seldon (dl-inference-seldon) --------------------------------------------------------------


@needs_seldon_plugin
def test_seldon_message() -> None:
    from dl_inference_seldon._proto import seldon_pb2
    from dl_inference_tfserving import codec

    x = np.array([[1, -2], [3, 4]], dtype=np.int64)
    built = registered("seldon").bench_request("cnn", {"x": x}, "grpc", version="2")
    assert (built.transport, built.path) == ("grpc", "/seldon.protos.Seldon/Predict")
    assert built.headers == (("model", "cnn"),)
    message = seldon_pb2.SeldonMessage.FromString(built.body)
    assert message.meta.tags["model"].string_value == "cnn"
    assert message.meta.tags["model_version"].string_value == "2"
    tensor = message.data.tftensor
    assert tensor.dtype == seldon_pb2.DT_INT64
    assert [d.size for d in tensor.tensor_shape.dim] == [2, 2]
    np.testing.assert_array_equal(np.frombuffer(tensor.tensor_content, "<i8").reshape(2, 2), x)
    np.testing.assert_array_equal(codec.to_numpy(tensor), x)
    # Without a version: the very bytes the bench's own encoder sent before.
    assert registered("seldon").bench_request("cnn", {"x": x}, "grpc").body == OLD_SELDON_MESSAGE


@needs_seldon_plugin
def test_seldon_rest_request() -> None:
    built = registered("seldon").bench_request("cnn", {"x": X}, "http")
    assert (built.transport, built.path) == ("http", "/api/v1.0/predictions")
    assert dict(built.headers) == {"Content-Type": "application/json", "model": "cnn"}
    assert json.loads(built.body) == {
        "data": {"ndarray": X.tolist()},
        "meta": {"tags": {"model": "cnn"}},
    }


@needs_seldon_plugin
def test_seldon_refusals() -> None:
    protocol = registered("seldon")
    with pytest.raises(ConfigError, match="one tensor per request; this model takes 2 inputs"):
        protocol.bench_request("m", {"a": X, "b": X}, "grpc")
    with pytest.raises(ConfigError, match="seldon protocol takes no request options"):
        protocol.bench_request("m", {"a": X}, "http", output="y")


# -- the bench asks the registered protocol ----------------------------------------------------


@pytest.mark.parametrize(("name", "folder"), [("tfserving", "tfserving"), ("seldon", "seldon")])
def test_a_missing_protocol_plugin_names_what_to_install(name: str, folder: str) -> None:
    bare = PluginHost(entry_points=[]).load()  # the kernel alone: v2 only
    with pytest.raises(ConfigError) as caught:
        find_protocol(name, bare)
    message = str(caught.value)
    assert f"no installed plugin provides protocol {name!r} (available: v2)" in message
    # seldon's command names ./plugins/tfserving first: it needs that plugin too
    assert re.search(rf"pip install (\./plugins/\w+ )*\./plugins/{folder} from the root", message)
    with pytest.raises(ConfigError, match="install a plugin that registers protocol 'nope'"):
        find_protocol("nope", bare)


def test_missing_plugin_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dl_inference.cli import main
    from dl_inference.kernel import plugins

    monkeypatch.setattr(plugins.md, "entry_points", lambda group: [])
    argv = ["bench", "--url", "grpc://127.0.0.1:1", "--model", "m", "--protocol", "seldon"]
    assert main(argv) == 2  # before any connection is tried
    assert "pip install ./plugins/tfserving ./plugins/seldon " in capsys.readouterr().err


class Quiet(Protocol):
    """A protocol with no benchmark request (the base class's answer)."""

    name = "quiet"


class GrpcOnly(Protocol):
    name = "grpc_only"

    def bench_request(self, model, inputs, transport, *, version="", **options):  # type: ignore[no-untyped-def]
        return BenchRequest("grpc", "/x.Y/Z", b"")


def test_protocols_without_a_request() -> None:
    tensors = {"x": X}
    with pytest.raises(ConfigError, match="no benchmark request over grpc; try an http:// URL"):
        build_request(Quiet(), parse_url("grpc://127.0.0.1:1"), "m", "", tensors, {})
    with pytest.raises(ConfigError, match="built a grpc request for a http URL"):
        build_request(GrpcOnly(), parse_url("http://127.0.0.1:1"), "m", "", tensors, {})
    built = build_request(GrpcOnly(), parse_url("grpc://127.0.0.1:1"), "m", "", tensors, {})
    assert built.path == "/x.Y/Z"


def test_input_specs() -> None:
    spec = parse_input_spec("img:fp32:2,3,64,64")
    assert (spec.name, spec.datatype, spec.shape) == ("img", "FP32", (2, 3, 64, 64))
    assert concrete_shape((-1, 3, -1), 8) == (8, 3, 1)
    for bad, message in [
        ("x:FP32", "write NAME:DATATYPE:SHAPE"),
        ("x:FP32:a,b", "comma-separated integers"),
        ("x:FP32:-1,4", "no -1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_input_spec(bad)
