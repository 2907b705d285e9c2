"""``.mar`` archives in the model repository, unpacked into a cache as model folders.

``torch-model-archiver`` writes a zip holding ``MAR-INF/MANIFEST.json`` (the model's name,
version, handler and files) beside the model files. Each ``<repo>/<file>.mar`` becomes the
model folder ``<cache>/<key>/<modelName>/1/`` holding the archive's files as they are,
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
from pathlib import Path
from typing import Any

import structlog
import yaml

from dl_inference_torchserve.settings import Properties, model_config

log = structlog.get_logger("dl_inference_torchserve")

MANIFEST = "MAR-INF/MANIFEST.json"
SUFFIX = ".mar"
# The model folder's one version: TorchServe's versions are strings ("1.0"); the manifest's
# is what clients name in /predictions/<model>/<version>.
VERSION = "1"
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


class ArchiveCache:
    """The archives of a repository folder as ``(model name, model folder)`` pairs."""

    def __init__(self, root: Path | None = None, properties: Properties | None = None) -> None:
        self.root = root
        self.properties = properties or Properties()
        self._lock = threading.Lock()
        # archive path -> (stamp, model name, model folder); skips re-reading the zip.
        self._known: dict[Path, tuple[str, str, Path]] = {}

    def models(self, repository: Path) -> list[tuple[str, Path]]:
        """Every readable ``*.mar`` file of ``repository``; an unreadable one is logged and
        left out, a second archive of one model name too (the first by file name wins)."""
        found: dict[str, Path] = {}
        with self._lock:
            for archive in sorted(repository.glob(f"*{SUFFIX}")):
                if not archive.is_file():
                    continue
                try:
                    name, folder = self._unpacked(archive)
                    if not self.properties.selects(archive, name):
                        continue
                except (OSError, ValueError, zipfile.BadZipFile) as exc:
                    log.warning(
                        "model archive skipped: it cannot be read",
                        archive=str(archive),
                        error=f"{type(exc).__name__}: {exc}",
                        hint="make it with torch-model-archiver (the default zip format)",
                    )
                    continue
                if name in found:
                    log.warning(
                        "model archive skipped: another archive has that model name",
                        archive=str(archive),
                        model=name,
                    )
                    continue
                found[name] = folder
        return list(found.items())

    def _unpacked(self, archive: Path) -> tuple[str, Path]:
        info = archive.stat()
        stamp = f"{info.st_mtime_ns} {info.st_size}"
        known = self._known.get(archive)
        if known is not None and known[0] == stamp and (known[2] / VERSION).is_dir():
            return known[1], known[2]
        if self.root is None:
            self.root = cache_root()
        root = self.root
        key = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:16]
        with zipfile.ZipFile(archive) as zipped:
            manifest = json.loads(zipped.read(MANIFEST))
            model = manifest.get("model") if isinstance(manifest, dict) else None
            if not isinstance(model, dict):
                raise ValueError(f'{MANIFEST} has no "model" object')
            name = str(model.get("modelName") or archive.stem)
            folder = root / key / name
            version = folder / VERSION
            if _read(version / _STAMP) != stamp:
                self._extract(zipped, folder, stamp)
                if model.get("requirementsFile"):
                    log.warning(
                        "the archive's requirementsFile is not installed; install what it "
                        "lists into the server's environment",
                        archive=str(archive),
                        requirements=model["requirementsFile"],
                    )
            self._write_config(zipped, model, name, folder)
        self._known[archive] = (stamp, name, folder)
        return name, folder

    def _write_config(
        self, zipped: zipfile.ZipFile, model: dict[str, Any], name: str, folder: Path
    ) -> None:
        """The model folder's config.yaml: the backend (the archive's files may look like
        another backend's: model.py beside a .pth is the pytorch backend's eager pattern),
        and batching from the archive's model-config.yaml, then config.properties."""
        settings: dict[str, Any] = {}
        config_file = model.get("configFile")
        if config_file:
            try:
                loaded = yaml.safe_load(zipped.read(str(config_file)))
            except (KeyError, yaml.YAMLError) as exc:
                raise ValueError(f"its configFile {config_file!r} cannot be read: {exc}") from None
            if isinstance(loaded, dict):
                settings.update(loaded)
        settings.update(self.properties.model_settings(name, str(model.get("modelVersion", ""))))
        config = {"backend": "torchserve", **model_config(settings)}
        text = yaml.safe_dump(config, sort_keys=False)
        if _read(folder / "config.yaml") != text:  # unchanged: no reload
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(text)

    @staticmethod
    def _extract(zipped: zipfile.ZipFile, folder: Path, stamp: str) -> None:
        """Unpack beside the version folder, then swap it in (another process serving the
        same repository may be doing the same: the last one's copy stays)."""
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=folder))
        try:
            zipped.extractall(staging)  # zipfile drops absolute paths and ".." parts
            (staging / _STAMP).write_text(stamp)
            version = folder / VERSION
            if version.exists():
                retired = Path(tempfile.mkdtemp(prefix=".retired-", dir=folder))
                os.replace(version, retired / VERSION)
                shutil.rmtree(retired, ignore_errors=True)
            os.replace(staging, version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
