"""Decoupled models on a real server: a generator predict (sync and async) and a
processor.py run_model that yields, over V2 ModelStreamInfer (tritonclient's stream API)
and the generate extension (generate, generate_stream as server-sent events); unary calls
refused; errors midway; a client that goes away closes the model's generator; a slow
client pauses it.
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
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, write_python_model

TICK = """
    import os
    import time
    import numpy as np
    from dl_inference import PythonModel

    class Tick(PythonModel):
        def predict(self, inputs, /, **parameters):
            n = int(inputs["n"].reshape(-1)[0])
            marker = parameters.get("marker")
            count = parameters.get("count")
            try:
                for i in range(n):
                    if i == parameters.get("fail_at", -1):
                        raise RuntimeError("the decoder ran out of tokens")
                    if count:
                        with open(count, "w") as f:
                            f.write(str(i + 1))
                    pad = np.zeros(parameters.get("size", 0), dtype=np.uint8)
                    yield {"i": np.array([i], dtype=np.int64), "pad": pad}
                    time.sleep(parameters.get("delay", 0))
            except GeneratorExit:
                if marker:
                    with open(marker, "w") as f:
                        f.write("closed")
                raise
"""
TICK_CONFIG = """
    inputs: [{name: n, datatype: INT64, shape: [1]}]
    outputs:
      - {name: i, datatype: INT64, shape: [1]}
      - {name: pad, datatype: UINT8, shape: [-1]}
"""
ASYNC_TICK = """
    import asyncio
    import numpy as np
    from dl_inference import PythonModel

    class AsyncTick(PythonModel):
        async def predict(self, inputs, /, **parameters):
            for i in range(int(inputs["n"].reshape(-1)[0])):
                await asyncio.sleep(0)
                yield {"i": np.array([i], dtype=np.int64)}
"""
ASYNC_CONFIG = """
    inputs: [{name: n, datatype: INT64, shape: [1]}]
    outputs: [{name: i, datatype: INT64, shape: [1]}]
"""
PLUS_ONE = """
    from dl_inference import PythonModel

    class PlusOne(PythonModel):
        def predict(self, inputs, /, **parameters):
            return {"y": inputs["x"] + 1}
"""
PLUS_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""
BATCHED_CONFIG = """
    max_batch_size: 4
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""
# processor.py whose run_model yields: x+1, x+2, x+3, each times 10 by postprocess.
STEPS = """
def run_model(model, x, **kwargs):
    for _ in range(3):
        x = model(x)
        yield x


def postprocess(y, **kwargs):
    return y * 10
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("streaming") / "models"
    write_python_model(repo, "tick", TICK, TICK_CONFIG)
    # Two instances: two requests of one stream stream at once.
    write_python_model(repo, "tick2", TICK, TICK_CONFIG + "    instances: 2\n")
    write_python_model(repo, "async_tick", ASYNC_TICK, ASYNC_CONFIG)
    write_python_model(repo, "plus_one", PLUS_ONE, PLUS_CONFIG)
    write_python_model(repo, "plus_one_batched", PLUS_ONE, BATCHED_CONFIG)
    steps = write_python_model(repo, "steps", PLUS_ONE, PLUS_CONFIG)
    (steps / "processor.py").write_text(STEPS)
    with ServerProcess(["--model-repository", str(repo)]) as srv:
        yield srv


def n_input(n: int) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("n", [1], "INT64")
    tensor.set_data_from_numpy(np.array([n], dtype=np.int64))
    return tensor


class Stream:
    """A tritonclient stream whose results are queued as (result, error)."""

    def __init__(self, server: ServerProcess) -> None:
        self.answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client = grpcclient.InferenceServerClient(server.grpc_address)
        self.client.start_stream(callback=lambda result, error: self.answers.put((result, error)))

    def next(self) -> tuple[Any, Any]:
        return self.answers.get(timeout=20)

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def final_flag(result: Any) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def wait_for(path: Path, seconds: float = 15.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def sse_events(body: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(chunk[len(b"data: ") :])
        for chunk in body.split(b"\n\n")
        if chunk.startswith(b"data: ")
    ]


def post(server: ServerProcess, path: str, document: Any) -> http.client.HTTPResponse:
    host, port = server.http_address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request(
        "POST", path, body=json.dumps(document), headers={"Content-Type": "application/json"}
    )
    return conn.getresponse()


def test_model_stream_infer_sends_each_response_then_the_empty_final_one(
    server: ServerProcess,
) -> None:
    stream = Stream(server)
    try:
        stream.client.async_stream_infer(
            "tick", [n_input(3)], request_id="r1", enable_empty_final_response=True
        )
        answers = [stream.next() for _ in range(4)]
        assert [error for _, error in answers] == [None] * 4
        assert [r.as_numpy("i").tolist() for r, _ in answers[:3]] == [[0], [1], [2]]
        assert [final_flag(r) for r, _ in answers] == [False, False, False, True]
        empty = answers[3][0].get_response()
        assert (empty.id, empty.model_name, list(empty.outputs)) == ("r1", "tick", [])

        # Without the option no empty response: the next answer is the next request's.
        stream.client.async_stream_infer("tick", [n_input(2)], request_id="r2")
        x = grpcclient.InferInput("x", [2], "FP32")
        x.set_data_from_numpy(np.array([1, 2], dtype=np.float32))
        stream.client.async_stream_infer("plus_one", [x], request_id="r3")
        # One stream's requests run concurrently (as in Triton): r3 may answer between or
        # before r2's, so each request's answers are checked in their own order.
        by_id: dict[str, list[Any]] = {}
        for reply, error in (stream.next() for _ in range(3)):
            assert error is None
            by_id.setdefault(reply.get_response().id, []).append(reply)
        assert sorted(by_id) == ["r2", "r3"]
        assert [r.as_numpy("i").tolist() for r in by_id["r2"]] == [[0], [1]]
        assert [final_flag(r) for r in by_id["r2"]] == [False, False]
        assert [final_flag(r) for r in by_id["r3"]] == [True]
        assert by_id["r3"][0].as_numpy("y").tolist() == [2, 3]
    finally:
        stream.close()


def test_async_generator_and_yielding_run_model_stream(server: ServerProcess) -> None:
    stream = Stream(server)
    try:
        stream.client.async_stream_infer("async_tick", [n_input(3)])
        assert [stream.next()[0].as_numpy("i").tolist() for _ in range(3)] == [[0], [1], [2]]
        x = grpcclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.array([1], dtype=np.float32))
        stream.client.async_stream_infer("steps", [x])
        assert [stream.next()[0].as_numpy("y").tolist() for _ in range(3)] == [[20], [30], [40]]
    finally:
        stream.close()


def test_unary_calls_of_a_decoupled_model_are_refused(server: ServerProcess) -> None:
    with (
        grpcclient.InferenceServerClient(server.grpc_address) as client,
        pytest.raises(InferenceServerException) as caught,
    ):
        client.infer("tick", [n_input(2)])
    # Triton's status and words, then ours naming the streaming methods.
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED", caught.value.message()
    message = caught.value.message()
    assert message.startswith("ModelInfer RPC doesn't support models with decoupled")
    assert "ModelStreamInfer" in message
    # The model's inputs or not: refused before they are looked at, as Triton does.
    for inputs in (
        [{"name": "n", "datatype": "INT64", "shape": [1], "data": [2]}],
        [{"name": "m", "datatype": "FP32", "shape": [1], "data": [2]}],
    ):
        reply = post(server, "/v2/models/tick/infer", {"inputs": inputs})
        assert reply.status == 501
        error = json.loads(reply.read())["error"]
        assert error.startswith("HTTP end point doesn't support models with decoupled")
        assert "generate_stream" in error


def test_generate_stream_answers_server_sent_events(server: ServerProcess) -> None:
    reply = post(server, "/v2/models/tick/generate_stream", {"n": 3})
    assert reply.status == 200
    assert reply.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    events = sse_events(reply.read())
    assert [(e["model_name"], e["model_version"], e["i"]) for e in events] == [
        ("tick", "1", 0),
        ("tick", "1", 1),
        ("tick", "1", 2),
    ]
    # processor.py's run_model, with parameters in the body.
    reply = post(server, "/v2/models/steps/generate_stream", {"x": [1.0, 2.0]})
    assert [e["y"] for e in sse_events(reply.read())] == [[20, 30], [30, 40], [40, 50]]


def test_generate_answers_one_object(server: ServerProcess) -> None:
    reply = post(server, "/v2/models/plus_one/generate", {"x": [1.0, 2.0]})
    assert reply.status == 200
    assert json.loads(reply.read()) == {"model_name": "plus_one", "model_version": "1", "y": [2, 3]}
    # A batching model gets the value as one row; outputs come back flat, as on Triton.
    reply = post(server, "/v2/models/plus_one_batched/generate", {"x": [1.0, 2.0]})
    assert json.loads(reply.read())["y"] == [2, 3]
    reply = post(server, "/v2/models/tick/generate", {"n": 1})
    assert json.loads(reply.read())["i"] == 0
    reply = post(server, "/v2/models/tick/generate", {"n": 2})
    assert reply.status == 400
    assert "generate_stream" in json.loads(reply.read())["error"]


@pytest.mark.parametrize(
    ("path", "document", "words"),
    [
        ("/v2/models/tick/generate_stream", [1, 2], "JSON object"),
        ("/v2/models/tick/generate", {"n": 1, "other": [1, 2]}, "not an input"),
        ("/v2/models/tick/generate", {"parameters": {"a": 1}}, "none of model"),
        ("/v2/models/nope/generate_stream", {"n": 1}, "unknown model"),
    ],
)
def test_bad_generate_requests_are_client_errors(
    server: ServerProcess, path: str, document: Any, words: str
) -> None:
    reply = post(server, path, document)
    assert reply.status in (400, 404)
    assert reply.getheader("Content-Type", "").startswith("application/json")
    assert words in json.loads(reply.read())["error"]


def test_a_model_error_midway_is_reported_in_the_stream(server: ServerProcess) -> None:
    stream = Stream(server)
    try:
        stream.client.async_stream_infer(
            "tick", [n_input(5)], parameters={"fail_at": 1}, request_id="f"
        )
        first, error = stream.next()
        assert error is None and first.as_numpy("i").tolist() == [0]
        _, error = stream.next()
        assert error is not None and "ran out of tokens" in error.message()
    finally:
        stream.close()
    reply = post(server, "/v2/models/tick/generate_stream", {"n": 5, "fail_at": 1})
    assert reply.status == 200  # the stream had begun
    events = sse_events(reply.read())
    assert events[0]["i"] == 0
    assert "ran out of tokens" in events[1]["error"] and len(events) == 2


def test_a_client_going_away_closes_the_generator(server: ServerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "grpc-closed"
    stream = Stream(server)
    stream.client.async_stream_infer(
        "tick", [n_input(100000)], parameters={"marker": str(marker), "delay": 0.02}
    )
    assert stream.next()[1] is None
    assert not marker.exists()
    stream.close(cancel=True)
    assert wait_for(marker), "the model's generator was not closed when the gRPC stream was"

    marker = tmp_path / "http-closed"
    reply = post(
        server,
        "/v2/models/tick/generate_stream",
        {"n": 100000, "marker": str(marker), "delay": 0.02},
    )
    assert reply.readline().startswith(b"data: ")
    assert not marker.exists()
    reply.close()
    assert wait_for(marker), "the model's generator was not closed when the client hung up"


def test_cancelling_a_stream_closes_every_running_requests_generator(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Two requests of one stream run at once (each answering, interleaved, tagged with
    its id); cancelling the stream closes both generators."""
    markers = {name: tmp_path / f"{name}-closed" for name in ("first", "second")}
    stream = Stream(server)
    for name, marker in markers.items():
        stream.client.async_stream_infer(
            "tick2",
            [n_input(100000)],
            parameters={"marker": str(marker), "delay": 0.02},
            request_id=name,
        )
    seen: dict[str, list[int]] = {"first": [], "second": []}
    try:
        for _ in range(100):  # "first" alone would answer for 2000 s
            if all(len(values) >= 3 for values in seen.values()):
                break
            result, error = stream.next()
            assert error is None, error
            seen[result.get_response().id].append(int(result.as_numpy("i")[0]))
        # Each request's responses in order, both requests answering at once.
        assert all(len(values) >= 3 for values in seen.values()), seen
        assert all(values == list(range(len(values))) for values in seen.values()), seen
        assert not any(marker.exists() for marker in markers.values())
    finally:
        stream.close(cancel=True)
    for name, marker in markers.items():
        assert wait_for(marker), f"the {name} request's generator was not closed"


def test_a_slow_client_pauses_the_generator(server: ServerProcess, tmp_path: Path) -> None:
    count = tmp_path / "count"
    # 1 MB per response: socket buffers hold a few; without backpressure the model would
    # produce all 2000 while the client reads none.
    reply = post(
        server,
        "/v2/models/tick/generate_stream",
        {"n": 2000, "size": 1_000_000, "count": str(count), "marker": str(tmp_path / "m")},
    )
    assert reply.status == 200
    assert wait_for(count)
    time.sleep(2)  # a client that reads nothing for a while
    produced = int(count.read_text())
    reply.close()
    assert produced < 100, f"the model ran {produced} steps ahead of a client that read none"
