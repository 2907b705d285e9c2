"""The serving process freezes its heap after start-up (no full collection walks what it
holds for life) and settles it again when models change, so a retired model's memory is
still returned. End to end on a real server; the freeze/settle rule in a fresh process
(freezing the test process itself would keep its garbage)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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
