"""``execution: process``: a model's instances in child processes, batches through shared
memory (kernel/process_instances.py), against the real ``dl-inference serve`` and
tritonclient: the same answers as thread mode, batching, client errors, a killed child,
no orphans, ``--workers 2``."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dl_inference.testing import ServerProcess, write_python_model

torch = pytest.importorskip("torch")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

PID = """
    import os, time
    import numpy as np
    from dl_inference import PythonModel

    class Pid(PythonModel):
        def predict(self, inputs, **parameters):
            x = inputs["x"]
            if float(x.min()) < 0:
                raise ValueError("negative input")  # the model's own failure
            if float(x.max()) > 0:
                time.sleep(float(x.max()))  # holds the batch: time to merge, or to be killed
            return {"pid": np.full((x.shape[0], 1), os.getpid(), dtype=np.int64)}
"""
PID_CONFIG = """
    execution: process
    max_batch_size: 16
    max_queue_delay_ms: 50
    inputs: [{name: x, datatype: FP32, shape: [1]}]
    outputs: [{name: pid, datatype: INT64, shape: [1]}]
"""


def _make_repository(root: Path) -> Path:
    """``linear`` (process) and ``linear_thread`` (threads): one TorchScript model, made
    here; ``pid``: a python model answering its process id."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))
    script = torch.jit.script(module.eval())
    for name, extra in (("linear", "execution: process\n"), ("linear_thread", "")):
        (root / name / "1").mkdir(parents=True)
        script.save(str(root / name / "1" / "model.pt"))
        (root / name / "config.yaml").write_text(
            f"backend: pytorch\nmax_batch_size: 8\n{extra}"
            "inputs: [{name: x, datatype: FP32, shape: [-1]}]\n"
        )
    write_python_model(root, "pid", PID, PID_CONFIG)
    # processor.py runs in the child, around the model, as in thread mode
    (root / "doubled" / "1").mkdir(parents=True)
    script.save(str(root / "doubled" / "1" / "model.pt"))
    (root / "doubled" / "config.yaml").write_text(
        "backend: pytorch\nmax_batch_size: 8\nexecution: process\n"
        "inputs: [{name: x, datatype: FP32, shape: [-1]}]\n"
    )
    (root / "doubled" / "processor.py").write_text(
        "import os\n\n"
        "def postprocess(y):\n"
        "    return {'y': y.numpy() * 2, 'pid': [[os.getpid()]] * len(y)}\n"
    )
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = _make_repository(tmp_path_factory.mktemp("repo"))
    with ServerProcess(["--model-repository", str(root)]) as running:
        yield running


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (from ps)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return {int(line) for line in out.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _pid_call(server: ServerProcess, seconds: float = 0.0) -> int:
    client = httpclient.InferenceServerClient(server.http_address)
    x = httpclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[seconds]], dtype=np.float32))
    return int(client.infer("pid", [x]).as_numpy("pid")[0, 0])


def test_model_runs_in_a_child_process(server: ServerProcess) -> None:
    assert server.process is not None
    pid = _pid_call(server)
    assert pid != server.process.pid
    assert pid in _children(server.process.pid)


def test_same_answers_as_threads_over_grpc_and_rest(server: ServerProcess) -> None:
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    answers = {}
    for name in ("linear", "linear_thread"):
        rest = httpclient.InferenceServerClient(server.http_address)
        given = httpclient.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=True)
        by_rest = rest.infer(name, [given])
        g = grpcclient.InferenceServerClient(server.grpc_address)
        given_g = grpcclient.InferInput("x", list(x.shape), "FP32")
        given_g.set_data_from_numpy(x)
        by_grpc = g.infer(name, [given_g])
        outputs = [o["name"] for o in by_rest.get_response()["outputs"]]
        answers[name] = [(by_rest.as_numpy(o), by_grpc.as_numpy(o)) for o in outputs]
        assert rest.get_model_metadata(name)["inputs"] == [
            {"name": "x", "datatype": "FP32", "shape": [-1, -1]}
        ]
    for (rest_p, grpc_p), (rest_t, grpc_t) in zip(
        answers["linear"], answers["linear_thread"], strict=True
    ):
        for mine, theirs in ((rest_p, rest_t), (grpc_p, grpc_t)):
            assert mine.dtype == theirs.dtype == np.float32
            assert mine.shape == theirs.shape == (3, 3)
            np.testing.assert_array_equal(mine, theirs)


def test_processor_runs_in_the_child(server: ServerProcess) -> None:
    assert server.process is not None
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    rest = httpclient.InferenceServerClient(server.http_address)
    answers = {}
    for name in ("doubled", "linear_thread"):
        given = httpclient.InferInput("x", [2, 4], "FP32")
        given.set_data_from_numpy(x)
        answers[name] = rest.infer(name, [given])
    np.testing.assert_allclose(
        answers["doubled"].as_numpy("y"), 2 * answers["linear_thread"].as_numpy("output__0")
    )
    pid = int(answers["doubled"].as_numpy("pid")[0, 0])
    assert pid in _children(server.process.pid)


def test_batching_merges_requests(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_address, concurrency=8)
    before = client.get_inference_statistics("pid")["model_stats"][0]
    x = httpclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[0.3]], dtype=np.float32))
    pending = [client.async_infer("pid", [x]) for _ in range(8)]
    pids = {int(p.get_result().as_numpy("pid")[0, 0]) for p in pending}
    after = client.get_inference_statistics("pid")["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 8
    assert executions < 8, (executions, inferences)  # merged into fewer executions
    assert len(pids) == 1


def test_client_error_is_400_and_invalid_argument(server: ServerProcess) -> None:
    x = np.ones((2, 5), dtype=np.float32)  # the model takes 4 features: torch refuses
    rest = httpclient.InferenceServerClient(server.http_address)
    given = httpclient.InferInput("x", [2, 5], "FP32")
    given.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as refused:
        rest.infer("linear", [given])
    assert refused.value.status() == "400", refused.value
    assert "\n" not in refused.value.message()
    g = grpcclient.InferenceServerClient(server.grpc_address)
    given_g = grpcclient.InferInput("x", [2, 5], "FP32")
    given_g.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as refused_g:
        g.infer("linear", [given_g])
    assert refused_g.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_model_error_keeps_its_class_and_place(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_address)
    x = httpclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[-1.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as failed:
        client.infer("pid", [x])
    assert failed.value.status() == "500"
    assert "model 'pid' failed: ValueError: negative input (model.py:" in failed.value.message()


def test_killed_child_fails_its_batch_then_serves_again(server: ServerProcess) -> None:
    assert server.process is not None
    child = _pid_call(server)
    outcome: dict[str, object] = {}

    def slow_call() -> None:
        try:
            outcome["pid"] = _pid_call(server, 3.0)
        except InferenceServerException as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(1.0)  # the batch is running in the child
    os.kill(child, signal.SIGKILL)
    caller.join(30)
    error = outcome.get("error")
    assert isinstance(error, InferenceServerException), outcome
    assert error.status() == "503"
    assert "'pid'" in error.message() and "SIGKILL" in error.message()
    rest = httpclient.InferenceServerClient(server.http_address)
    assert rest.is_model_ready("linear")  # the other models serve on
    deadline = time.monotonic() + 30
    while not rest.is_model_ready("pid"):
        assert time.monotonic() < deadline, "pid never served again"
        time.sleep(0.2)
    again = _pid_call(server)
    assert again != child and again in _children(server.process.pid)


def test_no_orphans_after_stop(tmp_path: Path) -> None:
    root = _make_repository(tmp_path / "repo")
    with ServerProcess(["--model-repository", str(root)]) as running:
        assert running.process is not None
        children = _children(running.process.pid)
        assert _pid_call(running) in children
        assert len(children) == 3  # linear, pid and doubled
    assert not [pid for pid in children if _alive(pid)]


def test_two_workers(tmp_path: Path) -> None:
    root = _make_repository(tmp_path / "repo")
    with ServerProcess(["--model-repository", str(root), "--workers", "2"]) as running:
        assert running.process is not None
        workers = _children(running.process.pid)
        assert len(workers) == 2
        pids = {_pid_call(running) for _ in range(6)}
        # each answer comes from an instance process of a worker, not from a worker
        parents = {
            int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in pids
        }
        assert parents <= workers, (parents, workers)


def test_refused_for_a_decoupled_model(tmp_path: Path) -> None:
    stream = """
        import numpy as np
        from dl_inference import PythonModel

        class Stream(PythonModel):
            def predict(self, inputs, **parameters):
                yield {"y": inputs["x"]}
    """
    write_python_model(tmp_path, "stream", stream, "execution: process\n")
    with ServerProcess(["--model-repository", str(tmp_path)]) as running:
        rest = httpclient.InferenceServerClient(running.http_address)
        assert not rest.is_model_ready("stream")
        given = httpclient.InferInput("x", [1], "FP32")
        given.set_data_from_numpy(np.ones(1, dtype=np.float32))
        with pytest.raises(InferenceServerException) as refused:
            rest.infer("stream", [given])
        reason = refused.value.message()
        assert "execution: process" in reason and "decoupled" in reason, reason


def test_refused_for_a_backend_taking_request_lists(tmp_path: Path) -> None:
    """Triton's python backend hands execute() a list of requests: refused at start-up,
    naming the key (the server config's models section sets it)."""
    model = tmp_path / "repo" / "listed"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 4\n')
    (model / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n"
    )
    config = tmp_path / "server.yaml"
    config.write_text(
        f"model_repository: {tmp_path / 'repo'}\nmodels:\n  listed: {{execution: process}}\n"
    )
    server = ServerProcess(["-c", str(config)])
    try:
        with pytest.raises(RuntimeError) as stopped:
            server.start()
    finally:
        server.stop()
    assert "execution: process" in str(stopped.value)
    assert "lists of requests" in str(stopped.value)
