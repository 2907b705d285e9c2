"""Read YAML files into validated configuration objects, or raise ConfigError saying why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dl_inference.kernel.config.errors import describe_errors
from dl_inference.kernel.config.model_config import ModelConfig
from dl_inference.kernel.config.schema import ServerConfig
from dl_inference.spi.errors import ConfigError


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The YAML document at ``path`` as a mapping (an empty file is an empty mapping)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, not {type(data).__name__}"
        )
    return data


def parse_server_config(data: dict[str, Any], source: str = "config") -> ServerConfig:
    """Validate a server configuration mapping; ConfigError lists every problem."""
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        lines = describe_errors(exc, ServerConfig)
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_server_config(path: str | Path) -> ServerConfig:
    """Read and validate the server YAML; relative paths in it resolve against its folder."""
    path = Path(path)
    config = parse_server_config(read_yaml_mapping(path), str(path))
    if config.model_repository is not None and not config.model_repository.is_absolute():
        config.model_repository = (path.parent / config.model_repository).resolve()
    tls = config.server.tls
    if tls is not None:
        for key in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(tls, key)
            if value is not None and not value.is_absolute():
                setattr(tls, key, (path.parent / value).resolve())
    for route in config.routes:
        # Node files, like the repository, are relative to the config file.
        discovery = route.discovery
        for key in ("file", "nodefile"):
            value = getattr(discovery, key, None)
            if value is not None and not value.is_absolute():
                setattr(discovery, key, (path.parent / value).resolve())
    return config


def load_model_config_file(path: Path, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """A model's config.yaml (optional) merged with the server's overrides for it."""
    data = read_yaml_mapping(path) if path.is_file() else {}
    data.update(overrides or {})
    try:
        return ModelConfig.from_mapping(data)
    except ValidationError as exc:
        lines = describe_errors(exc, ModelConfig)
        raise ConfigError(
            f"{path}: invalid model configuration:\n  " + "\n  ".join(lines)
        ) from None
