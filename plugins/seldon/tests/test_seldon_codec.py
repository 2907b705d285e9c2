"""SeldonMessage <-> named arrays, and wire compatibility with the messages under Seldon's
real package names. The routing readers have their own file, test_seldon_routing.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _seldon_real import real_messages
from google.protobuf import json_format, struct_pb2

from dl_inference import MAX_JSON_DEPTH, InvalidInput, TensorSpec
from dl_inference_seldon._proto import seldon_pb2 as pb
from dl_inference_seldon.codec import (
    data_kind,
    decode_inputs,
    encode_reply,
    message_from_json,
    message_to_json,
    rest_reply,
    value_to_python,
)
from dl_inference_seldon.protocol import standard_file
from dl_inference_tfserving.codec import from_numpy, to_numpy

FP32_IN = [TensorSpec("x", "FP32", (-1, 3))]


def tensor_message(values: list[float], shape: list[int]) -> pb.SeldonMessage:
    message = pb.SeldonMessage()
    message.data.tensor.shape.extend(shape)
    message.data.tensor.values.extend(values)
    return message


# -- requests ------------------------------------------------------------------------------


def test_tensor_is_cast_to_the_declared_datatype_and_named_after_the_input():
    message = tensor_message([1, 2, 3, 4, 5, 6], [2, 3])
    inputs = decode_inputs(message, data_kind(message), FP32_IN)
    assert list(inputs) == ["x"]
    assert inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(inputs["x"], np.arange(1, 7, dtype=np.float32).reshape(2, 3))


def test_undeclared_inputs_get_a_default_name_and_keep_doubles():
    message = tensor_message([0.5, 1.5], [2])
    inputs = decode_inputs(message, "tensor", None)
    assert list(inputs) == ["input__0"] and inputs["input__0"].dtype == np.float64


def test_tensor_shape_and_values_must_agree():
    with pytest.raises(
        InvalidInput, match=r"tensor.values holds 3 values but FP64 shape \[2, 2\] needs 4"
    ):
        decode_inputs(tensor_message([1, 2, 3], [2, 2]), "tensor", FP32_IN)


def test_ndarray_numbers_strings_and_ragged_rows():
    message = pb.SeldonMessage()
    message.data.ndarray.extend([[1, 2], [3, 4]])
    inputs = decode_inputs(message, data_kind(message), [TensorSpec("ids", "INT64", (-1, 2))])
    assert inputs["ids"].dtype == np.int64 and inputs["ids"].tolist() == [[1, 2], [3, 4]]

    words = pb.SeldonMessage()
    words.data.ndarray.extend(["héllo", "world"])
    assert decode_inputs(words, "ndarray", None)["input__0"].tolist() == [
        "héllo".encode(),
        b"world",
    ]

    ragged = pb.SeldonMessage()
    ragged.data.ndarray.extend([[1, 2], [3]])
    with pytest.raises(InvalidInput, match="ragged"):
        decode_inputs(ragged, "ndarray", None)


def test_integer_inputs_refuse_fractions():
    message = pb.SeldonMessage()
    message.data.ndarray.extend([[1.5, 2]])
    with pytest.raises(
        InvalidInput, match=r"data\.ndarray holds the non-integer number 1\.5, but INT64 takes"
    ):
        decode_inputs(message, "ndarray", [TensorSpec("ids", "INT64", (-1, 2))])


def test_tftensor_content_and_typed_values():
    """A tftensor is TF's TensorProto: the tfserving plugin's codec reads Seldon's copy."""
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    message = pb.SeldonMessage()
    from_numpy(array, message.data.tftensor)
    assert message.data.tftensor.dtype == pb.DT_FLOAT
    decoded = decode_inputs(message, data_kind(message), FP32_IN)["x"]
    np.testing.assert_array_equal(decoded, array)

    typed = pb.TensorProto(dtype=pb.DT_INT64)
    typed.tensor_shape.dim.add(size=3)
    typed.int64_val.extend([7, 8, 9])
    assert to_numpy(typed, "t").tolist() == [7, 8, 9]

    filled = pb.TensorProto(dtype=pb.DT_FLOAT)
    filled.tensor_shape.dim.add(size=4)
    filled.float_val.append(2.5)  # TensorFlow's rule: one value fills the tensor
    assert to_numpy(filled, "t", fill_limit_bytes=16).tolist() == [2.5] * 4

    half = pb.TensorProto(dtype=pb.DT_HALF)
    half.tensor_shape.dim.add(size=2)
    half.half_val.extend(np.array([1.5, -2.0], np.float16).view(np.uint16).tolist())
    assert to_numpy(half, "t").tolist() == [1.5, -2.0]

    short = pb.TensorProto(dtype=pb.DT_FLOAT, tensor_content=b"\x00" * 4)
    short.tensor_shape.dim.add(size=2)
    with pytest.raises(InvalidInput, match="holds 4 bytes but FP32 shape \\[2\\] needs 8 bytes"):
        to_numpy(short, "t")

    with pytest.raises(InvalidInput, match="DT_COMPLEX64 is not supported"):
        to_numpy(pb.TensorProto(dtype=pb.DT_COMPLEX64), "t")


def test_bin_and_str_data_become_one_bytes_element_shaped_like_the_input():
    message = pb.SeldonMessage(binData=b"\x89PNG...")
    inputs = decode_inputs(message, data_kind(message), [TensorSpec("image", "BYTES", (-1, 1))])
    assert inputs["image"].shape == (1, 1) and inputs["image"][0, 0] == b"\x89PNG..."
    text = pb.SeldonMessage(strData="bonjour")
    assert decode_inputs(text, data_kind(text), None)["input__0"].tolist() == [b"bonjour"]


def test_json_object_maps_several_inputs():
    message = pb.SeldonMessage()
    json_format.ParseDict({"a": [[1, 2]], "b": [3]}, message.jsonData)
    specs = [TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "INT32", (-1,))]
    inputs = decode_inputs(message, data_kind(message), specs)
    assert inputs["a"].dtype == np.float32 and inputs["b"].dtype == np.int32
    assert inputs["b"].tolist() == [3]
    tensor = tensor_message([1], [1])
    with pytest.raises(InvalidInput, match=r"takes 2 inputs \(a, b\).*jsonData as an object"):
        decode_inputs(tensor, "tensor", specs)


def test_messages_without_usable_data_are_refused():
    with pytest.raises(InvalidInput, match="carries no data"):
        data_kind(pb.SeldonMessage())
    empty = pb.SeldonMessage()
    empty.data.names.append("a")
    with pytest.raises(InvalidInput, match="holds no tensor, ndarray or tftensor"):
        data_kind(empty)
    custom = pb.SeldonMessage()
    custom.customData.type_url = "type.googleapis.com/x"
    with pytest.raises(InvalidInput, match="customData"):
        data_kind(custom)


def test_values_keep_nan_and_infinity_and_refuse_deep_nesting():
    value = struct_pb2.Value()
    json_format.ParseDict([math.inf, {"a": -math.inf}, "s", None, True], value)
    value.list_value.values.add().number_value = math.nan
    plain = value_to_python(value)
    assert plain[:5] == [math.inf, {"a": -math.inf}, "s", None, True] and math.isnan(plain[5])

    deep = struct_pb2.Value(number_value=1)
    for _ in range(MAX_JSON_DEPTH):
        outer = struct_pb2.Value()
        outer.list_value.values.add().CopyFrom(deep)
        deep = outer
    assert np.asarray(value_to_python(deep)).ndim == MAX_JSON_DEPTH
    too_deep = struct_pb2.Value()
    too_deep.struct_value.fields["a"].CopyFrom(deep)
    with pytest.raises(InvalidInput, match=f"jsonData nests .* more than {MAX_JSON_DEPTH} levels"):
        value_to_python(too_deep, "jsonData")


def test_tftensor_short_value_lists_fill_only_within_the_limit():
    short = pb.TensorProto(dtype=pb.DT_INT32)
    short.tensor_shape.dim.add(size=4)
    short.int_val.extend([1, 2])
    assert to_numpy(short, "t", fill_limit_bytes=16).tolist() == [1, 2, 2, 2]
    with pytest.raises(InvalidInput, match="would take 16 bytes, over the 15-byte limit"):
        to_numpy(short, "t", fill_limit_bytes=15)
    with pytest.raises(InvalidInput, match="int_val holds 2 values but INT32 shape"):
        to_numpy(short, "t")


def test_json_form_reads_and_writes_nan_and_infinity_as_seldons_wrapper_does():
    document = json.loads('{"data": {"tensor": {"shape": [2], "values": [NaN, -Infinity]}}}')
    message = message_from_json(document)
    assert math.isnan(message.data.tensor.values[0]) and message.data.tensor.values[1] == -math.inf

    reply = pb.SeldonMessage()
    reply.meta.puid = "p"
    reply.meta.tags["t"].number_value = math.inf
    encode_reply("ndarray", {"y": np.array([math.nan, 1.0], np.float32)}, reply)
    text = json.dumps(message_to_json(reply), separators=(",", ":"))
    expected = '{"meta":{"puid":"p","tags":{"t":Infinity}},"data":{"names":[],"ndarray":[NaN,1.0]}}'
    assert text == expected
    with pytest.raises(InvalidInput, match="it is a JSON list, not an object"):
        message_from_json([1])


# -- replies -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tensor", "ndarray", "tftensor"])
def test_numbers_answer_a_data_request_in_its_kind(kind):
    array = np.array([[0.25, -1.0], [3.0, 4.5]], np.float32)
    reply = pb.SeldonMessage()
    encode_reply(kind, {"y": array, "z": array * 2}, reply)
    assert reply.data.WhichOneof("data_oneof") == kind
    assert list(reply.data.names) == ["t:0", "t:1"]  # the wrapper's names for the columns
    back = decode_inputs(reply, kind, None)["input__0"]
    np.testing.assert_array_equal(back, array)  # the first output only


def one_string(value: bytes) -> np.ndarray:
    out = np.empty(1, dtype=object)
    out[0] = value
    return out


# (request kind, output) -> (reply oneof, DefaultData oneof or None): the wrapper's choices.
REPLY_SHAPES = [
    ("binData", np.array([1, 2], np.int64), "data", "tensor"),
    ("strData", np.array([[0.5, 0.5]]), "data", "tensor"),
    ("jsonData", np.array([1.5], np.float32), "data", "tensor"),
    ("ndarray", np.array([1, 2], np.uint8), "data", "ndarray"),
    ("tensor", np.array([True, False]), "data", "ndarray"),  # booleans are no np.number
    ("tftensor", np.array(["a", "b"], dtype=object), "data", "ndarray"),
    ("binData", np.array([b"a", b"b"], dtype=object), "data", "ndarray"),
    ("jsonData", one_string(b"text"), "strData", None),
    ("binData", one_string(b"\x00\xffraw"), "binData", None),
    ("strData", one_string(b"ok"), "strData", None),
    ("strData", one_string(b"\xff"), "binData", None),  # not UTF-8: bytes as they are
]


@pytest.mark.parametrize(("kind", "array", "which", "inner"), REPLY_SHAPES)
def test_reply_shapes_are_the_wrappers(kind, array, which, inner):
    reply = pb.SeldonMessage()
    encode_reply(kind, {"y": array}, reply)
    assert reply.WhichOneof("data_oneof") == which
    if inner is not None:
        assert reply.data.WhichOneof("data_oneof") == inner
        assert list(reply.data.names) == ([f"t:{i}" for i in range(2)] if array.ndim > 1 else [])


def test_bytes_and_json_replies():
    reply = pb.SeldonMessage()
    encode_reply("binData", {"y": one_string(b"\x00\xffraw")}, reply)
    assert reply.binData == b"\x00\xffraw"

    reply = pb.SeldonMessage()
    encode_reply("strData", {"y": one_string(b"ok")}, reply)
    assert reply.strData == "ok"

    # Numbers for a binData request: Seldon's wrapper answers with data.tensor.
    reply = pb.SeldonMessage()
    encode_reply("binData", {"y": np.array([[0.5, 0.25]])}, reply)
    assert (list(reply.data.tensor.shape), list(reply.data.tensor.values)) == ([1, 2], [0.5, 0.25])

    reply = pb.SeldonMessage()
    text = np.array([b"ok"], dtype=object)
    encode_reply("jsonData", {"y": np.array([1, 2]), "z": text}, reply, json_object=True)
    assert json_format.MessageToDict(reply.jsonData) == {"y": [1, 2], "z": ["ok"]}


@pytest.mark.parametrize(
    ("kind", "field", "expected"),
    [
        ("tensor", "tensor", {"shape": [2, 1], "values": [1, -2]}),
        ("ndarray", "ndarray", [[1], [-2]]),
        ("strData", "tensor", {"shape": [2, 1], "values": [1, -2]}),
    ],
)
def test_rest_replies_keep_integers_and_the_tags_as_sent(kind, field, expected):
    ints = np.array([[1], [-2]], np.int64)
    reply = pb.SeldonMessage()
    reply.meta.tags["taskId"].number_value = 69
    encode_reply(kind, {"y": ints, "z": ints * 0.5}, reply)
    document = rest_reply(reply, {"y": ints, "z": ints * 0.5}, {"meta": {"tags": {"taskId": 69}}})
    text = json.dumps(document, separators=(",", ":"))
    assert text == json.dumps(
        {"meta": {"tags": {"taskId": 69}}, "data": {"names": ["t:0"], field: expected}},
        separators=(",", ":"),
    )
    # Floats stay floats; "meta": null is no meta.
    floats = {"y": np.array([1.0, 2.0])}
    reply = pb.SeldonMessage()
    encode_reply(kind, floats, reply)
    values = rest_reply(reply, floats, {"meta": None})["data"][field]
    assert (values["values"] if field == "tensor" else values) == [1.0, 2.0]


def test_rest_json_data_replies_keep_integer_outputs():
    outputs = {"ids": np.array([3, 4], np.uint8), "score": np.array([0.5], np.float32)}
    reply = pb.SeldonMessage()
    encode_reply("jsonData", outputs, reply, json_object=True)
    document = rest_reply(reply, outputs, {})
    assert document["jsonData"] == {"ids": [3, 4], "score": [0.5]}
    assert [type(v) for v in document["jsonData"]["ids"]] == [int, int]


# -- wire compatibility with the real names --------------------------------------------------


def test_our_bytes_equal_seldons_for_every_data_kind():
    real = real_messages()["seldon.protos.SeldonMessage"]

    def pair(fill):
        ours, theirs = pb.SeldonMessage(), real()
        fill(ours)
        fill(theirs)
        return ours, theirs

    def tensor(m):
        m.meta.puid = "req-1"
        m.meta.tags["model"].string_value = "mnist"
        m.meta.tags["scale"].number_value = 2
        m.data.names.extend(["a", "b"])
        m.data.tensor.shape.extend([1, 2])
        m.data.tensor.values.extend([0.5, -1])

    def ndarray(m):
        m.data.ndarray.values.add().list_value.values.add().number_value = 3

    def tftensor(m):
        m.data.tftensor.dtype = 1
        m.data.tftensor.tensor_shape.dim.add().size = 2
        m.data.tftensor.tensor_content = np.array([1, 2], "<f4").tobytes()

    def bin_data(m):
        m.binData = b"\x89PNG"

    def str_data(m):
        m.strData = "text"

    def json_data(m):
        m.jsonData.struct_value.fields["a"].number_value = 1

    def status(m):
        m.status.code = 400
        m.status.info = "bad"
        m.status.reason = "MICROSERVICE_BAD_DATA"
        m.status.status = 1

    for fill in (tensor, ndarray, tftensor, bin_data, str_data, json_data, status):
        ours, theirs = pair(fill)
        wire = theirs.SerializeToString(deterministic=True)
        assert ours.SerializeToString(deterministic=True) == wire, fill.__name__
        assert pb.SeldonMessage.FromString(wire) == ours
        assert real.FromString(ours.SerializeToString()) == theirs


def test_reflection_file_has_the_standard_names():
    file = standard_file()
    assert file.package == "seldon.protos"
    assert [s.name for s in file.service] == ["Model", "Seldon"]
    method = file.service[0].method[0]
    assert (method.name, method.input_type) == ("Predict", ".seldon.protos.SeldonMessage")
    fields = {f.name: f for m in file.message_type if m.name == "DefaultData" for f in m.field}
    assert fields["tftensor"].type_name == ".seldon.protos.TensorProto"
