"""Side by side with the real TorchServe 0.12: the same ``model.py`` + ``model.pth`` (a
state_dict), archived for TorchServe's eager mode (``--model-file --serialized-file``) and
dropped into a dl-inference repository as they are, answer the same rows alike.

TorchServe comes from ``$DLI_REFERENCE_DIR/torchserve`` (default ``<repo>/.reference``,
made by scripts/install_reference_servers.sh) and needs Java; without either the test
skips, saying which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _torch_models import features, import_source, reference, write_eager

from dl_inference.testing import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[3]
TORCHSERVE = Path(os.environ.get("DLI_REFERENCE_DIR", REPO / ".reference")) / "torchserve"

# TorchServe's BaseHandler.initialize loads the eager model itself (model.py's one class,
# torch.load of the state_dict, load_state_dict, eval): the handler only moves rows.
HANDLER = """
import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class Rows(BaseHandler):
    def preprocess(self, data):
        rows = []
        for request in data:
            body = request.get("data") or request.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(torch.tensor(body, dtype=torch.float32))
        return rows

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return [self.model(x.to(self.device)) for x in data]

    def postprocess(self, data):
        return [y.tolist() for y in data]
"""


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """TorchServe serving ``tiny`` from model.py + model.pth; yields (URL, the folder)."""
    for tool in ("torchserve", "torch-model-archiver"):
        if not (TORCHSERVE / "bin" / tool).exists():
            pytest.skip(
                f"{TORCHSERVE}/bin/{tool} is missing (scripts/install_reference_servers.sh)"
            )
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs a Java runtime and none is on PATH")
    work = tmp_path_factory.mktemp("torchserve")
    files = work / "repo" / "tiny" / "1"
    write_eager(work / "repo", "tiny", None, seed=11)
    (work / "handler.py").write_text(textwrap.dedent(HANDLER))
    store = work / "store"
    store.mkdir()
    subprocess.run(
        [
            str(TORCHSERVE / "bin" / "torch-model-archiver"),
            "--model-name", "tiny", "--version", "1",
            "--model-file", str(files / "model.py"),
            "--serialized-file", str(files / "model.pth"),
            "--handler", str(work / "handler.py"),
            "--export-path", str(store),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )  # fmt: skip
    ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc", "grpc_m")}
    properties = {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": ports["grpc"],
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": ports["grpc_m"],
        "disable_token_authorization": "true",
        "disable_system_metrics": "true",
        "default_workers_per_model": 1,
        # Workers talk over /tmp/.ts.sock.<port>: a port of its own keeps this server's
        # sockets apart from another TorchServe's on the same machine.
        "initial_worker_port": free_port(),
    }
    (work / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    env = {
        **os.environ,
        "PATH": f"{TORCHSERVE / 'bin'}:{os.environ['PATH']}",
        "LOG_LOCATION": str(work / "logs"),
        "METRICS_LOCATION": str(work / "logs"),
    }
    process = subprocess.Popen(
        [
            str(TORCHSERVE / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
            "--ts-config", str(work / "config.properties"), "--model-store", str(store),
            "--models", "tiny=tiny.mar", "--disable-token-auth",
        ],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its Java server and Python workers, stopped together
    )  # fmt: skip
    url = properties["inference_address"]
    try:
        deadline = time.monotonic() + 180
        models = f"{properties['management_address']}/models/tiny"
        while _ready_workers(models) == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                log = work / "logs" / "model_log.log"
                tail = log.read_text()[-1500:] if log.exists() else "(no model log)"
                pytest.skip(f"TorchServe did not start serving 'tiny': {tail}")
            time.sleep(1)
        yield url, work / "repo"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _ready_workers(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            described = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return 0
    workers = described[0].get("workers", []) if described else []
    return sum(1 for w in workers if w.get("status") == "READY")


def _post_json(url: str, body: object) -> object:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_same_files_answer_the_same_as_torchserve(torchserve):
    url, repo = torchserve
    x = features(5, seed=21)
    theirs = np.asarray(_post_json(f"{url}/predictions/tiny", x.tolist()), np.float32)
    with ServerProcess(["--model-repository", str(repo)]) as server:
        body = {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
        answer = _post_json(f"{server.http_url}/v2/models/tiny/infer", body)
    ours = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(
        answer["outputs"][0]["shape"]
    )
    assert theirs.shape == ours.shape == (5, 3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # And both are the module built in-process from the same class and weights.
    files = repo / "tiny" / "1"
    net = import_source(files, (files / "model.py").read_text()).TinyNet()
    net.load_state_dict(torch.load(files / "model.pth", weights_only=True))
    np.testing.assert_allclose(ours, reference(net.eval(), x), rtol=1e-5, atol=1e-6)
