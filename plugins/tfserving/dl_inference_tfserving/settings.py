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

TF Serving's own configuration files are read as they are
(:mod:`dl_inference_tfserving.model_server_config`)::

    plugin_settings:
      tfserving:
        model_config_file: /models/models.config            # --model_config_file
        model_config_file_poll_wait_seconds: 60              # its flag of that name
        batching_parameters_file: /models/batching.config    # --batching_parameters_file
        enable_per_model_batching_parameters: false          # its flag of that name

Relative paths are taken from the server YAML's folder, as its ``model_repository`` is. The
file's models are served with or without a ``model_repository`` (and beside ``routes``); with
one, the repository's folders are served too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dl_inference import ConfigError, describe_errors

if TYPE_CHECKING:
    from dl_inference_tfserving.model_server_config import ModelConfigFile

log = structlog.get_logger("dl_inference.tfserving")
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
    # TF Serving's --model_config_file, --model_config_file_poll_wait_seconds (0: read once),
    # --batching_parameters_file (applied to every model of the model config file) and
    # --enable_per_model_batching_parameters (each model's batching_params.pbtxt instead).
    model_config_file: Path | None = None
    model_config_file_poll_wait_seconds: float = Field(default=0.0, ge=0)
    batching_parameters_file: Path | None = None
    enable_per_model_batching_parameters: bool = False

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


def model_config_file(settings: TFServingSettings) -> ModelConfigFile | None:
    """The section's model config file, read (with its batching parameters), or None."""
    if settings.model_config_file is None:
        for key in ("batching_parameters_file", "enable_per_model_batching_parameters"):
            if getattr(settings, key):
                raise ConfigError(
                    f"{PREFIX}.{key}: applies to the models of {PREFIX}.model_config_file, "
                    "which is not set; for a model_repository's models set max_batch_size "
                    "and max_queue_delay_ms in their config.yaml"
                )
        return None
    from dl_inference_tfserving.model_server_config import ModelConfigFile

    return ModelConfigFile(
        settings.model_config_file,
        settings.batching_parameters_file,
        settings.model_config_file_poll_wait_seconds,
        per_model_batching=settings.enable_per_model_batching_parameters,
    )


# Set by the plugin's dli_configure, once per server process, before any handler is built.
_configured = TFServingSettings()
_model_config_file: ModelConfigFile | None = None


def configure(settings: Mapping[str, Any], config_dir: Path | None = None) -> None:
    """Validate ``plugin_settings.tfserving`` and make it this process's settings; relative
    file paths are taken from ``config_dir`` (the server YAML's folder)."""
    global _configured, _model_config_file
    _configured = parse_settings(settings)
    if config_dir is not None:
        for key in ("model_config_file", "batching_parameters_file"):
            value = getattr(_configured, key)
            if value is not None and not value.is_absolute():
                setattr(_configured, key, config_dir / value)
    _model_config_file = model_config_file(_configured)


def current() -> TFServingSettings:
    """This process's settings (TF Serving's defaults until :func:`configure` ran)."""
    return _configured


def configured_models() -> list[tuple[str, Path]]:
    """The model config file's models as model folders (none without one)."""
    return _model_config_file.models() if _model_config_file is not None else []
