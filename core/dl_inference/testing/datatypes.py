"""One sample array per V2 datatype, at the edges of its range, for round-trip tests."""

from __future__ import annotations

import numpy as np

# Shape [1, 2]: a batch of one row of two values. BYTES holds a NUL and a non-UTF-8 byte.
EDGE_VALUES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False]]),
    "INT8": np.array([[-128, 127]], np.int8),
    "INT16": np.array([[-32768, 32767]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1]], np.int64),
    "UINT8": np.array([[0, 255]], np.uint8),
    "UINT16": np.array([[0, 65535]], np.uint16),
    "UINT32": np.array([[0, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 2**64 - 1]], np.uint64),
    "FP16": np.array([[-1.5, 65504.0]], np.float16),
    "FP32": np.array([[-1.25, 3.4e38]], np.float32),
    "FP64": np.array([[-1e300, 1e-300]], np.float64),
    "BYTES": np.array([[b"hello", b"\x00\xffbinary"]], dtype=object),
}
