"""``object_detector``: TorchServe's default object detection handler, by name.

As TorchServe 0.12 documents it: each image only made a float tensor in [0, 1] (no resize:
the batch's images must share a size to be stacked); the model answers one dict per image
with ``boxes`` (``[x1, y1, x2, y2]``), ``labels`` and ``scores`` (torchvision's detection
models); each request's answer lists the detections scoring at least ``threshold`` (0.5),
each ``{"<label>": [x1, y1, x2, y2], "score": <score>}``, the label named through
``index_to_name.json``.
"""

from __future__ import annotations

from typing import Any

from ts.torch_handler import transforms
from ts.torch_handler.vision_handler import VisionHandler
from ts.utils.util import map_class_to_label


class ObjectDetector(VisionHandler):
    """An image in, its labelled boxes above the score threshold out."""

    image_processing = transforms.Compose([transforms.ToTensor()])
    threshold = 0.5

    def postprocess(self, data: Any) -> list[list[dict[str, Any]]]:
        """Per image, each detection at or above ``threshold``: ``{label: box, "score"}``."""
        result = []
        for row in data:
            kept = row["scores"] >= self.threshold
            detections = []
            for label, box, score in zip(
                row["labels"][kept].tolist(),
                row["boxes"][kept].tolist(),
                row["scores"][kept].tolist(),
                strict=True,
            ):
                detection = map_class_to_label([[box]], self.mapping, [[label]])[0]
                detection["score"] = score
                detections.append(detection)
            result.append(detections)
        return result
