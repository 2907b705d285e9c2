"""The hand-encoded request bodies parse as the real messages, field for field."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from dl_inference.bench import wire
from dl_inference.bench.clients import v2_grpc_body, v2_rest_body
from dl_inference.bench.inputs import concrete_shape, parse_input_spec
from dl_inference.spi.errors import ConfigError

needs_tf_plugin = pytest.mark.skipif(
    importlib.util.find_spec("dl_inference_tfserving") is None,
    reason="dl-inference-tfserving (TF Serving messages) is not installed",
)
needs_seldon_plugin = pytest.mark.skipif(
    importlib.util.find_spec("dl_inference_seldon") is None,
    reason="dl-inference-seldon (Seldon messages) is not installed",
)


def test_varint_matches_protobuf() -> None:
    from google.protobuf.internal import encoder

    for value in (0, 1, 127, 128, 300, 2**31, 2**63 - 1):
        expected = bytearray()
        encoder._VarintEncoder()(expected.extend, value, False)
        assert wire.varint(value) == bytes(expected)
    assert wire.varint(-1) == b"\xff" * 9 + b"\x01"  # 10 bytes, as protobuf writes int64 -1


@needs_tf_plugin
def test_tf_serving_predict_request() -> None:
    from dl_inference_tfserving._proto import tfs_pb2

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    words = np.array([b"a", b"bc"], dtype=object)
    body = wire.tfs_predict_request("mlp", {"x": x, "w": words}, version="7", signature="sig")
    request = tfs_pb2.PredictRequest.FromString(body)
    assert request.model_spec.name == "mlp"
    assert request.model_spec.version.value == 7
    assert request.model_spec.signature_name == "sig"
    tensor = request.inputs["x"]
    assert tensor.dtype == tfs_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [3, 4]
    np.testing.assert_array_equal(np.frombuffer(tensor.tensor_content, "<f4").reshape(3, 4), x)
    assert request.inputs["w"].dtype == tfs_pb2.DT_STRING
    assert list(request.inputs["w"].string_val) == [b"a", b"bc"]


@needs_seldon_plugin
def test_seldon_message() -> None:
    from dl_inference_seldon._proto import seldon_pb2

    x = np.array([[1, -2], [3, 4]], dtype=np.int64)
    message = seldon_pb2.SeldonMessage.FromString(
        wire.seldon_message("cnn", x, tags=[("model_version", "2")])
    )
    assert message.meta.tags["model"].string_value == "cnn"
    assert message.meta.tags["model_version"].string_value == "2"
    tensor = message.data.tftensor
    assert tensor.dtype == seldon_pb2.DT_INT64
    assert [d.size for d in tensor.tensor_shape.dim] == [2, 2]
    np.testing.assert_array_equal(np.frombuffer(tensor.tensor_content, "<i8").reshape(2, 2), x)


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
