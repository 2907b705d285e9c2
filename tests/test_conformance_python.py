"""The built-in ``python`` backend passes the backend conformance suite, and the suite
itself fails a backend that computes the wrong thing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dl_inference import DATATYPES
from dl_inference.testing import BackendConformance, ModelSpec

pytest_plugins = ["pytester"]


def conformance_model_code(spec: ModelSpec) -> str:
    """model.py for ``spec``: ``+ 1`` or identity, or raising ``spec.fail_with``."""
    if spec.fail_with is not None:
        body = f"raise ValueError({spec.fail_with!r})"
    elif spec.operation == "identity":
        body = f"return {{{spec.output_name!r}: x.copy()}}"
    else:
        body = f"return {{{spec.output_name!r}: x + np.array(1, dtype=x.dtype)}}"
    return textwrap.dedent(
        f"""\
        import numpy as np

        from dl_inference import PythonModel


        class ConformanceModel(PythonModel):
            def predict(self, inputs):
                x = inputs[{spec.input_name!r}]
                {body}
        """
    )


class TestPythonBackendConformance(BackendConformance):
    backend_name = "python"
    supported_datatypes = DATATYPES

    def make_model(self, root: Path, spec: ModelSpec) -> None:
        folder = root / spec.name / "1"
        folder.mkdir(parents=True)
        (folder / "model.py").write_text(conformance_model_code(spec))


# A backend whose models return their input unchanged and never raise: the suite must
# fail its numeric predictions and its error test, and nothing else.
BROKEN_SUITE = """
from pathlib import Path

from dl_inference.testing import BackendConformance, ModelSpec


class TestBrokenConformance(BackendConformance):
    backend_name = "python"
    supported_datatypes = ("FP32", "BYTES")

    def make_model(self, root: Path, spec: ModelSpec) -> None:
        folder = root / spec.name / "1"
        folder.mkdir(parents=True)
        (folder / "model.py").write_text(
            "from dl_inference import PythonModel\\n"
            "class Same(PythonModel):\\n"
            "    def predict(self, inputs):\\n"
            f"        return {{{spec.output_name!r}: inputs[{spec.input_name!r}]}}\\n"
        )
"""


def test_suite_fails_a_wrong_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=BROKEN_SUITE)
    # No pytest-asyncio: the suite must run under plain pytest in any plugin's repository.
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-p", "no:asyncio")
    failed = sorted(report.nodeid.split("::")[-1] for report in result.reprec.getfailures())
    assert failed == sorted(
        [
            "test_backend_alone",
            "test_concurrent_requests_keep_their_own_data",
            "test_model_that_raises_is_backend_error",
            "test_predict[FP32-nobatch]",
            "test_predict[FP32-batch]",
            "test_requested_output_is_returned",
            "test_unload",
            "test_wrong_datatype_is_invalid_input",
            "test_wrong_shape_is_invalid_input[nobatch]",
            "test_wrong_shape_is_invalid_input[batch]",
            "test_missing_input_is_invalid_input",
            "test_unknown_input_is_invalid_input",
            "test_unknown_requested_output_is_invalid_input",
        ]
    ), failed
