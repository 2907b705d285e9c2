"""``server.metrics.triton_names``: Triton's ``nv_inference_*`` families at /metrics, counted
from the same requests as dl-inference's own; GPU families only where NVML finds a GPU; the
latency histogram labelled by version. (tests/reference/test_triton_metrics.py compares
them with a real Triton's.)"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from dl_inference.testing import ServerProcess, write_python_model

MODEL = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            if (inputs["x"] < 0).any():
                raise ValueError("negative input")
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    max_batch_size: 8
    inputs: [{name: x, datatype: FP32, shape: [3]}]
    outputs: [{name: y, datatype: FP32, shape: [3]}]
"""
COUNTERS = (
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
GPU_FAMILIES = ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes")


def serve(root: Path, triton_names: bool) -> ServerProcess:
    config = root / f"config-{triton_names}.yaml"
    config.write_text(
        f"model_repository: {root / 'models'}\n"
        f"server: {{metrics: {{triton_names: {str(triton_names).lower()}}}}}\n"
    )
    return ServerProcess(["-c", str(config)])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton-names")
    write_python_model(root / "models", "add_one", MODEL, CONFIG)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    with serve(root, triton_names=True) as srv:
        yield srv


def infer(server: ServerProcess, rows: int, value: float = 1.0) -> None:
    with httpclient.InferenceServerClient(server.http_address) as client:
        tensor = httpclient.InferInput("x", [rows, 3], "FP32")
        tensor.set_data_from_numpy(np.full((rows, 3), value, np.float32))
        client.infer("add_one", [tensor])


def scrape(server: ServerProcess) -> dict[str, tuple[str, dict[tuple, float]]]:
    """family -> (type, {sorted label items (+ sample name): value})."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        samples = {(s.name, *sorted(s.labels.items())): s.value for s in family.samples}
        families[family.name] = (family.type, samples)
    return families


def value(families: dict, family: str, **labels: str) -> float:
    kind, samples = families[family]
    sample = family + ("_total" if kind == "counter" else "")
    return samples[(sample, *sorted(labels.items()))]


def test_triton_families_count_the_same_requests(server: ServerProcess) -> None:
    for rows in (2, 1, 3):
        infer(server, rows)
    with pytest.raises(Exception, match="negative input"):
        infer(server, 1, value=-1.0)
    families = scrape(server)
    for name in COUNTERS:
        kind, samples = families[name]
        assert kind == "counter", name
        labels = {"model", "version"} | ({"reason"} if name.endswith("failure") else set())
        assert all({k for k, _ in key[1:]} == labels for key in samples), (name, samples)
    one = {"model": "add_one", "version": "1"}
    assert value(families, "nv_inference_request_success", **one) == 3
    assert value(families, "nv_inference_request_failure", reason="BACKEND", **one) == 1
    for reason in ("CANCELED", "REJECTED", "OTHER"):
        assert value(families, "nv_inference_request_failure", reason=reason, **one) == 0
    # Rows and executions the model completed (one request per execution here).
    assert value(families, "nv_inference_count", **one) == 6
    assert value(families, "nv_inference_exec_count", **one) == 3
    own = sum(
        v
        for (name, *labels), v in families["dli_request_duration_seconds"][1].items()
        if name.endswith("_sum") and ("model", "add_one") in labels
    )
    request_us = value(families, "nv_inference_request_duration_us", **one)
    compute_us = value(families, "nv_inference_compute_infer_duration_us", **one)
    assert compute_us > 0 and 0 < request_us <= own * 1e6
    assert value(families, "nv_inference_queue_duration_us", **one) >= 0


def test_counters_are_written_as_triton_writes_them(server: ServerProcess) -> None:
    """``nv_inference_count{...}`` under ``# TYPE nv_inference_count counter``: no ``_total``
    suffix (what Triton's dashboards query), in one process's scrape and in a merged one."""
    from dl_inference.kernel.metrics import merge_worker_figures, parse_exposition

    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as reply:
        text = reply.read()
    merged = merge_worker_figures({0: parse_exposition(text), 1: None})
    for body in (text.decode(), merged.decode()):
        lines = body.splitlines()
        for name in COUNTERS:
            assert f"# TYPE {name} counter" in lines, name
            assert any(line.startswith(name + "{") for line in lines), name
            assert not any(line.startswith(name + "_total") for line in lines), name
        assert any(line.startswith("dli_requests_total{") for line in lines)


def test_latency_histogram_carries_the_version(server: ServerProcess) -> None:
    infer(server, 1)
    _, samples = scrape(server)["dli_request_duration_seconds"]
    counts = {
        dict(labels)["version"]: v
        for (name, *labels), v in samples.items()
        if name == "dli_request_duration_seconds_count" and dict(labels)["model"] == "add_one"
    }
    # Answered calls carry the version that ran; a failed one the version it asked for
    # ("": the newest, as the failing call of the test above).
    assert set(counts) <= {"1", ""} and counts["1"] >= 1


def test_gpu_families_only_where_nvml_finds_a_gpu(server: ServerProcess) -> None:
    families = scrape(server)
    reasons = [line for line in server.output().splitlines() if "GPU metrics off" in line]
    if reasons:  # this machine: no GPU, no driver or no pynvml, and the log says which
        assert not set(GPU_FAMILIES) & set(families), reasons
        assert "reason" in reasons[0]
    else:
        for name in GPU_FAMILIES:
            kind, samples = families[name]
            assert kind == "gauge" and samples
            assert all({k for k, _ in key[1:]} == {"gpu_uuid"} for key in samples)


def test_off_by_default(root: Path) -> None:
    with serve(root, triton_names=False) as srv:
        infer(srv, 1)
        families = scrape(srv)
    assert not [name for name in families if name.startswith("nv_inference")]
    assert "dli_requests" in families


class _FakeNvml:
    """pynvml's calls the collector makes, answering for two GPUs (no GPU on CI machines);
    the second does not support power readings, as some boards do not."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.energy_mj = 5_000_000

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}".encode()  # older pynvml answers bytes

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> object:
        return type("Rates", (), {"gpu": 40 + handle})()

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> object:
        return type("Memory", (), {"total": 80 << 30, "used": (handle + 1) << 30})()

    def _power(self, handle: int, value: int) -> int:
        if handle == 1:
            raise self.NVMLError("not supported")
        return value

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._power(handle, 250_000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._power(handle, 700_000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return self._power(handle, self.energy_mj)


def test_gpu_collector_reads_nvml_as_triton_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from dl_inference.kernel.metrics import GpuCollector

    nvml = _FakeNvml()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", nvml)
    collector, reason = GpuCollector.open()
    assert collector is not None and reason == ""
    nvml.energy_mj += 1500  # 1.5 J since the server started
    registry = CollectorRegistry()
    registry.register(collector)
    families = {
        f.name: (f.type, {(s.name, s.labels["gpu_uuid"]): s.value for s in f.samples})
        for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    assert families["nv_gpu_utilization"] == (
        "gauge",
        {("nv_gpu_utilization", "GPU-0"): 0.40, ("nv_gpu_utilization", "GPU-1"): 0.41},
    )
    assert families["nv_gpu_memory_used_bytes"][1][("nv_gpu_memory_used_bytes", "GPU-1")] == (
        2 << 30
    )
    assert families["nv_gpu_memory_total_bytes"][1][("nv_gpu_memory_total_bytes", "GPU-0")] == (
        80 << 30
    )
    # Watts; the GPU without power readings is left out of those families, not zero.
    assert families["nv_gpu_power_usage"][1] == {("nv_gpu_power_usage", "GPU-0"): 250.0}
    assert families["nv_gpu_power_limit"][1] == {("nv_gpu_power_limit", "GPU-0"): 700.0}
    assert families["nv_energy_consumption"] == (
        "counter",
        {("nv_energy_consumption_total", "GPU-0"): 1.5},
    )


def test_gpu_collector_says_why_there_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from dl_inference.kernel.metrics import GpuCollector

    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # not installed
    assert GpuCollector.open() == (None, "pynvml is not installed (pip install nvidia-ml-py)")
    nvml = _FakeNvml()

    def no_driver() -> None:
        raise nvml.NVMLError("Driver Not Loaded")

    nvml.nvmlInit = no_driver  # type: ignore[method-assign]
    monkeypatch.setitem(__import__("sys").modules, "pynvml", nvml)
    collector, reason = GpuCollector.open()
    assert collector is None and "Driver Not Loaded" in reason
