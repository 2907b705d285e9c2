"""``execution: thread`` vs ``execution: process`` (issue 17), alternated in one run.

Two measures, ratios within one run only (a shared machine):

- ``loop``: in one process, a Python loop on the main thread, alone and then while the
  peers' model runs batches of 32 beside it, in a thread (thread mode) or in its instance
  process (process mode, kernel/process_instances.py): the loop's speed beside the model
  relative to alone, and the model's batches per second meanwhile;
- ``serve``: one ``dl-inference serve`` with each model twice (``<model>_thread``,
  ``<model>_process``: batching 32 / 2 ms, ``threads: 1``), ``dl-inference bench`` C=32 over
  gRPC and REST, the modes alternated (thread first, then process first): req/s, p99 and
  the server's CPU per request, its whole process tree (children included) over the
  recorded part of each point.

    .venv/bin/python bench/process_instances.py loop cnn mlp
    .venv/bin/python bench/process_instances.py serve --duration 10 cnn mlp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dl_inference.kernel.config.model_config import ModelConfig
from dl_inference.kernel.process_instances import ProcessInstances
from dl_inference.testing import ServerProcess

MODELS = Path("/tmp/peers/models")
SHAPES = {"cnn": [3, 64, 64], "mlp": [256]}
TICK = os.sysconf("SC_CLK_TCK")


def _count(seconds: float) -> float:
    """Iterations per second of a plain Python loop on this thread."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            n += 1
    return n / seconds


def loop(models: list[str], rounds: int) -> None:
    from dl_inference_pytorch.backend import PyTorchBackend, PyTorchSettings

    for model in models:
        x = {"x": np.random.default_rng(0).standard_normal([32, *SHAPES[model]], np.float32)}
        for mode in ("thread", "process") * rounds:
            config = ModelConfig.from_mapping({"max_batch_size": 32})
            settings = PyTorchSettings(threads=1, model_file="model.pt")
            backend = PyTorchBackend(model, "1", MODELS / model, config, settings)
            if mode == "process":
                backend = ProcessInstances(backend)
            backend.load()
            done = threading.Event()
            batches = [0]

            def run(backend=backend, done=done, batches=batches, x=x) -> None:
                while not done.is_set():
                    backend.predict(x)
                    batches[0] += 1

            alone = _count(3)
            runner = threading.Thread(target=run)
            runner.start()
            time.sleep(0.5)
            before = batches[0]
            beside = _count(3)
            ran = batches[0] - before
            done.set()
            runner.join()
            backend.unload()
            print(
                f"{model} {mode:7}: loop beside the model {beside / alone:.2f}x of alone; "
                f"model {ran / 3:.1f} batches/s",
                flush=True,
            )


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (the instance processes)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    total = 0
    for member in [pid, *map(int, out.split())]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def serve(models: list[str], duration: float) -> None:
    root = Path(tempfile.mkdtemp(prefix="dli-process-bench-"))
    for model in models:
        for mode in ("thread", "process"):
            folder = root / f"{model}_{mode}"
            (folder / "1").mkdir(parents=True)
            (folder / "1" / "model.pt").symlink_to(MODELS / model / "model.pt")
            (folder / "config.yaml").write_text(
                "backend: pytorch\nmax_batch_size: 32\nmax_queue_delay_ms: 2\nthreads: 1\n"
                f"execution: {mode}\n"
                f"inputs: [{{name: x, datatype: FP32, shape: {SHAPES[model]}}}]\n"
            )
    bench = [sys.executable, "-m", "dl_inference", "bench", "--concurrency", "32"]
    with ServerProcess(["--model-repository", str(root), "--log-level", "warning"]) as server:
        assert server.process is not None
        urls = {"grpc": f"grpc://{server.grpc_address}", "rest": server.http_url}
        for model in models:
            for order in (("thread", "process"), ("process", "thread")):
                for protocol, url in urls.items():
                    for mode in order:
                        out = root / f"{model}_{mode}_{protocol}.json"
                        args = ["--url", url, "--model", f"{model}_{mode}"]
                        args += ["--duration", str(duration), "--warmup", "2", "--quiet"]
                        client = subprocess.Popen(
                            [*bench, *args, "--json", str(out)], stdout=subprocess.DEVNULL
                        )
                        time.sleep(2.5)  # the client's start and its unrecorded warm-up
                        cpu = _tree_cpu(server.process.pid)
                        client.wait()
                        cpu = _tree_cpu(server.process.pid) - cpu
                        point = json.loads(out.read_text())["results"][0]
                        print(
                            f"{model} {protocol:4} {mode:7} {point['req_per_s']:7.0f} req/s  "
                            f"p99 {point['latency_ms']['p99']:6.1f} ms  errors {point['errors']}  "
                            f"server CPU {cpu / max(point['requests'], 1) * 1e6:5.0f} us/req",
                            flush=True,
                        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["loop", "serve"])
    parser.add_argument("models", nargs="*", default=["cnn", "mlp"])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_intermixed_args()
    if options.what == "loop":
        loop(options.models, options.rounds)
    else:
        serve(options.models, options.duration)


if __name__ == "__main__":
    main()
