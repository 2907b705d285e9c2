"""Predict answers in TF Serving's typed fields by default; ``tensor_content`` on request.

TF Serving writes each output with ``Tensor::AsProtoField`` (its
``predict_response_tensor_serialization_option`` is ``AS_PROTO_FIELD``): the seed's Java
demo clients read ``getFloatValList()`` / ``getIntValList()`` and find nothing in
``tensor_content`` answers. Checked here as those clients read them (the typed field of
every dtype) and as ``tf.make_ndarray`` reads them, on ``Predict`` and the seed's
``Predict``, against real servers in subprocesses with TF Serving's own client stubs;
``plugin_settings.tfserving`` turns on ``tensor_content`` per model and server-wide.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from _tfs_shared import SEED_PREDICT
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dl_inference import ConfigError
from dl_inference.testing import ServerProcess, write_python_model
from dl_inference_tfserving import codec
from dl_inference_tfserving.settings import parse_settings

# Output name -> (V2 datatype, values with each dtype's extremes, the typed field TF fills).
OUTPUTS: dict[str, tuple[str, np.ndarray, str]] = {
    "f32": ("FP32", np.array([[1.5, -2.25], [3.4e38, np.inf]], np.float32), "float_val"),
    "f64": ("FP64", np.array([[0.1, -1e300], [np.pi, -np.inf]], np.float64), "double_val"),
    "f16": ("FP16", np.array([[1.5, -2.0], [65504, 6e-8]], np.float16), "half_val"),
    "i8": ("INT8", np.array([[-128, 127], [0, -1]], np.int8), "int_val"),
    "i16": ("INT16", np.array([[-32768, 32767], [0, -1]], np.int16), "int_val"),
    "i32": ("INT32", np.array([[-(2**31), 2**31 - 1], [0, -1]], np.int32), "int_val"),
    "i64": ("INT64", np.array([[-(2**63), 2**63 - 1], [0, -1]], np.int64), "int64_val"),
    "u8": ("UINT8", np.array([[0, 255], [128, 1]], np.uint8), "int_val"),
    "u16": ("UINT16", np.array([[0, 65535], [32768, 1]], np.uint16), "int_val"),
    "u32": ("UINT32", np.array([[0, 2**32 - 1], [2**31, 1]], np.uint32), "uint32_val"),
    "u64": ("UINT64", np.array([[0, 2**64 - 1], [2**63, 1]], np.uint64), "uint64_val"),
    "flag": ("BOOL", np.array([[True, False], [False, True]]), "bool_val"),
    "text": ("BYTES", np.array([[b"a", b"\xff\x00"], [b"", "né".encode()]], object), "string_val"),
}
TYPED = ["float_val", "double_val", "half_val", "int_val", "int64_val", "uint32_val"]
TYPED += ["uint64_val", "bool_val", "string_val"]


def java_view(proto: Any, field: str) -> list[Any]:
    """What a Java client's ``get<Field>List()`` returns: the typed field's values."""
    return list(getattr(proto, field))


def expected_values(array: np.ndarray, field: str) -> list[Any]:
    # half_val holds float16's bit patterns (as TensorFlow writes them), not the numbers.
    return array.view(np.uint16).ravel().tolist() if field == "half_val" else array.ravel().tolist()


def assert_typed(proto: Any, name: str) -> None:
    _, array, field = OUTPUTS[name]
    assert java_view(proto, field) == expected_values(array, field), name
    assert proto.tensor_content == b"", name
    assert [f for f in TYPED if f != field and java_view(proto, f)] == [], name
    assert_reads_back(proto, array)


def assert_content(proto: Any, name: str) -> None:
    datatype, array, _ = OUTPUTS[name]
    if datatype == "BYTES":  # strings have no tensor_content form in TensorFlow either
        return assert_typed(proto, name)
    assert proto.tensor_content == array.astype(array.dtype.newbyteorder("<")).tobytes(), name
    assert [f for f in TYPED if java_view(proto, f)] == [], name
    assert_reads_back(proto, array)


def assert_reads_back(proto: Any, array: np.ndarray) -> None:
    """``tf.make_ndarray`` (clients decoding with TensorFlow) gives the array back."""
    official = tf.make_tensor_proto(0)
    official.ParseFromString(proto.SerializeToString())
    back = tf.make_ndarray(official)
    assert back.shape == array.shape
    if array.dtype == object:
        assert back.tolist() == array.tolist()
    else:
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)


# -- the codec alone ------------------------------------------------------------------------


@pytest.mark.parametrize("name", OUTPUTS)
def test_from_numpy_fills_the_typed_field_of_every_dtype(name: str) -> None:
    assert_typed(codec.from_numpy(OUTPUTS[name][1]), name)


@pytest.mark.parametrize("name", OUTPUTS)
def test_from_numpy_writes_tensor_content_on_request(name: str) -> None:
    assert_content(codec.from_numpy(OUTPUTS[name][1], tensor_content=True), name)


def test_from_numpy_handles_scalars_empty_and_strided_arrays() -> None:
    scalar = codec.from_numpy(np.float32(2.5))
    assert list(scalar.float_val) == [2.5] and not scalar.tensor_shape.dim
    empty = codec.from_numpy(np.zeros((0, 3), np.int64))
    assert list(empty.int64_val) == [] and [d.size for d in empty.tensor_shape.dim] == [0, 3]
    big_endian = np.arange(6, dtype=">f8").reshape(2, 3)
    assert list(codec.from_numpy(big_endian).double_val) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    columns = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]  # not contiguous
    assert list(codec.from_numpy(columns).float_val) == columns.ravel().tolist()
    flags = np.array([True, False, True])[::2]
    assert list(codec.from_numpy(flags).bool_val) == [True, True]


def test_settings_resolve_per_model_over_server_wide() -> None:
    default = parse_settings({})
    assert not default.tensor_content("any")
    per_model = parse_settings(
        {"models": {"raw": {"predict_response_tensor_serialization_option": "AS_PROTO_CONTENT"}}}
    )
    assert per_model.tensor_content("raw") and not per_model.tensor_content("other")
    server_wide = parse_settings(
        {
            "predict_response_tensor_serialization_option": "AS_PROTO_CONTENT",
            "models": {
                "typed": {"predict_response_tensor_serialization_option": "AS_PROTO_FIELD"},
                "inherits": {},
            },
        }
    )
    assert server_wide.tensor_content("other") and server_wide.tensor_content("inherits")
    assert not server_wide.tensor_content("typed")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"predict_response_tensor_serialization_option": "AS_PROTO_CONTNT"},
            "plugin_settings.tfserving.predict_response_tensor_serialization_option: Input "
            "should be 'AS_PROTO_FIELD' or 'AS_PROTO_CONTENT' (got 'AS_PROTO_CONTNT')",
        ),
        ({"modles": {}}, "plugin_settings.tfserving.modles: unknown key (did you mean models?)"),
        (
            {"models": {"m": {"predict_response_tensor_serialisation_option": "AS_PROTO_FIELD"}}},
            "plugin_settings.tfserving.models.m.predict_response_tensor_serialisation_option: "
            "unknown key (did you mean predict_response_tensor_serialization_option?)",
        ),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(settings)
    assert str(caught.value) == message


# -- real servers -----------------------------------------------------------------------------

MODEL_CODE = """
import numpy as np
from dl_inference import PythonModel

inf = float("inf")  # as repr() writes it
OUTPUTS = {outputs}

class AllTypes(PythonModel):
    def predict(self, inputs):
        return {{name: np.array(values, dtype=dtype) for name, (values, dtype) in OUTPUTS.items()}}
"""


def write_all_types(repo: Path, name: str) -> None:
    """A python model answering every output of OUTPUTS, whatever its input."""
    outputs = {
        key: (array.tolist(), "object" if array.dtype == object else array.dtype.str)
        for key, (_, array, _) in OUTPUTS.items()
    }
    config = {
        "backend": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
        "outputs": [
            {"name": key, "datatype": datatype, "shape": [2, 2]}
            for key, (datatype, _, _) in OUTPUTS.items()
        ],
    }
    write_python_model(repo, name, MODEL_CODE.format(outputs=repr(outputs)), json.dumps(config))


def serve(root: Path, settings: dict[str, Any]) -> ServerProcess:
    repo = root / "models"
    for name in ("typed", "raw"):
        write_all_types(repo, name)
    document = {
        "model_repository": str(repo),
        "plugins": {"allow": ["tfserving"]},
        "plugin_settings": {"tfserving": settings},
    }
    config = root / "server.yaml"
    config.write_text(json.dumps(document))  # JSON is YAML
    return ServerProcess(["-c", str(config)])


def as_content(option: str) -> dict[str, str]:
    return {"predict_response_tensor_serialization_option": option}


@pytest.fixture(scope="module")
def per_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """Server-wide default (typed fields); ``raw`` opts into tensor_content."""
    root = tmp_path_factory.mktemp("tfs_per_model")
    settings = {"models": {"raw": as_content("AS_PROTO_CONTENT")}}
    with serve(root, settings) as server, grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


@pytest.fixture(scope="module")
def server_wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """tensor_content server-wide; ``typed`` opts back into TF Serving's typed fields."""
    root = tmp_path_factory.mktemp("tfs_server_wide")
    settings = {**as_content("AS_PROTO_CONTENT"), "models": {"typed": as_content("AS_PROTO_FIELD")}}
    with serve(root, settings) as server, grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


def request(model: str) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = model
    message.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(2, np.float32)))
    return message


def predict(channel: grpc.Channel, model: str) -> predict_pb2.PredictResponse:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        request(model), timeout=60
    )


def seed_predict(channel: grpc.Channel, model: str) -> predict_pb2.PredictResponse:
    """The seed's ``WpaiDLPredictOnlineService/Predict``, named ``<model>-<taskid>``."""
    call = channel.unary_unary(
        SEED_PREDICT,
        request_serializer=predict_pb2.PredictRequest.SerializeToString,
        response_deserializer=predict_pb2.PredictResponse.FromString,
    )
    return call(request(f"{model}-42"), timeout=60)


@pytest.mark.parametrize("call", [predict, seed_predict], ids=["Predict", "seed Predict"])
def test_predict_answers_typed_fields_by_default(per_model: grpc.Channel, call: Any) -> None:
    reply = call(per_model, "typed")
    assert sorted(reply.outputs) == sorted(OUTPUTS)
    for name, proto in reply.outputs.items():
        assert_typed(proto, name)
    assert list(reply.outputs["i32"].int_val) == [-(2**31), 2**31 - 1, 0, -1]


@pytest.mark.parametrize("call", [predict, seed_predict], ids=["Predict", "seed Predict"])
def test_a_model_opts_into_tensor_content(per_model: grpc.Channel, call: Any) -> None:
    reply = call(per_model, "raw")
    for name, proto in reply.outputs.items():
        assert_content(proto, name)


@pytest.mark.parametrize("call", [predict, seed_predict], ids=["Predict", "seed Predict"])
def test_tensor_content_server_wide_and_a_model_back_to_typed(
    server_wide: grpc.Channel, call: Any
) -> None:
    for name, proto in call(server_wide, "raw").outputs.items():
        assert_content(proto, name)
    for name, proto in call(server_wide, "typed").outputs.items():
        assert_typed(proto, name)


def test_a_bad_setting_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    document = {
        "plugins": {"allow": ["tfserving"]},
        "plugin_settings": {"tfserving": {"models": {"m": as_content("tensor_content")}}},
    }
    config.write_text(json.dumps(document))
    done = subprocess.run(
        [sys.executable, "-m", "dl_inference", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "plugin_settings.tfserving.models.m.predict_response_tensor_serialization_option: "
        "Input should be 'AS_PROTO_FIELD' or 'AS_PROTO_CONTENT' (got 'tensor_content')"
    ) in done.stderr
