"""The model repository on disk: ``<repo>/<model>/<version>/<files>`` + optional config.yaml
(a Triton model folder: its config.pbtxt, see :mod:`dl_inference.kernel.config.triton_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from dl_inference.kernel.config.loader import load_model_config_file
from dl_inference.kernel.config.model_config import ModelConfig
from dl_inference.kernel.config.triton_config import CONFIG_PBTXT, load_config_pbtxt
from dl_inference.spi.errors import ConfigError

log = structlog.get_logger("dl_inference.repository")

CONFIG_FILE = "config.yaml"


@dataclass
class ModelSource:
    """One model folder: its name, numeric version folders found and its configuration.

    ``triton_names``: the Triton backend and platform of a folder configured by config.pbtxt
    (the installed backend that claims one of them serves it; empty for config.yaml).
    """

    name: str
    path: Path
    versions: list[int]
    config: ModelConfig
    triton_names: tuple[str, ...] = ()
    # Why the folder's configuration could not be read ("" when it could); the model is
    # then listed UNAVAILABLE with this reason, its ``config`` being the defaults.
    error: str = ""
    # The server config's ``models.<name>`` mapping merged into ``config``.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Found in the repository by a plugin (``dli_repository_models``: an archive), its
    # folder elsewhere (a cache): unloaded when the plugin no longer finds it.
    contributed: bool = False
    # Loaded through the management API from a folder a protocol prepared (ModelControl.
    # load_folder): the repository poll leaves the model alone until it is unloaded.
    managed: bool = False

    def version_path(self, version: int) -> Path:
        return self.path / str(version)


# Folders already reported as skipped (see scan_repository).
_SKIPPED: set[Path] = set()


def scan_repository(
    root: Path, overrides: dict[str, dict[str, Any]] | None = None, *, strict: bool = True
) -> list[ModelSource]:
    """Every model folder under ``root``. Folders without numeric versions are skipped (logged).

    ``overrides`` are the server config's ``models.<name>`` mappings; an override for a
    model that is not in the repository is a ConfigError. A folder whose config.yaml is
    invalid raises ConfigError when ``strict``, else comes back with ``error`` set.
    """
    overrides = overrides or {}
    if not root.is_dir():
        raise ConfigError(
            f"model_repository {str(root)!r} is not a directory; give a folder laid out as "
            "<repo>/<model>/<version>/<files>"
        )
    sources = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        source = read_model_folder(folder, overrides.get(folder.name), strict=strict)
        if source is None:
            # Once per folder: the poll scans every few seconds, and a folder a plugin reads
            # in its own format (dli_repository_models) stays as it is.
            if folder not in _SKIPPED:
                _SKIPPED.add(folder)
                log.warning(
                    "folder skipped: no numeric version folders",
                    folder=str(folder),
                    hint=f"put the model files in {folder}/1/",
                )
            continue
        sources.append(source)
    unknown = sorted(set(overrides) - {s.name for s in sources})
    if unknown:
        raise ConfigError(
            f"models.{unknown[0]}: no such model in {root} (models found: "
            f"{', '.join(s.name for s in sources) or 'none'})"
        )
    return sources


def version_numbers(folder: Path) -> list[int]:
    """The numeric version folders of ``folder``, in order: none, and it is no model folder."""
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def configured_by_config_pbtxt(folder: Path) -> bool:
    """Whether the model folder ``folder`` is a Triton model: a ``config.pbtxt`` and no
    ``config.yaml`` (which would win)."""
    return not (folder / CONFIG_FILE).is_file() and (folder / CONFIG_PBTXT).is_file()


def read_model_folder(
    folder: Path,
    overrides: dict[str, Any] | None = None,
    name: str | None = None,
    *,
    strict: bool = True,
) -> ModelSource | None:
    """The model in ``folder`` (served as ``name``, default the folder's), or ``None``
    when it has no numeric version folder. Its config.yaml configures it; without one, a
    Triton config.pbtxt does. An invalid configuration raises ConfigError when ``strict``,
    else sets the source's ``error``."""
    versions = version_numbers(folder)
    if not versions:
        return None
    triton: tuple[str, ...] = ()
    try:
        if configured_by_config_pbtxt(folder):
            config, triton = load_config_pbtxt(folder, overrides)
        else:
            config = load_model_config_file(folder / CONFIG_FILE, overrides)
    except ConfigError as exc:
        # A folder that reads well without the server config's models.<name> is fine: the
        # server config is at fault, which is never held as a broken folder.
        bare = read_model_folder(folder, None, name, strict=False) if overrides else None
        if strict or (bare is not None and not bare.error):
            raise
        return ModelSource(
            name or folder.name,
            folder,
            versions,
            ModelConfig(),
            error=str(exc),
            overrides=dict(overrides or {}),
        )
    return ModelSource(
        name or folder.name, folder, versions, config, triton, overrides=dict(overrides or {})
    )
