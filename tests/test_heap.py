"""The serving process freezes its heap after start-up (no full collection walks what it
holds for life) and settles it again when models change, so a retired model's memory is
still returned. End to end on a real server; the freeze/settle rule in a fresh process
(freezing the test process itself would keep its garbage)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from dl_inference.testing import ServerProcess, write_python_model

# 200 MB held in a reference cycle: only the cyclic collector can free it.
CYCLIC = """
    import numpy as np
    from dl_inference import PythonModel

    class Cyclic(PythonModel):
        def load(self):
            self.me = self
            self.weights = np.ones(50_000_000, dtype=np.float32)

        def predict(self, inputs, **parameters):
            return {"y": inputs["x"]}
"""
SMALL = """
    from dl_inference import PythonModel

    class Small(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"]}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_retired_models_cyclic_memory_is_returned(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_python_model(models, "big", CYCLIC, CONFIG)
    write_python_model(models, "small", SMALL, CONFIG)
    config = tmp_path / "server.yaml"
    config.write_text(f"model_repository: {models}\nserver: {{repository_poll_s: 0.5}}\n")
    with ServerProcess(["-c", str(config)]) as server:
        assert server.process is not None
        pid = server.process.pid
        loaded = rss_mb(pid)
        assert loaded > 200, loaded
        shutil.rmtree(models / "big")
        url = f"http://{server.http_address}/v2/models/big/ready"
        deadline = time.monotonic() + 30
        while requests.get(url, timeout=5).status_code == 200:
            assert time.monotonic() < deadline, "the model was not retired"
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while rss_mb(pid) > loaded - 150 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rss_mb(pid) < loaded - 150, (loaded, rss_mb(pid))
        reply = requests.get(f"http://{server.http_address}/v2/models/small/ready", timeout=5)
        assert reply.status_code == 200


RULE = """
    import gc, weakref
    from dl_inference.kernel import heap

    class Node:
        pass

    heap.settle()  # before freeze: nothing to do
    assert not heap.frozen() and gc.get_freeze_count() == 0
    node = Node()
    node.me = node
    held = weakref.ref(node)
    heap.freeze()
    assert heap.frozen() and gc.get_freeze_count() > 0
    del node
    gc.collect()
    assert held() is not None  # frozen: the collector no longer walks it
    heap.settle()
    assert held() is None  # settled: freed, and the rest frozen again
    assert gc.get_freeze_count() > 0
    print("ok")
"""


def test_freeze_and_settle_in_a_fresh_process() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RULE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# A network whose batch of 16 makes activations of 8 MiB each (an expression of torch).
NETWORK = (
    "torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), "
    "torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU()).eval()"
)
# NETWORK run in a thread as a model's batches are: prints the page faults one forward pass
# took, after warm-up.
FORWARD = """
    import resource, sys, threading
    import torch
    from dl_inference.kernel import heap

    kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else None
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = NETWORK
    x = torch.rand(16, 3, 64, 64)
    faults = []

    def run():
        with torch.inference_mode():
            for _ in range(3):
                net(x)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                net(x)
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    print(kept, faults[0])
""".replace("NETWORK", NETWORK)


def forward_faults(mode: str) -> tuple[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORWARD), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    kept, faults = done.stdout.split()
    return kept, float(faults)


def test_freed_blocks_stay_for_the_next_batch() -> None:
    pytest.importorskip("torch")
    _, given_back = forward_faults("default")
    if given_back < 500:
        pytest.skip(f"this C library keeps freed blocks itself ({given_back:.0f} faults a pass)")
    kept, faults = forward_faults("keep")
    assert kept == "True"
    # glibc's defaults: about 6,500 page faults a pass, mapping the activations again.
    assert faults < given_back / 20, (faults, given_back)


def test_the_operators_malloc_settings_win() -> None:
    script = "from dl_inference.kernel import heap; print(heap.keep_freed_memory())"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", ""):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, name: "131072"} if name else dict(os.environ),
        )
        assert done.stdout.strip() == ("True" if not name else "False"), (name, done.stderr)


# NETWORK served with batches of 16.
CONV = """
    import torch
    from dl_inference import PythonModel

    class Conv(PythonModel):
        def load(self):
            torch.manual_seed(0)
            torch.set_num_threads(1)
            self.net = NETWORK

        def predict(self, inputs, **parameters):
            with torch.inference_mode():
                y = self.net(torch.from_numpy(inputs["x"].copy()))
            return {"y": y.mean(dim=(1, 2, 3)).reshape(-1, 1).numpy()}
""".replace("NETWORK", NETWORK)
CONV_CONFIG = """
    max_batch_size: 16
    inputs: [{name: x, datatype: FP32, shape: [3, 64, 64]}]
    outputs: [{name: y, datatype: FP32, shape: [1]}]
"""


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def test_the_server_keeps_freed_blocks_for_its_batches(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    http = pytest.importorskip("tritonclient.http")
    write_python_model(tmp_path, "conv", CONV, CONV_CONFIG)
    batch = np.random.default_rng(0).random((16, 3, 64, 64), dtype=np.float32)
    with ServerProcess(["--model-repository", str(tmp_path)]) as server:
        assert server.process is not None
        client = http.InferenceServerClient(server.http_address)
        tensor = http.InferInput("x", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        for _ in range(3):
            client.infer("conv", [tensor])
        before = minor_faults(server.process.pid)
        for _ in range(10):
            assert client.infer("conv", [tensor]).as_numpy("y").shape == (16, 1)
        per_batch = (minor_faults(server.process.pid) - before) / 10
    # Given back to the system after each batch, the activations took about 6,100 faults
    # a batch; kept, about 400 (the request's own buffers, Python's object arenas).
    assert per_batch < 1500, per_batch
