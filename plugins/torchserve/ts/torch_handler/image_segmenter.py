"""``image_segmenter``: TorchServe's default image segmentation handler, by name.

As TorchServe 0.12 documents it: images prepared as for ``image_classifier`` (shorter side
256, centre crop 224, ImageNet normalization); the model answers a dict whose ``"out"`` is
``[N, K, H, W]`` class scores (torchvision's segmentation models); each request's answer is
``H x W`` pairs ``[class index (as a float), its softmax probability]``.
"""

from __future__ import annotations

from typing import Any

from ts.torch_handler import transforms
from ts.torch_handler.vision_handler import VisionHandler


class ImageSegmenter(VisionHandler):
    """An image in, per pixel its most likely class and that class's probability out."""

    image_processing = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )

    def postprocess(self, data: Any) -> list[Any]:
        """Softmax over the classes of ``data["out"]``, then per pixel the best class."""
        import torch

        probabilities = torch.nn.functional.softmax(data["out"], dim=1)
        best = torch.max(probabilities, dim=1)
        pairs = torch.stack([best.indices.to(best.values.dtype), best.values], dim=3)
        return pairs.tolist()
