"""V2 codec units: raw/typed/JSON tensors, parameters, deadline and metadata, reflection."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pool, message_factory
from tritonclient.grpc import service_pb2 as triton
from tritonclient.utils import serialize_byte_tensor

from dl_inference import InferResponse, InvalidInput, to_numpy_dtype
from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.builtin.v2 import V2Protocol
from dl_inference.builtin.v2.binary import deserialize_bytes, serialize_bytes
from dl_inference.builtin.v2.codec import (
    array_to_json,
    array_to_raw,
    contents_to_array,
    decode_infer_request,
    encode_infer_response,
    json_to_array,
    params_from_proto,
    params_to_proto,
    raw_to_array,
    serialize_infer_response,
    serialize_with_raw,
)
from dl_inference.spi.call_path import grpc_deadline as request_deadline
from dl_inference.spi.call_path import grpc_metadata as request_metadata
from dl_inference.spi.errors import BackendError

NUMERIC = {
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-32768, 1, 32767]], np.int16),
    "INT32": np.array([[-(2**31), 2, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 3, 2**63 - 1]], np.int64),
    "UINT8": np.array([[0, 1, 255]], np.uint8),
    "UINT16": np.array([[0, 1, 65535]], np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1]], np.uint64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], np.float16),
    "FP32": np.array([[-1.25, 3.5e-8, 3.4e38]], np.float32),
    "FP64": np.array([[-1e300, 1e-300, 2.5]], np.float64),
}


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_raw_round_trip_every_numeric_datatype(datatype: str) -> None:
    array = NUMERIC[datatype]
    raw = bytes(array_to_raw(array, datatype))
    assert raw == array.astype(array.dtype.newbyteorder("<")).tobytes()
    back = raw_to_array("t", datatype, [1, 3], raw)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_raw_input_is_a_view_not_a_copy() -> None:
    buffer = np.arange(6, dtype=np.float32).tobytes()
    array = raw_to_array("x", "FP32", [2, 3], memoryview(buffer))
    assert array.base is not None and not array.flags.writeable
    np.testing.assert_array_equal(array, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_raw_length_mismatch_names_tensor_and_byte_counts() -> None:
    with pytest.raises(InvalidInput, match=r"'x'.*holds 8 bytes.*needs 24 bytes"):
        raw_to_array("x", "FP32", [2, 3], b"\x00" * 8)


def test_bytes_layout_matches_tritonclient() -> None:
    array = np.array([b"hello", b"", "w\u00f6rld".encode()], dtype=object)
    ours = serialize_bytes(array)
    assert ours == serialize_byte_tensor(array).item()
    np.testing.assert_array_equal(deserialize_bytes(ours, 3, "s"), array)
    np.testing.assert_array_equal(raw_to_array("s", "BYTES", [3, 1], ours).reshape(-1), array)


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        (b"\x05\x00\x00\x00abc", 1, "claims 5 bytes"),
        (b"\x01\x00\x00\x00a", 2, "ends after 1 of 2"),
        (b"\x01\x00\x00\x00ab", 1, "left over"),
    ],
)
def test_bytes_layout_errors(data: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        deserialize_bytes(data, count, "s")


@pytest.mark.parametrize("shape", [[-1, 3], [2.5], [True]])
def test_bad_shapes_are_refused(shape: list[Any]) -> None:
    with pytest.raises(InvalidInput, match="shape"):
        raw_to_array("x", "FP32", shape, b"")


def test_unknown_datatype_names_the_valid_ones() -> None:
    with pytest.raises(InvalidInput, match=r"'x'.*'FLOAT'.*FP32"):
        raw_to_array("x", "FLOAT", [1], b"\x00" * 4)


def test_typed_contents_every_family() -> None:
    cases = {
        "BOOL": ("bool_contents", [True, False]),
        "INT8": ("int_contents", [-128, 127]),
        "UINT16": ("uint_contents", [0, 65535]),
        "INT64": ("int64_contents", [-(2**63), 2**63 - 1]),
        "UINT64": ("uint64_contents", [0, 2**64 - 1]),
        "FP32": ("fp32_contents", [1.5, -2.25]),
        "FP64": ("fp64_contents", [1e300, -1e-300]),
        "BYTES": ("bytes_contents", [b"a", b"bc"]),
    }
    for datatype, (field, values) in cases.items():
        contents = pb.InferTensorContents(**{field: values})
        array = contents_to_array("t", datatype, [2], contents)
        expected = np.array(values, dtype=object if datatype == "BYTES" else None)
        np.testing.assert_array_equal(array, expected)
        if datatype != "BYTES":
            assert array.dtype == to_numpy_dtype(datatype)


@pytest.mark.parametrize(
    ("datatype", "contents", "message"),
    [
        ("FP32", pb.InferTensorContents(fp32_contents=[1.0]), "holds 1 values but FP32 shape"),
        ("FP32", pb.InferTensorContents(int_contents=[1, 2]), "contents.int_contents is set"),
        ("INT8", pb.InferTensorContents(int_contents=[1, 300]), "holds 300, out of range for INT8"),
        ("FP16", pb.InferTensorContents(), "raw_input_contents"),
    ],
)
def test_typed_contents_errors(datatype: str, contents: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        contents_to_array("t", datatype, [2], contents)


def test_json_flat_and_nested() -> None:
    flat = json_to_array("x", "FP32", [2, 2], [1, 2, 3, 4.5])
    nested = json_to_array("x", "FP32", [2, 2], [[1, 2], [3, 4.5]])
    np.testing.assert_array_equal(flat, np.array([[1, 2], [3, 4.5]], np.float32))
    np.testing.assert_array_equal(nested, flat)
    strings = json_to_array("s", "BYTES", [2], ["a", "\u00e9"])
    assert list(strings) == [b"a", "\u00e9".encode()]
    assert array_to_json("s", strings, "BYTES") == ["a", "\u00e9"]
    assert array_to_json("x", flat, "FP32") == [1.0, 2.0, 3.0, 4.5]


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT32", [1.5, 2], "element 0 is 1.5, but INT32 takes integers"),
        ("FP32", ["a", "b"], "FP32 takes numbers"),
        ("BOOL", [1, 0], "BOOL takes true/false"),
        ("UINT8", [1, 256], r"data holds 256, out of range for UINT8 \(0\.\.255\)"),
        ("FP32", [[1], [2, 3]], "ragged"),
        ("FP32", [1, 2, 3], "holds 3 values"),
        ("BYTES", [1, 2], "BYTES takes strings"),
        ("FP32", [1, 10**400], "an integer of 1329 bits, beyond the range of any FP32"),
    ],
)
def test_json_errors(datatype: str, data: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        json_to_array("x", datatype, [2], data)


def test_non_utf8_bytes_output_asks_for_binary() -> None:
    with pytest.raises(InvalidInput, match="binary_data"):
        array_to_json("o", np.array([b"\xff"], dtype=object), "BYTES")


def test_parameters_both_ways() -> None:
    message = pb.ModelInferRequest()
    values = {"b": True, "i": -3, "s": "text", "d": 0.25, "u": 2**64 - 1}
    params_to_proto(values, message.parameters)
    assert message.parameters["u"].WhichOneof("parameter_choice") == "uint64_param"
    assert message.parameters["b"].WhichOneof("parameter_choice") == "bool_param"
    assert params_from_proto(message.parameters) == values


def test_decode_request_from_tritonclient_bytes() -> None:
    request = triton.ModelInferRequest(model_name="m", model_version="2", id="abc")
    request.inputs.add(name="a", datatype="INT32", shape=[2])
    request.inputs.add(name="b", datatype="BYTES", shape=[1])
    request.outputs.add(name="y")
    request.parameters["top_k"].uint64_param = 5
    request.raw_input_contents.extend([np.array([7, 8], np.int32).tobytes(), b"\x02\x00\x00\x00hi"])
    parsed = pb.ModelInferRequest.FromString(request.SerializeToString())
    decoded = decode_infer_request(parsed, list(parsed.raw_input_contents), deadline=123.0)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "2", "abc")
    np.testing.assert_array_equal(decoded.inputs["a"], [7, 8])
    assert list(decoded.inputs["b"]) == [b"hi"]
    assert decoded.outputs == ["y"] and decoded.parameters == {"top_k": 5}
    assert decoded.deadline == 123.0


def test_mixing_raw_and_typed_contents_is_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[1], contents={"fp32_contents": [1.0]})
    with pytest.raises(InvalidInput, match="one or the other"):
        decode_infer_request(request, [b"\x00" * 4])
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    with pytest.raises(InvalidInput, match="2 inputs but 1 raw_input_contents"):
        decode_infer_request(request, [b"\x00" * 4])


def test_encoded_response_parses_with_tritonclient_messages() -> None:
    response = InferResponse(
        model_name="m",
        model_version="1",
        id="r",
        outputs={
            "f": np.arange(6, dtype=np.float32).reshape(2, 3).T,  # not contiguous
            "s": np.array(["x", "yz"]),  # numpy unicode -> BYTES
        },
        parameters={"n": 3},
    )
    message, raw = encode_infer_response(response)
    data = serialize_with_raw(message.SerializeToString(), 6, raw)
    parsed = triton.ModelInferResponse.FromString(data)
    assert [o.datatype for o in parsed.outputs] == ["FP32", "BYTES"]
    assert list(parsed.outputs[0].shape) == [3, 2]
    np.testing.assert_array_equal(
        np.frombuffer(parsed.raw_output_contents[0], np.float32).reshape(3, 2),
        np.arange(6, dtype=np.float32).reshape(2, 3).T,
    )
    assert parsed.raw_output_contents[1] == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"
    assert parsed.parameters["n"].int64_param == 3


def test_serialized_responses_are_those_of_the_protobuf_runtime() -> None:
    """serialize_infer_response reuses what one model's responses share; its bytes must be
    exactly the protobuf runtime's, response after response, shapes and models changing."""
    batch = np.arange(320, dtype=np.float32).reshape(32, 10)
    responses = [
        InferResponse(model_name="mlp", model_version="1", id="a", outputs={"y": batch[3:4]}),
        InferResponse(model_name="mlp", model_version="1", id="b", outputs={"y": batch[5:8]}),
        InferResponse(model_name="mlp", model_version="1", id="", outputs={"y": batch[:1]}),
        InferResponse(model_name="mlp", model_version="2", id="c", outputs={"y": batch[:1]}),
        InferResponse(model_name="mlp", model_version="1", outputs={"y": batch[:1], "z": batch}),
        InferResponse(model_name="cnn", outputs={"y": batch.T}),  # not contiguous
        InferResponse(
            model_name="m",
            id="é" * 70,  # a length over 127 bytes
            outputs={
                "s": np.array([b"x", b"yz"], dtype=object),
                "scalar": np.array(3.5),
                "big": np.arange(4, dtype=">i4"),
                "b": np.ones((2, 2), bool),
                "long": np.zeros(40, np.float64),
            },
        ),
        InferResponse(model_name="m", outputs={"e": np.zeros((0, 3))}, parameters={"n": 3}),
    ]
    for response in responses * 2:  # the second time from what the first one kept
        message, raw = encode_infer_response(response)
        expected = serialize_with_raw(message.SerializeToString(), 6, raw)
        assert serialize_infer_response(response) == expected, response


def test_output_without_v2_datatype_is_a_backend_error() -> None:
    response = InferResponse(model_name="m", outputs={"c": np.array([1 + 2j])})
    with pytest.raises(BackendError, match=r"'c'.*complex128"):
        encode_infer_response(response)


class FakeContext:
    def __init__(self, remaining: float | None, metadata: tuple[tuple[str, Any], ...]) -> None:
        self.remaining = remaining
        self.metadata = metadata

    def time_remaining(self) -> float | None:
        return self.remaining

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self.metadata


def test_deadline_and_metadata_from_grpc_context() -> None:
    before = time.monotonic()
    context = FakeContext(2.0, (("X-Tenant", "a"), ("trace-bin", b"\x00")))
    deadline = request_deadline(context)  # type: ignore[arg-type]
    assert deadline is not None and before + 2.0 <= deadline <= time.monotonic() + 2.0
    assert request_deadline(FakeContext(None, ())) is None  # type: ignore[arg-type]
    assert request_metadata(context) == {"x-tenant": "a"}  # type: ignore[arg-type]


def test_reflection_files_use_the_standard_package() -> None:
    files = V2Protocol().reflection_files()
    # Triton's two files, the imported one first: names, package and imports renamed.
    assert [(f.name, f.package) for f in files] == [
        ("model_config.proto", "inference"),
        ("grpc_service.proto", "inference"),
    ]
    assert list(files[1].dependency) == ["model_config.proto"]
    assert files[0] is not V2Protocol().reflection_files()[0]  # a copy each time
    assert not any("dl_inference" in str(file) for file in files)
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    service = pool.FindServiceByName("inference.GRPCInferenceService")
    infer = service.methods_by_name["ModelInfer"]
    assert infer.input_type.full_name == "inference.ModelInferRequest"
    # Messages built from the renamed descriptors read tritonclient's bytes.
    request_class = message_factory.GetMessageClass(infer.input_type)
    sent = triton.ModelInferRequest(model_name="m", raw_input_contents=[b"abc"])
    received = request_class.FromString(sent.SerializeToString())
    assert received.model_name == "m" and list(received.raw_input_contents) == [b"abc"]
