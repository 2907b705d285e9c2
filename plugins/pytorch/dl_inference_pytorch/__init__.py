"""dl-inference-pytorch: the ``pytorch`` backend and the ``seldon`` wire protocol.

Registered through the ``dl_inference`` entry-point group. Importing this package does
not import torch: the backend imports it when a model loads.
"""

from __future__ import annotations

import dl_inference
from dl_inference import BackendRegistry, ProtocolRegistry

__version__ = "0.1.0"
DLI_HOOKSPEC_VERSION = "1.0"


@dl_inference.hookimpl
def dli_register_backends(registry: BackendRegistry) -> None:
    from dl_inference_pytorch.backend import PyTorchBackend

    registry.add(PyTorchBackend)


@dl_inference.hookimpl
def dli_register_protocols(registry: ProtocolRegistry) -> None:
    from dl_inference_pytorch.seldon import SeldonProtocol

    registry.add(SeldonProtocol)


@dl_inference.hookimpl
def dli_register_converters(registry: dl_inference.ConverterRegistry) -> None:
    from dl_inference_pytorch.convert import PthConverter

    registry.add(PthConverter)
