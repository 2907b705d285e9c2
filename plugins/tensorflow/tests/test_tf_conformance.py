"""The kernel's backend conformance suite, run against the ``tensorflow`` backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dl_inference.testing import BackendConformance, ModelSpec


class TestTensorFlowConformance(BackendConformance):
    backend_name = "tensorflow"
    supported_datatypes = (
        "BOOL",
        "UINT8",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    )

    def make_model(self, root: Path, spec: ModelSpec) -> None:
        import tensorflow as tf

        dtype = tf.string if spec.datatype == "BYTES" else tf.as_dtype(spec.numpy_dtype)
        shape = [None if dim == -1 else dim for dim in spec.full_shape]
        fail_with = spec.fail_with

        class Model(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec(shape, dtype, name=spec.input_name)])
            def serve(self, x: Any) -> dict[str, Any]:
                if fail_with is not None:
                    # A run-time failure that is not the input's fault (a missing asset).
                    # The path depends on the input so that nothing folds it away at save time.
                    size = tf.strings.as_string(tf.size(x))
                    data = tf.io.read_file(tf.strings.join([f"/nonexistent/{fail_with}/", size]))
                    x = x + tf.cast(tf.strings.length(data), dtype) * 0
                elif spec.operation == "add_one":
                    x = x + tf.constant(1, dtype=dtype)
                return {spec.output_name: tf.identity(x)}

        module = Model()
        tf.saved_model.save(
            module, str(root / spec.name / "1"), signatures={"serving_default": module.serve}
        )
