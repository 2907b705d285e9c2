"""Upper-cases every string of a BYTES tensor."""

import numpy as np

from dl_inference import PythonModel


class TextUpper(PythonModel):
    def predict(self, inputs: dict[str, np.ndarray], **parameters) -> dict[str, np.ndarray]:
        text = inputs["TEXT"]
        upper = np.array(
            [value.decode("utf-8").upper().encode("utf-8") for value in text.flat], dtype=object
        )
        return {"UPPER": upper.reshape(text.shape)}
