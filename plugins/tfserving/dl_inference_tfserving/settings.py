"""``plugin_settings.tfserving`` of the server YAML: how ``Predict`` writes its output tensors.

TF Serving answers ``Predict`` with each output's values in the typed field of its dtype
(``float_val``, ``int_val``, ...): its ``predict_response_tensor_serialization_option``
is ``AS_PROTO_FIELD`` unless the server is built or configured for ``AS_PROTO_CONTENT``,
the values' raw bytes in ``tensor_content``. The same option, under the same name, is
set here for the whole server and overridden per model::

    plugin_settings:
      tfserving:
        predict_response_tensor_serialization_option: AS_PROTO_FIELD   # the default
        models:
          resnet50: {predict_response_tensor_serialization_option: AS_PROTO_CONTENT}

It applies to gRPC ``Predict`` and the seed's ``WpaiDLPredictOnlineService/Predict``, the
only answers that carry TensorProtos; REST answers JSON, and ``Classify``, ``Regress`` and
``MultiInference`` answer their own result messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dl_inference import ConfigError, describe_errors

PREFIX = "plugin_settings.tfserving"
AS_PROTO_FIELD = "AS_PROTO_FIELD"
AS_PROTO_CONTENT = "AS_PROTO_CONTENT"
SerializationOption = Literal["AS_PROTO_FIELD", "AS_PROTO_CONTENT"]


class ModelSettings(BaseModel):
    """One model's overrides, under ``plugin_settings.tfserving.models.<model name>``."""

    model_config = ConfigDict(extra="forbid")

    predict_response_tensor_serialization_option: SerializationOption | None = None


class TFServingSettings(BaseModel):
    """The whole ``plugin_settings.tfserving`` section; empty means TF Serving's defaults."""

    model_config = ConfigDict(extra="forbid")

    predict_response_tensor_serialization_option: SerializationOption = AS_PROTO_FIELD
    models: dict[str, ModelSettings] = Field(default_factory=dict)

    def tensor_content(self, model: str) -> bool:
        """Whether ``Predict`` answers ``model``'s outputs in ``tensor_content``."""
        override = self.models.get(model)
        option = override and override.predict_response_tensor_serialization_option
        return (option or self.predict_response_tensor_serialization_option) == AS_PROTO_CONTENT


def parse_settings(settings: Mapping[str, Any]) -> TFServingSettings:
    """Validate ``settings``; a ConfigError names the key (``plugin_settings.tfserving...``)."""
    try:
        return TFServingSettings.model_validate(dict(settings))
    except ValidationError as exc:
        raise ConfigError("; ".join(describe_errors(exc, TFServingSettings, PREFIX))) from None


# Set by the plugin's dli_configure, once per server process, before any handler is built.
_configured = TFServingSettings()


def configure(settings: Mapping[str, Any]) -> None:
    """Validate ``plugin_settings.tfserving`` and make it this process's settings."""
    global _configured
    _configured = parse_settings(settings)


def current() -> TFServingSettings:
    """This process's settings (TF Serving's defaults until :func:`configure` ran)."""
    return _configured
