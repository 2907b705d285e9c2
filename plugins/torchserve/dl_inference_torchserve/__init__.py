"""dl-inference-torchserve: serve TorchServe model archives (``.mar``) unchanged.

Registers the ``torchserve`` backend (an archive's custom handler, run as TorchServe 0.12
runs it, with the ``ts`` API this distribution ships), the ``torchserve`` protocol
(``/predictions``, ``/ping``) and finds ``<repo>/*.mar`` files as models
(``dli_repository_models``: each archive unpacked into a cache folder), and those of
config.properties' ``model_store``, with or without a repository (``dli_configured_models``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import dl_inference
from dl_inference import BackendRegistry, ProtocolRegistry

__version__ = "0.2.0"
DLI_HOOKSPEC_VERSION = "1.8"

_archives = None
_properties = None


@dl_inference.hookimpl
def dli_configure(settings: dict[str, Any], config_dir: Path) -> dict[str, tuple[Any, str]]:
    """``plugin_settings.torchserve``: an optional TorchServe config.properties; its
    addresses and ports are where the server listens unless a flag or the YAML says."""
    global _properties, _archives
    from dl_inference_torchserve.settings import parse_settings

    _properties = parse_settings(settings, config_dir)
    _archives = None
    return _properties.listeners


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
    store = _properties.model_store if _properties is not None else None
    if store is not None and root.resolve() == store:
        return []  # config.properties' model_store: offered by dli_configured_models
    return _cache().models(root)


@dl_inference.hookimpl
def dli_configured_models() -> list[tuple[str, Path]]:
    """The archives of config.properties' ``model_store`` (``load_models`` selecting)."""
    store = _properties.model_store if _properties is not None else None
    return _cache().models(store) if store is not None else []


@dl_inference.hookimpl
def dli_server_stopping() -> None:
    """The management API's copies of registered archives go when the process exits."""
    management = sys.modules.get("dl_inference_torchserve.management")
    if management is not None:  # else no management API ran here: nothing was copied
        management.server_stopping()


def _cache() -> Any:
    global _archives
    from dl_inference_torchserve.archive import ArchiveCache

    if _archives is None:
        _archives = ArchiveCache(properties=_properties)
    return _archives
