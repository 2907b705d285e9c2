"""TorchServe model archives in the model repository, unpacked into a cache as model folders.

``torch-model-archiver`` writes a model in one of three formats, all served alike:

- ``<name>.mar`` (the default): a zip holding ``MAR-INF/MANIFEST.json`` (the model's name,
  version, handler and files) beside the model files;
- ``<name>.tar.gz`` (``--archive-format tgz``): the same files under one top folder,
  ``<name>/MAR-INF/MANIFEST.json``;
- ``<name>/`` (``--archive-format no-archive``): a folder of the repository holding the
  files as they are, ``MAR-INF/MANIFEST.json`` among them.

Each becomes the model folder ``<cache>/<key>/<modelName>/<n>/`` holding the archive's
files as they are, served by the ``torchserve`` backend (the folder's config.yaml names
it). An archive is unpacked (a folder copied) again only when it changes (its size and
modification time; a folder's files' names, sizes and times); an unchanged one keeps its
folder untouched, so the repository poll sees no change.

Every member of every format passes one rule (:func:`member_problem`) before anything is
written: no absolute path or ``..`` part, no link, no device or pipe, no more members or
bytes than :data:`MAX_MEMBERS` / :data:`MAX_UNPACKED_BYTES` allow and than the cache's
disk has free, and not unpacking to :data:`MAX_RATIO` times the archive's size (a
decompression bomb) past :data:`RATIO_FLOOR_BYTES`. A refused archive whose manifest reads
becomes a version whose load fails with the reason (the model is listed as failed to load;
the others serve); one whose manifest does not is left out and logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import structlog
import yaml

from dl_inference_torchserve.settings import Properties, model_config

log = structlog.get_logger("dl_inference.torchserve")

MANIFEST = "MAR-INF/MANIFEST.json"
SUFFIX = ".mar"
TGZ_SUFFIX = ".tar.gz"
# Written into a version folder whose archive was refused: the backend's load fails with it.
REFUSED = ".dli-archive-refused"
_STAMP = ".dli-archive-stamp"
# Limits of the member rule (module attributes, so a deployment with larger models can
# raise them before the server starts).
MAX_MEMBERS = 100_000
MAX_UNPACKED_BYTES = 256 * 1024**3
MAX_RATIO = 200
RATIO_FLOOR_BYTES = 256 * 1024**2
_ARCHIVE_ERRORS = (OSError, ValueError, KeyError, zipfile.BadZipFile, tarfile.TarError, EOFError)


class ArchiveRefused(ValueError):
    """An archive that is not unpacked: a member breaks :func:`member_problem`'s rule."""


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


# -- the member rule, for every format ---------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One entry of an archive as the rule sees it: its path inside the archive, its kind
    (``"file"``, ``"dir"``, ``"link"``, ``"other"``: a device, a pipe) and its size."""

    name: str
    kind: str
    size: int = 0


def member_problem(member: Member) -> str | None:
    """Why ``member`` may not be unpacked (None: it may): a path that leaves the folder, a
    link (it could point anywhere), a device or pipe."""
    path = PurePosixPath(member.name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or member.name[1:3] == ":\\":
        return f"{member.name!r} leaves the model folder"
    if member.kind == "link":
        return f"{member.name!r} is a link; archive the file it points to instead"
    if member.kind not in ("file", "dir"):
        return f"{member.name!r} is not a file or folder"
    return None


def refuse_past_member_limit(count: int) -> None:
    """:class:`ArchiveRefused` once ``count`` members exceed :data:`MAX_MEMBERS`; called as
    members are listed, so a tar of millions of entries is refused before it is all read."""
    if count > MAX_MEMBERS:
        raise ArchiveRefused(f"it has more than {MAX_MEMBERS} members")


def check_members(members: Iterator[Member], archive_bytes: int, cache: Path) -> list[Member]:
    """Every member, each passing :func:`member_problem`, and all of them together within
    :data:`MAX_MEMBERS`, :data:`MAX_UNPACKED_BYTES`, the cache's free disk space and
    :data:`MAX_RATIO` times ``archive_bytes`` (past :data:`RATIO_FLOOR_BYTES`); else
    :class:`ArchiveRefused` naming the first problem."""
    checked: list[Member] = []
    total = 0
    free = shutil.disk_usage(cache).free
    for member in members:
        problem = member_problem(member)
        if problem is not None:
            raise ArchiveRefused(problem)
        checked.append(member)
        total += member.size
        refuse_past_member_limit(len(checked))
        if total > MAX_UNPACKED_BYTES:
            raise ArchiveRefused(f"it unpacks to more than {MAX_UNPACKED_BYTES} bytes")
        if total > free:
            raise ArchiveRefused(
                f"it unpacks to more than the {free} bytes free in the cache folder {cache}"
            )
        if total > RATIO_FLOOR_BYTES and total > MAX_RATIO * max(archive_bytes, 1):
            raise ArchiveRefused(
                f"it unpacks to more than {MAX_RATIO} times its {archive_bytes} bytes "
                "(a decompression bomb?)"
            )
    return checked


# -- the three formats -------------------------------------------------------------------


def archive_format(path: Path) -> str | None:
    """``"zip"``, ``"tgz"`` or ``"folder"`` for what torch-model-archiver makes, else None."""
    if path.name.startswith("."):
        return None
    if path.is_file() and path.name.endswith(SUFFIX):
        return "zip"
    if path.is_file() and path.name.endswith(TGZ_SUFFIX):
        return "tgz"
    if path.is_dir() and (path / MANIFEST).is_file():
        return "folder"
    return None


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "link"
    # Permission bits alone (no file type) are what zip tools write for a plain file.
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "other"
    return "dir" if info.is_dir() else "file"


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.issym() or info.islnk():
        return "link"
    return "dir" if info.isdir() else "file" if info.isfile() else "other"


def _tgz_prefix(names: list[str]) -> str:
    """The top folder a tgz's files are under (``<model name>/``), or "" when its manifest
    is at the top."""
    if MANIFEST in names:
        return ""
    found = [n for n in names if n.endswith("/" + MANIFEST) and n.count("/") == 2]
    if len(found) != 1:
        raise ValueError(f"it has no {MANIFEST} (nor <folder>/{MANIFEST})")
    return found[0].removesuffix(MANIFEST)


def _folder_members(folder: Path) -> Iterator[Member]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(dirs) + sorted(files):
            path = Path(root) / name
            info = path.lstat()
            kind = (
                "link"
                if stat.S_ISLNK(info.st_mode)
                else "dir"
                if stat.S_ISDIR(info.st_mode)
                else "file"
                if stat.S_ISREG(info.st_mode)
                else "other"
            )
            yield Member(path.relative_to(folder).as_posix(), kind, info.st_size)


def read_archive_manifest(path: Path, kind: str) -> dict[str, Any]:
    """The manifest inside an archive of ``kind`` (read alone: nothing is unpacked)."""
    if kind == "zip":
        with zipfile.ZipFile(path) as zipped:
            data = zipped.read(MANIFEST)
    elif kind == "tgz":
        with tarfile.open(path, "r:gz") as tarred:
            names = []
            for info in tarred:
                names.append(info.name)
                refuse_past_member_limit(len(names))
            member = tarred.extractfile(_tgz_prefix(names) + MANIFEST)
            if member is None:
                raise ValueError(f"{MANIFEST} is not a file")
            data = member.read(1024 * 1024)
    else:
        data = (path / MANIFEST).read_bytes()
    manifest = json.loads(data)
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise ValueError(f'{MANIFEST} has no "model" object')
    return manifest


def unpack(path: Path, kind: str, into: Path) -> None:
    """The archive's files into the empty folder ``into``, once every member passed
    :func:`check_members` (ArchiveRefused otherwise, with nothing written)."""
    cache = into.parent
    if kind == "zip":
        with zipfile.ZipFile(path) as zipped:
            infos = zipped.infolist()
            members = (Member(i.filename, _zip_kind(i), i.file_size) for i in infos)
            check_members(members, path.stat().st_size, cache)
            zipped.extractall(into)
    elif kind == "tgz":
        with tarfile.open(path, "r:gz") as tarred:
            infos = []
            for info in tarred:
                infos.append(info)
                refuse_past_member_limit(len(infos))
            prefix = _tgz_prefix([i.name for i in infos])
            members = (Member(i.name, _tar_kind(i), i.size) for i in infos)
            check_members(members, path.stat().st_size, cache)
            for info in infos:
                # The files under the top folder (<model name>/), the manifest's folder.
                if not info.name.startswith(prefix) or info.name == prefix:
                    continue
                target = into / info.name[len(prefix) :]
                if info.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tarred.extractfile(info)
                assert source is not None  # a regular file (checked above)
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
    else:
        members = list(_folder_members(path))
        check_members(iter(members), sum(m.size for m in members), cache)
        for member in members:
            target = into / member.name
            if member.kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path / member.name, target)


def stamp(path: Path, kind: str) -> str:
    """What says an archive changed: a file's name, time and size; a folder's files'.

    Each unpacked version folder of the cache keeps its archive's stamp;
    :func:`stamped_archive` reads the archive's name back from it."""
    info = path.stat()
    if kind != "folder":
        return f"{path.name} {info.st_mtime_ns} {info.st_size}"
    digest = hashlib.sha256()
    for member in _folder_members(path):
        mtime = (path / member.name).lstat().st_mtime_ns
        digest.update(f"{member.name}\0{member.kind}\0{member.size}\0{mtime}\0".encode())
    return f"{path.name}/ {digest.hexdigest()}"


def stamped_archive(folder: Path) -> str | None:
    """The file name of the archive (a no-archive folder: its folder name) that the cache's
    version folder ``folder`` was unpacked from, read from the stamp written there
    (:func:`stamp`); None when the folder has none (not unpacked by this module)."""
    try:
        text = (folder / _STAMP).read_text()
    except OSError:
        return None
    # "<file> <mtime> <size>", or "<folder>/ <digest>" for a no-archive folder.
    return text.partition("/ ")[0] if "/ " in text else text.rsplit(" ", 2)[0]


# -- the cache ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Archive:
    """One readable archive: where, its format, its stamp, its manifest's ``model``."""

    path: Path
    kind: str
    stamp: str
    model: dict[str, Any]

    @property
    def name(self) -> str:
        if self.model.get("modelName"):
            return str(self.model["modelName"])
        file = self.path.name
        return file.removesuffix(TGZ_SUFFIX) if self.kind == "tgz" else Path(file).stem

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
        # archive path -> what its manifest said, while its stamp holds (no re-read).
        self._known: dict[Path, _Archive] = {}

    def models(self, repository: Path) -> list[tuple[str, Path]]:
        """Every readable archive of ``repository`` (``*.mar``, ``*.tar.gz``, folders with
        a MAR-INF/MANIFEST.json), grouped by model name; an unreadable one is logged and
        left out."""
        with self._lock:
            if self.root is None:
                self.root = cache_root()
            grouped: dict[str, list[_Archive]] = {}
            for path in sorted(repository.iterdir()):
                kind = archive_format(path)
                archive = self._read(path, kind) if kind is not None else None
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
                except _ARCHIVE_ERRORS as exc:
                    log.warning(
                        "model archives skipped: they cannot be unpacked",
                        model=name,
                        archives=[str(a.path) for a in versions],
                        error=f"{type(exc).__name__}: {exc}",
                    )
            return found

    def _read(self, path: Path, kind: str) -> _Archive | None:
        try:
            current = stamp(path, kind)
            known = self._known.get(path)
            if known is not None and known.stamp == current:
                return known
            manifest = read_archive_manifest(path, kind)
        except ArchiveRefused as exc:
            # Refused before its manifest was reached (a tar is listed whole to find it).
            log.warning(
                "model archive skipped: it is refused",
                archive=str(path),
                reason=str(exc),
                hint="for a trusted archive, raise the limit before the server starts "
                "(dl_inference_torchserve.archive's module attributes)",
            )
            return None
        except _ARCHIVE_ERRORS as exc:
            log.warning(
                "model archive skipped: it cannot be read",
                archive=str(path),
                error=f"{type(exc).__name__}: {exc}",
                hint="make it with torch-model-archiver (the zip, tgz or no-archive format)",
            )
            return None
        self._known[path] = archive = _Archive(path, kind, current, manifest["model"])
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
                _extract(archive, version)
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
        if config_file and not (folder / "1" / REFUSED).exists():
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


def _extract(archive: _Archive, version: Path) -> None:
    """Unpack beside the version folder, then swap it in (another process serving the same
    repository may be doing the same: the last one's copy stays). A refused archive becomes
    a folder holding only its manifest and the reason, whose load fails with it."""
    version.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=version.parent))
    try:
        try:
            unpack(archive.path, archive.kind, staging)
        except ArchiveRefused as exc:
            log.warning(
                "model archive refused: it is not unpacked",
                archive=str(archive.path),
                reason=str(exc),
            )
            shutil.rmtree(staging)
            (staging / "MAR-INF").mkdir(parents=True)
            manifest = {"model": archive.model}
            (staging / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
            (staging / REFUSED).write_text(
                f"the archive {archive.path.name} is refused: {exc}", encoding="utf-8"
            )
        (staging / _STAMP).write_text(archive.stamp)
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
