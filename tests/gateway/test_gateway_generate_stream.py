"""The gateway forwards a decoupled model's streams as they come: generate_stream's
server-sent events (REST) and ModelStreamInfer's responses (gRPC), from a real worker; a
client that leaves the gateway closes the model's generator on the worker.
"""

from __future__ import annotations

import http.client
import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dl_inference.testing import ServerProcess, write_python_model

from .conftest import gateway, write_config

# Yields 0, then waits for the file named by parameter "gate" before each next value: a
# gateway that buffered the answer would never deliver value 0 while the model waits.
GATED = """
    import os
    import time
    import numpy as np
    from dl_inference import PythonModel

    class Gated(PythonModel):
        def predict(self, inputs, /, **parameters):
            gate = parameters.get("gate", "")
            marker = parameters.get("marker", "")
            try:
                for i in range(int(inputs["n"].reshape(-1)[0])):
                    yield {"i": np.array([i], dtype=np.int64)}
                    while gate and not os.path.exists(gate):
                        time.sleep(0.02)
            except GeneratorExit:
                if marker:
                    with open(marker, "w") as f:
                        f.write("closed")
                raise
"""
GATED_CONFIG = """
    inputs: [{name: n, datatype: INT64, shape: [1]}]
    outputs: [{name: i, datatype: INT64, shape: [1]}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("generate_stream_gw")
    write_python_model(folder / "models", "gated", GATED, GATED_CONFIG)
    with ServerProcess(["--model-repository", str(folder / "models")]) as worker:
        node = {"address": worker.grpc_address, "http_address": worker.http_address}
        config = write_config(folder / "gateway.yaml", [{"model": "gated", "nodes": [node]}])
        with gateway(config) as srv:
            yield srv


def post(server: ServerProcess, path: str, document: Any) -> http.client.HTTPResponse:
    host, port = server.http_address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request("POST", path, body=json.dumps(document))
    return conn.getresponse()


def event(line: bytes) -> dict[str, Any]:
    assert line.startswith(b"data: "), line
    return json.loads(line[len(b"data: ") :])


def wait_for(path: Path, seconds: float = 15.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def test_generate_stream_events_pass_the_gateway_as_they_come(
    server: ServerProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    reply = post(server, "/v2/models/gated/generate_stream", {"n": 3, "gate": str(gate)})
    assert reply.status == 200
    assert reply.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    # The model now waits for the gate: the first event came through on its own.
    assert event(reply.readline())["i"] == 0
    gate.write_text("open")
    rest = [event(line) for line in reply.read().split(b"\n") if line.startswith(b"data: ")]
    assert [e["i"] for e in rest] == [1, 2]


def test_a_client_leaving_the_gateway_closes_the_generator(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    document = {"n": 10**6, "gate": str(tmp_path / "never"), "marker": str(marker)}
    reply = post(server, "/v2/models/gated/generate_stream", document)
    assert event(reply.readline())["i"] == 0
    reply.close()
    # The worker only notices a closed connection when it writes: open the gate.
    (tmp_path / "never").write_text("open")
    assert wait_for(marker), "the worker's generator was not closed when the client left"


def test_model_stream_infer_passes_the_gateway_as_it_comes(
    server: ServerProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        n = grpcclient.InferInput("n", [1], "INT64")
        n.set_data_from_numpy(np.array([3], dtype=np.int64))
        client.async_stream_infer(
            "gated", [n], parameters={"gate": str(gate)}, enable_empty_final_response=True
        )
        first, error = answers.get(timeout=20)
        assert error is None and first.as_numpy("i").tolist() == [0]
        gate.write_text("open")
        rest = [answers.get(timeout=20) for _ in range(3)]
        assert [r.as_numpy("i").tolist() for r, _ in rest[:2]] == [[1], [2]]
        flags = [r.get_response().parameters["triton_final_response"].bool_param for r, _ in rest]
        assert flags == [False, False, True]
    finally:
        client.stop_stream()
        client.close()
