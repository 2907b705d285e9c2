"""dl-inference-numpy-example: the ``numpy`` backend, an example third-party plugin.

dl-inference finds this module through the ``dl_inference`` entry point declared in
pyproject.toml and calls the ``@hookimpl`` functions below once at start-up.
``DLI_HOOKSPEC_VERSION`` says which hook contract it was written for: a kernel with another
major version refuses it with an upgrade hint instead of failing obscurely later.
"""

from __future__ import annotations

import dl_inference

__version__ = "0.2.0"
DLI_HOOKSPEC_VERSION = "1.1"


@dl_inference.hookimpl
def dli_register_backends(registry: dl_inference.BackendRegistry) -> None:
    # Imported here, not at the top: `dl-inference plugins` stays fast, and a plugin whose
    # framework is heavy (torch, onnxruntime) only pays for it when a model loads.
    from dl_inference_numpy_example.backend import NumpyBackend

    registry.add(NumpyBackend)
