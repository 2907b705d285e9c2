"""dl-inference-onnx: the ``onnx`` backend (ONNX Runtime) and the ``pytorch-to-onnx`` converter.

Registered through the ``dl_inference`` entry-point group. Importing this package imports
neither onnxruntime nor torch: the backend imports onnxruntime when a model loads, the
converter imports torch when it runs.
"""

from __future__ import annotations

import dl_inference
from dl_inference import BackendRegistry, ConverterRegistry

__version__ = "0.2.0"
DLI_HOOKSPEC_VERSION = "1.1"


@dl_inference.hookimpl
def dli_register_backends(registry: BackendRegistry) -> None:
    from dl_inference_onnx.backend import OnnxBackend

    registry.add(OnnxBackend)


@dl_inference.hookimpl
def dli_register_converters(registry: ConverterRegistry) -> None:
    from dl_inference_onnx.convert import PyTorchToOnnx

    registry.add(PyTorchToOnnx)
