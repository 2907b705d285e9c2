"""``plugin_settings.torchserve`` of the server YAML, and TorchServe's config.properties.

::

    plugin_settings:
      torchserve:
        config_properties: /etc/torchserve/config.properties   # optional

From a TorchServe ``config.properties`` (Java properties: ``key=value``, ``#`` comments,
``\\`` continuing a line) this plugin reads ``load_models`` (``all``, or a comma-separated
list of archive files / model names / ``name=file.mar``: only those archives are served),
``model_store`` (the store served, with or without ``model_repository``; relative to the
file's folder) and ``models`` (JSON: ``{"<name>": {"<version>": {"batchSize": 8,
"maxBatchDelay": 50, ...}}}``): ``batchSize`` -> ``max_batch_size``, ``maxBatchDelay`` (ms) ->
``max_queue_delay_ms``. Where the server listens, as TorchServe listens:
``inference_address`` (``http://HOST:PORT``: ``server.http``), ``management_address`` (turns
management on there: ``management.enabled``, ``.host``, ``.http_port``; its token is still
required), ``grpc_inference_port`` / ``grpc_inference_address`` (``server.grpc``) and
``grpc_management_port`` / ``grpc_management_address`` (``management.grpc_port`` and
``management.host``: our two management listeners share one host), ``model_store`` as
``management.roots`` when ``management_address`` is given. A key the file leaves out is
TorchServe 0.12's default, as TorchServe reads the file (``TORCHSERVE_DEFAULTS``): REST
inference on ``http://127.0.0.1:8080``, gRPC inference on 127.0.0.1:7070, and, where
management is on, ``http://127.0.0.1:8081`` and gRPC 7071. All of these are returned to the
kernel from ``dli_configure``, whose one precedence rule applies to defaults and given keys
alike: a command-line flag or a key the server YAML gives wins.

Management stays off unless the file gives ``management_address`` (or the YAML turns it
on), although TorchServe 0.12 runs its management API on 8081 by default: our management
never runs without its token, which TorchServe generates itself and we do not, so turning
it on by default would stop every inference-only migrated server at start-up until a token
is set; turning it on only when a token happens to be set would make one file mean two
things. Where it is on, it listens where TorchServe's would. TorchServe's token
authorization (on unless ``disable_token_authorization=true``: a key from its
``key_file.json`` on every inference and management call) is not reproduced: a file that
leaves it on is served with a warning that inference calls need no key here.
``metrics_address``, where the file gives it, is the metrics listener
(``server.metrics.host``, ``.port``: ``/metrics`` alone, as TorchServe's metrics API); left
out, there is none (TorchServe's would listen on 127.0.0.1:8082), ``/metrics`` being on the
HTTP listener anyway. An ``https://`` address is refused (TLS comes from ``server.tls``).
Other keys are logged as not used. ``config_properties`` itself, when relative, is taken
from the server YAML's folder, as its ``model_repository`` is.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from dl_inference import ConfigError, describe_errors

log = structlog.get_logger("dl_inference.torchserve")
PREFIX = "plugin_settings.torchserve"
# config.properties keys this plugin applies; the others are reported once.
APPLIED = (
    "load_models",
    "models",
    "model_store",
    "inference_address",
    "management_address",
    "grpc_inference_port",
    "grpc_management_port",
    "grpc_inference_address",
    "grpc_management_address",
    "metrics_address",
    # Read, not applied: without it, a warning that TorchServe's tokens are not checked.
    "disable_token_authorization",
)
# TorchServe 0.12's defaults for the listener keys a config.properties leaves out (its
# ConfigManager's): where TorchServe listens when the file gives no address.
TORCHSERVE_DEFAULTS = {
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
    "grpc_inference_address": "127.0.0.1",
    "grpc_inference_port": "7070",
    "grpc_management_port": "7071",
    # Named in the log only: a file without metrics_address opens no metrics listener.
    "metrics_address": "http://127.0.0.1:8082",
    # grpc_management_address (127.0.0.1) has none here: our two management listeners share
    # one host, management_address's (given or this default).
}


class TorchServeSettings(BaseModel):
    """The whole ``plugin_settings.torchserve`` section."""

    model_config = ConfigDict(extra="forbid")

    config_properties: Path | None = None


class Properties:
    """What a config.properties says about the archives to serve."""

    def __init__(
        self,
        load_models: str = "all",
        models: dict[str, Any] | None = None,
        model_store: Path | None = None,
        listeners: dict[str, tuple[Any, str]] | None = None,
    ) -> None:
        self.load_models = load_models
        self.models = models or {}
        self.model_store = model_store  # served with or without a model_repository
        # Listener key (as the server YAML spells it) -> (value, file and key giving it).
        self.listeners = listeners or {}

    def selects(self, archive: Path, model_name: str) -> bool:
        """Whether ``load_models`` asks for this archive."""
        wanted = [item.strip() for item in self.load_models.split(",") if item.strip()]
        if not wanted or any(item.lower() == "all" for item in wanted):
            return True
        for item in wanted:
            name, _, file = item.rpartition("=")
            if file in (archive.name, archive.stem, model_name) and name in ("", model_name):
                return True
        return False

    def model_settings(self, model_name: str, version: str) -> dict[str, Any]:
        """The ``models`` entry of this model and version (or its only / default one)."""
        versions = self.models.get(model_name)
        if not isinstance(versions, dict) or not versions:
            return {}
        chosen = versions.get(version)
        if chosen is None:
            defaults = [
                v for v in versions.values() if isinstance(v, dict) and v.get("defaultVersion")
            ]
            chosen = defaults[0] if defaults else next(iter(versions.values()))
        return chosen if isinstance(chosen, dict) else {}


def parse_settings(settings: Mapping[str, Any], config_dir: Path | None = None) -> Properties:
    """Validate the section and read its config.properties (a relative path taken from
    ``config_dir``, the server YAML's folder); ConfigError naming what is wrong."""
    try:
        parsed = TorchServeSettings.model_validate(dict(settings))
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, TorchServeSettings, PREFIX)) from None
    path = parsed.config_properties
    if path is None:
        return Properties()
    if config_dir is not None and not path.is_absolute():
        path = config_dir / path
    return read_properties(path)


def read_properties(path: Path) -> Properties:
    """A TorchServe config.properties file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{PREFIX}.config_properties: {path} cannot be read ({exc})") from None
    values: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    models: dict[str, Any] = {}
    if values.get("models"):
        try:
            models = json.loads(values["models"])
        except ValueError as exc:
            raise ConfigError(f"{path}: models= is not JSON ({exc})") from None
        if not isinstance(models, dict):
            raise ConfigError(f'{path}: models= must be a JSON object {{"<name>": {{...}}}}')
    ignored = sorted(set(values) - set(APPLIED))
    if ignored:
        log.info(
            "config.properties keys not used (dl-inference's own flags and config set them)",
            file=str(path),
            keys=ignored,
        )
    store = None
    if values.get("model_store"):
        # As a path in the server YAML: relative to the file that gives it.
        store = (path.parent / values["model_store"]).resolve()
        if not store.is_dir():
            raise ConfigError(f"{path}: model_store={values['model_store']}: no such folder")
    listeners = read_listeners(path, values)
    if values.get("disable_token_authorization", "").lower() != "true":
        log.warning(
            "config.properties leaves TorchServe's token authorization on (TorchServe 0.12's "
            "default): TorchServe would refuse every inference and management call without a "
            "key from the key_file.json it writes. dl-inference writes no key file and answers "
            "inference calls without a key (management needs its own token). Guard the "
            "inference listeners with the auth plugin (plugin_settings.auth) or the network, "
            "and set disable_token_authorization=true in the file to say so",
            file=str(path),
        )
    if not values.get("management_address"):
        log.info(
            "config.properties gives no management_address: TorchServe would run its "
            "management API on its default address; dl-inference's stays off unless the "
            "server YAML turns it on (management.enabled), then listens there",
            file=str(path),
            address=TORCHSERVE_DEFAULTS["management_address"],
        )
    if not values.get("metrics_address"):
        log.info(
            "config.properties gives no metrics_address: TorchServe would serve its metrics "
            "API on its default address; dl-inference serves /metrics on the inference "
            "listener, and on a listener of its own where the file gives metrics_address (or "
            "the server YAML server.metrics.port)",
            file=str(path),
            address=TORCHSERVE_DEFAULTS["metrics_address"],
        )
    if store is not None and "management.enabled" in listeners:
        # The management this file turns on registers archives from its model store, as
        # TorchServe's does (a YAML's own management keeps its roots: the repository).
        listeners["management.roots"] = ([store], f"{path}: model_store")
    return Properties(values.get("load_models", "all"), models, store, listeners)


def read_listeners(path: Path, values: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """The addresses and ports of a config.properties as server config keys, each with the
    file and key that gave it; a listener key the file leaves out is TorchServe's default
    (``TORCHSERVE_DEFAULTS``), as TorchServe reads the file. Only a ``management_address``
    the file gives turns management on (see the module docstring)."""

    def given(key: str) -> tuple[str, str]:
        """The file's value of ``key`` or TorchServe's default, and where it came from."""
        if values.get(key):
            return values[key], f"{path}: {key}"
        default = TORCHSERVE_DEFAULTS[key]
        return default, f"{path}: no {key}, TorchServe's default {default}"

    listeners: dict[str, tuple[Any, str]] = {}
    for key, section, port_key in (
        ("inference_address", "server.http", "port"),
        ("management_address", "management", "http_port"),
    ):
        text, where = given(key)
        host, port = _address(path, key, text)
        listeners[f"{section}.host"] = (host, where)
        listeners[f"{section}.{port_key}"] = (port, where)
    if values.get("management_address"):
        listeners["management.enabled"] = (True, f"{path}: management_address")
    if values.get("metrics_address"):
        # Only as given: /metrics is on the inference listener anyway (see the docstring).
        host, port = _address(path, "metrics_address", values["metrics_address"])
        where = f"{path}: metrics_address"
        listeners["server.metrics.host"] = (host, where)
        listeners["server.metrics.port"] = (port, where)
    listeners["server.grpc.host"] = given("grpc_inference_address")
    grpc_management = values.get("grpc_management_address")
    if grpc_management:
        # dl-inference's two management listeners share management.host.
        if values.get("management_address"):
            host = listeners["management.host"][0]
            if host != grpc_management:
                raise ConfigError(
                    f"{path}: grpc_management_address={grpc_management} and "
                    f"management_address host {host} differ; dl-inference's management "
                    "listeners share one host"
                )
        else:
            listeners["management.host"] = (
                grpc_management,
                f"{path}: grpc_management_address",
            )
    for key, setting in (
        ("grpc_inference_port", "server.grpc.port"),
        ("grpc_management_port", "management.grpc_port"),
    ):
        text, where = given(key)
        try:
            port = int(text)
        except ValueError:
            raise ConfigError(f"{path}: {key}={text}: give a port number") from None
        listeners[setting] = (port, where)
    return listeners


def _address(path: Path, key: str, text: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> (HOST, PORT); ConfigError naming the file and key."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme == "https":
        raise ConfigError(
            f"{path}: {key}={text}: https is not applied from config.properties; write "
            "http://HOST:PORT and give TLS in the server YAML (server.tls: cert_file, "
            "key_file, as TorchServe's certificate_file and private_key_file)"
        )
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise ConfigError(f"{path}: {key}={text}: write http://HOST:PORT, e.g. http://0.0.0.0:8080")
    return parts.hostname, port


def model_config(settings: dict[str, Any]) -> dict[str, Any]:
    """A model's TorchServe settings (``models=`` entry or model-config.yaml) as model
    config.yaml keys; ``batchSize`` 1 (TorchServe's default) is no batching."""
    config: dict[str, Any] = {}
    batch = settings.get("batchSize", settings.get("batch_size"))
    if batch is not None and int(batch) > 1:
        config["max_batch_size"] = int(batch)
        delay = settings.get("maxBatchDelay", settings.get("max_batch_delay"))
        if delay is not None:
            config["max_queue_delay_ms"] = float(delay)
    return config
