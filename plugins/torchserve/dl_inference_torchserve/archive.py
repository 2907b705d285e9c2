"""``.mar`` archives in the model repository, unpacked into a cache as model folders.

``torch-model-archiver`` writes a zip holding ``MAR-INF/MANIFEST.json`` (the model's name,
version, handler and files) beside the model files. Each ``<repo>/<file>.mar`` becomes the
model folder ``<cache>/<key>/<modelName>/<n>/`` holding the archive's files as they are,
served by the ``torchserve`` backend (the folder's config.yaml names it). An archive is
unpacked again only when its size or modification time changes; an unchanged one keeps its
folder untouched, so the repository poll sees no change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from dl_inference_torchserve.settings import Properties, model_config

log = structlog.get_logger("dl_inference.torchserve")

MANIFEST = "MAR-INF/MANIFEST.json"
SUFFIX = ".mar"
_STAMP = ".dli-archive-stamp"


def cache_root() -> Path:
    """Where archives are unpacked: ``$DLI_TORCHSERVE_CACHE``, else a per-user folder in
    the system's temporary directory, made private to this user. Another user could have
    made that folder first and planted a handler in it: a folder not owned by this user,
    or writable by others, is not used (a fresh private folder is, and logged)."""
    configured = os.environ.get("DLI_TORCHSERVE_CACHE")
    if configured:
        return Path(configured)
    shared = Path(tempfile.gettempdir()) / f"dl-inference-torchserve-{os.getuid()}"
    shared.mkdir(mode=0o700, exist_ok=True)
    if private(shared):
        return shared
    fresh = Path(tempfile.mkdtemp(prefix="dl-inference-torchserve-"))
    log.warning(
        "archive cache folder not used: another user owns it or may write to it",
        folder=str(shared),
        using=str(fresh),
    )
    return fresh


def private(folder: Path) -> bool:
    """Whether ``folder`` (not a link) belongs to this user and no one else may write to it."""
    info = folder.lstat()
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    """A version folder's MAR-INF/MANIFEST.json."""
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise ValueError(f'{folder / MANIFEST}: no "model" object')
    return manifest


@dataclass(frozen=True)
class _Archive:
    """One readable archive: where, its file stamp, its manifest's ``model`` object."""

    path: Path
    stamp: str
    model: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.model.get("modelName") or self.path.stem)

    @property
    def version(self) -> str:
        return str(self.model.get("modelVersion", ""))


class ArchiveCache:
    """The archives of a repository folder as ``(model name, model folder)`` pairs.

    The archives of one model name are its versions, in file-name order: the first is
    version folder ``1`` and the default one, as TorchServe's first registered version
    (``/predictions/<model>/<modelVersion>`` names the others). A second archive of one
    name and version is left out (logged).
    """

    def __init__(self, root: Path | None = None, properties: Properties | None = None) -> None:
        self.root = root
        self.properties = properties or Properties()
        self._lock = threading.Lock()
        # archive path -> what its manifest said, while its stamp holds (no zip re-read).
        self._known: dict[Path, _Archive] = {}

    def models(self, repository: Path) -> list[tuple[str, Path]]:
        """Every readable ``*.mar`` file of ``repository``, grouped by model name; an
        unreadable one is logged and left out."""
        with self._lock:
            if self.root is None:
                self.root = cache_root()
            grouped: dict[str, list[_Archive]] = {}
            for path in sorted(repository.glob(f"*{SUFFIX}")):
                archive = self._read(path) if path.is_file() else None
                if archive is None or not self.properties.selects(path, archive.name):
                    continue
                versions = grouped.setdefault(archive.name, [])
                if any(other.version == archive.version for other in versions):
                    log.warning(
                        "model archive skipped: another archive has that model name and version",
                        archive=str(path),
                        model=archive.name,
                        version=archive.version,
                    )
                    continue
                versions.append(archive)
            found = []
            for name, versions in grouped.items():
                try:
                    found.append((name, self._model_folder(repository, name, versions)))
                except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                    log.warning(
                        "model archives skipped: they cannot be unpacked",
                        model=name,
                        archives=[str(a.path) for a in versions],
                        error=f"{type(exc).__name__}: {exc}",
                    )
            return found

    def _read(self, path: Path) -> _Archive | None:
        try:
            info = path.stat()
            stamp = f"{path.name} {info.st_mtime_ns} {info.st_size}"
            known = self._known.get(path)
            if known is not None and known.stamp == stamp:
                return known
            with zipfile.ZipFile(path) as zipped:
                manifest = json.loads(zipped.read(MANIFEST))
            model = manifest.get("model") if isinstance(manifest, dict) else None
            if not isinstance(model, dict):
                raise ValueError(f'{MANIFEST} has no "model" object')
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning(
                "model archive skipped: it cannot be read",
                archive=str(path),
                error=f"{type(exc).__name__}: {exc}",
                hint="make it with torch-model-archiver (the default zip format)",
            )
            return None
        self._known[path] = archive = _Archive(path, stamp, model)
        return archive

    def _model_folder(self, repository: Path, name: str, versions: list[_Archive]) -> Path:
        """``<cache>/<key>/<name>/<n>/``: archive n unpacked (again only when it changed),
        version folders past the last archive removed, and the folder's config.yaml."""
        assert self.root is not None
        key = hashlib.sha256(f"{repository.resolve()}\0{name}".encode()).hexdigest()[:16]
        folder = self.root / key / name
        for number, archive in enumerate(versions, start=1):
            version = folder / str(number)
            if _read(version / _STAMP) != archive.stamp:
                with zipfile.ZipFile(archive.path) as zipped:
                    _extract(zipped, version, archive.stamp)
                if archive.model.get("requirementsFile"):
                    log.warning(
                        "the archive's requirementsFile is not installed; install what it "
                        "lists into the server's environment",
                        archive=str(archive.path),
                        requirements=archive.model["requirementsFile"],
                    )
        for stale in folder.iterdir():
            if stale.name.isdigit() and int(stale.name) > len(versions):
                shutil.rmtree(stale, ignore_errors=True)
        self._write_config(versions, name, folder)
        return folder

    def _write_config(self, versions: list[_Archive], name: str, folder: Path) -> None:
        """The model folder's config.yaml: the backend (the archive's files may look like
        another backend's: model.py beside a .pth is the pytorch backend's eager pattern),
        batching from the default archive's model-config.yaml, then config.properties, and
        every version served when there are several."""
        default = versions[0]
        settings: dict[str, Any] = {}
        config_file = default.model.get("configFile")
        if config_file:
            try:
                loaded = yaml.safe_load((folder / "1" / str(config_file)).read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise ValueError(f"its configFile {config_file!r} cannot be read: {exc}") from None
            if isinstance(loaded, dict):
                settings.update(loaded)
        settings.update(self.properties.model_settings(name, default.version))
        config: dict[str, Any] = {"backend": "torchserve", **model_config(settings)}
        if len(versions) > 1:
            config["version_policy"] = {"all": True}
        text = yaml.safe_dump(config, sort_keys=False)
        if _read(folder / "config.yaml") != text:  # unchanged: no reload
            (folder / "config.yaml").write_text(text)


def _extract(zipped: zipfile.ZipFile, version: Path, stamp: str) -> None:
    """Unpack beside the version folder, then swap it in (another process serving the same
    repository may be doing the same: the last one's copy stays)."""
    version.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=version.parent))
    try:
        zipped.extractall(staging)  # zipfile drops absolute paths and ".." parts
        (staging / _STAMP).write_text(stamp)
        if version.exists():
            retired = Path(tempfile.mkdtemp(prefix=".retired-", dir=version.parent))
            os.replace(version, retired / version.name)
            shutil.rmtree(retired, ignore_errors=True)
        os.replace(staging, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
