"""The server YAML file (``dl-inference serve -c FILE``) as one typed tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dl_inference.gateway.config import Routes
from dl_inference.kernel.remote import cache_folder, is_remote


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GrpcConfig(_Section):
    """The gRPC listener."""

    host: str = "0.0.0.0"
    port: int = Field(default=8500, ge=0, le=65535)
    max_message_mb: float = Field(default=64, gt=0)
    # Who speaks HTTP/2: "asyncio" (dl-inference's own HTTP/2 server on the event loop, a
    # fifth to a quarter of grpc.aio's CPU per call) or "grpcio" (grpc.aio's server, for what
    # only it does: docs/grpc-transport.md). DLI_GRPC_ENGINE overrides it.
    engine: Literal["grpcio", "asyncio"] = "asyncio"


class HttpConfig(_Section):
    """The HTTP listener: REST, health, metrics. ``enabled: false`` turns it off."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(default=8501, ge=0, le=65535)
    # Who answers the hot REST routes (V2 infer): "asyncio" (dl-inference's own HTTP/1.1
    # lane, handing every other request and its connection to aiohttp) or "aiohttp" (aiohttp
    # for everything): docs/rest-transport.md. DLI_HTTP_ENGINE overrides it.
    engine: Literal["aiohttp", "asyncio"] = "asyncio"


class TlsConfig(_Section):
    """TLS for the gRPC and HTTP listeners; ``client_ca_file`` turns on mutual TLS."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class MetricsConfig(_Section):
    """What ``/metrics`` exports besides dl-inference's own ``dli_*`` families, and where.

    ``/metrics`` is always on the HTTP listener; ``port`` adds a listener of its own that
    answers only ``/metrics`` (Triton's ``--metrics-port``, TorchServe's
    ``metrics_address``), so that scrapers pointed at those ports need no change.
    """

    # Also Triton's nv_inference_* families, so Triton dashboards and alerts work unchanged.
    triton_names: bool = False
    # The metrics listener: None = none (0 picks a free port); its address by default the
    # HTTP listener's.
    port: int | None = Field(default=None, ge=0, le=65535)
    host: str | None = None


class ServerSection(_Section):
    """Listeners and process-wide behaviour."""

    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    tls: TlsConfig | None = None
    drain_timeout_s: float = Field(default=30, ge=0)
    # Server processes sharing the ports (SO_REUSEPORT), for Python-bound work.
    workers: int = Field(default=1, ge=1)
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    strict_model_loading: bool = False
    # Ready only when every model has a version ready (Triton's --strict-readiness, the
    # default); false: ready once start-up loading is over, whatever failed to load.
    strict_readiness: bool = True
    # Seconds between scans of the model repository for new/removed versions (0: never).
    repository_poll_s: float = Field(default=2.0, ge=0)
    # Where a remote model_repository (s3://...) is mirrored (default: under
    # $XDG_CACHE_HOME/dl-inference/repositories, one folder per URL).
    repository_cache_dir: Path | None = None
    # Seconds between checks of the config file for changes (0: only SIGHUP reloads).
    config_poll_s: float = Field(default=2.0, ge=0)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)


class ManagementConfig(_Section):
    """Run-time load/unload (V2 repository extension); off unless enabled, token required.

    It listens on its own ports, on 127.0.0.1 unless told otherwise. The token comes from
    the environment variable ``token_env`` or the file ``token_file`` (never the YAML).
    Models load only from ``roots`` (default: the model repository).
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    grpc_port: int = Field(default=8510, ge=0, le=65535)
    http_port: int = Field(default=8511, ge=0, le=65535)
    token_env: str = "DLI_MANAGEMENT_TOKEN"
    token_file: Path | None = None
    roots: list[Path] = Field(default_factory=list)


class PluginsConfig(_Section):
    """Which installed plugins to use. ``strict``: a plugin that fails to import is fatal."""

    allow: list[str] | None = None
    block: list[str] = Field(default_factory=list)
    strict: bool = False


class ServerConfig(_Section):
    """The whole server configuration file."""

    server: ServerSection = Field(default_factory=ServerSection)
    management: ManagementConfig = Field(default_factory=ManagementConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    model_repository: Path | None = None
    # A URL given as model_repository (s3://, gs://, any fsspec protocol) lands here, and
    # model_repository becomes the local cache folder that mirrors it.
    model_repository_url: str | None = None
    # fsspec options for that URL (endpoint_url, ...); credentials belong in the environment.
    model_repository_options: dict[str, Any] = Field(default_factory=dict)
    # Settings for hook plugins, by plugin (entry-point) name; each plugin validates its own.
    plugin_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Per-model overrides; the keys belong to ModelConfig or the model's backend Settings,
    # validated once the backend is known.
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    routes: Routes = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _remote_repository(cls, data: Any) -> Any:
        if isinstance(data, dict) and is_remote(data.get("model_repository")):
            data = {**data, "model_repository_url": data["model_repository"]}
            data["model_repository"] = None
        return data

    @model_validator(mode="after")
    def _cache_folder(self) -> ServerConfig:
        if self.model_repository_options and self.model_repository_url is None:
            raise ValueError(
                "model_repository_options apply to a model_repository URL (s3://bucket/prefix, "
                "gs://...), not to a local folder"
            )
        if self.model_repository_url is not None and self.model_repository is None:
            self.model_repository = cache_folder(
                self.model_repository_url,
                self.model_repository_options,
                self.server.repository_cache_dir,
            )
        return self
