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


class GroupConfig(_Section):
    """A named group of upstream nodes inside a route: a share of its calls (``split``) or
    its shadow (``mirror``). Nodes, discovery, balancer, health and ejection work as a
    route's; those the group does not give are the route's. ``version`` makes the group's
    nodes serve that version of the model: the gateway rewrites the version the calls name,
    for the protocols that offer a rewriter (:meth:`~dl_inference.Protocol.version_rewriters`).
    """

    name: str = Field(min_length=1, description="the group's name (metrics, logs, status API)")
    nodes: list[NodeConfig] = Field(
        default_factory=list, description="the group's upstream nodes (or discovery)"
    )
    discovery: DiscoveryConfig | None = Field(
        default=None, description="where the group's nodes come from instead of nodes"
    )
    version: str | None = Field(
        default=None,
        min_length=1,
        description="the model version the calls forwarded to this group's nodes name",
    )
    balancer: str | None = Field(
        default=None, description="the balancer choosing among the group's nodes (the route's)"
    )
    balancer_options: dict[str, object] | None = Field(
        default=None, description="settings handed to the group's balancer (the route's)"
    )
    health: HealthConfig | None = Field(
        default=None, description="active probes of the group's nodes (the route's)"
    )
    ejection: EjectionConfig | None = Field(
        default=None, description="passive ejection of the group's nodes (the route's)"
    )

    @model_validator(mode="after")
    def _group_nodes(self) -> GroupConfig:
        if not self.nodes and self.discovery is None:
            raise ValueError(f"group {self.name!r}: give nodes: [...] or discovery: {{...}}")
        if self.nodes and self.discovery is not None:
            raise ValueError(f"group {self.name!r}: give either nodes or discovery, not both")
        if self.discovery is not None and self.discovery.nodefile is not None:
            raise ValueError(
                f"group {self.name!r}: a nodefile names whole routes; use dns or file here"
            )
        _distinct_nodes(self.nodes)
        return self


class SplitGroupConfig(GroupConfig):
    """One group of a route's ``split``: it takes ``weight`` of the route's calls."""

    weight: int = Field(
        ge=0,
        le=1_000_000,
        description="its share of the route's calls (0: none, e.g. a group being drained)",
    )


class MirrorConfig(GroupConfig):
    """A shadow group: a copy of ``percent`` of the route's unary calls goes there too, and
    its answers (errors included) are discarded."""

    name: str = Field(
        default="shadow", min_length=1, description="the group's name (metrics, logs)"
    )
    percent: float = Field(
        default=100.0, ge=0, le=100, description="share of the route's calls copied (%)"
    )
    max_in_flight: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="copies outstanding at once; a copy beyond is dropped (and counted)",
    )
    timeout_ms: int = Field(default=10_000, gt=0, description="how long a copy may take")


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
    split: list[SplitGroupConfig] = Field(
        default_factory=list,
        description="groups sharing the calls by weight, instead of nodes / discovery",
    )
    mirror: MirrorConfig | None = Field(
        default=None, description="a shadow group that gets a copy of calls (answers dropped)"
    )

    @property
    def name(self) -> str:
        """How logs, metrics and the status page call the route: its model, else ``task-N``."""
        if self.model is not None:
            return self.model
        if self.task_id is not None:
            return f"task-{self.task_id}"
        return f"every task of {self.nodefile}"

    def group_route(self, group: GroupConfig) -> RouteConfig:
        """The route ``group`` of this route is run as: the group's nodes or discovery,
        with its balancer, health and ejection where it gives them, else this route's."""
        update: dict[str, object] = {
            "nodes": group.nodes,
            "discovery": group.discovery,
            "split": [],
            "mirror": None,
        }
        for key in ("balancer", "balancer_options", "health", "ejection"):
            value = getattr(group, key)
            if value is not None:
                update[key] = value
        return self.model_copy(update=update)

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
        if self.split:
            self._check_groups()
        elif not self.nodes and self.discovery is None:
            raise ValueError(
                "give nodes: [{address, weight}], discovery: {dns | file | nodefile} or "
                "split: [{name, weight, nodes}]"
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
        _distinct_nodes(self.nodes)
        if self.mirror is not None and self.nodefile is not None:
            raise ValueError("mirror: is not available on routes whose nodes come from a nodefile")
        return self

    def _check_groups(self) -> None:
        """A split route: its nodes are its groups', names unique, some weight given."""
        if self.nodes or self.discovery is not None:
            raise ValueError(
                "a route with split: gives its nodes in its groups; remove nodes / discovery"
            )
        names = [group.name for group in self.split]
        if self.mirror is not None:
            names.append(self.mirror.name)
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"group names must differ: {', '.join(twice)} given twice")
        if not any(group.weight for group in self.split):
            raise ValueError("split: at least one group needs a weight above 0")

    @model_validator(mode="after")
    def _versions(self) -> RouteConfig:
        groups = [*self.split, *([self.mirror] if self.mirror is not None else [])]
        versioned = [group.name for group in groups if group.version is not None]
        if versioned and self.protocols is None:
            # Only protocols whose plugin offers a version rewriter can carry the group's
            # version (the gateway checks the names given; docs/gateway.md, "Traffic
            # splitting"): a call of another protocol would reach any version.
            raise ValueError(
                f"group {versioned[0]!r} sets version:, which the gateway writes only into "
                "the calls of protocols that carry a version; give the route protocols: "
                "[...] naming them (the kernel's: protocols: [v2])"
            )
        return self


def _distinct_nodes(nodes: list[NodeConfig]) -> None:
    seen: set[str] = set()
    for node in nodes:
        if node.address in seen:
            raise ValueError(f"node {node.address} is listed twice")
        seen.add(node.address)


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
