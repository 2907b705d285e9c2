"""dl-inference-tensorflow: the ``tensorflow`` backend (SavedModel) and the ``tfserving``
protocol (TF Serving's gRPC and REST APIs).

Importing this module is cheap: TensorFlow is imported only when a model loads.
"""

from __future__ import annotations

from dl_inference import BackendRegistry, ProtocolRegistry, hookimpl

DLI_HOOKSPEC_VERSION = "1.0"


@hookimpl
def dli_register_backends(registry: BackendRegistry) -> None:
    from dl_inference_tensorflow.backend import TensorFlowBackend

    registry.add(TensorFlowBackend)


@hookimpl
def dli_register_protocols(registry: ProtocolRegistry) -> None:
    from dl_inference_tensorflow.protocol import TFServingProtocol

    registry.add(TFServingProtocol)
