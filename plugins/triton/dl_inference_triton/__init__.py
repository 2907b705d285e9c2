"""dl-inference-triton: serve Triton model repositories unchanged.

Registers the ``triton_python`` backend (Triton python-backend models: ``model.py`` with
``class TritonPythonModel``), which claims config.pbtxt's ``backend: "python"``, and ships
the ``triton_python_backend_utils`` module those models import. Registered through the
``dl_inference`` entry-point group.
"""

from __future__ import annotations

import dl_inference
from dl_inference import BackendRegistry

__version__ = "0.2.0"
DLI_HOOKSPEC_VERSION = "1.1"


@dl_inference.hookimpl
def dli_register_backends(registry: BackendRegistry) -> None:
    from dl_inference_triton.backend import TritonPythonBackend

    registry.add(TritonPythonBackend)
