"""TF Serving's own configuration files, read as they are.

- ``--model_config_file`` (``models.config``): a ``ModelServerConfig`` in protobuf text
  format, its ``model_config_list`` naming each model's ``name``, ``base_path``,
  ``model_platform``, ``model_version_policy`` and ``version_labels``.
- ``--batching_parameters_file``: a ``BatchingParameters`` in text format, applied to every
  model of the file, as TF Serving's ``--enable_batching`` applies it to every model.
- ``--enable_per_model_batching_parameters``: each model batched with the
  ``batching_params.pbtxt`` of its SavedModel folder (the newest served version's), unbatched
  without one; only the thread count (``num_batch_threads``) comes from the common file,
  as in TF Serving.

Both are read with TF Serving's published field numbers (``_proto/tfs.proto``). Each model
is served from its ``base_path`` (``<base_path>/<version>/saved_model.pb``) by the
``tensorflow`` backend: the plugin offers it to the kernel's scan, with or without a
model repository (``dli_configured_models``), as a model folder of its own making, a
private temporary folder holding a config.yaml and one link per version folder of
``base_path``, so that nothing is written beside the user's files. The scan runs every
``server.repository_poll_s``: new version folders are picked up there, and the file itself
is read again every ``model_config_file_poll_wait_seconds`` (0, TF Serving's default: read
once, at start-up).
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
import yaml
from google.protobuf import text_format
from google.protobuf.message import Message

from dl_inference import ConfigError, VersionPolicy
from dl_inference_tfserving._proto import tfs_pb2

log = structlog.get_logger("dl_inference.tfserving")

# A SavedModel folder's own batching parameters (TF Serving's kBatchingParamsFilename).
PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"
# model_platform values this server answers for: TF Serving's default platform.
PLATFORMS = ("", "tensorflow")
BACKEND = "tensorflow"
# Fields of TF Serving's messages that are not read here, and why (the parser names them).
_NOT_SUPPORTED = {
    "logging_config": "request logging is not supported; remove logging_config",
    "model_type": "model_type is deprecated in TF Serving; use model_platform: 'tensorflow'",
}
_PACKAGE = "dl_inference_tfserving.tfs."

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class ConfiguredModel:
    """One ``config`` entry of a models.config, as model config.yaml keys."""

    name: str
    base_path: Path
    config: dict[str, Any]


def read_text_proto(path: Path, message: M) -> tuple[M, str]:
    """``path`` parsed into ``message``, with the text read (to place later errors by line);
    a ConfigError names the file, line and column, and the field protobuf could not take
    (with why, for fields known not to be supported)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        reason = str(exc).split(" : ", 1)[-1] if line is not None else str(exc)
        reason = reason.replace(_PACKAGE, "")
        field = re.search(r'has no field named "(\w+)"', reason)
        if field and field[1] in _NOT_SUPPORTED:
            reason += f" ({_NOT_SUPPORTED[field[1]]})"
        where = f"{path}:{line}:{column}" if line is not None else str(path)
        raise ConfigError(f"{where}: {reason}") from None
    return message, text


def platform_error(config: tfs_pb2.ModelConfig) -> str | None:
    """Why ``config``'s model_platform is not served here (None when it is)."""
    if config.model_platform in PLATFORMS:
        return None
    return (
        f"model_platform {config.model_platform!r} is not served by TF Serving's API here; "
        "leave it empty or 'tensorflow'"
    )


def version_overrides(config: tfs_pb2.ModelConfig) -> dict[str, Any]:
    """TF Serving's version policy and labels as dl-inference model settings."""
    overrides: dict[str, Any] = {}
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "latest":
        overrides["version_policy"] = {"latest": policy.latest.num_versions or 1}
    elif choice == "all":
        overrides["version_policy"] = {"all": True}
    elif choice == "specific":
        overrides["version_policy"] = {"specific": list(policy.specific.versions)}
    if config.version_labels:
        overrides["version_labels"] = dict(config.version_labels)
    return overrides


def read_batching_parameters(path: Path, *, threads: bool = True) -> dict[str, Any]:
    """A ``--batching_parameters_file`` as model config.yaml keys; a parameter that does not
    map is a ConfigError naming it and the file. ``threads=False`` (a per-model file) leaves
    ``num_batch_threads`` unread, as TF Serving leaves it."""
    params, text = read_text_proto(path, tfs_pb2.BatchingParameters())
    lines = _top_level_lines(text)

    def refuse(field: str, why: str) -> ConfigError:
        line = lines.get(field)
        return ConfigError(f"{path}:{line}: {field}: {why}" if line else f"{path}: {field}: {why}")

    if not params.HasField("max_batch_size"):
        raise refuse("max_batch_size", "required here (give the largest batch, e.g. 32)")
    size = params.max_batch_size.value
    if size < 1:
        raise refuse("max_batch_size", f"{size} must be at least 1")
    config: dict[str, Any] = {"max_batch_size": size}
    if params.HasField("batch_timeout_micros"):
        micros = params.batch_timeout_micros.value
        if micros < 0:
            raise refuse("batch_timeout_micros", f"{micros} must not be negative")
        config["max_queue_delay_ms"] = micros / 1000
    if params.HasField("max_enqueued_batches"):
        batches = params.max_enqueued_batches.value
        if batches < 1:
            raise refuse("max_enqueued_batches", f"{batches} must be at least 1")
        # TF Serving counts queued batches, the kernel queued requests: a request holds at
        # least one row, so this many requests never hold more rows than TF Serving queues.
        config["max_queue_size"] = batches * size
    if threads and params.HasField("num_batch_threads"):
        threads = params.num_batch_threads.value
        if threads < 1:
            raise refuse("num_batch_threads", f"{threads} must be at least 1")
        config["instances"] = threads  # batches of one model run at once, on one copy of it
    sizes = list(params.allowed_batch_sizes)
    if sizes:
        if sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise refuse("allowed_batch_sizes", f"{sizes} must be positive and increasing")
        if sizes[-1] != size:
            raise refuse(
                "allowed_batch_sizes",
                f"the last entry ({sizes[-1]}) must equal max_batch_size ({size}) as in TF Serving",
            )
        config["preferred_batch_sizes"] = sizes
    if params.pad_variable_length_inputs:
        raise refuse(
            "pad_variable_length_inputs",
            "not supported: requests are merged only when their shapes agree past the batch "
            "dimension; remove it or set it to false",
        )
    # thread_pool_name only names TF Serving's batch threads: nothing to map, nothing lost.
    return config


def read_model_config_file(path: Path, batching: dict[str, Any]) -> list[ConfiguredModel]:
    """Every model of a ``--model_config_file``, with ``batching`` (model config.yaml keys)
    applied to each. A ConfigError names the file, the line and the field at fault."""
    message, text = read_text_proto(path, tfs_pb2.ModelServerConfig())
    lines = _entry_lines(text)
    kind = message.WhichOneof("config")
    if kind != "model_config_list":
        where = "custom_model_config" if kind else "model_config_list"
        raise ConfigError(
            f"{path}: {where}: give the models as model_config_list {{ config {{ name: ... "
            "base_path: ... }} }}" + (" (custom_model_config is not supported)" if kind else "")
        )
    models: list[ConfiguredModel] = []
    for index, config in enumerate(message.model_config_list.config):
        entry = lines[index] if index < len(lines) else {}

        def fail(field: str, why: str, entry: dict[str, int] = entry, index: int = index) -> None:
            line = entry.get(field, entry.get("config"))
            where = f"{path}:{line}" if line else str(path)
            raise ConfigError(f"{where}: model_config_list.config[{index}].{field}: {why}")

        if not config.name:
            fail("name", "missing; give the name clients call the model by")
        if any(model.name == config.name for model in models):
            fail("name", f"{config.name!r} is named twice")
        if why := platform_error(config):
            fail("model_platform", why)
        base = Path(config.base_path)
        if not config.base_path:
            fail("base_path", "missing; give the folder holding <version>/saved_model.pb")
        elif "://" in config.base_path:
            fail(
                "base_path",
                f"{config.base_path!r}: remote base paths are not read; copy the model to a "
                "local folder, or serve the bucket as model_repository (s3://..., gs://...)",
            )
        elif not base.is_absolute():
            fail(
                "base_path",
                f"{config.base_path!r} is relative; give an absolute path (the folder "
                "holding <version>/saved_model.pb)",
            )
        elif not base.is_dir():
            fail("base_path", f"{config.base_path!r}: no such folder")
        model = {"backend": BACKEND, **batching, **version_overrides(config)}
        models.append(ConfiguredModel(config.name, base, model))
    return models


# A token of protobuf's text format: strings, comments, names, punctuation, anything else.
_TOKEN = re.compile(
    r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|#[^\n]*|[A-Za-z_][\w.]*|[{}<>\[\]:,;]|\S"
)
_NAME = re.compile(r"[A-Za-z_][\w.]*")


def _entry_lines(text: str) -> list[dict[str, int]]:
    """For each ``model_config_list.config`` entry, the line of each of its fields (the
    first time it is written) and of the entry itself (``"config"``)."""
    entries: list[dict[str, int]] = []
    for event, path, name, line in _walk(text):
        if event == "open" and path == ("model_config_list",) and name == "config":
            entries.append({"config": line})
        elif event == "field" and path == ("model_config_list", "config") and entries:
            entries[-1].setdefault(name, line)
    return entries


def _top_level_lines(text: str) -> dict[str, int]:
    """The line of each top-level field of a text-format message, the first time it is
    written."""
    lines: dict[str, int] = {}
    for event, path, name, line in _walk(text):
        if event == "field" and not path:
            lines.setdefault(name, line)
    return lines


def _walk(text: str) -> Iterator[tuple[str, tuple[str | None, ...], str | None, int]]:
    """The fields of a text-format message as written: ``("field", path, name, line)`` for
    each field name and ``("open", path, name, line)`` for each message opened, ``path``
    being the names of the messages it is in. protobuf's parser keeps no positions, so
    errors found after parsing are placed by this walk."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    path: list[str | None] = []  # the open messages' field names
    lists: list[tuple[int, str | None]] = []  # open [...] lists: depth, field name
    pending: str | None = None  # the field name just read, awaiting its value
    value_next = False  # after ':' a name is a value (an enum), not a field
    for match in _TOKEN.finditer(text):
        token = match[0]
        line = bisect_right(starts, match.start())
        if token.startswith("#"):
            continue
        if token in ("{", "<"):
            name = pending if pending else (lists[-1][1] if lists else None)
            yield "open", tuple(path), name, line
            path.append(name)
            pending, value_next = None, False
        elif token in ("}", ">"):
            if path:
                path.pop()
            pending, value_next = None, False
        elif token == "[":
            lists.append((len(path), pending))
            value_next = False
        elif token == "]":
            if lists:
                lists.pop()
            pending, value_next = None, False
        elif token == ":":
            value_next = True
        elif _NAME.fullmatch(token) and not value_next:
            pending = token
            yield "field", tuple(path), token, line
        elif token not in (",", ";"):
            # A value (string, number, enum): inside [a, b] more values follow.
            value_next = bool(lists) and lists[-1][0] == len(path)
            if not value_next:
                pending = None


class ModelConfigFile:
    """The models a ``--model_config_file`` names, as model folders for the repository scan.

    Read at construction (a ConfigError stops start-up), then again every
    ``poll_wait_s`` seconds (0: never) when the scan asks; a file that no longer reads is
    logged and the models it named before keep being served, as TF Serving keeps its
    previous config when a reload fails.
    """

    def __init__(
        self,
        path: Path,
        batching_file: Path | None = None,
        poll_wait_s: float = 0.0,
        *,
        per_model_batching: bool = False,
    ) -> None:
        self.path = path
        self.poll_wait_s = poll_wait_s
        self.per_model_batching = per_model_batching
        self.batching = read_batching_parameters(batching_file) if batching_file else {}
        self.configured = read_model_config_file(path, self._common_batching())
        if per_model_batching:
            for model in self.configured:
                self._model_batching(model)  # a file that does not read stops start-up
        self._read_at = time.monotonic()
        self._lock = threading.Lock()
        self._folder: Path | None = None

    def _common_batching(self) -> dict[str, Any]:
        """The batching keys every model gets from the common file (none when each model
        brings its own)."""
        return {} if self.per_model_batching else self.batching

    def _model_batching(self, model: ConfiguredModel) -> dict[str, Any]:
        """With per-model parameters, ``model``'s batching keys: the batching_params.pbtxt
        of the newest version it serves (none there: not batched), the threads of the
        common file."""
        if not self.per_model_batching:
            return {}
        # By number: TF Serving reads "007" as version 7, as the kernel does.
        versions = {int(name): folder for name, folder in _version_folders(model.base_path).items()}
        policy = VersionPolicy.model_validate(model.config.get("version_policy", {}))
        served = policy.select(list(versions))
        if not served:
            return {}
        newest = versions[served[-1]] / PER_MODEL_BATCHING_FILE
        if not newest.is_file():
            return {}
        # TF Serving runs every model's batches on the common scheduler's threads.
        batching = read_batching_parameters(newest, threads=False)
        if "instances" in self.batching:
            batching["instances"] = self.batching["instances"]
        return batching

    def models(self) -> list[tuple[str, Path]]:
        """``(name, model folder)`` for each configured model (the file re-read when due)."""
        with self._lock:
            if self.poll_wait_s > 0 and time.monotonic() - self._read_at >= self.poll_wait_s:
                self._read_at = time.monotonic()
                try:
                    self.configured = read_model_config_file(self.path, self._common_batching())
                except ConfigError as exc:
                    log.error(
                        "model config file not reloaded; serving its previous models",
                        error=str(exc),
                    )
            found = []
            for model in self.configured:
                try:
                    found.append((model.name, self._model_folder(model)))
                except ConfigError as exc:
                    # Its batching_params.pbtxt no longer reads: the model stays as it was.
                    folder = self._folder_of(model)
                    kept = (folder / "config.yaml").is_file()
                    log.error(
                        "model's batching parameters not read",
                        model=model.name,
                        error=str(exc),
                        outcome="previous parameters kept" if kept else "model skipped",
                    )
                    if kept:
                        found.append((model.name, folder))
                except OSError as exc:
                    log.warning(
                        "model of the model config file skipped",
                        model=model.name,
                        base_path=str(model.base_path),
                        error=f"{type(exc).__name__}: {exc}",
                    )
            return found

    def _model_folder(self, model: ConfiguredModel) -> Path:
        """``<private folder>/<name>/``: config.yaml and a link per version folder of
        base_path (stale links removed); files rewritten only when they change, so the
        scan sees no change while base_path and the file are unchanged."""
        folder = self._folder_of(model)
        # Read before any link changes: a file that does not read leaves the folder as it was.
        config = {**model.config, **self._model_batching(model)}
        folder.mkdir(exist_ok=True)
        versions = _version_folders(model.base_path)
        for link in folder.iterdir():
            if link.is_symlink() and (
                link.name not in versions or link.readlink() != versions[link.name]
            ):
                link.unlink()
        for name, target in versions.items():
            if not (folder / name).is_symlink():
                (folder / name).symlink_to(target, target_is_directory=True)
        text = yaml.safe_dump(config, sort_keys=False)
        config_file = folder / "config.yaml"
        if not config_file.is_file() or config_file.read_text() != text:
            config_file.write_text(text)
        return folder

    def _folder_of(self, model: ConfiguredModel) -> Path:
        """``<private folder>/<name>``, the private folder made on first use."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="dl-inference-tfserving-"))
            atexit.register(shutil.rmtree, self._folder, True)
        return self._folder / model.name


def _version_folders(base_path: Path) -> dict[str, Path]:
    """``base_path``'s version folders (numeric names) by name."""
    return {p.name: p for p in base_path.iterdir() if p.name.isdigit() and p.is_dir()}
