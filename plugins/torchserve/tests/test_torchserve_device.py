"""The model's ``device`` reaches the handler as TorchServe's ``gpu_id``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from _ts_archives import write_mar

from dl_inference.testing import ServerProcess

HANDLER = {
    "h.py": """
        def handle(data, context):
            if data is None:
                return None
            return [{"gpu_id": context.system_properties["gpu_id"]} for _ in data]
    """
}


def test_device_sets_gpu_id(tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_mar(store, "on_gpu", HANDLER, "h.py")
    write_mar(store, "on_cpu", HANDLER, "h.py")
    config = tmp_path / "server.yaml"
    config.write_text(f"model_repository: {store}\nmodels:\n  on_gpu: {{device: 'cuda:1'}}\n")
    env = {"DLI_TORCHSERVE_CACHE": str(tmp_path / "cache")}
    with ServerProcess(["-c", str(config)], env=env) as server:
        deadline = time.monotonic() + 60
        while True:  # /ping is Healthy once every model loaded
            try:
                urllib.request.urlopen(f"{server.http_url}/ping", timeout=5).close()
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.2)
        for model, gpu in (("on_gpu", 1), ("on_cpu", None)):
            request = urllib.request.Request(f"{server.http_url}/predictions/{model}", b"x")
            with urllib.request.urlopen(request, timeout=60) as reply:
                assert json.loads(reply.read()) == {"gpu_id": gpu}
