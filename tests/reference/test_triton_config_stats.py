"""Side by side with a real Triton 2.51: the model-configuration and statistics extensions.

The same python models (add one; with and without batching) on Triton and on dl-inference;
``/config`` and ``/stats`` must have the same fields, nested the same way, with the same
values where the configuration says the same thing, and the same counts after the same
traffic; errors answer with the same status codes on both.
"""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, write_python_model

from .triton import TritonServer, skip_without_triton

TRITON_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        replies = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            replies.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x + 1)]))
        return replies
"""
TRITON_CONFIGS = {
    "addb": """
        backend: "python"
        max_batch_size: 8
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 2000 }
        instance_group [ { kind: KIND_CPU count: 1 } ]
        parameters: { key: "foo" value: { string_value: "bar" } }
    """,
    "addnb": """
        backend: "python"
        max_batch_size: 0
        input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
        instance_group [ { kind: KIND_CPU count: 1 } ]
    """,
}
OUR_MODEL = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
OUR_CONFIGS = {
    "addb": """
        max_batch_size: 8
        max_queue_delay_ms: 2
        inputs: [{name: x, datatype: FP32, shape: [3]}]
        outputs: [{name: y, datatype: FP32, shape: [3]}]
        parameters: {foo: bar}
    """,
    "addnb": """
        inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]
        outputs: [{name: y, datatype: FP32, shape: [-1, 3]}]
    """,
}


@dataclass
class Servers:
    triton: TritonServer
    ours: ServerProcess

    def urls(self) -> dict[str, str]:
        return {"triton": self.triton.http_url, "ours": self.ours.http_url}

    def addresses(self, transport: str) -> dict[str, str]:
        if transport == "grpc":
            return {"triton": self.triton.grpc_address, "ours": self.ours.grpc_address}
        return {"triton": self.triton.http_address, "ours": self.ours.http_address}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    skip_without_triton()
    root = tmp_path_factory.mktemp("config-stats")
    for name, config in TRITON_CONFIGS.items():
        folder = root / "triton" / name
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.py").write_text(TRITON_MODEL)
        (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    for name, config in OUR_CONFIGS.items():
        write_python_model(root / "ours", name, OUR_MODEL, config)
    triton = TritonServer(root / "triton", root / "triton.log")
    try:
        triton.start()
    except (RuntimeError, TimeoutError, OSError) as exc:
        pytest.skip(f"the Triton reference server did not start here: {exc}")
    try:
        with ServerProcess(["--model-repository", str(root / "ours")]) as ours:
            yield Servers(triton, ours)
    finally:
        triton.stop()


def get(url: str, method: str = "GET") -> tuple[int, Any]:
    """(status, JSON body) of a plain HTTP call."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def layout(value: Any) -> Any:
    """The fields of a JSON document, nested as they are, with the type of every leaf."""
    if isinstance(value, dict):
        return {key: layout(item) for key, item in value.items()}
    if isinstance(value, list):
        return [layout(item) for item in value[:1]]
    return type(value).__name__


def paired(servers: Servers, path: str) -> tuple[Any, Any]:
    urls = servers.urls()
    (t_status, triton), (o_status, ours) = get(urls["triton"] + path), get(urls["ours"] + path)
    assert t_status == o_status == 200, (triton, ours)
    return triton, ours


@pytest.mark.parametrize("model", ["addb", "addnb"])
def test_config_has_tritons_fields_and_values(servers: Servers, model: str) -> None:
    triton, ours = paired(servers, f"/v2/models/{model}/config")
    assert layout(ours) == layout(triton)
    same = (
        "name",
        "platform",
        "backend",
        "runtime",
        "version_policy",
        "max_batch_size",
        "input",
        "output",
        "batch_input",
        "batch_output",
        "parameters",
        "model_warmup",
    )
    assert {k: ours[k] for k in same} == {k: triton[k] for k in same}
    assert ours.get("dynamic_batching") == triton.get("dynamic_batching")
    keys = ("kind", "count", "gpus", "passive")
    assert [{k: g[k] for k in keys} for g in ours["instance_group"]] == [
        {k: g[k] for k in keys} for g in triton["instance_group"]
    ]


def test_grpc_config_reads_the_same(servers: Servers) -> None:
    configs = {}
    for side, address in servers.addresses("grpc").items():
        with grpcclient.InferenceServerClient(address) as client:
            configs[side] = client.get_model_config("addb").config
    triton, ours = configs["triton"], configs["ours"]
    assert ours.input == triton.input and ours.output == triton.output
    assert ours.dynamic_batching == triton.dynamic_batching
    assert ours.version_policy == triton.version_policy
    assert ours.parameters == triton.parameters
    assert (ours.name, ours.backend, ours.max_batch_size) == (
        triton.name,
        triton.backend,
        triton.max_batch_size,
    )


def test_statistics_after_the_same_traffic(servers: Servers) -> None:
    for address in servers.addresses("http").values():
        with httpclient.InferenceServerClient(address) as client:
            for model, shape in (("addb", (2, 3)), ("addb", (2, 3)), ("addb", (1, 3))):
                tensor = httpclient.InferInput("x", list(shape), "FP32")
                tensor.set_data_from_numpy(np.ones(shape, np.float32))
                client.infer(model, [tensor])
            tensor = httpclient.InferInput("x", [2, 3], "FP32")
            tensor.set_data_from_numpy(np.ones((2, 3), np.float32))
            client.infer("addnb", [tensor])
    for path in ("/v2/models/addb/stats", "/v2/models/addnb/versions/1/stats", "/v2/models/stats"):
        triton, ours = paired(servers, path)
        assert layout(ours) == layout(triton), path
        for t, o in zip(triton["model_stats"], ours["model_stats"], strict=True):
            counted = ("name", "version", "inference_count", "execution_count")
            assert {k: o[k] for k in counted} == {k: t[k] for k in counted}
            assert {k: v["count"] for k, v in o["inference_stats"].items()} == {
                k: v["count"] for k, v in t["inference_stats"].items()
            }
            assert [(b["batch_size"], b["compute_infer"]["count"]) for b in o["batch_stats"]] == [
                (b["batch_size"], b["compute_infer"]["count"]) for b in t["batch_stats"]
            ]
            assert (o["last_inference"] > 0) == (t["last_inference"] > 0)
    stats = {}
    for side, address in servers.addresses("grpc").items():
        with grpcclient.InferenceServerClient(address) as client:
            stats[side] = client.get_inference_statistics("addb").model_stats[0]
    assert stats["ours"].inference_count == stats["triton"].inference_count == 5
    assert stats["ours"].execution_count == stats["triton"].execution_count == 3


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/nope/config"),
        ("GET", "/v2/models/addb/versions/7/config"),
        ("GET", "/v2/models/nope/stats"),
        ("GET", "/v2/models/addb/versions/3/stats"),
        ("GET", "/v2/nope"),
        ("GET", "/v2/models/addb/nope"),
        ("POST", "/v2/models/addb/config"),
        ("DELETE", "/v2/models/addb/stats"),
        ("GET", "/v2/models/addb/infer"),
    ],
)
def test_errors_have_the_same_status_and_a_json_body(
    servers: Servers, method: str, path: str
) -> None:
    answers = {side: get(url + path, method) for side, url in servers.urls().items()}
    assert answers["ours"][0] == answers["triton"][0], answers
    assert set(answers["ours"][1]) == set(answers["triton"][1]) == {"error"}


def test_grpc_errors_have_the_same_codes(servers: Servers) -> None:
    codes: dict[str, list[str]] = {}
    for side, address in servers.addresses("grpc").items():
        with grpcclient.InferenceServerClient(address) as client:
            codes[side] = []
            for call in (
                lambda: client.get_model_config("nope"),
                lambda: client.get_model_config("addb", "7"),
                lambda: client.get_inference_statistics("nope"),
                lambda: client.get_inference_statistics("addb", "3"),
            ):
                with pytest.raises(InferenceServerException) as caught:
                    call()
                codes[side].append(caught.value.status())
    assert codes["ours"] == codes["triton"]
