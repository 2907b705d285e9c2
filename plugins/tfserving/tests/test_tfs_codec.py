"""Our TF Serving messages against the official ones: same bytes, same tensors."""

from __future__ import annotations

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
    np.testing.assert_array_equal(codec.to_numpy(tensor), [4.0, 4.0, 4.0])
    half = tfs_pb2.TensorProto(dtype=tfs_pb2.DT_HALF)
    half.half_val.extend(np.float16([1.5, -2]).view(np.uint16).tolist())
    half.tensor_shape.dim.add().size = 2
    np.testing.assert_array_equal(codec.to_numpy(half), np.float16([1.5, -2]))


def test_tensor_content_is_viewed_not_copied() -> None:
    tensor = codec.from_numpy(np.arange(4, dtype=np.int32))
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
    with pytest.raises(InvalidInput, match="3 values in int64_val do not fit shape"):
        codec.to_numpy(too_many, "x")
