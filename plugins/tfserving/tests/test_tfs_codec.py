"""Our TF Serving messages against the official ones: same bytes, same tensors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tensorflow as tf

from dl_inference import InvalidInput
from dl_inference_tfserving import codec
from dl_inference_tfserving._proto import tfs_pb2

ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5,
    np.arange(4, dtype=np.float64),
    np.array([[1, -2]], dtype=np.int8),
    np.array([7, 300], dtype=np.int16),
    np.array([-5, 6], dtype=np.int32),
    np.array([2**40, -3], dtype=np.int64),
    np.array([0, 255], dtype=np.uint8),
    np.array([1.5, -0.25], dtype=np.float16),
    np.array([True, False, True]),
    np.array([[b"", b"\xff\x00"], ["\u00e9".encode(), b"x"]], dtype=object),
    np.zeros((0, 3), dtype=np.float32),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_official_tensor_protos_decode(array: np.ndarray) -> None:
    official = tf.make_tensor_proto(array)
    ours = tfs_pb2.TensorProto.FromString(official.SerializeToString())
    decoded = codec.to_numpy(ours)
    assert decoded.shape == array.shape and decoded.dtype == array.dtype
    if array.dtype == object:
        assert list(decoded.flat) == list(array.flat)
    else:
        np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_encoded_tensors_read_back_with_tensorflow(array: np.ndarray) -> None:
    payload = codec.from_numpy(array).SerializeToString()
    official = tf.make_tensor_proto(0)
    official.ParseFromString(payload)
    back = tf.make_ndarray(official)
    assert back.shape == array.shape
    if array.dtype == object:
        assert list(back.flat) == list(array.flat)
    else:
        np.testing.assert_array_equal(back, array)


def test_typed_values_follow_tensorflow_padding_and_half_bits() -> None:
    tensor = tfs_pb2.TensorProto(dtype=tfs_pb2.DT_FLOAT, float_val=[4.0])
    tensor.tensor_shape.dim.add().size = 3
    filled = codec.to_numpy(tensor, fill_limit_bytes=12)
    np.testing.assert_array_equal(filled, [4.0, 4.0, 4.0])
    assert filled.dtype == np.float32
    half = tfs_pb2.TensorProto(dtype=tfs_pb2.DT_HALF)
    half.half_val.extend(np.float16([1.5, -2]).view(np.uint16).tolist())
    half.tensor_shape.dim.add().size = 2
    np.testing.assert_array_equal(codec.to_numpy(half), np.float16([1.5, -2]))


def test_tensor_content_is_viewed_not_copied() -> None:
    tensor = codec.from_numpy(np.arange(4, dtype=np.int32), tensor_content=True)
    array = codec.to_numpy(tensor)
    assert not array.flags.writeable  # a view of the message's bytes


def test_malformed_tensors_say_what_is_wrong() -> None:
    bad_size = tfs_pb2.TensorProto(dtype=tfs_pb2.DT_FLOAT, tensor_content=b"\x00" * 5)
    bad_size.tensor_shape.dim.add().size = 2
    with pytest.raises(InvalidInput, match=r"input 'x': tensor_content holds 5 bytes.*needs 8"):
        codec.to_numpy(bad_size, "x")
    with pytest.raises(InvalidInput, match="DT_COMPLEX64 is not supported"):
        codec.to_numpy(tfs_pb2.TensorProto(dtype=tfs_pb2.DT_COMPLEX64), "x")
    too_many = tfs_pb2.TensorProto(dtype=tfs_pb2.DT_INT64, int64_val=[1, 2, 3])
    too_many.tensor_shape.dim.add().size = 2
    with pytest.raises(
        InvalidInput, match=r"int64_val holds 3 values but INT64 shape \[2\] needs 2"
    ):
        codec.to_numpy(too_many, "x", fill_limit_bytes=1024)


def tensor_proto(dtype: int, shape: list[int], **values: object) -> tfs_pb2.TensorProto:
    tensor = tfs_pb2.TensorProto(dtype=dtype, **values)
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    return tensor


@pytest.mark.parametrize(
    ("tensor", "words"),
    [
        # A huge declared shape with tiny data: refused before numpy sees it.
        (tensor_proto(tfs_pb2.DT_FLOAT, [2**31, 2**31], float_val=[1.0]), "over the"),
        (tensor_proto(tfs_pb2.DT_FLOAT, [2**31, 2**31], tensor_content=b"\0" * 4), "needs"),
        (tensor_proto(tfs_pb2.DT_FLOAT, [0, 2**62]), "too large"),
        (tensor_proto(tfs_pb2.DT_STRING, [2**31, 2**31], string_val=[b"a"]), "over the"),
        (tensor_proto(tfs_pb2.DT_FLOAT, [-1], float_val=[1.0]), "invalid"),
        (tensor_proto(tfs_pb2.DT_FLOAT, [1] * 40, float_val=[1.0]), "40 dimensions"),
    ],
    ids=["2^31x2^31 fill", "2^31x2^31 content", "0x2^62", "strings 2^31x2^31", "-1", "rank 40"],
)
def test_declared_shapes_are_checked_against_the_data(tensor: object, words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as caught:
        codec.to_numpy(tensor, "x", fill_limit_bytes=64 * 1024 * 1024)
    assert "input 'x'" in str(caught.value)


def test_filling_out_a_short_list_is_capped_before_allocating() -> None:
    """21 bytes on the wire may not make the server allocate 128 MiB."""
    tensor = tensor_proto(tfs_pb2.DT_FLOAT, [2**25], float_val=[1.0])
    assert len(tensor.SerializeToString()) < 24
    with pytest.raises(InvalidInput, match=r"134217728 bytes, over the 2097152-byte limit"):
        codec.to_numpy(tensor, "x", fill_limit_bytes=2 * 1024 * 1024)
    # Within the limit TensorFlow's fill still works; without a limit there is no fill.
    assert (
        codec.to_numpy(
            tensor_proto(tfs_pb2.DT_FLOAT, [4], float_val=[2.0]), "x", fill_limit_bytes=16
        ).tolist()
        == [2.0] * 4
    )
    with pytest.raises(InvalidInput, match="holds 1 values but FP32 shape"):
        codec.to_numpy(tensor_proto(tfs_pb2.DT_FLOAT, [4], float_val=[2.0]), "x")


def test_one_fill_budget_for_all_the_tensors_of_a_request() -> None:
    """Twelve tensors each filled to the limit may not cost twelve times the limit."""
    limit = 4 * 1024 * 1024
    tensors = {
        f"in{i}": tensor_proto(tfs_pb2.DT_FLOAT, [limit // 4], float_val=[1.0]) for i in range(12)
    }
    codec.to_numpy(tensors["in0"], "in0", fill_limit_bytes=limit)  # one alone fits
    tracemalloc.start()
    try:
        with pytest.raises(
            InvalidInput,
            match=(
                r"short value lists of 12 inputs .* 50331648 bytes in all \('in0': 4194304, "
                r".*, and 4 more\), over the 4194304-byte limit for one request"
            ),
        ):
            codec.tensors_to_numpy(tensors, fill_limit_bytes=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit // 4, peak  # refused on counts, before any tensor was allocated


def test_the_fill_budget_counts_only_filled_tensors() -> None:
    sent = codec.from_numpy(np.arange(64, dtype=np.float32), tensor_content=True)  # 256 bytes
    three = tensor_proto(tfs_pb2.DT_FLOAT, [3], float_val=[1.0, 2.0])  # 12 bytes filled
    five = tensor_proto(tfs_pb2.DT_STRING, [5], string_val=[b"a"])  # 5 x 8 bytes filled
    arrays = codec.tensors_to_numpy(
        {"sent": sent, "three": three, "five": five}, fill_limit_bytes=52
    )
    assert arrays["sent"].tolist() == list(range(64))
    assert arrays["three"].tolist() == [1.0, 2.0, 2.0]
    assert arrays["five"].tolist() == [b"a"] * 5
    with pytest.raises(InvalidInput, match=r"52 bytes in all.*over the 51-byte limit"):
        codec.tensors_to_numpy({"three": three, "five": five}, fill_limit_bytes=51)
    # Without a limit there is no fill, as with to_numpy.
    with pytest.raises(InvalidInput, match="holds 2 values but FP32 shape"):
        codec.tensors_to_numpy({"three": three})


@pytest.mark.parametrize(
    ("dtype", "field", "value", "bounds"),
    [
        (tfs_pb2.DT_UINT8, "int_val", -1, "0..255"),
        (tfs_pb2.DT_UINT8, "int_val", 256, "0..255"),
        (tfs_pb2.DT_INT8, "int_val", 300, "-128..127"),
        (tfs_pb2.DT_INT16, "int_val", -40000, "-32768..32767"),
        (tfs_pb2.DT_UINT16, "int_val", 70000, "0..65535"),
        (tfs_pb2.DT_HALF, "half_val", 70000, "0..65535"),
        (tfs_pb2.DT_HALF, "half_val", -1, "0..65535"),
    ],
)
def test_typed_values_out_of_range_for_the_dtype(
    dtype: int, field: str, value: int, bounds: str
) -> None:
    tensor = tensor_proto(dtype, [2], **{field: [0, value]})
    with pytest.raises(
        InvalidInput, match=rf"input 'x': {field} holds {value}, out of range.*{bounds}"
    ):
        codec.to_numpy(tensor, "x")
    # The same field in range decodes to the dtype.
    good = tensor_proto(dtype, [2], **{field: [0, 1]})
    assert codec.to_numpy(good, "x").dtype == codec.numpy_dtype(dtype)


@pytest.mark.parametrize("dtype", [0, tfs_pb2.DT_BFLOAT16, 99, 2**20])
def test_unknown_dtypes_are_invalid_input(dtype: int) -> None:
    with pytest.raises(InvalidInput, match="is not supported; use one of DT_FLOAT"):
        codec.to_numpy(tensor_proto(dtype, [1], float_val=[1.0]), "x")
