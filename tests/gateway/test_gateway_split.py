"""Traffic splitting and mirroring: weighted groups, version rewrites, reloads, a shadow.

Real processes: dl-inference workers serving a python model that answers with its own
identity (worker name and model version), a gateway in front of them started from a
config file, tritonclient (gRPC) and plain HTTP as clients, the servers' /metrics.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import queue
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter, ValidationError
from tritonclient.grpc import service_pb2

from dl_inference.gateway.config import RouteConfig, Routes
from dl_inference.gateway.gateway import Gateway
from dl_inference.gateway.groups import SmoothWeighted, VersionRewrites
from dl_inference.kernel.plugins import PluginHost
from dl_inference.spi.errors import ConfigError
from dl_inference.testing import ServerProcess, free_port, write_python_model
from dl_inference.testing.markdown import code_block

from .conftest import gateway, write_config

# Answers with the worker's name and the version folder it was loaded from.
IDENT = """
    import os
    import time
    import numpy as np
    from dl_inference import PythonModel

    class Ident(PythonModel):
        def predict(self, inputs, **parameters):
            time.sleep(float(os.environ.get("IDENT_DELAY_S", "0")))
            me = f"{os.environ['IDENT_WORKER']}:v{VERSION}".encode()
            return {"y": inputs["x"] * 2, "node": np.array([me], dtype=object)}
"""
IDENT_CONFIG = """
    version_policy: {all: true}
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}, {name: node, datatype: BYTES, shape: [1]}]
"""


def ident_repo(root: Path) -> Path:
    for version in (1, 2):
        code = IDENT.replace("{VERSION}", str(version))
        write_python_model(root, "ident", code, IDENT_CONFIG, version=version)
    return root


def worker(repo: Path, name: str, delay_s: float = 0) -> ServerProcess:
    env = {"IDENT_WORKER": name, "IDENT_DELAY_S": str(delay_s)}
    return ServerProcess(["--model-repository", str(repo)], env=env)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ident_repo(tmp_path_factory.mktemp("ident"))


@pytest.fixture(scope="module")
def workers(repo: Path) -> Iterator[dict[str, ServerProcess]]:
    """Workers ``a``, ``b`` and ``shadow``, each answering with its name."""
    procs = {name: worker(repo, name) for name in ("a", "b", "shadow")}
    try:
        for proc in procs.values():
            proc.start()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def node(address: str, http: ServerProcess | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"address": address}
    if http is not None:
        entry["http_address"] = http.http_address
    return entry


def route(**keys: Any) -> dict[str, Any]:
    return {"model": "ident", "health": {"interval_s": 0.5}, **keys}


def ask(client: grpcclient.InferenceServerClient, version: str = "") -> str:
    """One V2 gRPC call: who answered (``worker:vN``)."""
    x = grpcclient.InferInput("x", [2], "FP32")
    x.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    result = client.infer("ident", [x], model_version=version, client_timeout=30)
    assert result.as_numpy("y").tolist() == [2.0, 4.0]
    return result.as_numpy("node")[0].decode()


def metrics(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's /metrics, by (name, sorted labels)."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(
        value
        for (found, have), value in metrics(server).items()
        if found == name and set(labels.items()) <= set(have)
    )


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- the rules, without servers ------------------------------------------------------------


def test_smooth_weighted_round_robin_gives_exact_proportions() -> None:
    wrr = SmoothWeighted()
    picks = [wrr.pick([("stable", 95), ("canary", 5)]) for _ in range(200)]
    assert collections.Counter(picks) == {"stable": 190, "canary": 10}
    # Interleaved, not in a burst: the canary's calls are spread over the cycle.
    canary_at = [i for i, pick in enumerate(picks) if pick == "canary"]
    assert all(later - earlier >= 10 for earlier, later in itertools.pairwise(canary_at))
    wrr = SmoothWeighted()
    picks = [wrr.pick([("a", 2), ("b", 1), ("c", 1)]) for _ in range(8)]
    assert collections.Counter(picks) == {"a": 4, "b": 2, "c": 2}


def test_version_is_written_by_the_protocols_rewriters_only() -> None:
    versions = VersionRewrites(PluginHost(entry_points=[]).load().protocols)  # the kernel's V2
    with_version_grpc, with_version_rest = versions.grpc_body, versions.rest_path
    request = service_pb2.ModelInferRequest(model_name="ident", model_version="1", id="r")
    body = with_version_grpc(
        "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString(), "2"
    )
    parsed = service_pb2.ModelInferRequest.FromString(body)
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("ident", "2", "r")
    ready = service_pb2.ModelReadyRequest(name="ident").SerializeToString()
    parsed_ready = service_pb2.ModelReadyRequest.FromString(
        with_version_grpc("/inference.GRPCInferenceService/ModelReady", ready, "7")
    )
    assert parsed_ready.version == "7"
    other = b"\x0a\x05ident"
    assert with_version_grpc("/tensorflow.serving.PredictionService/Predict", other, "2") == other
    assert with_version_rest("/v2/models/ident/infer", "2") == "/v2/models/ident/versions/2/infer"
    assert (
        with_version_rest("/v2/models/ident/versions/1/infer?a=1", "3")
        == "/v2/models/ident/versions/3/infer?a=1"
    )
    assert with_version_rest("/v1/models/ident:predict", "2") == "/v1/models/ident:predict"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"split": [{"name": "a", "weight": 1, "nodes": [{"address": "h:1"}]}]},
            None,
        ),
        (
            {
                "nodes": [{"address": "h:1"}],
                "split": [{"name": "a", "weight": 1, "nodes": [{"address": "h:1"}]}],
            },
            "remove nodes / discovery",
        ),
        (
            {
                "split": [
                    {"name": "a", "weight": 1, "nodes": [{"address": "h:1"}]},
                    {"name": "a", "weight": 1, "nodes": [{"address": "h:2"}]},
                ]
            },
            "a given twice",
        ),
        (
            {"split": [{"name": "a", "weight": 0, "nodes": [{"address": "h:1"}]}]},
            "weight above 0",
        ),
        (
            {"split": [{"name": "a", "weight": 1, "nodes": [{"address": "h:1"}], "version": "2"}]},
            "give the route protocols: [...]",
        ),
        (
            {"nodes": [{"address": "h:1"}], "mirror": {"percent": 10}},
            "give nodes",
        ),
    ],
)
def test_split_and_mirror_config_errors(keys: dict[str, Any], message: str | None) -> None:
    if message is None:
        assert RouteConfig(model="m", **keys).split[0].name == "a"
        return
    with pytest.raises(ValidationError, match=message.replace("[", r"\[")):
        RouteConfig(model="m", **keys)


def test_tfserving_rewrites_model_spec_version_over_grpc_and_rest() -> None:
    """The tfserving plugin's rewriters, read back with tensorflow_serving.apis."""
    from tensorflow_serving.apis import inference_pb2, predict_pb2

    versions = VersionRewrites(PluginHost().load().protocols)
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name, predict.model_spec.version_label = "ident", "stable"
    predict.model_spec.signature_name = "serving_default"
    predict.inputs["x"].float_val.extend([1.0, 2.0])
    method = "/tensorflow.serving.PredictionService/Predict"
    parsed = predict_pb2.PredictRequest.FromString(
        versions.grpc_body(method, predict.SerializeToString(), "2")
    )
    assert parsed.model_spec.version.value == 2
    assert parsed.model_spec.WhichOneof("version_choice") == "version"  # the label is gone
    assert (parsed.model_spec.name, parsed.model_spec.signature_name) == (
        "ident",
        "serving_default",
    )
    assert list(parsed.inputs["x"].float_val) == [1.0, 2.0]
    multi = inference_pb2.MultiInferenceRequest()
    for name in ("classify", "regress"):
        task = multi.tasks.add(method_name=f"tensorflow/serving/{name}")
        task.model_spec.name = "ident"
    multi.input.example_list.examples.add()
    parsed_multi = inference_pb2.MultiInferenceRequest.FromString(
        versions.grpc_body(
            "/tensorflow.serving.PredictionService/MultiInference", multi.SerializeToString(), "3"
        )
    )
    assert [t.model_spec.version.value for t in parsed_multi.tasks] == [3, 3]
    assert len(parsed_multi.input.example_list.examples) == 1
    assert (
        versions.rest_path("/v1/models/ident:predict", "2") == "/v1/models/ident/versions/2:predict"
    )
    assert (
        versions.rest_path("/v1/models/ident/labels/stable/metadata?x=1", "4")
        == "/v1/models/ident/versions/4/metadata?x=1"
    )
    assert versions.rest_path("/v1/models/ident", "4") == "/v1/models/ident/versions/4"


@pytest.mark.parametrize(
    ("protocols", "version", "message"),
    [
        (["seldon"], "2", "cannot write a model version into seldon calls"),
        (["tfserving"], "canary", "TF Serving model versions are integers"),
    ],
)
def test_a_version_the_routes_protocols_cannot_carry_is_a_config_error(
    protocols: list[str], version: str, message: str
) -> None:
    split = [{"name": "a", "weight": 1, "nodes": [{"address": "h:1"}], "version": version}]
    config = RouteConfig(model="m", protocols=protocols, split=split)
    with pytest.raises(ConfigError, match=message) as info:
        Gateway([config], PluginHost().load())
    assert "routes[0] (model 'm').split[0].version" in str(info.value)


def test_a_version_only_the_routes_own_protocols_must_name() -> None:
    """TF Serving's versions are integers; a V2-only route may name any version."""
    split = [{"name": "a", "weight": 1, "nodes": [{"address": "h:1"}], "version": "canary"}]
    config = RouteConfig(model="m", protocols=["v2"], split=split)
    gateway = Gateway([config], PluginHost().load())
    assert [row["version"] for row in gateway.group_rows()] == ["canary"]


def test_the_documented_example_is_a_valid_route() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
    (entry,) = yaml.safe_load(code_block(doc.read_text(), "yaml", "split:").code)
    config = RouteConfig.model_validate(entry)
    assert [(g.name, g.weight) for g in config.split] == [("stable", 95), ("canary", 5)]
    assert config.mirror is not None and config.mirror.percent == 10
    readme = yaml.safe_load(
        code_block((doc.parents[1] / "README.md").read_text(), "yaml", "split:").code
    )
    (entry,) = TypeAdapter(Routes).validate_python(readme["routes"])
    assert [g.version for g in entry.split] == [None, "2"]


# -- end to end ----------------------------------------------------------------------------


def test_95_5_split_sends_exactly_its_share_and_counts_per_group(
    workers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    a, b = workers["a"], workers["b"]
    split = [
        {"name": "stable", "weight": 95, "nodes": [node(a.grpc_address)]},
        {"name": "canary", "weight": 5, "nodes": [node(b.grpc_address)]},
    ]
    config = write_config(tmp_path / "gw.yaml", [route(split=split)])
    with gateway(config) as gw:
        client = grpcclient.InferenceServerClient(gw.grpc_address)
        answers = collections.Counter(ask(client) for _ in range(200))
        assert answers == {"a:v2": 190, "b:v2": 10}
        assert sample(gw, "dli_gateway_group_requests_total", group="stable") == 190
        assert sample(gw, "dli_gateway_group_requests_total", group="canary") == 10
        assert sample(gw, "dli_gateway_group_errors_total", model="ident") == 0
        assert sample(gw, "dli_gateway_group_duration_seconds_count", group="canary") == 10
        assert sample(gw, "dli_gateway_group_weight", group="stable") == 95
        assert sample(gw, "dli_upstream_requests_total", group="canary") == 10


def test_version_split_rewrites_the_version_over_grpc_and_rest(
    workers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    a = workers["a"]
    same_node = [node(a.grpc_address, http=a)]
    split = [
        {"name": "v1", "weight": 1, "nodes": same_node, "version": "1"},
        {"name": "v2", "weight": 1, "nodes": same_node, "version": "2"},
    ]
    config = write_config(tmp_path / "gw.yaml", [route(protocols=["v2"], split=split)])
    with gateway(config) as gw:
        client = grpcclient.InferenceServerClient(gw.grpc_address)
        # Whatever version the client names, the group's goes upstream.
        answers = [ask(client, version) for version in ("", "2", "1", "", "1", "2")]
        assert collections.Counter(answers) == {"a:v1": 3, "a:v2": 3}
        rest = []
        for _ in range(4):
            body = (
                b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
                b' "outputs": [{"name": "node"}]}'
            )
            request = urllib.request.Request(
                f"{gw.http_url}/v2/models/ident/infer", data=body, method="POST"
            )
            with urllib.request.urlopen(request, timeout=30) as reply:
                answer = json.loads(reply.read())
            rest.append(answer["outputs"][0]["data"][0])
            assert answer["model_version"] in ("1", "2")
        assert collections.Counter(rest) == {"a:v1": 2, "a:v2": 2}


def test_reload_to_50_50_while_calls_run_loses_no_call(
    workers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    a, b = workers["a"], workers["b"]

    def routes(stable: int, canary: int) -> list[dict[str, Any]]:
        split = [
            {"name": "stable", "weight": stable, "nodes": [node(a.grpc_address)]},
            {"name": "canary", "weight": canary, "nodes": [node(b.grpc_address)]},
        ]
        return [route(split=split)]

    config = write_config(tmp_path / "gw.yaml", routes(95, 5))
    with gateway(config) as gw:
        client = grpcclient.InferenceServerClient(gw.grpc_address)
        stop = threading.Event()
        errors: list[BaseException] = []
        calls = [0]

        def loop() -> None:
            looping = grpcclient.InferenceServerClient(gw.grpc_address)
            while not stop.is_set():
                try:
                    ask(looping)
                    calls[0] += 1
                except BaseException as exc:  # every failure counts, whatever it is
                    errors.append(exc)

        threads = [threading.Thread(target=loop) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: calls[0] >= 30, "calls before the reload")
            write_config(config, routes(50, 50))
            gw.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "config reloaded" in gw.output(), "the reload")
            before = calls[0]
            wait_for(lambda: calls[0] >= before + 30, "calls after the reload")
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert errors == []
        assert "weights" in gw.output().split("config reloaded", 1)[1]
        answers = collections.Counter(ask(client) for _ in range(100))
        assert answers == {"a:v2": 50, "b:v2": 50}
        assert sample(gw, "dli_gateway_group_weight", group="canary") == 50
        assert sample(gw, "dli_gateway_group_errors_total", model="ident") == 0


def test_mirror_copies_every_call_to_the_shadow_and_drops_its_answers(
    workers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    a, shadow = workers["a"], workers["shadow"]
    shadow_before = sample(shadow, "dli_requests_total", model="ident")
    mirror = {"name": "dark", "percent": 100, "nodes": [node(shadow.grpc_address, http=shadow)]}
    config = write_config(
        tmp_path / "gw.yaml",
        [route(nodes=[node(a.grpc_address, http=a)], mirror=mirror)],
    )
    with gateway(config) as gw:
        client = grpcclient.InferenceServerClient(gw.grpc_address)
        answers = collections.Counter(ask(client) for _ in range(40))
        assert answers == {"a:v2": 40}  # the shadow's answers never reach the client
        body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}'
        for _ in range(10):
            request = urllib.request.Request(
                f"{gw.http_url}/v2/models/ident/infer", data=body, method="POST"
            )
            with urllib.request.urlopen(request, timeout=30) as reply:
                assert reply.status == 200
        # The shadow's own count: every call reached it (copies travel on their own time).
        wait_for(
            lambda: sample(shadow, "dli_requests_total", model="ident") - shadow_before == 50,
            "50 copies at the shadow",
        )
        assert sample(gw, "dli_gateway_mirror_sent_total", group="dark") == 50
        assert sample(gw, "dli_gateway_mirror_failed_total", group="dark") == 0
        assert sample(gw, "dli_gateway_mirror_dropped_total", group="dark") == 0
        assert sample(gw, "dli_gateway_group_requests_total", model="ident", group="") == 50


@pytest.mark.parametrize("shadow_kind", ["dead", "slow"])
def test_a_dead_or_slow_shadow_never_fails_or_delays_the_clients_calls(
    workers: dict[str, ServerProcess], repo: Path, tmp_path: Path, shadow_kind: str
) -> None:
    a = workers["a"]
    with contextlib.ExitStack() as stack:
        if shadow_kind == "slow":
            # Each copy takes 5 s there: waiting for them would take 150 s for 30 calls.
            address = stack.enter_context(worker(repo, "slow", delay_s=5)).grpc_address
        else:
            address = f"127.0.0.1:{free_port()}"  # nothing listens there
        mirror = {"percent": 100, "max_in_flight": 4, "nodes": [node(address)]}
        config = write_config(
            tmp_path / "gw.yaml", [route(nodes=[node(a.grpc_address)], mirror=mirror)]
        )
        gw = stack.enter_context(gateway(config))
        client = grpcclient.InferenceServerClient(gw.grpc_address)
        started = time.monotonic()
        answers = collections.Counter(ask(client) for _ in range(30))
        elapsed = time.monotonic() - started
        assert answers == {"a:v2": 30}
        assert elapsed < 60, elapsed  # generous: no timing beyond "did not wait for it"
        assert sample(gw, "dli_gateway_group_errors_total", model="ident") == 0
        sent = sample(gw, "dli_gateway_mirror_sent_total", model="ident")
        dropped = sample(gw, "dli_gateway_mirror_dropped_total", model="ident")
        assert sent + dropped == 30 and sent >= 4
        if shadow_kind == "slow":
            assert dropped >= 20  # at most 4 outstanding: the rest were not copied
        else:
            wait_for(
                lambda: sample(gw, "dli_gateway_mirror_failed_total", model="ident") == sent,
                "the dead shadow's copies counted as failed",
            )


def test_a_group_without_a_working_node_yields_its_calls_to_the_others(
    workers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    """Retries stay in the chosen group unless it has no node left: then another group."""
    a = workers["a"]
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
    split = [
        {"name": "stable", "weight": 1, "nodes": [node(a.grpc_address)]},
        {"name": "canary", "weight": 1, "nodes": [node(dead)]},
    ]
    # No probes: the dead node stays in its group until calls eject it.
    config = write_config(tmp_path / "gw.yaml", [route(split=split, health={"enabled": False})])
    with gateway(config) as gw:
        client = grpcclient.InferenceServerClient(gw.grpc_address)
        answers = collections.Counter(ask(client) for _ in range(20))
        assert answers == {"a:v2": 20}
        assert sample(gw, "dli_upstream_failures_total", group="canary") >= 1
        assert sample(gw, "dli_gateway_group_errors_total", model="ident") == 0


def test_a_stream_goes_to_one_group_naming_its_version(
    workers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    """ModelStreamInfer: each stream is one call of one group; its messages name the
    group's version; streams are not copied to the shadow."""
    a, shadow = workers["a"], workers["shadow"]
    shadow_before = sample(shadow, "dli_requests_total", model="ident")
    same_node = [node(a.grpc_address)]
    split = [
        {"name": "v1", "weight": 1, "nodes": same_node, "version": "1"},
        {"name": "v2", "weight": 1, "nodes": same_node, "version": "2"},
    ]
    mirror = {"nodes": [node(shadow.grpc_address)]}
    config = write_config(
        tmp_path / "gw.yaml", [route(protocols=["v2"], split=split, mirror=mirror)]
    )
    with gateway(config) as gw:
        streams = []
        for _ in range(2):
            answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
            client = grpcclient.InferenceServerClient(gw.grpc_address)
            client.start_stream(callback=lambda result, error, q=answers: q.put((result, error)))
            try:
                for _ in range(3):
                    x = grpcclient.InferInput("x", [1], "FP32")
                    x.set_data_from_numpy(np.array([1.0], dtype=np.float32))
                    client.async_stream_infer("ident", [x], model_version="1")
                got = [answers.get(timeout=30) for _ in range(3)]
            finally:
                client.stop_stream()
                client.close()
            assert [error for _, error in got] == [None, None, None]
            streams.append({result.as_numpy("node")[0].decode() for result, _ in got})
        assert sorted(map(sorted, streams)) == [["a:v1"], ["a:v2"]]
        assert sample(gw, "dli_gateway_group_requests_total", group="v2") == 1
        assert sample(gw, "dli_gateway_mirror_sent_total", model="ident") == 0
    assert sample(shadow, "dli_requests_total", model="ident") == shadow_before


def test_version_split_rewrites_tfserving_model_spec_over_grpc_and_rest(
    workers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    """A 50/50 version split for TF Serving clients: the gateway writes each group's
    version into ``model_spec.version`` (gRPC) and the ``/versions/N`` path (REST)."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    a = workers["a"]
    same_node = [node(a.grpc_address, http=a)]
    split = [
        {"name": "v1", "weight": 50, "nodes": same_node, "version": "1"},
        {"name": "v2", "weight": 50, "nodes": same_node, "version": "2"},
    ]
    config = write_config(tmp_path / "gw.yaml", [route(protocols=["tfserving"], split=split)])
    with gateway(config) as gw, grpc.insecure_channel(gw.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answers = []
        for pinned in (None, 1, 2, None, 2, 1, None, None):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "ident"
            if pinned is not None:  # whatever the client names, the group's goes upstream
                request.model_spec.version.value = pinned
            request.inputs["x"].dtype = 1  # DT_FLOAT
            request.inputs["x"].tensor_shape.dim.add(size=2)
            request.inputs["x"].float_val.extend([1.0, 2.0])
            reply = stub.Predict(request, timeout=30)
            assert list(reply.outputs["y"].float_val) == [2.0, 4.0]
            who = reply.outputs["node"].string_val[0].decode()
            assert reply.model_spec.version.value == int(who[-1])  # the version that ran
            answers.append(who)
        assert collections.Counter(answers) == {"a:v1": 4, "a:v2": 4}
        rest = []
        for path in ("ident:predict", "ident/versions/1:predict", "ident/labels/x:predict") * 2:
            request = urllib.request.Request(
                f"{gw.http_url}/v1/models/{path}",
                data=json.dumps({"inputs": {"x": [1.0, 2.0]}}).encode(),
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as reply:
                outputs = json.loads(reply.read())["outputs"]
            assert outputs["y"] == [2.0, 4.0]
            rest.append(outputs["node"][0])
        assert collections.Counter(rest) == {"a:v1": 3, "a:v2": 3}
        assert sample(gw, "dli_gateway_group_requests_total", group="v1") == 7
        assert sample(gw, "dli_gateway_group_requests_total", group="v2") == 7
        assert sample(gw, "dli_gateway_group_errors_total", model="ident") == 0
