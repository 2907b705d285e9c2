"""Dynamic batching of a Triton python model, side by side with the real Triton 2.51:
``execute(requests)`` gets several requests at once on both servers, each answered by its
own response, and a request the model fails inside such a list fails alone.

The model (``counted``, and the same files as ``counted_errors``) answers each request
with ``Y = 2 * X`` and ``N`` = ``len(requests)`` of the ``execute`` that ran it, so the
client sees how requests were gathered; its execute sleeps 20 ms so that concurrent
clients queue up behind it. ``max_batch_size: 8``, ``dynamic_batching {
max_queue_delay_microseconds: 100000 }``, one instance. Batch sizes need not be the same
on both servers (the schedulers differ: an idle dl-inference model runs a request at once,
Triton waits up to the delay); both must batch.

``preferred`` (``preferred_batch_size: [ 2, 4 ]``), ``preferred3`` (``[ 3 ]``) and
``unpreferred`` (none) show where ``preferred_batch_size`` cuts batches: a first request
(X = 0) holds the one instance until the test removes a ``hold`` file (outside the
repository, which dl-inference polls: a file changing there would reload the model),
a request of another width (which cannot join the others' batch) waits for the next
execution, and the requests behind them are sent one by one, each once the server counts
it as waiting; then the hold is released. Both servers then form the same batches (no
queue delay: with one, Triton's batches depend on arrival times). ``N`` answers the rows
of the execution that ran the request.
"""

from __future__ import annotations

import json
import re
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from dl_inference.testing import ServerProcess

from .test_triton_python_backend import CALLS, HEAD, Servers, fp32
from .triton import TritonServer, skip_without_triton

CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "N" data_type: TYPE_INT32 dims: [ 1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 100000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

MODEL = """
import time


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.02)  # concurrent clients queue up behind this execute
        responses = []
        for request in requests:
            x = get(request, "X")
            if x.reshape(-1)[0] < 0:
                error = pb_utils.TritonError("negative input", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse([], error=error))
            elif x.reshape(-1)[0] == 999:
                error = pb_utils.TritonError("999 is not served")
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                n = np.full((len(x), 1), len(requests), dtype=np.int32)
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("Y", x * 2), pb_utils.Tensor("N", n)]))
        return responses
"""

PREFERRED_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
dynamic_batching { %s }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "hold" value: { string_value: "%s" } }
"""

HELD_MODEL = """
import os
import time


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.hold = parameters["hold"]["string_value"]

    def execute(self, requests):
        if get(requests[0], "X").reshape(-1)[0] == 0:
            open(self.hold + "-running", "w").close()  # tells the test it runs
            while os.path.exists(self.hold):  # the test holds the instance busy
                time.sleep(0.01)
        rows = sum(len(get(request, "X")) for request in requests)
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("N", np.full((len(get(r, "X")), 1), rows, np.int32))]
            )
            for r in requests
        ]
"""

PREFERRED = {
    "preferred": "preferred_batch_size: [ 2, 4 ]",
    "preferred3": "preferred_batch_size: [ 3 ]",
    "unpreferred": "",
}

CLIENTS = 8
ROUNDS = 4


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    skip_without_triton()
    root = tmp_path_factory.mktemp("triton-python-batching")
    repository = root / "models"
    for name in ("counted", "counted_errors"):
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(CONFIG)
        (repository / name / "1" / "model.py").write_text(HEAD + textwrap.dedent(MODEL))
    for name, batching in PREFERRED.items():
        (repository / name / "1").mkdir(parents=True)
        hold = root / "holds" / name / "hold"
        hold.parent.mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(PREFERRED_CONFIG % (batching, hold))
        (repository / name / "1" / "model.py").write_text(HEAD + HELD_MODEL)
    triton = TritonServer(repository, root / "triton.log").start()
    try:
        with ServerProcess(["--model-repository", str(repository)]) as ours:
            yield Servers(triton, ours)
    finally:
        triton.stop()


def concurrently(address: str, transport: str, model: str, values: list[float]) -> list[Any]:
    """Each value from one of CLIENTS client threads, each sending ROUNDS requests in turn."""
    call, _ = CALLS[transport]

    def client(chunk: list[float]) -> list[Any]:
        return [call(address, model, [("X", fp32([v]))], ["Y", "N"]) for v in chunk]

    chunks = [values[i::CLIENTS] for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        answered = list(pool.map(client, chunks))
    by_value: dict[float, Any] = {}
    for chunk, answers in zip(chunks, answered, strict=True):
        by_value.update(zip(chunk, answers, strict=True))
    return [by_value[v] for v in values]


def statistics(address: str, model: str) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(address)
    try:
        (stats,) = client.get_inference_statistics(model)["model_stats"]
    finally:
        client.close()
    return stats


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_execute_gets_several_requests_each_answered(servers: Servers, transport: str) -> None:
    index = CALLS[transport][1]
    values = [float(v) for v in range(1, CLIENTS * ROUNDS + 1)]
    for who, addresses in servers.targets().items():
        before = statistics(addresses[0], "counted")
        answers = concurrently(addresses[index], transport, "counted", values)
        listed = []
        for value, answer in zip(values, answers, strict=True):
            assert answer["Y"] == {"dtype": "float32", "shape": [1, 1], "values": [value * 2]}, (
                who,
                answer,
            )
            (n,) = answer["N"]["values"]
            assert 1 <= n <= 8, who
            listed.append(n)
        assert max(listed) > 1, (who, listed)  # execute() got lists of requests
        after = statistics(addresses[0], "counted")
        executions = after["execution_count"] - before["execution_count"]
        inferences = after["inference_count"] - before["inference_count"]
        # One execution per execute() call, one inference per request (1 row each).
        assert inferences == len(values), who
        assert executions == round(sum(1 / n for n in listed)) < len(values), (who, listed)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_failing_request_fails_alone_inside_a_list(servers: Servers, transport: str) -> None:
    index = CALLS[transport][1]
    bad = {3.0: ("400", "StatusCode.INVALID_ARGUMENT"), 13.0: ("500", "StatusCode.INTERNAL")}
    values = [float(v) for v in range(1, CLIENTS * ROUNDS + 1)]
    sent = [-v if v == 3.0 else 999.0 if v == 13.0 else v for v in values]
    for who, addresses in servers.targets().items():
        before = statistics(addresses[0], "counted_errors")
        answers = concurrently(addresses[index], transport, "counted_errors", sent)
        listed = []
        for value, answer in zip(values, answers, strict=True):
            if value in bad:
                assert answer == {"error": bad[value][index]}, (who, value, answer)
            else:
                assert answer["Y"]["values"] == [value * 2], (who, value, answer)
                listed += answer["N"]["values"]
        assert max(listed) > 1, (who, listed)
        after = statistics(addresses[0], "counted_errors")
        counts = {
            key: after["inference_stats"][key]["count"] - before["inference_stats"][key]["count"]
            for key in ("success", "fail")
        }
        counts["inferences"] = after["inference_count"] - before["inference_count"]
        # A known difference (docs/triton-differences.md): Triton 2.51 counts a request
        # its model answered with an error response as a success, and its row as inferred;
        # dl-inference counts it as failed, and not inferred.
        if who == "triton":
            assert counts == {"success": len(values), "fail": 0, "inferences": len(values)}
        else:
            answered = len(values) - len(bad)
            assert counts == {"success": answered, "fail": len(bad), "inferences": answered}


def test_statistics_batch_sizes_are_listed_per_execution(servers: Servers) -> None:
    """``batch_stats`` count executions by their rows on both servers."""
    for who, addresses in servers.targets().items():
        stats = statistics(addresses[0], "counted")
        batches = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
        assert sum(batches.values()) == stats["execution_count"], (who, json.dumps(stats))
        assert sum(size * n for size, n in batches.items()) == stats["inference_count"], who
        assert max(batches) > 1, (who, batches)


def _gauge(url: str, pattern: str) -> float:
    """The value of the one sample of ``url``'s Prometheus text matching ``pattern``."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def waiting_counter(servers: Servers, who: str, model: str) -> Callable[[], float]:
    """Requests to ``model`` the server holds, not counting the one running."""
    if who == "triton":
        url = f"http://127.0.0.1:{servers.triton.metrics_port}/metrics"
        series = rf'nv_inference_pending_request_count\{{model="{model}",version="1"\}}'
        return lambda: _gauge(url, series)
    url = f"{servers.ours.http_url}/metrics"
    series = rf'dli_in_flight_requests\{{model="{model}"\}}'
    return lambda: _gauge(url, series) - 1


def held_batches(servers: Servers, who: str, model: str, rows: list[int]) -> list[int]:
    """The rows of the execution that ran each request of ``rows`` (one request each),
    sent one by one behind a held instance and a request that cannot join them."""
    address = servers.targets()[who][0]
    hold = Path(servers.triton.repository).parent / "holds" / model / "hold"
    running = hold.with_name("hold-running")
    waiting = waiting_counter(servers, who, model)
    answers: dict[int, int] = {}

    def send(index: int, batch: int, width: int = 1) -> None:
        client = httpclient.InferenceServerClient(address, network_timeout=60)
        try:
            tensor = httpclient.InferInput("X", [batch, width], "FP32")
            tensor.set_data_from_numpy(np.full((batch, width), index, np.float32))
            answers[index] = int(client.infer(model, [tensor]).as_numpy("N").reshape(-1)[0])
        finally:
            client.close()

    def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, f"{who}: {what} ({waiting()} wait; {answers})"
            time.sleep(0.02)

    hold.write_text("")
    with ThreadPoolExecutor(len(rows) + 2) as pool:
        try:
            held = pool.submit(send, 0, 1)
            until(running.exists, "the held request runs")
            running.unlink()
            sent = [pool.submit(send, -1, 1, 2)]  # another width: a batch of its own
            for index, batch in enumerate(rows, 1):
                until(lambda n=index: waiting() >= n, f"{index} requests wait")
                sent.append(pool.submit(send, index, batch))
            until(lambda: waiting() >= len(rows) + 1, "every request waits")
        finally:
            hold.unlink()
        for future in [held, *sent]:
            future.result()
    assert answers[0] == 1 and answers[-1] == 1, (who, answers)
    return [answers[index] for index in range(1, len(rows) + 1)]


# Seen on Triton 2.51 (and on dl-inference): each request's rows -> its batch's rows.
PREFERRED_CASES = [
    ("preferred", [1] * 7, [4, 4, 4, 4, 2, 2, 1]),
    ("preferred", [1] * 9, [4, 4, 4, 4, 4, 4, 4, 4, 1]),
    ("preferred", [3, 1, 2, 1], [4, 4, 2, 1]),
    ("preferred3", [1] * 7, [3, 3, 3, 3, 3, 3, 1]),
    ("preferred3", [3, 1, 2, 1], [3, 3, 3, 1]),
    ("unpreferred", [1] * 7, [7] * 7),
    ("unpreferred", [1] * 9, [8] * 8 + [1]),
]


@pytest.mark.parametrize(("model", "rows", "expected"), PREFERRED_CASES)
def test_preferred_batch_sizes_cut_batches_as_triton_does(
    servers: Servers, model: str, rows: list[int], expected: list[int]
) -> None:
    seen = {who: held_batches(servers, who, model, rows) for who in ("triton", "ours")}
    assert seen == {"triton": expected, "ours": expected}


def test_the_configuration_shows_the_preferred_sizes(servers: Servers) -> None:
    for model, sizes in (("preferred", [2, 4]), ("preferred3", [3]), ("unpreferred", [8])):
        for who, addresses in servers.targets().items():
            client = httpclient.InferenceServerClient(addresses[0])
            try:
                batching = client.get_model_config(model)["dynamic_batching"]
            finally:
                client.close()
            assert batching["preferred_batch_size"] == sizes, (who, model, batching)
