"""Typed configuration: the server YAML and per-model config.yaml, validated up front."""

from dl_inference.kernel.config.loader import (
    load_model_config_file,
    load_server_config,
    parse_server_config,
)
from dl_inference.kernel.config.model_config import ModelConfig, TensorConfig, VersionPolicy
from dl_inference.kernel.config.schema import (
    GrpcConfig,
    HttpConfig,
    PluginsConfig,
    ServerConfig,
    ServerSection,
)

__all__ = [
    "GrpcConfig",
    "HttpConfig",
    "ModelConfig",
    "PluginsConfig",
    "ServerConfig",
    "ServerSection",
    "TensorConfig",
    "VersionPolicy",
    "load_model_config_file",
    "load_server_config",
    "parse_server_config",
]
