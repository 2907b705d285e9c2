"""Remote model repositories: ``model_repository: s3://bucket/prefix`` (gs://, any fsspec URL)
mirrored into a local cache folder that the server then serves as its repository.

Each :meth:`RemoteRepository.sync` lists the remote tree once (ETag / size / mtime, no
download), fetches only what is new or changed and removes what disappeared. A version
folder ``<model>/<version>/`` is fetched whole into a hidden temporary folder and renamed
into place, so the repository poll never sees half a version; other files (config.yaml,
archives) are replaced with one rename each. The repository poll then sees the local
changes as for any folder. fsspec (and the protocol's package: s3fs, gcsfs) is imported only
when a URL is configured.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from dl_inference.spi.errors import ConfigError

log = structlog.get_logger("dl_inference.repository")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
MANIFEST = ".dli-remote.json"  # what was fetched, by relative path: {path: signature}
PARTIAL = ".dli-partial"  # downloads in progress, renamed into place when complete
# The package that implements a protocol for fsspec, for the install hint.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs"}
# File listing fields that change when a file's content does (per fsspec implementation).
_SIGNATURE_KEYS = ("ETag", "etag", "md5Hash", "crc32c", "size", "LastModified", "mtime",
                   "updated", "created")  # fmt: skip


class RemoteRepositoryError(ConfigError):
    """A remote model repository could not be read; the message names the URL, no secret."""


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether a ``model_repository`` value is a URL (``scheme://...``), not a local path."""
    return isinstance(location, str) and bool(_URL.match(location))


def redact(url: str) -> str:
    """``url`` without user information (``s3://key:secret@bucket`` -> ``s3://bucket``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url  # urlunsplit would also turn memory:///x into memory:/x
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def cache_folder(url: str, options: dict[str, Any], cache_dir: Path | None = None) -> Path:
    """The local folder mirroring ``url``: one per URL and options (another endpoint is
    another bucket), under ``cache_dir`` or ``$XDG_CACHE_HOME/dl-inference/repositories``."""
    if cache_dir is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache_dir = Path(xdg) / "dl-inference" / "repositories"
    key = json.dumps([url, options], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", redact(url).split("://", 1)[1]).strip("_")
    return cache_dir / f"{readable[:60]}-{digest}"


def _describe(exc: BaseException) -> str:
    """One line for an fsspec / cloud client error: what went wrong, without a traceback."""
    if isinstance(exc, FileNotFoundError):
        what = "not found (no such bucket or path)"
    elif isinstance(exc, PermissionError):
        what = "access denied"
    else:
        what = type(exc).__name__
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{what}: {detail}" if detail and detail != what else what


def _unit(relative: str) -> str:
    """What is replaced as one: ``<model>/<version>`` for files in a version folder, else
    the file itself (``<model>/config.yaml``, an archive at the top)."""
    parts = relative.split("/")
    if len(parts) >= 3 and parts[1].isdigit():
        return "/".join(parts[:2])
    return relative


def _gcs_endpoint(options: dict[str, Any]) -> str:
    """The endpoint gcsfs talks to: ``endpoint_url``, else ``STORAGE_EMULATOR_HOST`` (a bare
    ``host:port`` there means http, as for Google's clients), else Google's (``""``)."""
    endpoint = str(options.get("endpoint_url") or "")
    if not endpoint:
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
        if emulator not in ("", "default"):
            endpoint = emulator if "://" in emulator else f"http://{emulator}"
    return endpoint


def _plain_gcs_class(scheme: str, options: dict[str, Any]) -> Any:
    """gcsfs's JSON-API-only filesystem for a ``gs://`` URL served over plain http (an
    emulator, a GCS-compatible store), else ``None`` (fsspec's choice).

    Since 2025 gcsfs's default filesystem first asks Google's storage-control gRPC API
    whether a bucket is hierarchical or zonal, over TLS to the same endpoint. A plain-http
    server answers no TLS: each such lookup retried for 60 s before gcsfs fell back, per
    operation (found against a GCS emulator: one listing took 98 s, one download 112 s).
    """
    if scheme not in ("gs", "gcs") or not _gcs_endpoint(options).startswith("http://"):
        return None
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem


class _Reraised(logging.Filter):
    """Drops gcsfs's own log of an error that its retry helper raises on to the caller: a
    sync reports it (once per outage) where gcsfs logged a traceback at every poll."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != "retry_request"


def _quiet_library(scheme: str) -> None:
    if scheme in ("gs", "gcs"):
        library = logging.getLogger("gcsfs")
        if not any(isinstance(f, _Reraised) for f in library.filters):
            library.addFilter(_Reraised())


class RemoteRepository:
    """``url`` (with fsspec ``options``) mirrored into the local folder ``local``."""

    def __init__(self, url: str, options: dict[str, Any], local: Path) -> None:
        self.url = url
        self.options = dict(options)
        self.local = local
        self.shown = redact(url)
        self.reachable = True  # the last sync's outcome, to log changes once
        self._fs: Any = None
        self._root = ""

    def same(self, url: str | None, options: dict[str, Any], local: Path | None) -> bool:
        return (url, options, local) == (self.url, self.options, self.local)

    # -- remote side -----------------------------------------------------------------------

    def _filesystem(self) -> Any:
        if self._fs is None:
            scheme = self.url.split("://", 1)[0]
            package = _PACKAGES.get(scheme)
            try:
                import fsspec  # only here: a local repository needs no fsspec

                _quiet_library(scheme)
                plain = _plain_gcs_class(scheme, self.options)
                if plain is not None:
                    self._fs, self._root = plain(**self.options), plain._strip_protocol(self.url)
                else:
                    self._fs, self._root = fsspec.core.url_to_fs(self.url, **self.options)
            except ImportError as exc:
                from dl_inference.kernel.plugins import install_hint

                needed = ["fsspec", package] if package else ["fsspec"]
                raise RemoteRepositoryError(
                    f"model_repository {self.shown}: {scheme}:// needs {' and '.join(needed)} "
                    f"({exc}); {install_hint(*needed)}"
                ) from None
            except ValueError as exc:
                raise RemoteRepositoryError(
                    f"model_repository {self.shown}: {_describe(exc)}"
                ) from None
            self._root = self._root.rstrip("/")
        return self._fs

    def listing(self) -> dict[str, str]:
        """Every remote file as ``{relative path: signature}``; raises RemoteRepositoryError."""
        fs = self._filesystem()
        try:
            fs.invalidate_cache()  # a listing cached by fsspec would hide new versions
            found = fs.find(self._root, detail=True)
            if not found and not fs.exists(self._root):
                # S3 and GCS have no folders: an empty prefix is fine, a missing bucket is not.
                bucket = self._root.lstrip("/").split("/", 1)[0]
                if bucket and not fs.exists(bucket):
                    raise FileNotFoundError(bucket)
        except RemoteRepositoryError:
            raise
        except Exception as exc:
            raise RemoteRepositoryError(
                f"model_repository {self.shown}: {_describe(exc)}"
            ) from None
        prefix = self._root + "/"
        files: dict[str, str] = {}
        for path, info in found.items():
            if info.get("type") == "directory" or path.endswith("/"):
                continue
            relative = path[len(prefix) :] if path.startswith(prefix) else ""
            parts = relative.split("/")
            # Nothing outside the cache folder, nothing that would shadow its own files.
            if not relative or ".." in parts or "" in parts or parts[0] in (MANIFEST, PARTIAL):
                log.warning("remote file skipped", url=self.shown, path=path)
                continue
            files[relative] = json.dumps([str(info.get(k)) for k in _SIGNATURE_KEYS])
        return files

    # -- local side ------------------------------------------------------------------------

    def _manifest(self) -> dict[str, str]:
        try:
            data = json.loads((self.local / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_manifest(self, manifest: dict[str, str]) -> None:
        temporary = self._partial / "manifest.json"
        temporary.write_text(json.dumps(manifest, sort_keys=True))
        os.replace(temporary, self.local / MANIFEST)

    def _download(self, relative: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self._fs.get_file(f"{self._root}/{relative}", str(target))

    def _fetch(self, unit: str, files: list[str]) -> None:
        """Download ``unit`` whole beside the cache, then rename it into place."""
        partial = self._partial
        target = self.local / unit
        if files == [unit]:  # a single file
            fd, name = tempfile.mkstemp(dir=partial)
            os.close(fd)
            self._download(unit, Path(name))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(name, target)
            return
        staging = Path(tempfile.mkdtemp(dir=partial))
        for relative in files:
            self._download(relative, staging / relative[len(unit) + 1 :])
        target.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=partial)) / "old"
            target.rename(old)
        try:
            staging.rename(target)
        except OSError:
            # Another worker process (serve --workers N) put the same unit in place first.
            if not target.is_dir():
                raise
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)

    def sync(self) -> list[str]:
        """Bring the cache up to date with the remote; returns what changed (for the log).

        Raises RemoteRepositoryError when the remote cannot be listed or a download fails;
        what was already fetched stays, the rest is retried at the next sync.
        """
        remote = self.listing()
        self.local.mkdir(parents=True, exist_ok=True)
        partial = self._partial
        self._clean_partial()
        partial.mkdir(parents=True)
        manifest = self._manifest()
        units: dict[str, list[str]] = {}
        for relative in sorted(remote):
            units.setdefault(_unit(relative), []).append(relative)
        changes: list[str] = []
        try:
            # Single files (config.yaml) before versions: a new version loads with its config.
            for unit, files in sorted(units.items(), key=lambda item: item[1] != [item[0]]):
                fetched = {f: s for f, s in manifest.items() if _unit(f) == unit}
                if fetched == {f: remote[f] for f in files} and (self.local / unit).exists():
                    continue
                try:
                    self._fetch(unit, files)
                except Exception as exc:
                    raise RemoteRepositoryError(
                        f"model_repository {self.shown}: cannot fetch {unit}: {_describe(exc)}"
                    ) from None
                for stale in [f for f in manifest if _unit(f) == unit]:
                    del manifest[stale]
                manifest.update({f: remote[f] for f in files})
                changes.append(f"fetched {unit}")
            for unit in sorted({_unit(f) for f in manifest} - set(units)):
                self._remove(self.local / unit)
                for stale in [f for f in manifest if _unit(f) == unit]:
                    del manifest[stale]
                changes.append(f"removed {unit}")
            # Whatever else is in the cache and not on the remote (an earlier cache's).
            tops = {unit.split("/", 1)[0] for unit in units}
            for entry in self.local.iterdir():
                if entry.name not in tops and entry.name not in (MANIFEST, PARTIAL):
                    self._remove(entry)
                    changes.append(f"removed {entry.name}")
        finally:
            self._write_manifest(manifest)
            shutil.rmtree(partial, ignore_errors=True)
            with contextlib.suppress(OSError):  # not while a sibling process downloads
                partial.parent.rmdir()
        if changes:
            log.info("remote model repository synced", url=self.shown, changes=changes)
        return changes

    @property
    def _partial(self) -> Path:
        # One per process: the worker processes of serve --workers N share the cache.
        return self.local / PARTIAL / str(os.getpid())

    def _clean_partial(self) -> None:
        """Remove what interrupted syncs left: this process's, and those of processes gone."""
        for folder in (self.local / PARTIAL).glob("*"):
            try:
                if folder.name != str(os.getpid()):
                    os.kill(int(folder.name), 0)
                    continue  # a live sibling's downloads
            except (ValueError, ProcessLookupError):
                pass
            except PermissionError:
                continue
            shutil.rmtree(folder, ignore_errors=True)

    def _remove(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        parent = path.parent
        # A model folder left without files goes too, so the poll retires the model.
        while parent != self.local and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def poll(self) -> None:
        """:meth:`sync` for the repository poll: a failure keeps the cache serving and is
        logged once, as is the return of the remote."""
        try:
            self.sync()
        except RemoteRepositoryError as exc:
            if self.reachable:
                log.error(
                    "remote model repository unreadable; serving the cached copy",
                    url=self.shown,
                    error=str(exc),
                    cache=str(self.local),
                )
            self.reachable = False
            return
        if not self.reachable:
            log.info("remote model repository readable again", url=self.shown)
        self.reachable = True


def remote_for(config: Any, current: RemoteRepository | None = None) -> RemoteRepository | None:
    """The mirror a server configuration asks for (``current`` when it is the same one),
    or ``None`` when its model repository is a local folder."""
    url = config.model_repository_url
    if url is None or config.model_repository is None:
        return None
    options = config.model_repository_options
    if current is not None and current.same(url, options, config.model_repository):
        return current
    return RemoteRepository(url, options, config.model_repository)
