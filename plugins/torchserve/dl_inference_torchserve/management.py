"""TorchServe 0.12's management REST API on dl-inference's management listener.

``GET /models`` (``limit`` / ``next_page_token``), ``POST /models?url=<file>.mar&...``
(register), ``GET /models/{name}[/{version}|/all]`` (describe), ``PUT
/models/{name}[/{version}]?min_worker=&max_worker=`` (scale: recorded, shown by describe,
not applied), ``PUT /models/{name}/{version}/set-default`` and ``DELETE
/models/{name}[/{version}]`` (unregister), answered with TorchServe's status codes, JSON
bodies and messages (``tests/reference/test_torchserve_management.py`` compares them with
the real TorchServe's); and the gRPC ``ManagementAPIsService`` on the management gRPC
port, each method answering what the REST call answers.

Every route is bound with ``control.http_handler``: the management token is checked first
(TorchServe's ``key_file.json`` tokens become ``Authorization: Bearer <token>``). A
registered archive is unpacked into a folder of its own under the archive cache, next to
copies of the model's other versions, and that folder is loaded in every worker through
``ModelControl.load_folder``; what TorchServe keeps per version (the URL it was registered
from, worker counts, the default version) travels with it as the model's notes.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import weakref
import zipfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from dl_inference import (
    BackendError,
    Call,
    ModelControl,
    ModelNotFound,
    ModelVersionInfo,
    PermissionDenied,
    RuntimeView,
    public_message,
)
from dl_inference_torchserve._proto import torchserve_management_pb2 as mpb
from dl_inference_torchserve.archive import (
    MANIFEST,
    archive_format,
    cache_root,
    read_archive_manifest,
    read_manifest,
    stamped_archive,
    unpack,
)
from dl_inference_torchserve.grpc_api import grpc_refusal
from dl_inference_torchserve.rest import (
    TorchServeError,
    default_version,
    error_body,
    model_not_found,
    served_name,
    version_not_found,
)
from dl_inference_torchserve.settings import model_config

# TorchServe's defaults for what a registration or describe names (ModelConfig, ConfigManager).
DEFAULT_BATCH_DELAY_MS = 100
DEFAULT_LIMIT = 100
_DESCRIBE_FIXED: dict[str, Any] = {
    "responseTimeout": 120,
    "startupTimeout": 120,
    "maxRetryTimeoutInSec": 300,
    "clientTimeoutInMills": 0,
    "parallelType": "",
    "parallelLevel": 0,
}
_DESCRIBE_FLAGS: dict[str, Any] = {
    "continuousBatching": False,
    "useJobTicket": False,
    "useVenv": False,
    "stateful": False,
    "sequenceMaxIdleMSec": 0,
    "sequenceTimeoutMSec": 0,
    "maxNumSequence": 0,
    "maxSequenceJobQueueSize": 0,
}
# TorchServe's job_queue_size default: what describe's jobQueueStatus reports.
_JOB_QUEUE_SIZE = 100
_NOT_ALLOWED = "Requested method is not allowed, please refer to API document."
_DOWNLOAD = re.compile(r"^https?://", re.IGNORECASE)


Answer = tuple[int, Any]
"""An HTTP status and what TorchServe answers: a status message (``str``) or JSON."""

# The model folders this process made under the cache's managed/ folder, and the APIs
# whose models' folders are looked up when the server stops (server_stopping).
_MADE: set[Path] = set()
_APIS: weakref.WeakSet[TorchServeManagement] = weakref.WeakSet()


def managed_folder(folder: str | Path | None) -> Path | None:
    """``folder`` when it is a model folder of the archive cache's ``managed/`` folder (made
    by this API), else None: the only folders the API ever removes (never the model store's
    files, never anything outside the cache)."""
    if not folder:
        return None
    path = Path(folder)
    return path if path.parent == cache_root() / "managed" else None


def server_stopping() -> None:
    """Remove this server's registered archives' copies when the process exits: the folders
    it made and those its models are served from (a sibling worker's, under ``--workers``).
    At exit, not now: calls in flight run on during the drain, the models unload after it,
    and a registration finishing meanwhile adds its folder. A process that dies without
    a stop (a killed worker, replaced) leaves them to the others."""
    if not _APIS and not _MADE:
        return  # no management API here: nothing to remove, no cache folder to make
    folders = set()
    for api in list(_APIS):
        for name in api.runtime.model_names():
            found = managed_folder(api.control.notes(name).get("folder"))
            if found is not None:
                folders.add(found)
    atexit.register(_remove_managed, folders, cache_root() / "managed")


def _remove_managed(folders: set[Path], managed: Path) -> None:
    for folder in folders | _MADE:
        if folder.parent == managed:
            shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        managed.rmdir()  # only when empty: another server's folders stay


def _rest(answer: Answer) -> web.Response:
    """A REST reply as TorchServe writes it: JSON indented by 2 (a message as
    ``{"status": ...}``), then a newline."""
    status, value = answer
    value = {"status": value} if isinstance(value, str) else value
    body = json.dumps(value, indent=2).encode() + b"\n"
    return web.Response(body=body, status=status, content_type="application/json")


def _grpc(answer: Answer) -> mpb.ManagementResponse:
    """A gRPC reply as TorchServe's: the message itself, or the JSON indented by 2."""
    value = answer[1]
    return mpb.ManagementResponse(
        msg=value if isinstance(value, str) else json.dumps(value, indent=2)
    )


def _bad_request(message: str) -> TorchServeError:
    return TorchServeError(400, "BadRequestException", message)


def _count(query: Mapping[str, str], name: str, default: int) -> int:
    """Query parameter ``name`` as a whole number of 0 or more (``default`` when absent or
    empty); 400 naming it otherwise (TorchServe takes a non-number as the default and
    fails a negative worker count with 500)."""
    given = query.get(name, "").strip()
    if not given:
        return default
    try:
        value = int(given)
    except ValueError:
        raise _bad_request(f"Parameter {name} must be a whole number, got {given!r}.") from None
    if value < 0:
        raise _bad_request(f"Parameter {name} cannot be negative, got {value}.")
    return value


def _lenient(query: Mapping[str, str], name: str, default: int) -> int:
    """As TorchServe reads paging parameters: a non-number is the default."""
    try:
        return int(query.get(name, ""))
    except ValueError:
        return default


def _iso(seconds: float) -> str:
    """An instant as TorchServe writes a worker's startTime (UTC, milliseconds, Z)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int(seconds * 1000) % 1000:03d}Z"


def _one_at_a_time(method: Callable[..., Awaitable[Answer]]) -> Callable[..., Awaitable[Answer]]:
    """Run a change alone in this worker: each reads the model's versions and notes, then
    replaces them."""

    @functools.wraps(method)
    async def alone(self: TorchServeManagement, *args: Any) -> Answer:
        async with self._changing:
            return await method(self, *args)

    return alone


class TorchServeManagement:
    """The handlers; one per server, over the runtime (what is served) and the control."""

    def __init__(self, runtime: RuntimeView, control: ModelControl) -> None:
        self.runtime = runtime
        self.control = control
        self.started = time.time()  # startTime of the workers of models served at start-up
        self._changing = asyncio.Lock()  # see _one_at_a_time
        _APIS.add(self)

    # -- what is served ----------------------------------------------------------------------

    def _versions(self, name: str) -> list[ModelVersionInfo]:
        try:
            return self.runtime.model_versions(name)
        except ModelNotFound:
            raise model_not_found(name) from None

    def _version(self, name: str, version: str) -> ModelVersionInfo:
        """The version clients call ``version`` (an archive's modelVersion)."""
        for info in self._versions(name):
            if served_name(info) == version:
                return info
        raise version_not_found(name, version)

    def _default(self, name: str) -> ModelVersionInfo:
        versions = self._versions(name)
        chosen = default_version(self.runtime, name, versions)
        if chosen is None:
            raise model_not_found(name)
        return chosen

    def _notes(self, name: str) -> dict[str, Any]:
        """The model's notes, with an entry per served version (a model served from the
        repository at start-up has none yet: its entries say so)."""
        notes = self.control.notes(name)
        entries = notes.setdefault("versions", {})
        for info in self._versions(name):
            entries.setdefault(
                served_name(info),
                {"url": _archive_file(info), "startup": True, "time": self.started},
            )
        return notes

    def _describe(self, name: str, info: ModelVersionInfo, notes: dict[str, Any]) -> dict:
        entry = notes["versions"].get(served_name(info), {})
        config = info.backend.config
        instances = config.instances
        batch = max(config.max_batch_size, 1)
        delay = (
            int(config.max_queue_delay_ms)
            if batch > 1
            else entry.get("delay", DEFAULT_BATCH_DELAY_MS)
        )
        gpu = str(getattr(info.backend.settings, "device", "cpu")).startswith("cuda")
        ready = info.ready
        workers = []
        # A version registered or scaled to 0 workers answers 503 (rest.served_version).
        if entry.get("min") != 0 and (ready or info.state == "LOADING"):
            for index in range(instances):
                workers.append(
                    {
                        "id": str(9000 + index),
                        "startTime": _iso(entry.get("time", self.started)),
                        "status": "READY" if ready else "UNLOADING",
                        "memoryUsage": 0,
                        "pid": os.getpid() if ready else -1,
                        "gpu": gpu,
                        "gpuUsage": "N/A",
                    }
                )
        return {
            "modelName": name,
            "modelVersion": served_name(info),
            "modelUrl": entry.get("url", name),
            "runtime": "python",
            "minWorkers": entry.get("min", instances),
            "maxWorkers": entry.get("max", instances),
            "batchSize": batch,
            "maxBatchDelay": delay,
            **_DESCRIBE_FIXED,
            "deviceType": "gpu" if gpu else "cpu",
            **_DESCRIBE_FLAGS,
            "loadedAtStartup": bool(entry.get("startup", False)),
            "workers": workers,
            "jobQueueStatus": {"remainingCapacity": _JOB_QUEUE_SIZE, "pendingRequests": 0},
        }

    # -- the routes --------------------------------------------------------------------------

    async def handle(self, request: web.Request, call: Call) -> web.Response:
        """``/models`` and ``/models/...``, by method and path, as TorchServe routes them."""
        parts = [part for part in request.path.split("/") if part][1:]
        method = request.method
        query = request.query
        if not parts:
            if method == "GET":
                return _rest(self.list_models(query))
            if method == "POST":
                return _rest(await self.register(query))
        elif len(parts) <= 2:
            name, version = parts[0], parts[1] if len(parts) == 2 else ""
            if method == "GET":
                return _rest(self.describe(name, version))
            if method == "PUT":
                return _rest(await self.scale(name, version, query))
            if method == "DELETE":
                return _rest(await self.unregister(name, version))
        elif len(parts) == 3 and parts[2] == "set-default":
            if method == "PUT":
                return _rest(await self.set_default(parts[0], parts[1]))
            if method == "GET":  # TorchServe reads this path as the version's description
                return _rest(self.describe(parts[0], parts[1]))
        if len(parts) > 3 or (len(parts) == 3 and parts[2] != "set-default"):
            raise TorchServeError(
                404,
                "ResourceNotFoundException",
                "Requested resource is not found, please refer to API document.",
            )
        raise TorchServeError(405, "MethodNotAllowedException", _NOT_ALLOWED)

    def list_models(self, query: Mapping[str, str]) -> Answer:
        """Every model by name (sorted) with its default version's URL, a page at a time."""
        limit = _lenient(query, "limit", DEFAULT_LIMIT)
        limit = DEFAULT_LIMIT if limit < 0 or limit > DEFAULT_LIMIT else limit
        start = max(_lenient(query, "next_page_token", 0), 0)
        names = sorted(self.runtime.model_names())
        end = start + limit
        page: dict[str, Any] = {}
        if end <= len(names):
            page["nextPageToken"] = str(end)  # TorchServe's rule: even when nothing follows
        end = min(end, len(names))
        models = []
        for name in names[start:end]:
            try:
                default = self._default(name)
                url = self._notes(name)["versions"].get(served_name(default), {}).get("url")
            except TorchServeError:  # unloaded meanwhile
                continue
            models.append({"modelName": name, "modelUrl": url or name})
        page["models"] = models
        return 200, page

    def describe(self, name: str, version: str) -> Answer:
        notes = self._notes(name)
        if version == "all":
            chosen = self._versions(name)
        else:
            chosen = [self._version(name, version) if version else self._default(name)]
        return 200, [self._describe(name, info, notes) for info in chosen]

    @_one_at_a_time
    async def register(self, query: Mapping[str, str]) -> Answer:
        """Unpack ``url`` (a .mar in the model store, or a path inside the management
        roots) beside the model's other versions and load them, in every worker."""
        if "url" not in query:
            raise _bad_request("Parameter url is required.")
        url = query["url"]
        if not url:
            raise TorchServeError(404, "ModelNotFoundException", "empty url")
        if _DOWNLOAD.match(url):
            raise TorchServeError(
                400,
                "DownloadArchiveException",
                f"Failed to download archive from: {url} (this server does not download "
                "archives: copy the .mar into the model store and register its file name)",
            )
        if ".." in url:
            raise TorchServeError(
                404, "ModelNotFoundException", f"Relative path is not allowed in url: {url}"
            )
        batch = _count(query, "batch_size", 1)
        delay = _count(query, "max_batch_delay", DEFAULT_BATCH_DELAY_MS)
        workers = _count(query, "initial_workers", 0)
        synchronous = query.get("synchronous", "true").lower() == "true"
        try:
            path = self.control.resolve_path(url)
        except (ModelNotFound, PermissionDenied):
            # TorchServe's answer for a file it cannot find, outside its store included.
            raise TorchServeError(
                404, "ModelNotFoundException", f"Model not found at: {url}"
            ) from None
        kind, manifest = _archive_manifest(path, url)
        name = query.get("model_name") or str(manifest.get("modelName") or path.stem)
        version = str(manifest.get("modelVersion") or "1.0")
        try:
            existing = self.runtime.model_versions(name)
        except ModelNotFound:
            existing = []
        if any(served_name(info) == version for info in existing):
            raise TorchServeError(
                409,
                "ConflictStatusException",
                f"Model version {version} is already registered for model {name}",
            )
        notes = self._notes(name) if existing else {"versions": {}}
        notes["versions"][version] = {
            "url": url,
            "min": workers,
            "max": workers,
            "delay": delay,
            "time": time.time(),
        }
        notes["default"] = served_name(self._default(name)) if existing else version
        overrides = _batching(existing, batch, delay, "batch_size" in query)
        await self._load(name, existing, notes, overrides, new=(version, path, kind))
        if not synchronous and workers > 0:
            return 202, "Processing worker updates..."
        message = f'Model "{name}" Version: {version} registered with {workers} initial workers'
        if workers == 0:
            message += ". Use scale workers API to add workers for the model."
        return 200, message

    @_one_at_a_time
    async def scale(self, name: str, version: str, query: Mapping[str, str]) -> Answer:
        """Record the worker counts (shown by describe; one instance set serves here)."""
        info = self._version(name, version) if version else self._default(name)
        low = _count(query, "min_worker", 1)
        high = _count(query, "max_worker", low)
        if high < low:
            raise _bad_request("max_worker cannot be less than min_worker.")
        notes = self._notes(name)
        notes["versions"][served_name(info)].update({"min": low, "max": high})
        await self.control.annotate(name, notes)
        if query.get("synchronous", "false").lower() != "true":
            return 202, "Processing worker updates..."
        # TorchServe names the version only when the path did.
        named = f", version: {version}" if version else ""
        return 200, f"Workers scaled to {low} for model: {name}{named}"

    @_one_at_a_time
    async def set_default(self, name: str, version: str) -> Answer:
        self._versions(name)  # the model first: TorchServe names a missing one so
        if not any(served_name(info) == version for info in self._versions(name)):
            raise TorchServeError(
                404,
                "ModelVersionNotFoundException",
                f"Model version {version} does not exist for model {name}",
            )
        notes = self._notes(name)
        notes["default"] = version
        await self.control.annotate(name, notes)
        return 200, f'Default version successfully updated for model "{name}" to "{version}"'

    @_one_at_a_time
    async def unregister(self, name: str, version: str) -> Answer:
        """One version (the default one when none is named); the default version only
        when it is the last, as TorchServe."""
        versions = self._versions(name)
        default = self._default(name)
        info = self._version(name, version) if version else default
        if len(versions) == 1:
            folder = managed_folder(self.control.notes(name).get("folder"))
            await self.control.unload(name)
            if folder is not None:
                await asyncio.to_thread(shutil.rmtree, folder, True)
            return 200, f'Model "{name}" unregistered'
        if served_name(info) == served_name(default):
            raise TorchServeError(
                403,
                "InvalidModelVersionException",
                f"Cannot remove default version for model {name}",
            )
        notes = self._notes(name)
        notes["versions"].pop(served_name(info), None)
        rest = [other for other in versions if served_name(other) != served_name(info)]
        await self._load(name, rest, notes, _batching(rest, 1, 0, False), new=None)
        return 200, f'Model "{name}" unregistered'

    async def _load(
        self,
        name: str,
        keep: list[ModelVersionInfo],
        notes: dict[str, Any],
        overrides: dict[str, Any],
        new: tuple[str, Path, str] | None,
    ) -> None:
        """A fresh folder holding the versions kept (copied) and the new archive
        (unpacked), loaded as ``name`` in every worker; the model's previous folder of
        ours is removed once the new one serves. A new version that does not load is
        taken out again (TorchServe keeps no version whose workers failed to start)."""
        for info in keep:
            if not (info.backend.path / MANIFEST).is_file():
                raise _bad_request(
                    f"Model {name} is not served from TorchServe archives; change its "
                    "versions in its model repository folder"
                )
        managed = cache_root() / "managed"
        previous = notes.get("folder")
        number = max([0, *(int(info.version) for info in keep)]) + 1
        copies = [(info.backend.path, info.version) for info in keep]
        # Copying and unpacking take as long as the archives are large: not on the loop.
        folder = await asyncio.to_thread(_prepare, managed, copies, new, number)
        notes["folder"] = str(folder)
        try:
            await self.control.load_folder(name, folder, overrides, notes)
        except BaseException as exc:
            if not keep:  # nothing of this model served before: leave nothing behind
                with contextlib.suppress(Exception):
                    await self.control.unload(name)
            if str(folder) not in _served_folders(self.runtime, name):
                await asyncio.to_thread(shutil.rmtree, folder, True)
            if new is not None and isinstance(exc, BackendError):  # no version loaded
                raise _not_started(name, new[0], public_message(exc)) from None
            raise
        if new is not None and not self._version(name, new[0]).ready:
            reason = self._version(name, new[0]).reason
            notes["versions"].pop(new[0], None)
            await asyncio.to_thread(shutil.rmtree, folder / str(number), True)
            await self.control.load_folder(name, folder, overrides, notes)
            raise _not_started(name, new[0], reason)
        if managed_folder(previous) not in (None, folder):
            await asyncio.to_thread(shutil.rmtree, previous, True)


def _not_started(name: str, version: str, reason: str) -> TorchServeError:
    """TorchServe's 500 for a version whose handler did not load, with the reason."""
    return TorchServeError(
        500,
        "InternalServerException",
        f"Failed to start workers for model {name} version: {version} ({reason})",
    )


def _prepare(
    managed: Path,
    copies: list[tuple[Path, str]],
    new: tuple[str, Path, str] | None,
    number: int,
) -> Path:
    """A fresh model folder under ``managed``: each kept version folder copied under its
    number, the new archive unpacked as version ``number``, a config.yaml serving them all."""
    managed.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The kernel checks the model's name; until then it may hold anything (a "/", say).
    folder = Path(tempfile.mkdtemp(prefix="model-", dir=managed))
    try:
        for source, version in copies:
            shutil.copytree(source, folder / version, symlinks=True)
        if new is not None:
            try:  # the archive cache's member rules: no link, no escape, no bomb
                unpack(new[1], new[2], folder / str(number))
            except ValueError as exc:
                raise _bad_request(f"The archive {new[1].name} is refused: {exc}") from None
        config = {"backend": "torchserve", "version_policy": {"all": True}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _MADE.add(folder)
    return folder


def _served_folders(runtime: RuntimeView, name: str) -> set[str]:
    """The folders the versions of ``name`` are served from now."""
    try:
        return {str(info.backend.path.parent) for info in runtime.model_versions(name)}
    except ModelNotFound:
        return set()


def _batching(
    existing: list[ModelVersionInfo], batch: int, delay: int, given: bool
) -> dict[str, Any]:
    """Model config keys for TorchServe's batch settings: those given, else what the model
    is served with now."""
    if given or not existing:
        return model_config({"batchSize": batch, "maxBatchDelay": delay})
    config = existing[0].backend.config
    if config.max_batch_size <= 1:
        return {}
    return {
        "max_batch_size": config.max_batch_size,
        "max_queue_delay_ms": config.max_queue_delay_ms,
    }


def _archive_manifest(path: Path, url: str) -> tuple[str, dict[str, Any]]:
    """The archive's format and its manifest's ``model`` object; 400 when ``path`` is
    none of torch-model-archiver's formats."""
    kind = archive_format(path)
    try:
        if kind is None:
            raise ValueError("not a .mar, .tar.gz or no-archive folder")
        return kind, read_archive_manifest(path, kind)["model"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        # An OSError's text names the server's path: the client gets the reason alone.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise _bad_request(
            f"{url} is not a model archive ({reason}); make it with torch-model-archiver"
        ) from None


def _archive_file(info: ModelVersionInfo) -> str:
    """The archive a version was unpacked from (the repository's archive cache records its
    file name first in its stamp), else the model's name."""
    archive = stamped_archive(info.backend.path)
    if archive is not None:
        return archive
    try:
        read_manifest(info.backend.path)
    except (OSError, ValueError):
        return info.name
    return f"{info.name}.mar"


def management_routes(runtime: RuntimeView, control: ModelControl) -> list[web.RouteDef]:
    """``/models`` and everything under it, any method (unknown ones answer 405)."""
    api = TorchServeManagement(runtime, control)
    handler = control.http_handler("TorchServe /models", api.handle, error_body)
    return [web.route("*", "/models", handler), web.route("*", "/models/{tail:.*}", handler)]


GRPC_SERVICE = "org.pytorch.serve.grpc.management.ManagementAPIsService"


def _query(**values: Any) -> dict[str, str]:
    """A gRPC request's fields as the REST API's query: a number of 0 or an empty string is
    a field left out (proto3 cannot tell them apart), booleans ``true`` / ``false``."""
    query = {}
    for key, value in values.items():
        if isinstance(value, bool):
            query[key] = "true" if value else "false"
        elif value not in (0, ""):
            query[key] = str(value)
    return query


def _grpc_error(error: BaseException) -> BaseException:
    """TorchServe's gRPC answer for a refusal: its message and Java exception name, the
    code of its HTTP status (the inference service's rule)."""
    if not isinstance(error, TorchServeError):
        return error
    return grpc_refusal(error.status, error.message, error.kind)


def management_grpc_handlers(runtime: RuntimeView, control: ModelControl) -> list[Any]:
    """TorchServe's ``ManagementAPIsService``: each method answers what the REST call with
    the same parameters answers (``msg``: the status message or the JSON)."""
    api = TorchServeManagement(runtime, control)

    def method(answer: Any) -> Any:
        async def run(message: Any, call: Call) -> mpb.ManagementResponse:
            try:
                return _grpc(await answer(message))
            except Exception as exc:
                raise _grpc_error(exc) from None

        return run

    async def describe(m: mpb.DescribeModelRequest) -> Answer:
        return api.describe(m.model_name, m.model_version)

    async def listing(m: mpb.ListModelsRequest) -> Answer:
        # Sent as they are: TorchServe reads a limit of 0 (the field left out) as 0.
        return api.list_models({"limit": str(m.limit), "next_page_token": str(m.next_page_token)})

    async def register(m: mpb.RegisterModelRequest) -> Answer:
        query = _query(
            batch_size=m.batch_size,
            initial_workers=m.initial_workers,
            max_batch_delay=m.max_batch_delay,
            model_name=m.model_name,
            synchronous=m.synchronous,
        )
        if m.url:
            query["url"] = m.url
        return await api.register(query)

    async def scale(m: mpb.ScaleWorkerRequest) -> Answer:
        query = _query(min_worker=m.min_worker, max_worker=m.max_worker, synchronous=m.synchronous)
        return await api.scale(m.model_name, m.model_version, query)

    async def set_default(m: mpb.SetDefaultRequest) -> Answer:
        return await api.set_default(m.model_name, m.model_version)

    async def unregister(m: mpb.UnregisterModelRequest) -> Answer:
        return await api.unregister(m.model_name, m.model_version)

    return [
        control.grpc_service(
            GRPC_SERVICE,
            {
                "DescribeModel": (method(describe), mpb.DescribeModelRequest),
                "ListModels": (method(listing), mpb.ListModelsRequest),
                "RegisterModel": (method(register), mpb.RegisterModelRequest),
                "ScaleWorker": (method(scale), mpb.ScaleWorkerRequest),
                "SetDefault": (method(set_default), mpb.SetDefaultRequest),
                "UnregisterModel": (method(unregister), mpb.UnregisterModelRequest),
            },
        )
    ]
