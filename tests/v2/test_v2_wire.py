"""The minimal protobuf wire reader the gateway routes with (core/dl_inference/spi/wire.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as triton

from dl_inference.builtin.v2 import V2Protocol
from dl_inference.spi.wire import (
    WireError,
    encode_varint,
    iter_fields,
    read_string_field,
    read_varint,
    split_len_field,
)


def big_request(model: str = "resnet") -> bytes:
    """A ModelInferRequest serialized by tritonclient's own generated code."""
    request = triton.ModelInferRequest(model_name=model, model_version="3", id="req-1")
    request.parameters["priority"].int64_param = -5  # negative varint: 10 bytes on the wire
    request.parameters["scale"].double_param = 0.5  # fixed64 inside a nested message
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[64, 1024])
    tensor.parameters["flag"].bool_param = True
    request.raw_input_contents.append(np.ones((64, 1024), np.float32).tobytes())
    request.raw_input_contents.append(b"second")
    return request.SerializeToString()


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63 - 1, 2**64 - 1])
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert read_varint(encoded + b"\x00", 0) == (value, len(encoded))


def test_reads_model_name_without_decoding_tensors() -> None:
    data = big_request("resnet")
    assert read_string_field(data, 1) == "resnet"
    assert read_string_field(data, 2) == "3"
    assert read_string_field(data, 3) == "req-1"


def test_field_placed_after_tensors_is_found_and_last_one_wins() -> None:
    # Protobuf lets fields come in any order and the last scalar occurrence wins.
    data = big_request("first") + triton.ModelInferRequest(model_name="last").SerializeToString()
    assert read_string_field(data, 1) == "last"


def test_skips_every_wire_type() -> None:
    # field 2 varint, field 3 fixed64, field 4 fixed32, then field 1 string
    data = (
        encode_varint(2 << 3 | 0)
        + encode_varint(2**40)
        + encode_varint(3 << 3 | 1)
        + b"\x01" * 8
        + encode_varint(4 << 3 | 5)
        + b"\x02" * 4
        + encode_varint(1 << 3 | 2)
        + encode_varint(5)
        + b"model"
    )
    assert [f[0] for f in iter_fields(data)] == [2, 3, 4, 1]
    assert read_string_field(data, 1) == "model"


@pytest.mark.parametrize(
    "data",
    [
        b"",  # absent
        encode_varint(1 << 3 | 0) + encode_varint(7),  # field 1 is a varint, not a string
        encode_varint(1 << 3 | 2) + encode_varint(10) + b"short",  # runs past the end
        encode_varint(1 << 3 | 2) + encode_varint(2) + b"\xff\xfe",  # not UTF-8
        b"\xff\xff\xff",  # truncated varint
        encode_varint(1 << 3 | 3),  # start group: refused
    ],
)
def test_missing_or_malformed_gives_none(data: bytes) -> None:
    assert read_string_field(data, 1) is None


def test_iter_fields_rejects_garbage() -> None:
    with pytest.raises(WireError):
        list(iter_fields(encode_varint(1 << 3 | 2) + encode_varint(100) + b"x"))
    with pytest.raises(WireError):
        list(iter_fields(b"\x00"))  # field number 0


def test_split_len_field_cuts_raw_contents_out_without_copying() -> None:
    data = big_request()
    rest, payloads = split_len_field(data, 7)
    parsed = triton.ModelInferRequest.FromString(rest)
    assert parsed.model_name == "resnet" and not parsed.raw_input_contents
    assert parsed.inputs[0].parameters["flag"].bool_param is True
    expected = triton.ModelInferRequest.FromString(data).raw_input_contents
    assert [bytes(p) for p in payloads] == list(expected)
    assert payloads[0].obj is data  # a view into the original bytes, not a copy
    assert split_len_field(rest, 7) == (rest, [])


def test_split_len_field_refuses_wrong_wire_type() -> None:
    with pytest.raises(WireError):
        split_len_field(encode_varint(7 << 3 | 0) + encode_varint(1), 7)


def test_routing_keys_read_model_name_of_each_routed_method() -> None:
    keys = V2Protocol().routing_keys()
    service = "/inference.GRPCInferenceService/"
    named = ("ModelInfer", "ModelStreamInfer", "ModelMetadata", "ModelReady", "ModelConfig")
    assert {service + m for m in named} <= set(keys)
    assert "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/TisPredict" in keys
    assert keys[service + "ModelInfer"](big_request("bert"), {}) == "bert"
    metadata = triton.ModelMetadataRequest(name="gpt", version="2").SerializeToString()
    assert keys[service + "ModelMetadata"](metadata, {}) == "gpt"
    ready = triton.ModelReadyRequest(name="t5").SerializeToString()
    assert keys[service + "ModelReady"](ready, {}) == "t5"
    assert keys[service + "ModelReady"](b"", {}) is None
