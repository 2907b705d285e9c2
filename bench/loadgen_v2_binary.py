"""The peers' ``loadgen.py`` with one more client: V2 REST with binary tensors.

``loadgen.py`` (in the peers' recipe folder) drives TorchServe's REST API with a bare
aiohttp client that posts the request's raw bytes; its V2 REST client sends JSON tensors
through tritonclient (MLServer accepts nothing else). This adds ``--target mlserver-rest
--client binary``: the same bare aiohttp client, posting a V2 request in Triton's
binary-tensor extension (a JSON header, then the raw float32 bytes) and reading the raw
output back. Everything else — the closed loop, the timing, the CPU accounting, the
correctness check against the peers' reference answer — is ``loadgen.py``'s own code.
Run with the peers' client interpreter (it needs only numpy, aiohttp and psutil)::

    /tmp/peers/venv-client/bin/python bench/loadgen_v2_binary.py PEERS_DIR/loadgen.py \\
        --target mlserver-rest --client binary --port HTTP_PORT --model mlp --conc 32
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any


def binary_caller(loadgen: Any, a: Any, x: Any) -> tuple[Any, Any]:
    """(infer, close) for V2 REST with binary tensors, shaped like loadgen's ts-rest."""
    import aiohttp
    import numpy as np

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(a.conc_list)),
        timeout=aiohttp.ClientTimeout(total=a.timeout),
    )
    url = f"http://{loadgen.HOST}:{a.port}/v2/models/{a.model}/infer"
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + raw
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }

    async def infer() -> Any:
        async with session.post(url, data=body, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
            payload = await r.read()
            start = int(r.headers["Inference-Header-Content-Length"])
            return np.frombuffer(payload, "<f4", offset=start).reshape(x.shape[0], -1)

    return infer, session.close


def main() -> None:
    path = sys.argv.pop(1)
    spec = importlib.util.spec_from_file_location("loadgen", path)
    assert spec is not None and spec.loader is not None
    loadgen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loadgen)
    original = loadgen.make_caller

    async def make_caller(a: Any, x: Any) -> tuple[Any, Any]:
        if a.target == "mlserver-rest" and a.client == "binary":
            return binary_caller(loadgen, a, x)
        return await original(a, x)

    loadgen.make_caller = make_caller  # main_async looks it up at call time
    loadgen.main()


if __name__ == "__main__":
    main()
