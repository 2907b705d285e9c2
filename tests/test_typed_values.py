"""The public value-typing rules every protocol decoder shares (V2, TF Serving, Seldon)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dl_inference import (
    InvalidInput,
    array_from_json,
    check_raw_size,
    json_datatype,
    json_leaves,
    narrow_array,
)

# -- JSON leaves ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shape", "leaves"),
    [
        ([[1, 2], [3, 4]], (2, 2), [1, 2, 3, 4]),
        ([1.5, "a"], (2,), [1.5, "a"]),
        (7, (), [7]),
        ([], (0,), []),
        ([[], []], (2, 0), []),
        ([[{"b64": "YQ=="}], [None]], (2, 1), [{"b64": "YQ=="}, None]),  # objects are leaves
    ],
)
def test_json_leaves_give_shape_and_row_major_leaves(
    value: Any, shape: tuple[int, ...], leaves: list[Any]
) -> None:
    assert json_leaves("x", value) == (shape, leaves)


@pytest.mark.parametrize("value", [[[1], [2, 3]], [[1, 2], 3], [1, [2]], [[[1]], [2]], [[], [1]]])
def test_ragged_json_is_refused(value: Any) -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': instances is a ragged nested list, not a"):
        json_leaves("x", value, field="instances")


def test_json_leaves_walk_deep_nesting_without_recursion() -> None:
    value: Any = [1.0]
    for _ in range(20_000):  # far past Python's recursion limit
        value = [value]
    shape, leaves = json_leaves("x", value)
    assert len(shape) == 20_001 and leaves == [1.0]


@pytest.mark.parametrize(
    ("leaves", "datatype"),
    [
        (["a", b"b"], "BYTES"),
        ([True, False], "BOOL"),
        ([1, 2**70], "INT64"),
        ([1, 2.5], "FP64"),
        ([], "FP64"),
    ],
)
def test_json_datatype_of_undeclared_values(leaves: list[Any], datatype: str) -> None:
    assert json_datatype("x", leaves) == datatype


@pytest.mark.parametrize("leaves", [[1, "a"], [True, 1.0], [None], [{"a": 1}], [1.0, None]])
def test_json_datatype_refuses_mixed_kinds(leaves: list[Any]) -> None:
    with pytest.raises(InvalidInput, match="must be all numbers, all true/false or all strings"):
        json_datatype("x", leaves)


# -- JSON leaves -> arrays -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "leaves", "expected"),
    [
        ("BOOL", [True, False], np.array([True, False])),
        ("INT8", [-128, 127], np.array([-128, 127], np.int8)),
        ("INT64", [2**63 - 1, -(2**63)], np.array([2**63 - 1, -(2**63)], np.int64)),
        ("UINT64", [0, 2**64 - 1], np.array([0, 2**64 - 1], np.uint64)),  # exact, not float
        ("FP32", [1, 2.5], np.array([1, 2.5], np.float32)),
        ("FP64", [], np.zeros(0, np.float64)),
    ],
)
def test_array_from_json_types_values(datatype: str, leaves: list[Any], expected: Any) -> None:
    array = array_from_json("x", datatype, leaves, expected.shape)
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)


def test_array_from_json_bytes_from_strings_and_bytes() -> None:
    array = array_from_json("s", "BYTES", ["\u00e9", b"\xff", "a"], (3, 1))
    assert array.shape == (3, 1) and array.dtype == object
    assert array.ravel().tolist() == ["\u00e9".encode(), b"\xff", b"a"]
    with pytest.raises(InvalidInput, match=r"input 's', element 1: the string holds an unpaired"):
        array_from_json("s", "BYTES", ["a", "\ud800"], (2,))


@pytest.mark.parametrize(
    ("datatype", "leaves", "message"),
    [
        ("BOOL", [True, 1], r"input 'x': data element 1 is 1, but BOOL takes true/false"),
        ("INT32", [1, 1.0], "element 1 is 1.0, but INT32 takes integers"),
        ("INT32", [True], "element 0 is True, but INT32 takes integers"),
        ("UINT8", [0, "1"], "element 1 is '1', but UINT8 takes integers"),
        ("FP32", [1.0, None], "element 1 is None, but FP32 takes numbers"),
        ("FP32", [False], "element 0 is False, but FP32 takes numbers"),
        ("BYTES", ["a", 1], "element 1 is 1, but BYTES takes strings"),
        ("INT8", [0, 128], r"input 'x': data holds 128, out of range for INT8 \(-128\.\.127\)"),
        ("UINT8", [-1, 0], r"data holds -1, out of range for UINT8 \(0\.\.255\)"),
        ("INT64", [2**63], "holds 9223372036854775808, out of range for INT64"),
        ("UINT64", [2**64], "holds 18446744073709551616, out of range for UINT64"),
        ("FLOAT", [1.0], "input 'x': unsupported datatype 'FLOAT'; use one of BOOL"),
    ],
)
def test_array_from_json_refuses_what_would_change(
    datatype: str, leaves: list[Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        array_from_json("x", datatype, leaves, (len(leaves),))


def test_array_from_json_names_the_field_and_what_a_protocol_takes() -> None:
    with pytest.raises(InvalidInput, match=r"inputs element 0 is 1, but BYTES takes b64 or text"):
        array_from_json("x", "BYTES", [1], (1,), field="inputs", strings="b64 or text")


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_an_integer_beyond_any_float_is_a_client_error(datatype: str) -> None:
    # JSON allows an integer of thousands of digits; numpy raises OverflowError for it.
    with pytest.raises(InvalidInput, match=rf"holds an integer of 1329 bits, beyond .* {datatype}"):
        array_from_json("x", datatype, [1, 10**400], (2,))


# -- narrowing wide values -----------------------------------------------------------------


def test_narrowing_keeps_values_that_fit_without_copying_same_dtype() -> None:
    wide = np.array([-128, 0, 127], np.int32)
    narrow = narrow_array("x", wide, np.int8)
    assert narrow.dtype == np.int8 and narrow.tolist() == [-128, 0, 127]
    same = np.arange(3, dtype=np.int64)
    assert narrow_array("x", same, "INT64") is same
    assert narrow_array("x", np.array([3.0, -2.0]), "INT16").tolist() == [3, -2]
    assert narrow_array("x", np.array([0.0, 1.0]), "BOOL").tolist() == [False, True]
    # A floating-point target takes any number, at its precision.
    assert narrow_array("x", np.array([0.1, np.nan]), "FP32").dtype == np.float32
    assert narrow_array("x", np.zeros(0, np.float64), "UINT8").dtype == np.uint8


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        (np.array([1, 300], np.int32), "INT8", r"'x': int_val holds 300, out of range for INT8"),
        (np.array([-1], np.int32), np.uint16, r"holds -1, out of range for UINT16 \(0\.\.65535\)"),
        (np.array([2**64 - 1], np.uint64), "INT64", "holds 18446744073709551615, out of range"),
        (np.array([1.5]), "INT64", r"int_val holds the non-integer number 1\.5, but INT64 takes"),
        (np.array([np.nan]), "INT32", "holds the non-integer number nan"),
        (np.array([-np.inf]), "UINT8", "holds the non-integer number -inf"),
        (np.array([2.0**63]), "INT64", "holds 9.223372036854776e[+]18, out of range for INT64"),
        (np.array([2.0]), "BOOL", r"holds 2\.0, out of range for BOOL \(0\.\.1\)"),
        (np.array([2], np.int64), np.bool_, r"holds 2, out of range for BOOL \(0\.\.1\)"),
    ],
)
def test_narrowing_refuses_values_the_cast_would_change(
    values: np.ndarray, dtype: Any, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        narrow_array("x", values, dtype, field="int_val")


def test_narrowing_names_the_protocols_own_type() -> None:
    with pytest.raises(
        InvalidInput, match=r"int_val holds -1, out of range for DT_UINT8 \(0\.\.255"
    ):
        narrow_array("x", np.array([-1], np.int32), np.uint8, field="int_val", type_name="DT_UINT8")


def test_narrowing_is_for_numbers() -> None:
    with pytest.raises(TypeError):
        narrow_array("x", np.array([b"a"], object), np.int8)
    with pytest.raises(TypeError):
        narrow_array("x", np.array([1]), "BYTES")


# -- the raw-bytes check names the protocol's field ---------------------------------------


def test_check_raw_size_names_the_field() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': tensor_content holds 5 bytes but FP32"):
        check_raw_size("x", "FP32", [2], 5, field="tensor_content")
    with pytest.raises(InvalidInput, match=r"request carries 3 in tensor_content; send a shape"):
        check_raw_size("x", "BYTES", [2], 3, field="tensor_content")
