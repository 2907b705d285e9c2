"""dl-inference-tensorflow: the ``tensorflow`` backend (SavedModel, every signature).

TF Serving's API comes with it from ``dl-inference-tfserving`` (a dependency), whose
``SignatureBackend`` interface this backend implements. Importing this module is cheap:
TensorFlow is imported only when a model loads.
"""

from __future__ import annotations

from dl_inference import BackendRegistry, hookimpl

DLI_HOOKSPEC_VERSION = "1.1"


@hookimpl
def dli_register_backends(registry: BackendRegistry) -> None:
    from dl_inference_tensorflow.backend import TensorFlowBackend

    registry.add(TensorFlowBackend)
