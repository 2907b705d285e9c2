"""Gateway parts alone: route config, routing-key readers, node health, discovery, set-up errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from dl_inference.gateway import Gateway, RouteConfig
from dl_inference.gateway.config import EjectionConfig, HealthConfig
from dl_inference.gateway.discovery import Discovery, parse_node_file, resolve
from dl_inference.gateway.nodes import (
    CONNECT_FAILED,
    CONNECTION_LOST,
    Node,
    NodeHealth,
    RetryBudget,
    app_answered,
    grpc_verdict,
    http_verdict,
)
from dl_inference.gateway.rest_forward import forwardable_headers
from dl_inference.gateway.route import Route
from dl_inference.kernel.config import parse_server_config
from dl_inference.kernel.plugins import PluginHost
from dl_inference.spi.balancer import Outcome
from dl_inference.spi.errors import ConfigError, PluginError

V2 = "/inference.GRPCInferenceService/"
TIS_PREDICT = "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/TisPredict"
KERNEL_ONLY = PluginHost(entry_points=[]).load()
# The gateway's table with the kernel alone: its V2 protocol's readers, reached as any
# protocol's are.
TABLE = Gateway([], KERNEL_ONLY).routing_table(KERNEL_ONLY.protocols)
KEYS = {path: reader for path, (_, reader) in TABLE.items()}


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            {"model": "m", "nodes": [{"address": "h:1", "wieght": 2}]},
            "routes[0].nodes[0].wieght: unknown key (did you mean weight?)",
        ),
        ({"model": "m", "nodes": [{"address": "h"}]}, "is not host:port"),
        ({"model": "m", "nodes": [{"address": "h:1", "weight": 0}]}, "routes[0].nodes[0].weight"),
        ({"model": "m"}, "give nodes"),
        (
            {"model": "m", "nodes": [{"address": "h:1"}], "discovery": {"dns": "h:1"}},
            "either nodes or discovery",
        ),
        ({"model": "m", "discovery": {"dns": "h:1", "file": "x"}}, "exactly one of dns"),
        ({"model": "m", "nodes": [{"address": "h:1"}, {"address": "h:1"}]}, "listed twice"),
    ],
)
def test_route_config_errors_name_the_path_and_the_fix(route: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_server_config({"routes": [route]})
    assert expected in str(info.value)


def test_two_routes_for_one_model_are_refused() -> None:
    route = {"model": "m", "nodes": [{"address": "h:1"}]}
    with pytest.raises(ConfigError, match="two routes"):
        parse_server_config({"routes": [route, route]})


def test_route_defaults() -> None:
    route = RouteConfig.model_validate({"model": "m", "nodes": [{"address": "[::1]:8500"}]})
    assert route.balancer == "dynamic_weighted_round_robin"
    assert route.nodes[0].weight == 100 and route.retries == 2


# -- routing keys read from real client messages ---------------------------------------------


def test_v2_keys_from_real_tritonclient_messages() -> None:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="resnet", model_version="2")
    request.raw_input_contents.append(b"\x01" * 1000)
    body = request.SerializeToString()
    assert KEYS[V2 + "ModelInfer"](body, {}) == "resnet"
    assert KEYS[V2 + "ModelStreamInfer"](body, {}) == "resnet"  # a stream's first message
    assert KEYS[TIS_PREDICT](body, {}) == "resnet"
    ready = service_pb2.ModelReadyRequest(name="resnet").SerializeToString()
    assert KEYS[V2 + "ModelReady"](ready, {}) == "resnet"
    metadata = service_pb2.ModelMetadataRequest(name="resnet").SerializeToString()
    assert KEYS[V2 + "ModelMetadata"](metadata, {}) == "resnet"
    config = service_pb2.ModelConfigRequest(name="resnet").SerializeToString()
    assert KEYS[V2 + "ModelConfig"](config, {}) == "resnet"
    load = service_pb2.RepositoryModelLoadRequest(repository_name="r", model_name="resnet")
    assert KEYS[V2 + "RepositoryModelLoad"](load.SerializeToString(), {}) == "resnet"
    # No name (ModelStatistics for every model): served where it arrived.
    every = service_pb2.ModelStatisticsRequest(name="").SerializeToString()
    assert KEYS[V2 + "ModelStatistics"](every, {}) is None


def test_the_gateway_takes_the_v2_readers_from_the_v2_protocol_alone() -> None:
    from dl_inference.builtin.v2 import V2Protocol

    # Every V2 path (TisPredict too) is the v2 protocol's, read by its own readers.
    v2 = {path: ("v2", reader) for path, reader in V2Protocol().routing_keys().items()}
    assert v2 == TABLE
    assert TABLE[TIS_PREDICT][0] == "v2"
    # No second copy in the gateway: without protocols, it routes nothing.
    assert Gateway([], KERNEL_ONLY).routing_table([]) == {}


def test_malformed_bytes_give_no_key_instead_of_an_error() -> None:
    for reader in set(KEYS.values()):
        assert reader(b"\x0a\xff\xff", {}) is None
        assert reader(b"\x0a\x00\x12\x00", {}) is None  # empty names: no model


# -- node health ----------------------------------------------------------------------------


def nodes(n: int) -> list[Node]:
    return [Node(f"10.0.0.{i}:1", 100) for i in range(n)]


async def test_a_nodes_call_stubs_go_with_its_channels() -> None:
    # Cached stubs belong to the node: once its channels close (drained, reaped by any
    # forwarder), none survives to be used on a closed channel.
    node = Node("127.0.0.1:1", 100)
    method = "/inference.GRPCInferenceService/ModelInfer"
    stub = node.unary_stub(method)
    assert node.unary_stub(method) is stub
    (channel,) = node.channels
    await node.close()
    assert node.channels == []
    fresh = node.unary_stub(method)
    assert fresh is not stub and node.channels[0] is not channel
    await node.close()


def test_release_counts_a_call_out_and_lets_a_drained_node_go() -> None:
    config = RouteConfig(model="m", nodes=[{"address": "10.0.0.1:1"}])
    route = Route(config, balancer=object())  # type: ignore[arg-type]
    (node,) = route.nodes.values()
    node.in_flight = 1
    node.draining = True
    route.release(node)
    assert node.in_flight == 0 and route.nodes == {}


def test_ejection_back_off_grows_and_is_capped() -> None:
    health = NodeHealth(
        EjectionConfig(consecutive_failures=2, base_s=10, max_s=25), HealthConfig(), "m"
    )
    group = nodes(4)
    node = group[0]
    durations = []
    for _ in range(3):
        for _ in range(2):
            health.record(node, Outcome.FAILURE, 0.01, error="x", peers=group)
        assert not node.eligible(time.monotonic())
        durations.append(round(node.ejected_until - time.monotonic()))
        node.ejected_until = 0  # time passes
    assert durations == [10, 20, 25]
    assert node.times_ejected == 3


def test_failures_below_the_threshold_or_client_errors_do_not_eject() -> None:
    health = NodeHealth(EjectionConfig(consecutive_failures=3), HealthConfig(), "m")
    group = nodes(2)
    node = group[0]
    # Any answer, a client error included, breaks a run of failures.
    for outcome in [
        Outcome.FAILURE,
        Outcome.FAILURE,
        Outcome.SUCCESS,
        Outcome.FAILURE,
        Outcome.FAILURE,
        Outcome.REJECTED,
        Outcome.FAILURE,
        Outcome.FAILURE,
    ]:
        health.record(node, outcome, 0.01, error="", peers=group)
    assert node.times_ejected == 0
    for _ in range(30):  # a client's stream of bad calls
        health.record(node, Outcome.REJECTED, 0.01, error="INVALID_ARGUMENT", peers=group)
    assert node.times_ejected == 0 and node.failures == 6
    health.record(node, Outcome.FAILURE, 0.01, error="", peers=group)
    health.record(node, Outcome.FAILURE, 0.01, error="", peers=group)
    health.record(node, Outcome.FAILURE, 0.01, error="", peers=group)
    assert node.times_ejected == 1


CLIENT_PROVOKED = [
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNKNOWN,  # an unparsable body, on older workers
    grpc.StatusCode.INTERNAL,  # a model choking on a poisoned input
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # an oversize message
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.CANCELLED,
]


@pytest.mark.parametrize("code", CLIENT_PROVOKED, ids=lambda c: c.name)
def test_a_nodes_answer_is_never_a_node_failure_nor_retried(code: grpc.StatusCode) -> None:
    verdict = grpc_verdict(code, "details from the node", None)
    assert verdict.outcome is Outcome.REJECTED and not verdict.retry


@pytest.mark.parametrize(
    "code", [*CLIENT_PROVOKED, grpc.StatusCode.DEADLINE_EXCEEDED], ids=lambda c: c.name
)
def test_what_a_nodes_application_answers_is_never_a_node_failure(code: grpc.StatusCode) -> None:
    # The answer carries the worker's x-request-id: its call path answered, not gRPC core.
    assert app_answered((("x-request-id", "abc"),))
    verdict = grpc_verdict(code, "details from the node", time.monotonic() + 5, answered=True)
    assert verdict.outcome is Outcome.REJECTED and not verdict.retry


def test_unavailable_from_a_nodes_application_is_retried_but_not_a_failure() -> None:
    # A model version loading or failed to load: ModelNotReady -> UNAVAILABLE.
    trailers = (("x-request-id", "abc"),)
    verdict = grpc_verdict(grpc.StatusCode.UNAVAILABLE, "not ready", None, app_answered(trailers))
    assert verdict.outcome is Outcome.REJECTED and verdict.retry
    # The same code from gRPC core (no connection, reset) names no request id.
    assert not app_answered(()) and not app_answered(None)
    assert not app_answered((("content-type", "application/grpc"),))
    core = grpc_verdict(grpc.StatusCode.UNAVAILABLE, "failed to connect", None, False)
    assert core.outcome is Outcome.FAILURE and core.retry
    # HTTP headers, any case.
    assert app_answered({"X-Request-Id": "abc"})
    assert http_verdict(503, answered=True) == verdict
    assert http_verdict(502, answered=True).outcome is Outcome.REJECTED
    assert not http_verdict(502, answered=True).retry


def test_gateway_failures_count_against_the_node_and_only_unavailable_is_retried() -> None:
    now = time.monotonic()
    unavailable = grpc_verdict(grpc.StatusCode.UNAVAILABLE, "failed to connect", now + 5)
    assert unavailable.outcome is Outcome.FAILURE and unavailable.retry
    # A deadline that passed at the node while the client still had time: the route's
    # timeout, or a node giving up. The client's own deadline passing is the client's.
    assert grpc_verdict(grpc.StatusCode.DEADLINE_EXCEEDED, "", now + 5) == CONNECTION_LOST
    assert grpc_verdict(grpc.StatusCode.DEADLINE_EXCEEDED, "", None) == CONNECTION_LOST
    client_gave_up = grpc_verdict(grpc.StatusCode.DEADLINE_EXCEEDED, "", now - 0.001)
    assert client_gave_up.outcome is Outcome.REJECTED and not client_gave_up.retry
    # A stream the node reset: a transport error, whatever code gRPC gives it.
    reset = "Received RST_STREAM with error code 2"
    assert grpc_verdict(grpc.StatusCode.INTERNAL, reset, None) == CONNECTION_LOST
    assert not CONNECTION_LOST.retry and CONNECT_FAILED.retry


@pytest.mark.parametrize(
    ("status", "outcome", "retry"),
    [
        (200, Outcome.SUCCESS, False),
        (400, Outcome.REJECTED, False),
        (404, Outcome.REJECTED, False),
        (413, Outcome.REJECTED, False),
        (429, Outcome.REJECTED, False),
        (500, Outcome.REJECTED, False),
        (502, Outcome.FAILURE, False),
        (503, Outcome.FAILURE, True),
        (504, Outcome.FAILURE, False),
    ],
)
def test_rest_statuses_of_the_gateway_failure_class_count_against_the_node(
    status: int, outcome: Outcome, retry: bool
) -> None:
    verdict = http_verdict(status)
    assert (verdict.outcome, verdict.retry) == (outcome, retry)


def test_a_compressed_body_is_forwarded_with_its_content_encoding() -> None:
    from multidict import CIMultiDict

    # The listeners keep bodies as they came, so their coding goes on with them.
    for coding in ("gzip", "GZIP", "deflate", "br", "gzip, br", "identity", "x-custom"):
        headers = CIMultiDict({"Content-Encoding": coding, "Content-Length": "7", "A": "1"})
        assert forwardable_headers(headers) == {"Content-Encoding": coding, "A": "1"}


def test_at_most_max_percent_of_nodes_are_ejected() -> None:
    health = NodeHealth(EjectionConfig(consecutive_failures=1, max_percent=50), HealthConfig(), "m")
    group = nodes(4)
    for node in group:
        health.record(node, Outcome.FAILURE, 0.01, error="", peers=group)
    assert sum(n.times_ejected for n in group) == 2


def test_probes_use_thresholds_and_a_returning_node_warms_up() -> None:
    health = NodeHealth(
        EjectionConfig(slow_start_s=30),
        HealthConfig(unhealthy_threshold=2, healthy_threshold=2),
        "m",
    )
    node = nodes(1)[0]
    health.probe_result(node, False, "NOT_SERVING")
    assert node.probe_healthy
    health.probe_result(node, False, "NOT_SERVING")
    assert not node.probe_healthy and node.state(0) == "unhealthy"
    health.probe_result(node, True, "SERVING")
    assert not node.probe_healthy
    health.probe_result(node, True, "SERVING")
    assert node.probe_healthy
    assert 0.1 <= node.slow_start_factor < 0.2  # just returned: a tenth of its weight


def test_retry_budget_allows_a_share_of_requests() -> None:
    budget = RetryBudget(percent=20, min_per_s=0)
    for _ in range(50):
        budget.on_request()
    assert sum(budget.try_retry() for _ in range(30)) == 10


# -- discovery ------------------------------------------------------------------------------


def test_node_file_formats(tmp_path: Path) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("- {address: 'h1:1', weight: 5}\n- 'h2:2'\n")
    assert parse_node_file(path, 7) == [("h1:1", 5), ("h2:2", 7)]
    path.write_text("nodes: ['h3:3']\n")
    assert parse_node_file(path) == [("h3:3", 100)]
    path.write_text("{address: h1}\n")
    with pytest.raises(ConfigError, match="is a list of"):
        parse_node_file(path)
    path.write_text("- {address: 'h1'}\n")
    with pytest.raises(ConfigError, match=r"entry \[0\]"):
        parse_node_file(path)


def test_dns_resolution_gives_one_node_per_address() -> None:
    assert "127.0.0.1:8500" in resolve("localhost", 8500) or "[::1]:8500" in resolve(
        "localhost", 8500
    )


async def test_dns_discovery_applies_the_resolved_nodes() -> None:
    from dl_inference.gateway.config import DiscoveryConfig

    seen: list[list[tuple[str, int]]] = []
    discovery = Discovery(
        "m", DiscoveryConfig(dns="127.0.0.1:8500", refresh_s=0.05, weight=3), seen.append
    )
    await discovery.start()
    await asyncio.sleep(0.2)
    await discovery.stop()
    assert seen == [[("127.0.0.1:8500", 3)]]  # re-resolved, applied only when it changed


# -- gateway set-up -------------------------------------------------------------------------


@pytest.fixture
def host() -> PluginHost:
    return PluginHost().load()


def route(**extra: object) -> RouteConfig:
    return RouteConfig.model_validate({"model": "m", "nodes": [{"address": "h:1"}], **extra})


def test_unknown_balancer_names_the_package_to_install(host: PluginHost) -> None:
    with pytest.raises(PluginError) as info:
        Gateway([route(balancer="fastest")], host)
    assert "routes[0] (model 'm').balancer" in str(info.value)
    assert "available: dynamic_weighted_round_robin" in str(info.value)


def test_missing_balancers_plugin_says_pip_install_dl_inference_balancers() -> None:
    bare = PluginHost(entry_points=[]).load()
    with pytest.raises(PluginError, match="pip install dl-inference-balancers"):
        Gateway([route()], bare)


def test_unknown_protocol_and_bad_balancer_options_are_config_errors(host: PluginHost) -> None:
    with pytest.raises(ConfigError, match="unknown protocol 'grcp'"):
        Gateway([route(protocols=["grcp"])], host)
    with pytest.raises(ConfigError, match="balancer_options"):
        Gateway([route(balancer="peak_ewma", balancer_options={"decay_s": -1})], host)


def test_snapshot_lists_every_node(host: PluginHost) -> None:
    gateway = Gateway([route(nodes=[{"address": "h:1", "weight": 3}, {"address": "h:2"}])], host)
    rows = gateway.snapshot()
    assert [(r["model"], r["address"], r["weight"], r["state"]) for r in rows] == [
        ("m", "h:1", 3, "healthy"),
        ("m", "h:2", 100, "healthy"),
    ]
    assert rows[0]["balancer"] == "dynamic_weighted_round_robin"


def test_without_routes_local_handlers_are_returned_untouched(host: PluginHost) -> None:
    gateway = Gateway([], host)
    handlers = [object()]
    assert gateway.wrap_grpc_handlers(handlers, []) == handlers  # type: ignore[arg-type]
