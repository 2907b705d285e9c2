"""What several tfserving test files share: the method paths, and the add-one model."""

from __future__ import annotations

from pathlib import Path

from dl_inference.testing import write_python_model
from dl_inference_tfserving.protocol import MODEL_SERVICE, PREDICTION_SERVICE, SEED_SERVICE

PREDICT = f"/{PREDICTION_SERVICE}/Predict"
SEED_PREDICT = f"/{SEED_SERVICE}/Predict"
# Every gRPC method the plugin binds.
GRPC_METHODS = [
    PREDICT,
    f"/{PREDICTION_SERVICE}/Classify",
    f"/{PREDICTION_SERVICE}/Regress",
    f"/{PREDICTION_SERVICE}/MultiInference",
    f"/{PREDICTION_SERVICE}/GetModelMetadata",
    f"/{MODEL_SERVICE}/GetModelStatus",
    f"/{MODEL_SERVICE}/HandleReloadConfigRequest",
    SEED_PREDICT,
]


def write_add_one(repo: Path, name: str = "pyadd") -> Path:
    """A python model ``name``: FP32 ``x`` [-1] -> ``y = x + 1``."""
    return write_python_model(
        repo,
        name,
        """
        import numpy as np
        from dl_inference import PythonModel

        class AddOne(PythonModel):
            def predict(self, inputs):
                return {"y": inputs["x"] + np.float32(1)}
        """,
        config="""
        inputs: [{name: x, datatype: FP32, shape: [-1]}]
        outputs: [{name: y, datatype: FP32, shape: [-1]}]
        """,
    )
