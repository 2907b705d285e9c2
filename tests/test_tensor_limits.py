"""The public size checks every protocol decoder runs before it allocates a tensor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dl_inference import (
    MAX_TENSOR_ELEMENTS,
    MAX_TENSOR_RANK,
    InvalidInput,
    check_raw_size,
    check_tensor_shape,
    check_value_count,
)

# -- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [[], [0], [3], [2, 3], [0, 5], [1] * MAX_TENSOR_RANK, [MAX_TENSOR_ELEMENTS], [0, 0]]
)
def test_valid_shapes_come_back_as_int_tuples(shape: list[int]) -> None:
    dims = check_tensor_shape("x", [np.int64(d) for d in shape])
    assert dims == tuple(shape) and all(type(d) is int for d in dims)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([-1, 3], r"'x': shape \[-1, 3\] is invalid; dimensions are integers from 0"),
        ([2.5], "is invalid"),
        ([True], "is invalid"),
        (["3"], "is invalid"),
        ([2**63], "is invalid"),  # past int64, as no wire carries it
        ([10**4000], "is invalid"),  # and never multiplied into an unprintable product
        ([1] * (MAX_TENSOR_RANK + 1), f"has {MAX_TENSOR_RANK + 1} dimensions; at most 32"),
        ([2**31, 2**31], "multiply to 4611686018427387904, over the limit"),
        ([0, 2**62], r"shape \[0, 4611686018427387904\] is too large"),  # 0 elements, still refused
        ([2**63 - 1, 2**63 - 1, 0], "too large"),
        ([MAX_TENSOR_ELEMENTS + 1], "too large"),
    ],
)
def test_invalid_shapes_are_refused(shape: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_tensor_shape("x", shape)


def test_a_huge_shape_is_not_quoted_back() -> None:
    with pytest.raises(InvalidInput) as info:
        check_tensor_shape("x", [-1] * 1_000_000)
    assert len(str(info.value)) < 200


def test_every_accepted_shape_builds_in_numpy() -> None:
    # The cap exists so that what passes can be allocated (when it holds 0 elements).
    np.empty(check_tensor_shape("x", [0, MAX_TENSOR_ELEMENTS]), dtype=np.complex128)
    np.empty(check_tensor_shape("x", [0, 2**20, 2**20]), dtype=np.float64)


# -- raw bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "shape", "nbytes"),
    [
        ("FP32", [2, 3], 24),
        ("FP16", [5], 10),
        ("BOOL", [7], 7),
        ("INT64", [0, 9], 0),
        ("BYTES", [3], 12),  # three empty elements
        ("BYTES", [2], 1000),  # long elements
        ("BYTES", [0], 0),
    ],
)
def test_raw_sizes_that_fit(datatype: str, shape: list[int], nbytes: int) -> None:
    assert check_raw_size("x", datatype, shape, nbytes) == tuple(shape)


@pytest.mark.parametrize(
    ("datatype", "shape", "nbytes", "message"),
    [
        ("FP32", [2, 3], 23, r"'x': raw data holds 23 bytes but FP32 shape \[2, 3\] needs 24 "),
        ("FP32", [2, 3], 25, "needs 24 bytes"),
        ("FP32", [2**31, 2**31], 4, r"needs 18446744073709551616 bytes \(4611686018427387904 "),
        ("FP32", [0, 2**62], 0, "too large"),
        ("UINT8", [1, 2**40 + 1], 2**40 + 1, "too large"),  # would match, still over the cap
        (
            "BYTES",
            [2**24],
            30,
            r"BYTES shape \[16777216\] has 16777216 elements.*at least 67108864 bytes, but the "
            "request carries 30",
        ),
        ("BYTES", [2**31, 2**31], 4, "at least 18446744073709551616 bytes"),
        ("BYTES", [0, 2**62], 0, "too large"),
        ("FLOAT", [1], 4, r"'x': unsupported datatype 'FLOAT'; use one of BOOL"),
    ],
)
def test_raw_sizes_that_do_not_fit(
    datatype: str, shape: list[int], nbytes: int, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_raw_size("x", datatype, shape, nbytes)


# -- typed value lists -------------------------------------------------------------------------


def test_value_count_must_match_the_shape() -> None:
    assert check_value_count("x", "INT32", [2, 2], 4) == (2, 2)
    assert check_value_count("x", "BYTES", [0, 3], 0) == (0, 3)
    with pytest.raises(
        InvalidInput,
        match=r"'x': int_val holds 3 values but INT32 shape \[2, 2\] needs 4; send one value per",
    ):
        check_value_count("x", "INT32", [2, 2], 3, field="int_val")
    with pytest.raises(InvalidInput, match="holds 5 values"):
        check_value_count("x", "INT32", [2, 2], 5)
    with pytest.raises(InvalidInput, match="needs 4611686018427387904"):
        check_value_count("x", "FP32", [2**31, 2**31], 1)
    with pytest.raises(InvalidInput, match="too large"):
        check_value_count("x", "FP32", [0, 2**62], 0)


def test_a_short_list_may_fill_the_shape_only_within_the_byte_budget() -> None:
    budget = 64 * 2**20
    assert check_value_count("x", "FP32", [2, 3], 1, fill_limit_bytes=budget) == (2, 3)
    assert check_value_count("x", "FP32", [budget // 4], 2, fill_limit_bytes=budget) == (
        budget // 4,
    )
    # TF Serving's float_val padding to [2**25] from a 21-byte request: 128 MiB, refused.
    with pytest.raises(
        InvalidInput,
        match=r"float_val holds 1 values for FP32 shape \[33554432\]; filling it out with the "
        "last value would take 134217728 bytes, over the 67108864-byte limit",
    ):
        check_value_count("x", "FP32", [2**25], 1, field="float_val", fill_limit_bytes=budget)
    # BYTES fills cost a pointer per element.
    with pytest.raises(InvalidInput, match="would take 134217728 bytes"):
        check_value_count("x", "BYTES", [2**24], 1, fill_limit_bytes=budget)
    # Nothing to repeat, or more values than elements: no fill applies.
    with pytest.raises(InvalidInput, match=r"holds 0 values.*\(or one value, repeated"):
        check_value_count("x", "FP32", [3], 0, fill_limit_bytes=budget)
    with pytest.raises(InvalidInput, match="holds 4 values"):
        check_value_count("x", "FP32", [3], 4, fill_limit_bytes=budget)
    with pytest.raises(InvalidInput, match="too large"):
        check_value_count("x", "FP32", [2**31, 2**31], 1, fill_limit_bytes=2**70)
