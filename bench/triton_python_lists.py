"""The kernel's cost per request for a Triton python model, one request per execute() vs
the queued requests as one list (Backend.takes_request_lists), in process: the real
plugin host, model registry and ``Runtime.infer`` (the path every wire protocol takes),
no network. ``execute`` runs one vectorised numpy op over its whole list.

    .venv/bin/python bench/triton_python_lists.py [--clients 32] [--requests 200] [--rounds 2]

Prints req/s and CPU per request for each model, alternating, and the ratio of the best
of each. ``bench/triton_python_lists.sh`` measures the same through a served gRPC port.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from dl_inference import InferRequest, RequestContext
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime

MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        y = np.tanh(np.concatenate(xs) * 2)  # one op for the whole list
        parts = np.split(y, np.cumsum([len(x) for x in xs])[:-1])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", p)]) for p in parts]
"""

CONFIG = """backend: "python"
max_batch_size: 32
input [ { name: "X" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""

# one_each: no dynamic_batching, one request per execute (what every execute got before
# request lists); listed: the queued requests as one list.
MODELS = {"one_each": "", "listed": "dynamic_batching { }\n"}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dli-lists-"))
    for name, extra in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG + extra)
        (root / name / "1" / "model.py").write_text(MODEL)
    models = ModelRegistry(PluginHost().load())
    runtime = Runtime(models.plugins, models, access_log=False)
    models.prepare(scan_repository(root))
    await models.load_all()
    x = np.ones((1, 16), np.float32)
    context = RequestContext(protocol="bench", method="infer")

    async def client(name: str) -> None:
        for _ in range(args.requests):
            await runtime.infer(InferRequest(name, {"X": x}), context)

    total = args.clients * args.requests
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name in MODELS:
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(client(name) for _ in range(args.clients)))
            rate = total / (time.perf_counter() - started)
            cpu_us = (time.process_time() - cpu) / total * 1e6
            stats = models.versions(name)[0].scheduler.stats
            print(
                f"{name:9} {rate:8.0f} req/s  {cpu_us:5.0f} us CPU/request  "
                f"{stats.rows / stats.batches:5.1f} requests/execute"
            )
            best[name] = max(best.get(name, 0.0), rate)
    print(f"listed / one_each: {best['listed'] / best['one_each']:.2f}x req/s")
    await models.unload_all()


if __name__ == "__main__":
    asyncio.run(main())
