"""Side by side with a real Triton 2.51: a decoupled model.

Triton serves a python-backend model with ``model_transaction_policy { decoupled: true }``
that sends ``n`` responses through ``request.get_response_sender()`` and then the final
flag; dl-inference serves the same behaviour as a ``predict`` that yields. The same client
calls (tritonclient's gRPC stream, HTTP generate / generate_stream, unary infer) must
bring the same sequence of outputs, ids and ``triton_final_response`` flags.
"""

from __future__ import annotations

import http.client
import json
import queue
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, write_python_model

from .triton import TritonServer, skip_without_triton

TRITON_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "n").as_numpy().reshape(-1)[0])
            for i in range(n):
                if i == 99:  # n > 99: fails at its 100th step, as the model raises
                    error = pb_utils.TritonError("step 99 failed")
                    sender.send(pb_utils.InferenceResponse(error=error))
                    break
                out = pb_utils.Tensor("i", np.array([i], dtype=np.int64))
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
TRITON_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [{ name: "n", data_type: TYPE_INT64, dims: [1] }]
output [{ name: "i", data_type: TYPE_INT64, dims: [1] }]
"""
# Not decoupled, batching: generate sends one row.
TRITON_BATCHED = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x + 1)]))
        return answers
"""
TRITON_BATCHED_CONFIG = """
backend: "python"
max_batch_size: 4
input [{ name: "x", data_type: TYPE_FP32, dims: [2] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [2] }]
"""
# Text in, text out: the generate extension's own example.
TRITON_TEXT = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
            upper = np.array([t.upper() for t in text.reshape(-1)], dtype=object)
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", upper)]))
        return answers
"""
TRITON_TEXT_CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "text_input", data_type: TYPE_STRING, dims: [1] }]
output [{ name: "text_output", data_type: TYPE_STRING, dims: [1] }]
"""
OURS_TEXT = """
    import numpy as np
    from dl_inference import PythonModel

    class Upper(PythonModel):
        def predict(self, inputs, /, **parameters):
            text = inputs["text_input"].reshape(-1)
            return {"text_output": np.array([t.upper() for t in text], dtype=object)}
"""
OURS_TEXT_CONFIG = """
    inputs: [{name: text_input, datatype: BYTES, shape: [1]}]
    outputs: [{name: text_output, datatype: BYTES, shape: [1]}]
"""
OURS_BATCHED = """
    from dl_inference import PythonModel

    class PlusOne(PythonModel):
        def predict(self, inputs, /, **parameters):
            return {"y": inputs["x"] + 1}
"""
OURS_BATCHED_CONFIG = """
    max_batch_size: 4
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""
OURS = """
    import numpy as np
    from dl_inference import PythonModel

    class Tick(PythonModel):
        def predict(self, inputs, /, **parameters):
            for i in range(int(inputs["n"].reshape(-1)[0])):
                if i == 99:
                    raise RuntimeError("step 99 failed")
                yield {"i": np.array([i], dtype=np.int64)}
"""
OURS_CONFIG = """
    inputs: [{name: n, datatype: INT64, shape: [1]}]
    outputs: [{name: i, datatype: INT64, shape: [1]}]
"""
# Decoupled, two instances: a request for 3 or more responses first thinks for 2 s, so the
# requests after it on the same stream answer first when the stream's requests run at once.
TRITON_SLOW = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "n").as_numpy().reshape(-1)[0])
            if n >= 3:
                time.sleep(2)
            for i in range(n):
                out = pb_utils.Tensor("i", np.array([i], dtype=np.int64))
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
TRITON_SLOW_CONFIG = TRITON_CONFIG + "instance_group [{ count: 2, kind: KIND_CPU }]\n"
OURS_SLOW = """
    import time
    import numpy as np
    from dl_inference import PythonModel

    class Slow(PythonModel):
        def predict(self, inputs, /, **parameters):
            n = int(inputs["n"].reshape(-1)[0])
            if n >= 3:
                time.sleep(2)
            for i in range(n):
                yield {"i": np.array([i], dtype=np.int64)}
"""
OURS_SLOW_CONFIG = OURS_CONFIG + "    instances: 2\n"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    skip_without_triton()
    root = tmp_path_factory.mktemp("decoupled")
    folder = root / "triton" / "tick"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(TRITON_MODEL)
    (folder / "config.pbtxt").write_text(textwrap.dedent(TRITON_CONFIG))
    write_python_model(root / "ours", "tick", OURS, OURS_CONFIG)
    batched = root / "triton" / "plus_one_batched"
    (batched / "1").mkdir(parents=True)
    (batched / "1" / "model.py").write_text(TRITON_BATCHED)
    (batched / "config.pbtxt").write_text(textwrap.dedent(TRITON_BATCHED_CONFIG))
    write_python_model(root / "ours", "plus_one_batched", OURS_BATCHED, OURS_BATCHED_CONFIG)
    text = root / "triton" / "upper"
    (text / "1").mkdir(parents=True)
    (text / "1" / "model.py").write_text(TRITON_TEXT)
    (text / "config.pbtxt").write_text(textwrap.dedent(TRITON_TEXT_CONFIG))
    write_python_model(root / "ours", "upper", OURS_TEXT, OURS_TEXT_CONFIG)
    slow = root / "triton" / "slow"
    (slow / "1").mkdir(parents=True)
    (slow / "1" / "model.py").write_text(TRITON_SLOW)
    (slow / "config.pbtxt").write_text(textwrap.dedent(TRITON_SLOW_CONFIG))
    write_python_model(root / "ours", "slow", OURS_SLOW, OURS_SLOW_CONFIG)
    with (
        TritonServer(root / "triton", root / "triton.log") as triton,
        ServerProcess(["--model-repository", str(root / "ours")]) as ours,
    ):
        yield {"triton": triton, "dl-inference": ours}


def n_input(n: int) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("n", [1], "INT64")
    tensor.set_data_from_numpy(np.array([n], dtype=np.int64))
    return tensor


def stream_outcome(
    address: str, calls: list[tuple[int, str, bool]], answers: int, model: str = "tick"
) -> list[Any]:
    """What ``answers`` stream results look like: (id, outputs, final flag) or the error."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for n, request_id, empty_final in calls:
            client.async_stream_infer(
                model, [n_input(n)], request_id=request_id, enable_empty_final_response=empty_final
            )
        outcome = []
        for _ in range(answers):
            result, error = results.get(timeout=30)
            if error is not None:
                outcome.append({"error": str(error.status())})
                continue
            response = result.get_response()
            outputs = {o.name: result.as_numpy(o.name).tolist() for o in response.outputs}
            final = response.parameters["triton_final_response"].bool_param
            outcome.append((response.id, response.model_name, outputs, final))
        assert results.empty()
        return outcome
    finally:
        client.stop_stream()
        client.close()


def both(servers: dict[str, Any], run: Any) -> dict[str, Any]:
    return {name: run(server) for name, server in servers.items()}


def apart(outcome: list[Any], request_id: str) -> tuple[list[Any], list[Any]]:
    """(the rest, request ``request_id``'s responses), each in the order they came.

    The requests of a stream run concurrently: with one model instance Triton sends the
    next request's responses strictly after the last of the one before, where dl-inference
    may have up to two of those still on their way (docs/triton-differences.md); each
    request's own responses come in order on both.
    """
    mine = [o for o in outcome if isinstance(o, tuple) and o[0] == request_id]
    return [o for o in outcome if not (isinstance(o, tuple) and o[0] == request_id)], mine


def test_stream_with_the_empty_final_response(servers: dict[str, Any]) -> None:
    seen = both(servers, lambda s: stream_outcome(s.grpc_address, [(3, "a", True)], 4))
    assert seen["dl-inference"] == seen["triton"], seen
    assert [final for *_, final in seen["triton"]] == [False, False, False, True]


def test_stream_without_the_empty_final_response(servers: dict[str, Any]) -> None:
    calls = [(2, "a", False), (1, "b", False), (0, "c", True)]
    seen = both(servers, lambda s: stream_outcome(s.grpc_address, calls, 4))
    by_request = {
        name: {rid: apart(outcome, rid)[1] for rid in "abc"} for name, outcome in seen.items()
    }
    assert by_request["dl-inference"] == by_request["triton"], seen


def test_the_requests_of_one_stream_run_concurrently(servers: dict[str, Any]) -> None:
    """Two requests on one stream, the first slow: the second's responses come first on
    both, each request's in order and tagged with its id."""
    calls = [(3, "slow", True), (2, "fast", True)]
    seen = both(servers, lambda s: stream_outcome(s.grpc_address, calls, 7, model="slow"))
    assert seen["dl-inference"] == seen["triton"], seen
    assert [(request_id, final) for request_id, _, _, final in seen["triton"]] == [
        ("fast", False),
        ("fast", False),
        ("fast", True),
        ("slow", False),
        ("slow", False),
        ("slow", False),
        ("slow", True),
    ]


def test_unary_infer_of_a_decoupled_model_is_refused(servers: dict[str, Any]) -> None:
    """gRPC UNIMPLEMENTED and HTTP 501 with Triton's words on both; dl-inference adds, in
    parentheses, which streaming methods to call (docs/triton-differences.md)."""

    def outcome(server: Any) -> tuple[str, str, int, str]:
        with grpcclient.InferenceServerClient(server.grpc_address) as client:
            try:
                client.infer("tick", [n_input(2)])
                raise AssertionError("a unary ModelInfer of a decoupled model was answered")
            except InferenceServerException as exc:
                grpc_status, grpc_message = str(exc.status()), exc.message() or ""
        host, port = server.http_address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [2]}]}
        conn.request("POST", "/v2/models/tick/infer", body=json.dumps(body))
        reply = conn.getresponse()
        error = json.loads(reply.read())["error"]
        return grpc_status, grpc_message.split(" (")[0], reply.status, error.split(" (")[0]

    seen = both(servers, outcome)
    assert seen["dl-inference"] == seen["triton"], seen
    assert seen["triton"] == (
        "StatusCode.UNIMPLEMENTED",
        "ModelInfer RPC doesn't support models with decoupled transaction policy",
        501,
        "HTTP end point doesn't support models with decoupled transaction policy",
    )


def generate(server: Any, path: str, document: dict[str, Any]) -> tuple[int, str, list[Any]]:
    host, port = server.http_address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, body=json.dumps(document))
    reply = conn.getresponse()
    body = reply.read()
    kind = reply.getheader("Content-Type", "").split(";")[0]
    if kind == "text/event-stream":
        events = [json.loads(c[len(b"data: ") :]) for c in body.split(b"\n\n") if c.strip()]
        return reply.status, kind, events
    return reply.status, kind, [json.loads(body)]


def test_generate_stream(servers: dict[str, Any]) -> None:
    seen = both(servers, lambda s: generate(s, "/v2/models/tick/generate_stream", {"n": 3}))
    assert seen["dl-inference"] == seen["triton"], seen
    assert len(seen["triton"][2]) == 3


def test_generate_of_one_response(servers: dict[str, Any]) -> None:
    seen = both(servers, lambda s: generate(s, "/v2/models/tick/generate", {"n": 1}))
    assert seen["dl-inference"] == seen["triton"], seen


def test_generate_of_a_batching_model(servers: dict[str, Any]) -> None:
    path = "/v2/models/plus_one_batched/generate"
    seen = both(servers, lambda s: generate(s, path, {"x": [1.0, 2.0]}))
    assert seen["dl-inference"] == seen["triton"], seen


def test_generate_text(servers: dict[str, Any]) -> None:
    for path in ("/v2/models/upper/generate", "/v2/models/upper/generate_stream"):
        document = {"text_input": "hello", "parameters": {"temperature": 0}}
        seen = both(servers, lambda s, p=path, d=document: generate(s, p, d))
        assert seen["dl-inference"] == seen["triton"], seen
    assert seen["triton"][2][0]["text_output"] == "HELLO"


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("/v2/models/upper/generate", {"parameters": {"a": 1}}),  # no input
        ("/v2/models/nope/generate", {"text_input": "x"}),  # unknown model
    ],
)
def test_generate_errors(servers: dict[str, Any], path: str, document: dict[str, Any]) -> None:
    def status(server: Any) -> tuple[int, str]:
        code, kind, _ = generate(server, path, document)
        return code, kind

    seen = both(servers, status)
    assert seen["dl-inference"] == seen["triton"], seen


def test_an_error_midway_and_the_empty_final_response(servers: dict[str, Any]) -> None:
    # The 100th step fails: 99 responses, the error, the empty final one; then "b".
    calls = [(101, "a", True), (1, "b", True)]
    seen = {
        k: apart(v, "b")
        for k, v in both(servers, lambda s: stream_outcome(s.grpc_address, calls, 103)).items()
    }
    assert seen["dl-inference"] == seen["triton"], {k: (a[98:], b) for k, (a, b) in seen.items()}
    assert seen["triton"][0][99] == {"error": "None"}


def test_generate_stream_error_midway(servers: dict[str, Any]) -> None:
    def outcome(server: Any) -> tuple[int, str, list[Any]]:
        status, kind, events = generate(server, "/v2/models/tick/generate_stream", {"n": 101})
        return status, kind, [sorted(event) for event in events]

    seen = both(servers, outcome)
    assert seen["dl-inference"] == seen["triton"], {k: v[2][97:] for k, v in seen.items()}
