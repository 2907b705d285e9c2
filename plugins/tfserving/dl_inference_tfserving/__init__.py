"""dl-inference-tfserving: the ``tfserving`` protocol, TF Serving's gRPC and REST APIs (and the
seed's unified ``Predict``) for every backend's models, with no framework dependency.

Importing this module is cheap and never imports TensorFlow: the server side uses its own
copy of TF Serving's messages. ``plugin_settings.tfserving`` is
:mod:`dl_inference_tfserving.settings`. Backends whose models carry SignatureDefs implement
:class:`dl_inference_tfserving.signatures.SignatureBackend`.
"""

from __future__ import annotations

from typing import Any

from dl_inference import ProtocolRegistry, hookimpl

DLI_HOOKSPEC_VERSION = "1.1"


@hookimpl
def dli_register_protocols(registry: ProtocolRegistry) -> None:
    from dl_inference_tfserving.protocol import TFServingProtocol

    registry.add(TFServingProtocol)


@hookimpl
def dli_configure(settings: dict[str, Any]) -> None:
    """``plugin_settings.tfserving``: Predict's answer encoding, server-wide and per model."""
    from dl_inference_tfserving.settings import configure

    configure(settings)
