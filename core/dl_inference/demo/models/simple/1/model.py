"""Sum and difference of two INT32 tensors (the model Triton's client examples call)."""

import numpy as np

from dl_inference import PythonModel


class Simple(PythonModel):
    def predict(self, inputs: dict[str, np.ndarray], **parameters) -> dict[str, np.ndarray]:
        a, b = inputs["INPUT0"], inputs["INPUT1"]
        return {"OUTPUT0": a + b, "OUTPUT1": a - b}
