"""The image transforms TorchServe's image handlers compose, without torchvision.

Written for dl-inference with the semantics torchvision documents for PIL images:
``Resize(n)`` scales the shorter side to ``n`` (the longer one to
``int(n * long / short)``) with PIL's bilinear filter (antialiased), leaving an image of that
size untouched; ``CenterCrop(n)`` takes the centre ``n`` x ``n`` (offsets rounded); ``ToTensor``
gives a float CHW tensor in [0, 1]; ``Normalize(mean, std)`` subtracts and divides per
channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class Compose:
    """The transforms applied in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any) -> Any:
        for transform in self.transforms:
            image = transform(image)
        return image


class Resize:
    """The shorter side to ``size`` pixels, the aspect ratio kept (bilinear)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        new = (new_short, new_long) if width <= height else (new_long, new_short)
        if new == (width, height):
            return image
        return image.resize(new, Image.Resampling.BILINEAR)


class CenterCrop:
    """The centre ``size`` x ``size`` of an image at least that large."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Any) -> Any:
        width, height = image.size
        if width < self.size or height < self.size:
            # torchvision pads with zeros first; the handlers resize before cropping.
            raise ValueError(f"image {width}x{height} is smaller than the crop {self.size}")
        top = round((height - self.size) / 2.0)
        left = round((width - self.size) / 2.0)
        return image.crop((left, top, left + self.size, top + self.size))


class ToTensor:
    """A PIL image as a float32 CHW tensor in [0, 1]."""

    def __call__(self, image: Any) -> Any:
        import numpy as np
        import torch

        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        scale = 255.0 if array.dtype == np.uint8 else 1.0
        tensor = torch.from_numpy(array.astype(np.float32) / scale)
        return tensor.permute(2, 0, 1).contiguous()


class Normalize:
    """``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, tensor: Any) -> Any:
        import torch

        if tensor.shape[-3] != len(self.mean):
            # torchvision fails here too (its in-place arithmetic cannot broadcast): a
            # grayscale or RGBA image is not silently turned into three channels.
            raise ValueError(
                f"the image has {tensor.shape[-3]} channels; {len(self.mean)} are expected "
                "(an RGB image)"
            )
        mean = torch.tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return (tensor - mean) / std
