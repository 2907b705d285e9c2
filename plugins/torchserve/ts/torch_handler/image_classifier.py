"""``image_classifier``: TorchServe's default image classification handler, by name.

As TorchServe 0.12 documents it: each image resized (shorter side 256), centre-cropped to
224, made a tensor and normalized with ImageNet's mean and std; the model's logits through
softmax, the ``topk`` (5) most likely classes per request, named through
``index_to_name.json``: each request's answer is ``{label: probability, ...}``.
"""

from __future__ import annotations

from typing import Any

from ts.torch_handler import transforms
from ts.torch_handler.vision_handler import VisionHandler
from ts.utils.util import map_class_to_label


class ImageClassifier(VisionHandler):
    """An image in, its ``topk`` classes with their probabilities out."""

    topk = 5
    image_processing = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    def postprocess(self, data: Any) -> list[dict[str, Any]]:
        """Softmax over the classes, then the ``topk`` best per request, labelled."""
        import torch
        import torch.nn.functional as F

        probabilities = F.softmax(data, dim=1)
        probs, classes = torch.topk(probabilities, self.topk, dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
