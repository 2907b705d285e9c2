"""A route's default health probe asks for the route's own model.

A dl-inference worker with one broken model is NOT READY as a whole (strict readiness, the
default) and answers grpc.health ``""`` NOT_SERVING; a route for one of its good models
must keep the node. ``health.service: ""`` keeps the server-wide probe; an upstream whose
health service knows only ``""`` (NOT_FOUND for a model's name) is asked for ``""``; one
without the service (TF Serving) counts as live when it answers. Real processes: a
dl-inference worker, TF Serving look-alikes and a dl-inference gateway.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dl_inference.gateway.config import RouteConfig
from dl_inference.testing import ServerProcess, write_python_model

from .conftest import FakeUpstream, gateway, wait_until, write_config

GOOD = """
    from dl_inference import PythonModel

    class Good(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
BROKEN = """
    from dl_inference import PythonModel

    class Broken(PythonModel):
        def load(self):
            raise RuntimeError("the weights are missing")

        def predict(self, inputs, **parameters):
            raise AssertionError("never loaded")
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""
# Probe often and take a node out at the first failed probe: a wrong probe shows at once.
FAST_PROBES = {"interval_s": 0.1, "timeout_s": 2, "unhealthy_threshold": 1}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``good`` and ``also_good`` serve, ``broken`` failed to load; strict readiness."""
    repo = tmp_path_factory.mktemp("one_broken")
    for name, code in (("good", GOOD), ("also_good", GOOD), ("broken", BROKEN)):
        write_python_model(repo, name, code, CONFIG)
    with ServerProcess(["--model-repository", str(repo)]) as server:
        yield server


@pytest.fixture(scope="module")
def look_alikes() -> Iterator[list[FakeUpstream]]:
    """TF Serving look-alikes: one with grpc.health for ``""`` only, one without it."""
    nodes = [FakeUpstream("only_server_health"), FakeUpstream("no_health", health=False)]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    worker: ServerProcess,
    look_alikes: list[FakeUpstream],
) -> Iterator[ServerProcess]:
    def route(model: str, nodes: list[str], **health: Any) -> dict[str, Any]:
        return {
            "model": model,
            "balancer": "round_robin",
            "nodes": [{"address": address} for address in nodes],
            "health": {**FAST_PROBES, **health},
        }

    config = write_config(
        tmp_path_factory.mktemp("gw") / "gateway.yaml",
        [
            route("good", [worker.grpc_address]),
            route("also_good", [worker.grpc_address], service=""),
            route("tfs_model", [node.address for node in look_alikes]),
        ],
    )
    with gateway(config) as srv:
        yield srv


def nodes(server: ServerProcess, model: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{server.http_url}/api/status", timeout=10) as reply:
        rows = json.loads(reply.read())["routes"]
    return {row["address"]: row for row in rows if row["model"] == model}


def probed(server: ServerProcess, model: str, times: int = 5) -> dict[str, dict[str, Any]]:
    """The route's nodes once every node answered some probes (``times`` rounds or so)."""
    assert wait_until(lambda: all(r["probe"] for r in nodes(server, model).values()))
    first = {a: r["probe"] for a, r in nodes(server, model).items()}
    assert first
    # A few more rounds: a node is out at its first failed probe.
    wait_until(lambda: False, timeout=FAST_PROBES["interval_s"] * times)
    return nodes(server, model)


def test_a_broken_model_elsewhere_on_the_node_does_not_take_it_out_of_the_route(
    server: ServerProcess, worker: ServerProcess
) -> None:
    rows = probed(server, "good")
    row = rows[worker.grpc_address]
    assert row["state"] == "healthy", row
    assert row["probe"] == "SERVING", row
    client = grpcclient.InferenceServerClient(server.grpc_address)
    for i in range(4):
        tensor = grpcclient.InferInput("x", [2], "FP32")
        tensor.set_data_from_numpy(np.full(2, i, np.float32))
        y = client.infer("good", [tensor]).as_numpy("y")
        np.testing.assert_array_equal(y, np.full(2, i + 1, np.float32))
    assert nodes(server, "good")[worker.grpc_address]["state"] == "healthy"


def test_an_explicit_empty_service_probes_the_whole_server(
    server: ServerProcess, worker: ServerProcess
) -> None:
    assert wait_until(
        lambda: nodes(server, "also_good")[worker.grpc_address]["state"] == "unhealthy"
    )
    assert nodes(server, "also_good")[worker.grpc_address]["probe"] == "NOT_SERVING"


def test_upstreams_that_know_no_model_names_stay_live(
    server: ServerProcess, look_alikes: list[FakeUpstream]
) -> None:
    rows = probed(server, "tfs_model")
    only_server, no_health = (rows[node.address] for node in look_alikes)
    assert only_server["state"] == "healthy", only_server
    assert only_server["probe"].startswith("SERVING (the whole server's"), only_server
    assert "'tfs_model'" in only_server["probe"], only_server
    assert no_health["state"] == "healthy", no_health
    assert no_health["probe"] == "answers (no grpc.health.v1 service)", no_health


@pytest.mark.parametrize(
    ("route", "service"),
    [
        ({"model": "m"}, "m"),
        ({"model": "m", "health": {"service": ""}}, ""),
        ({"model": "m", "health": {"service": "other"}}, "other"),
        ({"task_id": 7}, ""),  # its calls name many models (m-7, n-7, ...)
        ({"model": "m", "task_id": 7}, ""),
        ({"discovery": {"nodefile": "nodes.txt"}}, ""),
    ],
)
def test_what_a_route_probes_by_default(route: dict[str, Any], service: str) -> None:
    nodes = {} if "discovery" in route else {"nodes": [{"address": "10.0.0.5:8500"}]}
    assert RouteConfig.model_validate({**route, **nodes}).probe_service == service
