"""dl-inference-pytorch: the ``pytorch`` backend and the ``.pth`` converter.

Registered through the ``dl_inference`` entry-point group. Importing this package does
not import torch: the backend imports it when a model loads. The Seldon protocol its
users expect is a distribution of its own, ``dl-inference-seldon``, installed with it.
"""

from __future__ import annotations

import dl_inference
from dl_inference import BackendRegistry

__version__ = "0.2.0"
DLI_HOOKSPEC_VERSION = "1.1"


@dl_inference.hookimpl
def dli_register_backends(registry: BackendRegistry) -> None:
    from dl_inference_pytorch.backend import PyTorchBackend

    registry.add(PyTorchBackend)


@dl_inference.hookimpl
def dli_register_converters(registry: dl_inference.ConverterRegistry) -> None:
    from dl_inference_pytorch.convert import PthConverter

    registry.add(PthConverter)
