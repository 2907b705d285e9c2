"""``ts.torch_handler.vision_handler.VisionHandler``: the base of TorchServe's image handlers.

As TorchServe 0.12 documents it: each request's ``data`` (or ``body``) is an image file's
bytes (a ``str`` is base64 of them) opened with PIL and put through the class's
``image_processing``, or a nested list of numbers taken as the image tensor itself; the
batch is the stacked tensors. torchvision is not needed: the transforms are in
:mod:`ts.torch_handler.transforms`, written for dl-inference with torchvision's semantics.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from abc import ABC
from typing import Any

from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

#: The client messages of an image request PIL cannot use. Fixed sentences, not PIL's own
#: text: that names the in-memory file object (``<_io.BytesIO object at 0x...>``), which
#: tells a client nothing.
NOT_AN_IMAGE = (
    "the request is not an image file: send the bytes of a JPEG, PNG or another image file "
    "PIL reads (as the body or a form's data field; base64 in a text body)"
)
DAMAGED_IMAGE = "the image file is damaged or cut short: PIL cannot decode it; send the whole file"
TOO_MANY_PIXELS = (
    "the image has more pixels than this server opens (its limit_max_image_pixels): "
    "send a smaller image"
)


def _open_image(data: bytes | bytearray) -> Any:
    """The decoded PIL image of a request's bytes; a ``PredictionException`` (400) saying
    what is wrong with them when PIL cannot decode them (a client's mistake: TorchServe
    fails the batch with 503)."""
    from PIL import Image, UnidentifiedImageError

    try:
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise PredictionException(NOT_AN_IMAGE, 400) from None
    except Image.DecompressionBombError:
        raise PredictionException(TOO_MANY_PIXELS, 400) from None
    try:
        opened.load()
    except Image.DecompressionBombError:
        raise PredictionException(TOO_MANY_PIXELS, 400) from None
    # What PIL's decoders raise on bytes that start as an image and then go wrong.
    except (OSError, SyntaxError, EOFError, ValueError, struct.error):
        raise PredictionException(DAMAGED_IMAGE, 400) from None
    return opened


class VisionHandler(BaseHandler, ABC):
    """Base class of the image handlers: images in, the model's batch tensor out."""

    image_processing: Any = None

    def initialize(self, context: Any) -> None:
        """BaseHandler's load; PIL's decompression-bomb limit is lifted unless the
        context's ``limit_max_image_pixels`` is set (TorchServe's setting)."""
        from PIL import Image

        super().initialize(context)
        if not context.system_properties.get("limit_max_image_pixels"):
            Image.MAX_IMAGE_PIXELS = None
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        """One tensor per request (image bytes through ``image_processing``, or a list of
        numbers as the tensor), stacked into the batch on the model's device."""
        import torch

        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                try:
                    image = base64.b64decode(image, validate=True)
                except (binascii.Error, ValueError):
                    # A client's mistake: 400 (TorchServe fails the batch with 503).
                    raise PredictionException(
                        "a text body must be the image file in base64", 400
                    ) from None
            if isinstance(image, (bytes, bytearray)):
                opened = _open_image(image)
                try:
                    images.append(self.image_processing(opened))
                except ValueError as exc:  # the transforms' refusals: the image's own
                    raise PredictionException(f"the image cannot be used: {exc}", 400) from None
            else:
                images.append(torch.FloatTensor(image))
        return torch.stack(images).to(self.device)

    def get_insights(self, tensor_data: Any, _: Any, target: int = 0) -> Any:
        """Integrated gradients of the input (needs ``captum`` in the server's environment)."""
        try:
            from captum.attr import IntegratedGradients
        except ImportError:
            raise PredictionException(
                "explanations need captum: install it into the server's environment", 501
            ) from None
        attributions = IntegratedGradients(self.model)
        return attributions.attribute(tensor_data, target=target, n_steps=15).tolist()
