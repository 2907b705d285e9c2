"""``serve --workers N`` behaves as one server: metrics, management, start-up failures.

Each check opens a new connection per call, so that SO_REUSEPORT spreads the calls over
the worker processes; a call that reached only one worker would show in the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dl_inference.testing import ServerProcess, write_python_model

TOKEN = "worker-test-token-0123456789"
PID = """
    import os
    import numpy as np
    from dl_inference import PythonModel

    class Pid(PythonModel):
        def predict(self, inputs, **parameters):
            return {"pid": np.array([os.getpid()], dtype=np.int64)}
"""
PID_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [1]}]
    outputs: [{name: pid, datatype: INT64, shape: [1]}]
"""
ONE_INPUT = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
# Fails to load in worker 1 only: the other worker starts as usual.
FAILS_IN_WORKER_1 = """
    import os
    from dl_inference import PythonModel

    class Picky(PythonModel):
        def load(self):
            if os.environ.get("DLI_WORKER_INDEX") == "1":
                raise RuntimeError("refusing to load in worker 1")

        def predict(self, inputs, **parameters):
            return {"y": inputs["x"]}
"""
XY_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def call(url: str, body: dict | None = None, token: str = "") -> tuple[int, dict]:
    """One HTTP call on a new connection; (status, JSON body or {})."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            text = reply.read()
            return reply.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def infer_pid(server: ServerProcess) -> tuple[int, int | None]:
    """(status, pid of the worker that answered) for one V2 REST call to ``pid``."""
    status, body = call(f"{server.http_url}/v2/models/pid/infer", ONE_INPUT)
    assert status in (200, 404), body
    return status, body["outputs"][0]["data"][0] if status == 200 else None


def scrape(server: ServerProcess) -> dict[str, list]:
    """Samples by name from one /metrics scrape."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def management_url(server: ServerProcess) -> str:
    match = re.search(r"^Management HTTP listening on (\S+)$", server.output(), re.M)
    assert match, server.output()
    return f"http://{match.group(1)}"


@pytest.fixture
def pid_repository(tmp_path: Path) -> Path:
    write_python_model(tmp_path / "models", "pid", PID, PID_CONFIG)
    (tmp_path / "server.yaml").write_text(
        "model_repository: models\n"
        "server: {repository_poll_s: 0}\n"
        "management: {enabled: true, grpc_port: 0, http_port: 0}\n"
    )
    return tmp_path


def serve_two(base: Path) -> ServerProcess:
    return ServerProcess(
        ["-c", str(base / "server.yaml"), "--workers", "2"],
        env={"DLI_MANAGEMENT_TOKEN": TOKEN},
        cwd=base,
    )


def test_every_scrape_holds_every_workers_figures(pid_repository: Path) -> None:
    with serve_two(pid_repository) as server:
        pids = set()
        for _ in range(30):
            status, pid = infer_pid(server)
            assert status == 200
            pids.add(pid)
        assert len(pids) == 2  # both workers answered some of the calls
        for _ in range(6):  # scrapes land on either worker
            samples = scrape(server)
            up = {s.labels["worker"]: s.value for s in samples["dli_worker_up"]}
            assert up == {"0": 1.0, "1": 1.0}
            served = [
                s
                for s in samples["dli_requests_total"]
                if s.labels["model"] == "pid" and s.labels["status"] == "OK"
            ]
            # Each worker's own series, and together every call made.
            assert {s.labels["worker"] for s in served} == {"0", "1"}
            assert sum(s.value for s in served) == 30
            cpu = {s.labels["worker"] for s in samples["process_cpu_seconds_total"]}
            assert cpu == {"0", "1"}
        for _ in range(4):  # the status feed adds the workers' windows up likewise
            _, status = call(f"{server.http_url}/api/status")
            assert status["server"]["workers"] == {"count": 2, "answered": [0, 1]}
            assert status["server"]["ready"] is True
            (model,) = [m for m in status["models"] if m["name"] == "pid"]
            assert model["count"] == 30 and model["errors"] == 0


def test_management_changes_reach_every_worker(pid_repository: Path) -> None:
    with serve_two(pid_repository) as server:
        manage = management_url(server)
        status, _ = call(f"{manage}/v2/repository/models/pid/unload", {}, TOKEN)
        assert status == 200
        # Without the fan-out about half of these would still reach a worker serving pid.
        assert {infer_pid(server)[0] for _ in range(16)} == {404}
        status, _ = call(f"{manage}/v2/repository/models/pid/load", {}, TOKEN)
        assert status == 200
        answers = [infer_pid(server) for _ in range(30)]
        assert {status for status, _ in answers} == {200}
        assert len({pid for _, pid in answers}) == 2
        # A refused load is refused in the worker that took it and goes no further.
        status, body = call(f"{manage}/v2/repository/models/nothere/load", {}, TOKEN)
        assert status == 404 and "nothere" in body["error"]
        assert {infer_pid(server)[0] for _ in range(8)} == {200}


def test_a_killed_worker_is_replaced(pid_repository: Path) -> None:
    with serve_two(pid_repository) as server:
        pids = set()
        while len(pids) < 2:
            pids.add(infer_pid(server)[1])
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        # The survivor answers meanwhile; then a new process joins (bounded wait).
        seen: set[int | None] = set()
        for _ in range(600):
            try:
                status, pid = infer_pid(server)
            except ConnectionResetError:
                continue  # a connection the kernel had queued for the killed process
            assert status == 200
            seen.add(pid)
            if len(seen - {victim}) == 2:
                break
            time.sleep(0.1)
        assert victim not in seen and len(seen) == 2, seen
        for _ in range(4):
            up = {s.labels["worker"]: s.value for s in scrape(server)["dli_worker_up"]}
            assert up == {"0": 1.0, "1": 1.0}
        assert "exited with status -9; starting a new one" in server.output()
    assert server.process is not None and server.process.returncode == 0


def test_a_replacement_worker_replays_the_management_changes(pid_repository: Path) -> None:
    with serve_two(pid_repository) as server:
        manage = management_url(server)
        # Changes the disk does not show: pid unloaded, and "extra" (a folder added after
        # start-up; the repository is not polled) loaded.
        write_python_model(pid_repository / "models", "extra", PID, PID_CONFIG)
        assert call(f"{manage}/v2/repository/models/pid/unload", {}, TOKEN)[0] == 200
        assert call(f"{manage}/v2/repository/models/extra/load", {}, TOKEN)[0] == 200
        # A change that cannot be replayed (its folder is gone) is skipped, not fatal.
        write_python_model(pid_repository / "models", "gone", PID, PID_CONFIG)
        assert call(f"{manage}/v2/repository/models/gone/load", {}, TOKEN)[0] == 200
        shutil.rmtree(pid_repository / "models" / "gone")
        pids = set()
        while len(pids) < 2:
            status, body = call(f"{server.http_url}/v2/models/extra/infer", ONE_INPUT)
            assert status == 200, body
            pids.add(body["outputs"][0]["data"][0])
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        seen: set[int] = set()
        for _ in range(600):  # bounded wait for the replacement to answer
            try:
                status, body = call(f"{server.http_url}/v2/models/extra/infer", ONE_INPUT)
            except ConnectionResetError:
                continue
            assert status == 200, body
            seen.add(body["outputs"][0]["data"][0])
            if len(seen - {victim}) == 2:
                break
            time.sleep(0.1)
        assert len(seen - {victim}) == 2, seen
        # Without the replay the replacement would serve pid again, from disk.
        assert {infer_pid(server)[0] for _ in range(16)} == {404}
        output = server.output()
        assert "management changes replayed from a sibling" in output
        assert "could not be replayed" in output and "gone" in output


def test_a_change_that_fails_in_one_worker_says_so(pid_repository: Path) -> None:
    with serve_two(pid_repository) as server:
        # Appears after start-up (repository_poll_s is 0): only the management API loads it.
        write_python_model(pid_repository / "models", "picky", FAILS_IN_WORKER_1, XY_CONFIG)
        url = f"{management_url(server)}/v2/repository/models/picky/load"
        messages = []
        for _ in range(20):  # a call that lands on worker 1 fails there and goes no further
            status, body = call(url, {}, TOKEN)
            assert status >= 400
            messages.append(body["error"])
            if "but not in every worker" in messages[-1]:
                break
        assert all("refusing to load in worker 1" in message for message in messages)
        # Taken by worker 0, loaded there, refused by worker 1: the answer says so.
        assert "took effect in worker 0 but not in every worker" in messages[-1]
        assert "worker 1: " in messages[-1] and "workers now differ" in messages[-1]
        # Both workers go on serving what they served.
        assert {infer_pid(server)[0] for _ in range(8)} == {200}


def test_sighup_reloads_every_worker_and_the_server_stays(pid_repository: Path) -> None:
    config = pid_repository / "server.yaml"
    config.write_text(
        "model_repository: models\nserver: {repository_poll_s: 0, config_poll_s: 0}\n"
    )
    with ServerProcess(["-c", str(config), "--workers", "2"], cwd=pid_repository) as server:
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        for _ in range(300):  # each worker logs its reload (bounded wait)
            if server.output().count("config reloaded") == 2:
                break
            time.sleep(0.1)
        assert server.output().count("config reloaded") == 2, server.output()
        assert server.process.poll() is None
        assert {infer_pid(server)[0] for _ in range(4)} == {200}
    assert server.process.returncode == 0


def running(pid: str) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_stop_when_their_parent_is_killed(pid_repository: Path) -> None:
    server = serve_two(pid_repository).start()
    assert server.process is not None
    parent = server.process.pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(children) == 2
    os.kill(parent, signal.SIGKILL)  # no chance to stop its workers itself
    server.process.wait()
    for _ in range(300):  # they drain and exit (bounded wait)
        if not any(running(pid) for pid in children):
            break
        time.sleep(0.1)
    alive = [pid for pid in children if running(pid)]
    for pid in alive:  # leave nothing behind, whatever the outcome
        os.kill(int(pid), signal.SIGKILL)
    assert not alive, "workers kept running after their parent died"


def test_a_worker_that_cannot_start_stops_all_workers(tmp_path: Path) -> None:
    write_python_model(tmp_path, "picky", FAILS_IN_WORKER_1, XY_CONFIG)
    command = [sys.executable, "-m", "dl_inference", "serve", "--model-repository"]
    command += [str(tmp_path), "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]
    command += ["--workers", "2"]
    config = tmp_path / "strict.yaml"
    config.write_text("server: {strict_model_loading: true}\n")
    result = subprocess.run(
        [*command, "-c", str(config)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "refusing to load in worker 1" in result.stdout + result.stderr
    assert "a worker exited while starting; stopping all 2" in result.stderr
    assert "gRPC listening" not in result.stdout  # never announced as ready


def test_merged_figures_label_each_worker_and_mark_the_missing() -> None:
    from dl_inference.kernel.metrics import Metrics, merge_worker_figures

    first, second = Metrics(), Metrics()
    for _ in range(3):
        first.observe_request("m", "1", "v2", "OK", 0.01)
    second.observe_request("m", "1", "v2", "OK", 0.2)
    second.observe_execution("m", "1", 4, 0.0, 0.05)
    text = merge_worker_figures(
        {0: list(first.registry.collect()), 1: list(second.registry.collect()), 2: None}
    ).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {s.labels["worker"]: s.value for s in families["dli_requests"].samples}
    assert requests == {"0": 3.0, "1": 1.0}
    counts = {
        s.labels["worker"]: s.value
        for s in families["dli_request_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {"0": 3.0, "1": 1.0}
    rows = [s for s in families["dli_batch_size"].samples if s.name == "dli_batch_size_sum"]
    assert [(s.labels["worker"], s.value) for s in rows] == [("1", 4.0)]
    up = {s.labels["worker"]: s.value for s in families["dli_worker_up"].samples}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}
    assert np.isclose(
        sum(
            s.value
            for s in families["dli_request_duration_seconds"].samples
            if s.name.endswith("_sum")
        ),
        0.23,
    )


async def test_siblings_that_do_not_answer_are_marked_down(tmp_path: Path) -> None:
    from aiohttp import web

    from dl_inference.kernel.metrics import Metrics, merge_worker_figures, parse_exposition
    from dl_inference.server.worker_link import WorkerLink

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(body=b"\xff\xfe not prometheus {{{")

    release = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        await release.wait()  # until the test has its figures
        return web.Response(text="")

    # Worker 1 answers garbage, worker 2 has no socket at all, worker 3 is too slow.
    answering = WorkerLink(tmp_path, 1, 4)
    stuck = WorkerLink(tmp_path, 3, 4)
    await answering.start([web.get("/metrics", garbage)])
    await stuck.start([web.get("/metrics", slow)])
    try:
        metrics = Metrics()
        metrics.observe_request("m", "1", "v2", "OK", 0.01)
        link = WorkerLink(tmp_path, 0, 4)
        replies = await link.ask_siblings("GET", "/metrics", timeout_s=0.5)
        failures = {reply.worker: reply.failure for reply in replies}
        assert failures[1] == "" and failures[2] and "no answer within 0.5 s" in failures[3]
        figures = await link.gather("/metrics", list(metrics.registry.collect()), parse_exposition)
        text = merge_worker_figures(figures).decode()
    finally:
        release.set()
        await answering.stop()
        await stuck.stop()
    up = {
        s.labels["worker"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "dli_worker_up"
        for s in f.samples
    }
    assert up == {"0": 1.0, "1": 0.0, "2": 0.0, "3": 0.0}
    assert 'dli_requests_total{model="m",protocol="v2",status="OK",version="1",worker="0"}' in text


def test_status_documents_add_up_and_mark_the_missing() -> None:
    from dl_inference.server.status_page import merge_status_documents

    def document(qps: float, p99: float | None, count: int, ready: bool = True) -> dict:
        model = {"name": "m", "ready": ready, "qps": qps, "p50_ms": 1.0, "p99_ms": p99,
                 "errors": 1, "count": count, "in_flight": 2, "versions": []}  # fmt: skip
        server = {"name": "dl-inference", "version": "x", "ready": ready, "draining": False}
        return {"server": server, "models": [model], "routes": []}

    merged = merge_status_documents({0: document(10.0, 5.0, 600), 1: document(2.5, 9.0, 150)})
    (model,) = merged["models"]
    assert (model["qps"], model["count"], model["errors"], model["in_flight"]) == (12.5, 750, 2, 4)
    assert model["p99_ms"] == 9.0 and model["ready"] is True
    assert merged["server"] == {
        "name": "dl-inference", "version": "x", "ready": True, "draining": False,
        "workers": {"count": 2, "answered": [0, 1]},
    }  # fmt: skip
    # A worker that did not answer leaves the server not ready; its figures are missing.
    merged = merge_status_documents({0: document(10.0, None, 600), 1: None})
    assert merged["server"]["ready"] is False
    assert merged["server"]["workers"] == {"count": 2, "answered": [0]}
    assert merged["models"][0]["p99_ms"] is None and merged["models"][0]["count"] == 600
    # A model not ready in one worker is not ready.
    merged = merge_status_documents({0: document(1.0, 1.0, 1), 1: document(1.0, 1.0, 1, False)})
    assert merged["models"][0]["ready"] is False and merged["server"]["ready"] is False


def test_status_documents_add_up_each_route_groups_calls() -> None:
    from dl_inference.server.status_page import merge_status_documents

    def document(requests: int, errors: int, sent: int, dropped: int) -> dict:
        server = {"name": "dl-inference", "version": "x", "ready": True, "draining": False}
        split = {"model": "m", "group": "canary", "kind": "split", "weight": 5, "version": "2",
                 "nodes": ["h:1"], "requests": requests, "errors": errors}  # fmt: skip
        mirror = {"model": "m", "group": "dark", "kind": "mirror", "percent": 10.0,
                  "version": None, "nodes": ["h:9"], "requests": sent, "errors": 0,
                  "dropped": dropped}  # fmt: skip
        return {"server": server, "models": [], "routes": [], "groups": [split, mirror]}

    merged = merge_status_documents({0: document(7, 1, 3, 1), 1: document(5, 2, 4, 0)})
    canary, dark = merged["groups"]
    assert (canary["group"], canary["weight"], canary["requests"], canary["errors"]) == (
        "canary", 5, 12, 3,
    )  # fmt: skip
    assert (dark["group"], dark["requests"], dark["dropped"]) == ("dark", 7, 1)
