"""deploy/grafana/dl-inference.json: a dashboard Grafana's schema accepts, whose every query
parses as PromQL and names only metric families real dl-inference servers export.

Schema: the dashboard loads into ``grafana-foundation-sdk``'s types, which are generated
from Grafana's published dashboard schema (11.6: ``schemaVersion`` 41): every key must be
one the schema knows (nothing dropped on the way back to JSON) and every value of the type
the schema gives. Queries: ``promql-parser`` (Prometheus' grammar) finds every selector's
metric name, which must be a sample a worker and a gateway in front of it really expose
after a few calls (the test that fails when a metric is renamed).
"""

from __future__ import annotations

import enum
import json
import re
import types
import typing
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import promql_parser
import pytest
import tritonclient.grpc as grpcclient
import yaml
from grafana_foundation_sdk.cog import encoder, plugins
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as schema

from dl_inference.testing import ServerProcess, write_python_model

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dl-inference.json"
SCHEMA_VERSION = 41  # Grafana 11.6, the schema of the pinned grafana-foundation-sdk
# Grafana's own interval variables, which a query may hold where PromQL wants a duration.
GRAFANA_INTERVALS = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{__\w+\}")
# Families a server exports only where NVML finds a GPU (else its log says why).
GPU_ONLY = re.compile(r"^nv_gpu_|^nv_energy_")
MODEL = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    max_batch_size: 8
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


# -- Grafana's schema ----------------------------------------------------------------------


def dropped(ours: Any, back: Any, path: str = "$") -> list[str]:
    """Where ``ours`` has a key or value that the schema's types did not keep."""
    if isinstance(ours, dict):
        if not isinstance(back, dict):
            return [f"{path}: an object where the schema has {type(back).__name__}"]
        return [
            problem
            for key, value in ours.items()
            for problem in (
                dropped(value, back[key], f"{path}.{key}")
                if key in back
                else [f"{path}.{key}: not a field of Grafana's schema here"]
            )
        ]
    if isinstance(ours, list):
        if not isinstance(back, list) or len(back) != len(ours):
            return [f"{path}: the list did not survive the schema"]
        return [
            p
            for i, (a, b) in enumerate(zip(ours, back, strict=True))
            for p in dropped(a, b, f"{path}[{i}]")
        ]
    return [] if ours == back else [f"{path}: {ours!r} read back as {back!r}"]


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the schema's type ``hint`` (as the SDK annotates it)."""
    if hint is Any or hint is object:
        return True
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args and type(value) in {type(a) for a in args}
    if origin is list:
        return isinstance(value, list) and all(matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(matches(v, args[1]) for v in value.values())
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {m.value for m in hint}
    return isinstance(value, hint)


def type_errors(obj: Any, path: str = "$") -> list[str]:
    """Every attribute of the SDK object tree whose value is not of its schema type."""
    if isinstance(obj, list):
        return [p for i, item in enumerate(obj) for p in type_errors(item, f"{path}[{i}]")]
    if isinstance(obj, dict):
        return [p for key, item in obj.items() for p in type_errors(item, f"{path}.{key}")]
    if not type(obj).__module__.startswith("grafana_foundation_sdk.models"):
        return []
    errors = []
    for name, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name, None)
        if not matches(value, hint):
            errors.append(f"{path}.{name}: {value!r} is not {hint}")
        else:
            errors += type_errors(value, f"{path}.{name}")
    return errors


def test_dashboard_is_valid_under_grafanas_schema() -> None:
    plugins.register_default_plugins()
    ours = load()
    assert ours["schemaVersion"] == SCHEMA_VERSION
    parsed = schema.Dashboard.from_json(ours)
    back = json.loads(json.dumps(parsed, cls=encoder.JSONEncoder))
    assert dropped(ours, back) == []
    assert type_errors(parsed) == []
    # Panels are the schema's panel and row types, queries Prometheus' query type (not
    # the SDK's bag for what it does not know).
    for panel in parsed.panels:
        assert isinstance(panel, schema.Panel | schema.RowPanel)
        for target in getattr(panel, "targets", None) or []:
            assert type(target).__module__.endswith("models.prometheus"), target
            assert isinstance(target, cogvariants.Dataquery)


def test_the_schema_check_catches_a_misspelt_key_and_a_wrong_type() -> None:
    plugins.register_default_plugins()
    ours = load()
    ours["panels"][1]["gridPos"]["width"] = 12
    ours["panels"][1]["targets"][0]["legendFormt"] = "{{model}}"
    ours["panels"][2]["gridPos"]["h"] = "8"
    parsed = schema.Dashboard.from_json(ours)
    back = json.loads(json.dumps(parsed, cls=encoder.JSONEncoder))
    assert dropped(ours, back) == [
        "$.panels[1].gridPos.width: not a field of Grafana's schema here",
        "$.panels[1].targets[0].legendFormt: not a field of Grafana's schema here",
    ]
    assert [e.split(":")[0] for e in type_errors(parsed)] == ["$.panels[2].grid_pos.h"]


def test_panels_do_not_overlap_and_ids_are_unique() -> None:
    panels = load()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not cells & taken, panel["title"]
        taken |= cells


# -- queries against real servers ---------------------------------------------------------


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(selector, label): the selector is the PromQL part.
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            found.append((f"variable {variable['name']}", inner.group(1) if inner else query))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names of every selector in ``expr``; ValueError if it is not PromQL."""
    names: set[str] = set()

    def visit(node: Any, *_: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(GRAFANA_INTERVALS.sub("5m", expr)), visit)
    return names


def test_every_query_is_promql_naming_metrics() -> None:
    for where, expr in queries(load()):
        assert metric_names(expr), where
    with pytest.raises(ValueError):
        metric_names("sum by (model (rate(dli_requests_total[5m]))")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[set[str], str]]:
    """(every sample name a worker and a gateway in front of it export after a few calls
    through both, what they printed)."""
    root = tmp_path_factory.mktemp("grafana")
    write_python_model(root / "worker", "add_one", MODEL, CONFIG)
    write_python_model(root / "gateway", "local", MODEL, CONFIG)
    with ServerProcess(["--model-repository", str(root / "worker")]) as worker:
        config = root / "gateway.yaml"
        node = {"address": worker.grpc_address, "http_address": worker.http_address}
        config.write_text(
            yaml.safe_dump(
                {
                    "model_repository": str(root / "gateway"),
                    # A split and a mirror, so the group families have series too.
                    "routes": [
                        {
                            "model": "add_one",
                            "split": [{"name": "stable", "weight": 1, "nodes": [node]}],
                            "mirror": {"name": "shadow", "percent": 100, "nodes": [node]},
                        }
                    ],
                }
            )
        )
        with ServerProcess(["-c", str(config)]) as gateway:
            with grpcclient.InferenceServerClient(gateway.grpc_address) as client:
                for model in ("add_one", "local"):
                    tensor = grpcclient.InferInput("x", [1, 2], "FP32")
                    tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
                    client.infer(model, [tensor])
            names: set[str] = set()
            for server in (worker, gateway):
                with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as reply:
                    text = reply.read().decode()
                # Sample names as written: what Prometheus stores and queries find.
                names |= {
                    line.split("{")[0].split(" ")[0]
                    for line in text.splitlines()
                    if line and not line.startswith("#")
                }
            yield names, worker.output() + gateway.output()


def test_every_metric_in_the_dashboard_is_exported(exported: tuple[set[str], str]) -> None:
    names, output = exported
    used = {name for _, expr in queries(load()) for name in metric_names(expr)}
    missing = used - names
    if "GPU metrics off" in output:  # no GPU here, and the server said why
        missing = {name for name in missing if not GPU_ONLY.match(name)}
    assert missing == set()
    # The panels the issue asks for are there.
    for family in (
        "dli_requests_total",
        "dli_request_duration_seconds_bucket",
        "dli_queue_duration_seconds_bucket",
        "dli_batch_size_sum",
        "dli_in_flight_requests",
        "dli_model_ready",
        "dli_upstream_requests_total",
        "dli_gateway_group_duration_seconds_bucket",
    ):
        assert family in used, family


def test_latency_panel_is_by_model_and_version() -> None:
    (panel,) = [p for p in load()["panels"] if p["title"] == "Latency p50 / p99"]
    for target in panel["targets"]:
        assert "dli_request_duration_seconds_bucket" in target["expr"]
        assert re.search(r"sum by \(le, model, version\)", target["expr"]), target["expr"]
