"""dl-inference-torchserve: serve TorchServe model archives (``.mar``) unchanged.

Registers the ``torchserve`` backend (an archive's custom handler, run as TorchServe 0.12
runs it, with the ``ts`` API this distribution ships), the ``torchserve`` protocol
(``/predictions``, ``/ping``) and finds ``<repo>/*.mar`` files as models
(``dli_repository_models``: each archive unpacked into a cache folder).
"""

from __future__ import annotations

from pathlib import Path

import dl_inference
from dl_inference import BackendRegistry, ProtocolRegistry

__version__ = "0.2.0"
DLI_HOOKSPEC_VERSION = "1.2"

_archives = None


@dl_inference.hookimpl
def dli_register_backends(registry: BackendRegistry) -> None:
    from dl_inference_torchserve.backend import TorchServeBackend

    registry.add(TorchServeBackend)


@dl_inference.hookimpl
def dli_register_protocols(registry: ProtocolRegistry) -> None:
    from dl_inference_torchserve.protocol import TorchServeProtocol

    registry.add(TorchServeProtocol)


@dl_inference.hookimpl
def dli_repository_models(root: Path) -> list[tuple[str, Path]]:
    global _archives
    from dl_inference_torchserve.archive import ArchiveCache

    if _archives is None:
        _archives = ArchiveCache()
    return _archives.models(root)
