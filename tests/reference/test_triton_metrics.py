"""Side by side with a real Triton 2.51: ``/metrics`` with ``server.metrics.triton_names``.

The same python models (add one, batched; one whose execute raises) on Triton and on
dl-inference, the same requests to both; Triton's per-model families must exist on both
with the same type, help, label names and label values, and the same counts.
"""

from __future__ import annotations

import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from dl_inference.testing import ServerProcess, write_python_model

from .test_triton_config_stats import OUR_CONFIGS, OUR_MODEL, TRITON_CONFIGS, TRITON_MODEL
from .triton import TritonServer, skip_without_triton

FAILING_TRITON = """
class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("failing on purpose")
"""
FAILING_OURS = """
    from dl_inference import PythonModel

    class Failing(PythonModel):
        def predict(self, inputs, **parameters):
            raise ValueError("failing on purpose")
"""
FAMILIES = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
# Counts, not times: these must be equal after the same requests.
COUNTS = FAMILIES[:4]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(Triton's metrics URL, ours: each on its metrics port) serving addb, addnb and
    failing."""
    skip_without_triton()
    root = tmp_path_factory.mktemp("triton-metrics")
    triton_models = {name: (TRITON_MODEL, config) for name, config in TRITON_CONFIGS.items()}
    triton_models["failing"] = (FAILING_TRITON, TRITON_CONFIGS["addnb"])
    for name, (code, config) in triton_models.items():
        folder = root / "triton" / name
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.py").write_text(code)
        (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    for name, config in OUR_CONFIGS.items():
        write_python_model(root / "ours", name, OUR_MODEL, config)
    write_python_model(root / "ours", "failing", FAILING_OURS, OUR_CONFIGS["addnb"])
    config = root / "config.yaml"
    config.write_text(
        f"model_repository: {root / 'ours'}\nserver: {{metrics: {{triton_names: true}}}}\n"
    )
    triton = TritonServer(root / "triton", root / "triton.log")
    try:
        triton.start()
    except (RuntimeError, TimeoutError, OSError) as exc:
        pytest.skip(f"the Triton reference server did not start here: {exc}")
    try:
        # Both scraped on their metrics ports (Triton's --metrics-port, ours alike).
        with ServerProcess(["-c", str(config), "--metrics-port", "0"]) as ours:
            for address in (triton.http_address, ours.http_address):
                traffic(address)
            yield (
                f"http://127.0.0.1:{triton.metrics_port}/metrics",
                f"http://127.0.0.1:{ours.metrics_port}/metrics",
            )
    finally:
        triton.stop()


def traffic(address: str) -> None:
    """The same requests to either server: answered, refused before running, failed."""
    with httpclient.InferenceServerClient(address) as client:
        for model, shape in (("addb", (2, 3)), ("addb", (1, 3)), ("addb", (3, 3)),
                             ("addnb", (2, 3))):  # fmt: skip
            tensor = httpclient.InferInput("x", list(shape), "FP32")
            tensor.set_data_from_numpy(np.ones(shape, np.float32))
            client.infer(model, [tensor])
        for model, shape in (("addb", (2, 4)), ("failing", (1, 3)), ("failing", (2, 3))):
            tensor = httpclient.InferInput("x", list(shape), "FP32")
            tensor.set_data_from_numpy(np.ones(shape, np.float32))
            with pytest.raises(Exception):  # noqa: B017 - the error texts differ, counts not
                client.infer(model, [tensor])


def raw(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def written(text: str) -> set[str]:
    """The ``# TYPE`` lines and the metric names of the samples, as the text writes them
    (what Prometheus stores and dashboards query; the parser would add ``_total``)."""
    return {
        line if line.startswith("# TYPE") else line.split("{")[0]
        for line in text.splitlines()
        if any(name in line for name in FAMILIES) and not line.startswith("# HELP")
    }


def scrape(url: str) -> dict[str, tuple[str, str, dict[tuple, float]]]:
    """family -> (type, help, {(sample name, sorted labels): value}) of Triton's families."""
    text = raw(url)
    return {
        family.name: (
            family.type,
            family.documentation,
            {(s.name, *sorted(s.labels.items())): s.value for s in family.samples},
        )
        for family in text_string_to_metric_families(text)
        if family.name in FAMILIES
    }


def test_same_families_types_and_labels(servers: tuple[str, str]) -> None:
    triton, ours = (scrape(url) for url in servers)
    assert sorted(ours) == sorted(triton) == sorted(FAMILIES)
    for name in FAMILIES:
        t_type, t_help, t_samples = triton[name]
        o_type, o_help, o_samples = ours[name]
        assert (o_type, o_help) == (t_type, t_help), name
        # The same series: label names and values (model, version, reason) alike.
        assert sorted(o_samples) == sorted(t_samples), name


def test_same_names_as_written(servers: tuple[str, str]) -> None:
    triton, ours = (written(raw(url)) for url in servers)
    assert ours == triton
    assert "nv_inference_count" in ours and "# TYPE nv_inference_count counter" in ours


def test_same_counts_after_the_same_requests(servers: tuple[str, str]) -> None:
    triton, ours = (scrape(url) for url in servers)
    # The one difference (docs/triton-differences.md): Triton counts an execution whose
    # model raised, dl-inference's statistics count completed executions only.
    failed_executions = ("nv_inference_exec_count_total", ("model", "failing"), ("version", "1"))
    assert triton["nv_inference_exec_count"][2][failed_executions] == 2
    assert ours["nv_inference_exec_count"][2][failed_executions] == 0
    for name in COUNTS:
        expected = {k: v for k, v in triton[name][2].items() if k != failed_executions}
        assert {k: v for k, v in ours[name][2].items() if k != failed_executions} == expected
    assert (
        triton["nv_inference_request_success"][2][
            ("nv_inference_request_success_total", ("model", "addb"), ("version", "1"))
        ]
        == 3
    )
    # Times differ, but both count time where the other does.
    for name in ("nv_inference_request_duration_us", "nv_inference_compute_infer_duration_us"):
        for key, value in triton[name][2].items():
            assert (ours[name][2][key] > 0) == (value > 0), (name, key)


def status_of(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_metrics_ports_answer_alike(servers: tuple[str, str]) -> None:
    """GET /metrics answers, POST is 405, on both metrics ports. (Triton 2.51 also answers
    any other GET there with 200 and an empty body, /v2/health/ready included; ours is 404:
    docs/triton-differences.md.)"""
    assert [status_of(url) for url in servers] == [200, 200]
    assert [status_of(url, "POST") for url in servers] == [405, 405]
    triton, ours = (url.replace("/metrics", "/v2/health/ready") for url in servers)
    assert (status_of(triton), status_of(ours)) == (200, 404)
