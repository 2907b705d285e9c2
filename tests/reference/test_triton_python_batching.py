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
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
