"""The ``routes:`` section of the server YAML: which models are forwarded where, and how."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_BALANCER = "dynamic_weighted_round_robin"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` -> (host, port); ValueError saying what is expected."""
    text = address.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port (e.g. 10.0.0.5:8500 or [::1]:8500)")
    if ":" in host and not text.startswith("["):
        # Bare IPv6 literals are ambiguous with the port separator.
        raise ValueError(f"{address!r}: write an IPv6 address in brackets, e.g. [::1]:8500")
    return host, int(port)


def join_address(host: str, port: int) -> str:
    """The inverse of :func:`split_address`, bracketing IPv6 literals."""
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


class NodeConfig(_Section):
    """One upstream node: a dl-inference worker, TF Serving, Triton or Seldon instance."""

    address: str = Field(description="host:port of the node's gRPC listener")
    weight: int = Field(
        default=100, ge=1, le=1_000_000, description="its share of calls, for the balancer"
    )
    http_address: str | None = Field(
        default=None,
        description="host:port of its REST listener, when not the route's http_port on its host",
    )

    @field_validator("address", "http_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        split_address(value)
        return value.strip()


class DiscoveryConfig(_Section):
    """Where the node list comes from when it changes: a DNS name or a watched file.

    ``dns: host:port`` is re-resolved every ``refresh_s``; each A/AAAA record is a node
    (a Kubernetes headless Service). ``file`` holds a YAML list of ``{address, weight}``
    (or of ``host:port`` strings), re-read when it changes. ``nodefile`` is the seed's
    ``nodefile.txt`` (one ``taskid=timeout_ms,ip:port,...`` line per task), checked every
    ``refresh_s``: it gives the nodes and the timeout of the route's ``task_id``, or, for a
    route that names neither ``model`` nor ``task_id``, one route per line.
    """

    dns: str | None = Field(
        default=None, description="host:port whose A/AAAA records are the nodes"
    )
    nameserver: str | None = Field(
        default=None,
        description="host:port of the nameserver to ask instead of the system resolver",
    )
    file: Path | None = Field(
        default=None, description="YAML list of {address, weight} or host:port strings"
    )
    nodefile: Path | None = Field(
        default=None, description="the seed's nodefile.txt (taskid=timeout_ms,ip:port,...)"
    )
    refresh_s: float = Field(
        default=10.0, gt=0, description="seconds between DNS look-ups and file checks"
    )
    weight: int = Field(
        default=100,
        ge=1,
        description="weight of every node found by DNS or in a nodefile (which has none)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DiscoveryConfig:
        given = [v for v in (self.dns, self.file, self.nodefile) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of dns: HOST:PORT, file: PATH or nodefile: PATH")
        if self.dns is not None:
            split_address(self.dns)
        if self.nameserver is not None:
            if self.dns is None:
                raise ValueError("nameserver applies to dns discovery only")
            split_address(self.nameserver)
        return self


class HealthConfig(_Section):
    """Active probes with grpc.health.v1 Check.

    By default a route that names one model (``model``, no ``task_id``) asks for that
    model, so a node whose other models failed stays in this route; a node whose health
    service does not know the name (NOT_FOUND: it answers for the whole server only) is
    then asked for ``""``. Other routes, and ``service: ""``, ask for the whole server.
    An upstream without the health service (TF Serving) counts as live when it answers.
    """

    enabled: bool = Field(default=True, description="probe the nodes at all")
    interval_s: float = Field(default=5.0, gt=0, description="seconds between probes of a node")
    timeout_s: float = Field(default=1.0, gt=0, description="seconds a probe may take")
    service: str | None = Field(
        default=None,
        description="the service name a probe asks for (default: the route's model, else "
        '""; "" is the whole server)',
    )
    unhealthy_threshold: int = Field(
        default=2, ge=1, description="failed probes in a row that take a node out"
    )
    healthy_threshold: int = Field(
        default=1, ge=1, description="passed probes in a row that bring it back"
    )


class EjectionConfig(_Section):
    """Passive outlier ejection: consecutive failures take a node out for a growing time."""

    consecutive_failures: int = Field(
        default=5, ge=1, description="node failures in a row that eject a node"
    )
    base_s: float = Field(
        default=10.0, gt=0, description="first ejection's length; each next one adds as much"
    )
    max_s: float = Field(default=300.0, gt=0, description="longest ejection")
    max_percent: float = Field(
        default=50.0, ge=0, le=100, description="most of a route's nodes ejected at once (%)"
    )
    slow_start_s: float = Field(
        default=10.0, ge=0, description="seconds a returning or new node ramps up its share"
    )


class RetryBudgetConfig(_Section):
    """Retries allowed on top of requests: ``percent`` of recent requests plus ``min_per_s``."""

    percent: float = Field(
        default=20.0, ge=0, description="retries allowed, in % of the last 10 s of requests"
    )
    min_per_s: float = Field(
        default=10.0, ge=0, description="retries per second allowed on top, however few calls"
    )


class TlsConfig(_Section):
    """TLS to the upstream nodes; every file is optional (system roots by default)."""

    ca_file: Path | None = Field(
        default=None, description="CA bundle the nodes' certificates must chain to"
    )
    cert_file: Path | None = Field(
        default=None, description="client certificate, for nodes asking mutual TLS"
    )
    key_file: Path | None = Field(default=None, description="the client certificate's key")
    server_name: str | None = Field(
        default=None, description="name to check the nodes' certificates against"
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate)")
        return self


class RouteConfig(_Section):
    """A model (or a seed task id) served by a group of upstream nodes.

    ``model`` routes calls that name it exactly. ``task_id: N`` routes, as the seed's
    gateway did, every call whose model name ends in ``-N`` (``textcnn-69``) or is ``N``
    (a Seldon ``taskId`` tag), for each protocol the route accepts. A route may give both.
    """

    model: str | None = Field(
        default=None, min_length=1, description="the model name routed (exact match)"
    )
    task_id: int | None = Field(
        default=None, ge=1, description="the seed's task id: names ending in -N, or N"
    )
    protocols: list[str] | None = Field(
        default=None, description="protocol names forwarded for this model (default: all)"
    )
    nodes: list[NodeConfig] = Field(
        default_factory=list, description="the upstream nodes (or discovery)"
    )
    discovery: DiscoveryConfig | None = Field(
        default=None, description="where the nodes come from instead of nodes"
    )
    balancer: str = Field(
        default=DEFAULT_BALANCER, description="the balancer plugin choosing among nodes"
    )
    balancer_options: dict[str, object] = Field(
        default_factory=dict, description="settings handed to the balancer"
    )
    timeout_ms: int | None = Field(
        default=None, gt=0, description="limit for the whole call, retries included"
    )
    retries: int = Field(
        default=2, ge=0, le=10, description="other nodes a call may go to when nothing ran"
    )
    retry_budget: RetryBudgetConfig = Field(
        default_factory=RetryBudgetConfig, description="a cap on retries over all calls"
    )
    tls: TlsConfig | None = Field(default=None, description="TLS to the nodes (off: plain)")
    # V2 and TF Serving REST calls for the model go there, on the host of each node's
    # gRPC address (a node's own http_address wins). Neither set: gRPC only.
    http_port: int | None = Field(
        default=None, ge=1, le=65535, description="the nodes' REST port, to forward REST calls"
    )
    connections_per_node: int = Field(
        default=1, ge=1, le=64, description="gRPC connections per node (reach --workers N)"
    )
    health: HealthConfig = Field(
        default_factory=HealthConfig, description="active grpc.health probes"
    )
    ejection: EjectionConfig = Field(
        default_factory=EjectionConfig, description="passive ejection of failing nodes"
    )

    @property
    def name(self) -> str:
        """How logs, metrics and the status page call the route: its model, else ``task-N``."""
        if self.model is not None:
            return self.model
        if self.task_id is not None:
            return f"task-{self.task_id}"
        return f"every task of {self.nodefile}"

    @property
    def probe_service(self) -> str:
        """What the route's health probes ask for: ``health.service`` when given, else the
        route's one model; ``""`` (the whole server) for a route of a task id, whose calls
        name many models."""
        if self.health.service is not None:
            return self.health.service
        if self.model is not None and self.task_id is None:
            return self.model
        return ""

    @property
    def nodefile(self) -> Path | None:
        """The seed node file this route's nodes (and timeout) come from, if any."""
        return self.discovery.nodefile if self.discovery is not None else None

    @property
    def is_nodefile_template(self) -> bool:
        """Whether this entry stands for one route per line of its node file."""
        return self.nodefile is not None and self.model is None and self.task_id is None

    @model_validator(mode="after")
    def _node_source(self) -> RouteConfig:
        if not self.nodes and self.discovery is None:
            raise ValueError(
                "give nodes: [{address, weight}] or discovery: {dns | file | nodefile}"
            )
        if self.nodes and self.discovery is not None:
            raise ValueError("give either nodes or discovery, not both")
        if self.model is None and self.task_id is None and self.nodefile is None:
            raise ValueError(
                "give model: NAME or task_id: N (or only discovery: {nodefile: PATH}, "
                "for one route per line of a seed node file)"
            )
        if self.nodefile is not None:
            if self.task_id is None and self.model is not None:
                raise ValueError(
                    "a route whose nodes come from a nodefile names its line with task_id: N "
                    "(or names neither model nor task_id, to stand for every line)"
                )
            if self.timeout_ms is not None:
                raise ValueError(
                    "timeout_ms comes from the nodefile (taskid=timeout_ms,ip:port,...); "
                    "remove it here"
                )
        seen: set[str] = set()
        for node in self.nodes:
            if node.address in seen:
                raise ValueError(f"node {node.address} is listed twice")
            seen.add(node.address)
        return self


def _unique_models(routes: list[RouteConfig]) -> list[RouteConfig]:
    models: set[str] = set()
    tasks: set[int] = set()
    templates: set[Path] = set()
    for route in routes:
        if route.model is not None:
            if route.model in models:
                raise ValueError(
                    f"model {route.model!r} has two routes; merge their nodes into one"
                )
            models.add(route.model)
        if route.task_id is not None:
            if route.task_id in tasks:
                raise ValueError(f"task_id {route.task_id} has two routes; merge them into one")
            tasks.add(route.task_id)
        if route.is_nodefile_template:
            assert route.nodefile is not None
            if route.nodefile in templates:
                raise ValueError(f"two routes stand for every line of {route.nodefile}; keep one")
            templates.add(route.nodefile)
    return routes


Routes = Annotated[list[RouteConfig], AfterValidator(_unique_models)]
"""The type of ``ServerConfig.routes``: one route per model and per task id."""
