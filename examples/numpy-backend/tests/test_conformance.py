"""The kernel's backend conformance suite, run against the installed ``numpy`` backend.

An outside author's plugin proves it fits the kernel with these few lines: the suite finds
the backend through its entry point, loads models this class writes, and checks metadata,
prediction, bad input, config errors and unload.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dl_inference.testing import BackendConformance, ModelSpec


class TestNumpyBackendConformance(BackendConformance):
    backend_name = "numpy"
    supported_datatypes = ("FP32", "FP64", "INT32", "INT64")
    # An .npz holds weights, not code: it has no way to raise on purpose.
    supports_failing_model = False

    def make_model(self, root: Path, spec: ModelSpec) -> None:
        folder = root / spec.name / "1"
        folder.mkdir(parents=True)
        # One element-wise layer: x * 1 + 1, which is the suite's "add one".
        np.savez(folder / "model.npz", w0=np.array(1), b0=np.array(1))

