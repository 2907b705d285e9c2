"""dl-inference-tfserving: the ``tfserving`` protocol, TF Serving's gRPC and REST APIs (and the
seed's unified ``Predict``) for every backend's models, with no framework dependency.

Importing this module is cheap and never imports TensorFlow: the server side uses its own
copy of TF Serving's messages. ``plugin_settings.tfserving`` is
:mod:`dl_inference_tfserving.settings`. Backends whose models carry SignatureDefs implement
:class:`dl_inference_tfserving.signatures.SignatureBackend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dl_inference import ProtocolRegistry, hookimpl

DLI_HOOKSPEC_VERSION = "1.8"


@hookimpl
def dli_register_protocols(registry: ProtocolRegistry) -> None:
    from dl_inference_tfserving.protocol import TFServingProtocol

    registry.add(TFServingProtocol)


@hookimpl
def dli_configure(settings: dict[str, Any], config_dir: Path) -> None:
    """``plugin_settings.tfserving``: Predict's answer encoding, server-wide and per model;
    TF Serving's model config and batching parameters files (relative to ``config_dir``)."""
    from dl_inference_tfserving.settings import configure

    configure(settings, config_dir)


@hookimpl
def dli_configured_models() -> list[tuple[str, Path]]:
    """The models of ``plugin_settings.tfserving.model_config_file`` (TF Serving's
    ``models.config``), each served from its ``base_path``, with or without a
    ``model_repository``."""
    from dl_inference_tfserving.settings import configured_models

    return configured_models()
