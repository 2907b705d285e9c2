"""Routing by the seed's task id, with the seed's ``nodefile.txt``.

The seed's gateway routes ``Predict`` and ``TisPredict`` by the last ``-`` field of the
model name (``textcnn-69`` -> task 69) and ``PytorchPredict`` / ``CaffePredict`` by the
number in ``meta.tags["taskId"]``, to the nodes its ``nodefile.txt`` lists for the task
(``taskid=timeout_ms,ip:port,...``), re-read every 10 s. Unit tests for the parser and the
routing rule; then dl-inference workers behind a gateway configured by such a file, called
on the seed's own method paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import structlog
import yaml

from dl_inference import task_id_of, without_task_id
from dl_inference.gateway import Gateway
from dl_inference.gateway.discovery import (
    NodeFileWatch,
    SeedTask,
    parse_seed_node_file,
    parse_seed_node_text,
)
from dl_inference.kernel.config import parse_server_config
from dl_inference.kernel.plugins import PluginHost
from dl_inference.spi.errors import ConfigError
from dl_inference.testing import ServerProcess, write_python_model

from .conftest import named_workers, predict_request, wait_until

SEED_SERVICE = "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"

# The seed's own example (DLPredictOnline/dlpredictonline/src/main/resources/nodefile.txt),
# headed by the comment lines its README shows above it.
SEED_EXAMPLE = """\
## 配置说明\uff0c每行包括如下参数
## taskid=timeout,ip:port,ip:port,...
100=100,172.11.71.188:8888,172.11.71.188:8866
111=1000,172.11.71.189:8899,172.11.71.189:8877
69=100,172.11.71.187:8866
29=1000,172.11.174.4:8866
345=3000,172.11.8.144:8877"""


# -- the file format ----------------------------------------------------------------------


def test_the_seeds_example_file_parses_as_the_seed_reads_it() -> None:
    tasks = parse_seed_node_text(SEED_EXAMPLE, "nodefile.txt")
    assert list(tasks) == [100, 111, 69, 29, 345]
    assert tasks[100] == SeedTask(100, 100, ("172.11.71.188:8888", "172.11.71.188:8866"), 3)
    assert tasks[69] == SeedTask(69, 100, ("172.11.71.187:8866",), 5)
    assert tasks[345].timeout_ms == 3000 and tasks[345].line == 7


def test_blank_lines_spaces_crlf_bom_and_a_trailing_comma_are_read(tmp_path: Path) -> None:
    path = tmp_path / "nodefile.txt"
    text = "\ufeff# nodes\r\n\r\n 69 = 250 , 10.0.0.5:8500 ,[::1]:8501,\r\n   \r\n70=5\r\n"
    path.write_bytes(text.encode("utf-8"))
    tasks = parse_seed_node_file(path)
    assert tasks == {
        69: SeedTask(69, 250, ("10.0.0.5:8500", "[::1]:8501"), 3),
        70: SeedTask(70, 5, (), 5),  # a task with no nodes: its calls find none
    }


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("69", "is not taskid=timeout_ms,ip:port"),
        ("69=100=1,h:1", "is not taskid=timeout_ms,ip:port"),
        ("textcnn=100,h:1", "task id 'textcnn' is not a positive whole number"),
        ("0=100,h:1", "task id '0' is not a positive whole number"),
        ("-3=100,h:1", "task id '-3' is not a positive whole number"),
        ("69=fast,h:1", "timeout 'fast' is not a positive whole number of milliseconds"),
        ("69=0,h:1", "timeout '0' is not a positive whole number of milliseconds"),
        ("69=,h:1", "timeout '' is not a positive whole number of milliseconds"),
        ("69=100,10.0.0.5", "node '10.0.0.5' is not host:port"),
        ("69=100,h:port", "node 'h:port' is not host:port"),
        ("69=100,h:1,h:1", "node h:1 is listed twice"),
        ("29=100,h:1", "task 29 is already on line 1"),
    ],
)
def test_a_line_it_cannot_mean_is_refused_naming_the_line(line: str, says: str) -> None:
    text = f"29=100,h:2\n# comment\n{line}\n"
    with pytest.raises(ConfigError) as info:
        parse_seed_node_text(text, "conf/nodefile.txt")
    assert str(info.value).startswith("conf/nodefile.txt line 3: ")
    assert says in str(info.value)


def test_a_missing_node_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the nodefile"):
        parse_seed_node_file(tmp_path / "absent.txt")


# -- the routing rule and the config keys -------------------------------------------------


@pytest.mark.parametrize(
    ("model", "task"),
    [
        ("textcnn-69", 69),
        ("69", 69),
        ("a-b-7", 7),
        ("m-069", 69),
        ("resnet-v2", None),
        ("m-0", None),
        ("m-", None),
        ("m-6.9", None),
        ("m-\u0666\u0669", None),  # Arabic-Indic digits are no task id
    ],
)
def test_task_id_is_the_last_dash_field(model: str, task: int | None) -> None:
    assert task_id_of(model) == task
    # The worker's side of the same rule: the name without its task id.
    if task is None:
        assert without_task_id(model) == model
    elif model != str(task):
        assert without_task_id(model) == model.rpartition("-")[0]


def routes(entries: list[dict[str, Any]]) -> list[Any]:
    return parse_server_config({"routes": entries}).routes


NO_HEALTH = {"health": {"enabled": False}}


def test_a_route_takes_calls_by_exact_name_then_by_task_id() -> None:
    gateway = Gateway(
        routes(
            [
                {"model": "textcnn", "task_id": 69, "nodes": [{"address": "h:1"}], **NO_HEALTH},
                {"task_id": 70, "nodes": [{"address": "h:2"}], **NO_HEALTH},
                {
                    "model": "m-70",
                    "protocols": ["v2"],
                    "nodes": [{"address": "h:3"}],
                    **NO_HEALTH,
                },
            ]
        ),
        PluginHost().load(),
    )
    by_name = {route.model: route for route in gateway.routes.values()}
    assert set(by_name) == {"textcnn", "task-70", "m-70"}
    assert gateway.route_of("textcnn", "tfserving") is by_name["textcnn"]
    assert gateway.route_of("wide-69", "tfserving") is by_name["textcnn"]
    assert gateway.route_of("69", "seldon") is by_name["textcnn"]
    assert gateway.route_of("m-70", "v2") is by_name["m-70"]
    # The exact route does not take TF Serving calls: the task's route does.
    assert gateway.route_of("m-70", "tfserving") is by_name["task-70"]
    assert gateway.route_of("m-71", "tfserving") is None
    assert gateway.route_of("textcnn-v2", "tfserving") is None


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"nodes": [{"address": "h:1"}]}, "give model: NAME or task_id: N"),
        (
            {"model": "m", "discovery": {"nodefile": "n.txt"}},
            "names its line with task_id: N",
        ),
        (
            {"task_id": 69, "timeout_ms": 5, "discovery": {"nodefile": "n.txt"}},
            "timeout_ms comes from the nodefile",
        ),
        ({"task_id": 0, "nodes": [{"address": "h:1"}]}, "routes[0].task_id"),
        (
            {"task_id": 1, "discovery": {"nodefile": "n.txt", "file": "n.yaml"}},
            "give exactly one of dns: HOST:PORT, file: PATH or nodefile: PATH",
        ),
    ],
)
def test_config_errors_name_the_route_and_say_what_is_right(
    entry: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        routes([entry])
    assert "routes[0]" in str(info.value) and says in str(info.value)


def test_a_task_id_has_one_route() -> None:
    with pytest.raises(ConfigError, match="task_id 69 has two routes"):
        routes(
            [
                {"task_id": 69, "nodes": [{"address": "h:1"}]},
                {"model": "x", "task_id": 69, "nodes": [{"address": "h:2"}]},
            ]
        )


def node_file_gateway(tmp_path: Path, text: str, *extra: dict[str, Any]) -> tuple[Gateway, Path]:
    path = tmp_path / "nodefile.txt"
    path.write_text(text)
    entries = [{"discovery": {"nodefile": str(path)}, **NO_HEALTH}, *extra]
    return Gateway(routes(entries), PluginHost().load()), path


def test_a_node_file_entry_stands_for_one_route_per_line(tmp_path: Path) -> None:
    pinned = {
        "model": "pinned",
        "task_id": 29,
        "balancer": "random",
        "discovery": {"nodefile": str(tmp_path / "nodefile.txt"), "weight": 7},
        **NO_HEALTH,
    }
    gateway, _ = node_file_gateway(tmp_path, SEED_EXAMPLE, pinned)
    assert sorted(gateway.routes) == ["pinned", "task-100", "task-111", "task-345", "task-69"]
    task_100 = gateway.routes["task-100"]
    assert task_100.timeout_s == 0.1
    assert sorted(task_100.nodes) == ["172.11.71.188:8866", "172.11.71.188:8888"]
    # A route naming the task wins over the line's own route and keeps its settings.
    route = gateway.route_of("whatever-29", "tfserving")
    assert route is gateway.routes["pinned"] and route.balancer.name == "random"
    assert route.timeout_s == 1.0 and [n.weight for n in route.nodes.values()] == [7]


def test_a_bad_node_file_at_start_is_refused_naming_entry_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        node_file_gateway(tmp_path, "69=100,h:1\n70=100;h:2\n")
    message = str(info.value)
    assert message.startswith("routes[0] (every task of ")
    assert ".discovery.nodefile: " in message and "nodefile.txt line 2: timeout" in message


async def test_edits_apply_and_a_bad_edit_keeps_the_last_good_routes(tmp_path: Path) -> None:
    gateway, path = node_file_gateway(tmp_path, "69=100,h:1\n70=100,h:2\n")
    await gateway.start()
    try:
        task_69 = gateway.routes["task-69"]
        task_69.nodes["h:1"].requests = 5  # node state that an in-place update keeps
        watch = NodeFileWatch(path, 60, gateway._node_files[path], gateway._file_changed)
        path.write_text("69=300,h:1,h:3\n71=100,h:4\n")
        await watch.check()
        assert sorted(gateway.routes) == ["task-69", "task-71"]
        assert gateway.routes["task-69"] is task_69 and task_69.nodes["h:1"].requests == 5
        assert task_69.timeout_s == 0.3 and sorted(task_69.nodes) == ["h:1", "h:3"]
        assert gateway.route_of("m-70", "tfserving") is None
        with structlog.testing.capture_logs() as logs:
            path.write_text("69=300,h:9\n71=fast,h:4\n")
            await watch.check()
            await watch.check()  # the same bad version is logged once
        assert sorted(gateway.routes) == ["task-69", "task-71"]
        assert sorted(task_69.nodes) == ["h:1", "h:3"]
        warnings = [e for e in logs if e["event"].startswith("nodefile not applied")]
        assert len(warnings) == 1 and "line 2: timeout 'fast'" in warnings[0]["error"]
        path.unlink()
        with structlog.testing.capture_logs() as logs:
            await watch.check()
        assert "cannot read the nodefile" in logs[0]["error"]
        assert sorted(gateway.routes) == ["task-69", "task-71"]
    finally:
        await gateway.stop()


async def test_a_config_reload_rebuilds_node_file_routes_and_their_watches(
    tmp_path: Path,
) -> None:
    # An empty node file still puts the gateway in front: lines may come later.
    gateway, path = node_file_gateway(tmp_path, "# no task yet\n")
    assert gateway.routes == {}
    assert len(gateway.wrap_grpc_handlers([], PluginHost().load().protocols)) == 1
    await gateway.start()
    try:
        assert list(gateway._watches) == [path] and gateway._watches[path].refresh_s == 10
        other = tmp_path / "other.txt"
        other.write_text("70=100,h:2\n")
        entry = {"discovery": {"nodefile": str(other), "refresh_s": 0.5}, **NO_HEALTH}
        changes = await gateway.apply(gateway.build_routes(routes([entry])))
        assert changes == ["task-70: added"]
        assert list(gateway._watches) == [other] and gateway._watches[other].refresh_s == 0.5
    finally:
        await gateway.stop()


# -- end to end: workers behind a gateway configured by a seed node file -------------------

# Answers with the number of the worker it runs on, in the shape of its input.
WHICH = """
    import os
    import time
    import numpy as np
    from dl_inference import PythonModel

    class Which(PythonModel):
        def predict(self, inputs, **parameters):
            time.sleep(SLEEP_S)
            return {"y": np.full_like(inputs["x"], float(os.environ["GATEWAY_TEST_WORKER"]))}
"""
WHICH_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1, -1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1, -1]}]
"""
SLOW_S = 1.5


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Workers 1, 2 and 3, each serving ``m-69`` (V2, TF Serving), ``69`` (Seldon: the
    taskId tag names the model) and ``slow-71`` (takes SLOW_S to answer)."""
    repo = tmp_path_factory.mktemp("seed_workers")
    for name in ("m-69", "69"):
        write_python_model(repo, name, WHICH.replace("SLEEP_S", "0"), WHICH_CONFIG)
    write_python_model(repo, "slow-71", WHICH.replace("SLEEP_S", str(SLOW_S)), WHICH_CONFIG)
    with named_workers(repo, ("1", "2", "3")) as procs:
        yield procs


def write_node_file(path: Path, lines: list[str]) -> None:
    # Written whole and renamed over, as editors and ConfigMap updates do.
    temporary = path.with_suffix(".new")
    temporary.write_text("\n".join(["# taskid=timeout_ms,ip:port,...", *lines]) + "\n")
    temporary.replace(path)


@pytest.fixture(scope="module")
def seed_gateway(
    tmp_path_factory: pytest.TempPathFactory, workers: list[ServerProcess]
) -> Iterator[tuple[ServerProcess, Path]]:
    folder = tmp_path_factory.mktemp("seed_gateway")
    node_file = folder / "config" / "nodefile.txt"
    node_file.parent.mkdir()
    w1, w2, _ = (w.grpc_address for w in workers)
    write_node_file(node_file, [f"69=5000,{w1},{w2}", f"71=300,{w1}"])
    config = folder / "gateway.yaml"
    # Relative to the config file, as the seed's config/nodefile.txt is to its folder.
    route = {"discovery": {"nodefile": "config/nodefile.txt", "refresh_s": 0.3}}
    config.write_text(yaml.safe_dump({"routes": [route]}))
    with ServerProcess(["-c", str(config)]) as server:
        yield server, node_file


def tf_predict(channel: grpc.Channel, model: str) -> float:
    from tensorflow import make_ndarray
    from tensorflow_serving.apis import predict_pb2

    call = channel.unary_unary(
        f"{SEED_SERVICE}/Predict",
        request_serializer=predict_pb2.PredictRequest.SerializeToString,
        response_deserializer=predict_pb2.PredictResponse.FromString,
    )
    reply = call(predict_request(predict_pb2, model, np.ones((1, 2))), timeout=30)
    return float(make_ndarray(reply.outputs["y"]).flat[0])


def tis_predict(channel: grpc.Channel, model: str) -> float:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 1.0])
    call = channel.unary_unary(
        f"{SEED_SERVICE}/TisPredict",
        request_serializer=service_pb2.ModelInferRequest.SerializeToString,
        response_deserializer=service_pb2.ModelInferResponse.FromString,
    )
    reply = call(request, timeout=30)
    return float(np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)[0])


def pytorch_predict(channel: grpc.Channel, task_id: int, method: str = "PytorchPredict") -> float:
    pb = pytest.importorskip(
        "dl_inference_seldon._proto.seldon_pb2", reason="needs the dl-inference-seldon plugin"
    )
    request = pb.SeldonMessage()
    request.meta.tags["taskId"].number_value = task_id  # a number, as the seed's client sends
    request.data.tensor.shape.extend([1, 2])
    request.data.tensor.values.extend([1.0, 1.0])
    call = channel.unary_unary(
        f"{SEED_SERVICE}/{method}",
        request_serializer=pb.SeldonMessage.SerializeToString,
        response_deserializer=pb.SeldonMessage.FromString,
    )
    return call(request, timeout=30).data.tensor.values[0]


def test_seed_methods_reach_the_nodes_of_the_task(
    seed_gateway: tuple[ServerProcess, Path],
) -> None:
    server, _ = seed_gateway
    with grpc.insecure_channel(server.grpc_address) as channel:
        answered = {
            "Predict": {tf_predict(channel, "m-69") for _ in range(4)},
            "TisPredict": {tis_predict(channel, "m-69") for _ in range(4)},
            "PytorchPredict": {pytorch_predict(channel, 69) for _ in range(4)},
            "CaffePredict": {pytorch_predict(channel, 69, "CaffePredict") for _ in range(4)},
        }
        # Task 69's nodes are workers 1 and 2; the balancer spreads calls over both.
        assert answered == {method: {1.0, 2.0} for method in answered}
        with pytest.raises(grpc.RpcError) as info:
            tf_predict(channel, "m-70")  # no line for task 70: not routed, not served here
        assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_the_timeout_of_the_line_applies_and_edits_move_traffic(
    seed_gateway: tuple[ServerProcess, Path], workers: list[ServerProcess]
) -> None:
    server, node_file = seed_gateway
    w1, w2, w3 = (w.grpc_address for w in workers)
    with grpc.insecure_channel(server.grpc_address) as channel:
        # Task 71's line gives 300 ms; its model takes SLOW_S.
        with pytest.raises(grpc.RpcError) as info:
            tf_predict(channel, "slow-71")
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

        write_node_file(node_file, [f"69=5000,{w3}", f"71={int(SLOW_S * 10_000)},{w2}"])
        assert wait_until(lambda: {tf_predict(channel, "m-69") for _ in range(3)} == {3.0})
        assert pytorch_predict(channel, 69) == 3.0 and tis_predict(channel, "m-69") == 3.0
        assert tf_predict(channel, "slow-71") == 2.0  # the longer timeout lets it finish

        # A bad edit: task 71 on two lines.
        write_node_file(node_file, [f"69=5000,{w1}", f"71=300,{w1}", f"71=300,{w3}"])
        assert wait_until(lambda: "nodefile not applied" in server.output())
        assert "nodefile.txt line 4: task 71 is already on line 3" in server.output()
        assert tf_predict(channel, "m-69") == 3.0 and tf_predict(channel, "slow-71") == 2.0

        write_node_file(node_file, [f"69=5000,{w1}"])  # task 71 leaves the file
        assert wait_until(lambda: tf_predict(channel, "m-69") == 1.0)
        with pytest.raises(grpc.RpcError) as info:
            tf_predict(channel, "slow-71")  # served here now: no such local model
        assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_gateway_with_a_bad_node_file_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "nodefile.txt").write_text(SEED_EXAMPLE + "\n70=100\n7x=1,h:1\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"routes": [{"discovery": {"nodefile": "nodefile.txt"}}]}))
    with pytest.raises(RuntimeError) as info:
        ServerProcess(["-c", str(config)]).start()
    assert "nodefile.txt line 9: task id '7x' is not a positive whole number" in str(info.value)


def test_check_config_reads_the_node_file_as_serve_does(tmp_path: Path) -> None:
    import subprocess
    import sys

    node_file = tmp_path / "nodefile.txt"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"routes": [{"discovery": {"nodefile": "nodefile.txt"}}]}))

    def check() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dl_inference", "check-config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    node_file.write_text(SEED_EXAMPLE)
    assert check().returncode == 0
    node_file.write_text(SEED_EXAMPLE + "\n7x=1,h:1\n")
    result = check()
    assert result.returncode == 2
    assert "task id '7x' is not a positive whole number" in result.stderr
