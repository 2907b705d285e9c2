"""dl-inference-seldon: the ``seldon`` wire protocol (Seldon Core's ``SeldonMessage``).

Registered through the ``dl_inference`` entry-point group. It serves any backend's models
and needs no deep-learning framework: nothing here imports torch or TensorFlow.
"""

from __future__ import annotations

import dl_inference
from dl_inference import ProtocolRegistry

__version__ = "0.2.0"
DLI_HOOKSPEC_VERSION = "1.1"


@dl_inference.hookimpl
def dli_register_protocols(registry: ProtocolRegistry) -> None:
    from dl_inference_seldon.protocol import SeldonProtocol

    registry.add(SeldonProtocol)
