"""Triton ensembles side by side: the SAME repository folder (python-backend models and an
ensemble of them, config.pbtxt as Triton reads it) served by the real Triton 2.51 and by
``dl-inference serve --model-repository``; the same tritonclient requests (HTTP and gRPC)
to both, compared: values, dtypes, shapes, metadata, configuration, error classes,
statistics.

Models (written by :func:`write_repository`):

- ``scale``: FP32 [4] times 2, ``max_batch_size`` 8; a negative first value is answered
  with ``TritonError(..., INVALID_ARG)``, 999 makes ``execute`` raise;
- ``add``: FP32 [4] + FP32 [4];
- ``upper``: BYTES [1] upper-cased;
- ``pipeline``: the ensemble: IN -> scale -> SCALED, (SCALED, BIAS) -> add -> OUT, and a
  parallel branch TEXT -> upper -> SHOUT; its steps listed out of order;
- ``broken``: an ensemble whose step maps an input ``add`` does not have: neither server
  loads it (Triton runs with ``--exit-on-error=false``);
- ``echoed``: an ensemble of ``echo``, which answers its request's parameters.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess

from .triton import TritonServer, skip_without_triton

HEAD = """\
import numpy as np
import triton_python_backend_utils as pb_utils


def get(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()
"""

MODELS: dict[str, tuple[str, str]] = {
    "scale": (
        """
        backend: "python"
        max_batch_size: 8
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
        instance_group [ { kind: KIND_CPU } ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                responses = []
                for request in requests:
                    x = get(request, "X")
                    if x.reshape(-1)[0] == 999:
                        raise ValueError("scale raised on 999")
                    if x.reshape(-1)[0] < 0:
                        error = pb_utils.TritonError(
                            "negative input", pb_utils.TritonError.INVALID_ARG
                        )
                        responses.append(pb_utils.InferenceResponse(error=error))
                    else:
                        responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
                return responses
        """,
    ),
    "add": (
        """
        backend: "python"
        max_batch_size: 8
        input [
          { name: "A" data_type: TYPE_FP32 dims: [ 4 ] },
          { name: "B" data_type: TYPE_FP32 dims: [ 4 ] }
        ]
        output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] } ]
        instance_group [ { kind: KIND_CPU } ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                return [
                    pb_utils.InferenceResponse(
                        [pb_utils.Tensor("SUM", get(r, "A") + get(r, "B"))]
                    )
                    for r in requests
                ]
        """,
    ),
    "upper": (
        """
        backend: "python"
        max_batch_size: 8
        input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "UPPER" data_type: TYPE_STRING dims: [ 1 ] } ]
        instance_group [ { kind: KIND_CPU } ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                responses = []
                for request in requests:
                    text = get(request, "TEXT")
                    upper = np.array([t.upper() for t in text.reshape(-1)], dtype=np.object_)
                    tensor = pb_utils.Tensor("UPPER", upper.reshape(text.shape))
                    responses.append(pb_utils.InferenceResponse([tensor]))
                return responses
        """,
    ),
    "echo": (
        """
        backend: "python"
        input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] } ]
        instance_group [ { kind: KIND_CPU } ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                return [
                    pb_utils.InferenceResponse([
                        pb_utils.Tensor("PARAMS", np.array([r.parameters()], dtype=np.object_))
                    ])
                    for r in requests
                ]
        """,
    ),
}

ECHOED = """
platform: "ensemble"
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "P" data_type: TYPE_STRING dims: [ 1 ] } ]
ensemble_scheduling { step [ {
  model_name: "echo" model_version: -1
  input_map { key: "X" value: "X" } output_map { key: "PARAMS" value: "P" }
} ] }
"""


def ensemble(name: str, add_input: str = "A") -> str:
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 8
input [
  {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "BIAS" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
  {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "SCALED" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "SHOUT" data_type: TYPE_STRING dims: [ 1 ] }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "add"
      model_version: -1
      input_map {{ key: "{add_input}" value: "SCALED" }}
      input_map {{ key: "B" value: "BIAS" }}
      output_map {{ key: "SUM" value: "OUT" }}
    }},
    {{
      model_name: "scale"
      model_version: -1
      input_map {{ key: "X" value: "IN" }}
      output_map {{ key: "Y" value: "SCALED" }}
    }},
    {{
      model_name: "upper"
      model_version: 1
      input_map {{ key: "TEXT" value: "TEXT" }}
      output_map {{ key: "UPPER" value: "SHOUT" }}
    }}
  ]
}}
"""


def write_repository(root: Path) -> Path:
    for name, (config, code) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(textwrap.dedent(config))
        (root / name / "1" / "model.py").write_text(HEAD + textwrap.dedent(code))
    for name, add_input in (("pipeline", "A"), ("broken", "NOPE")):
        (root / name / "1").mkdir(parents=True)  # an ensemble has an empty version folder
        (root / name / "config.pbtxt").write_text(ensemble(name, add_input))
    (root / "echoed" / "1").mkdir(parents=True)
    (root / "echoed" / "config.pbtxt").write_text(ECHOED)
    return root


class Servers:
    """Both servers; Triton is started again once when it died (its python backend
    sometimes segfaults under a failing step: a known crash of that build, not an answer)."""

    def __init__(self, repository: Path, root: Path, ours: ServerProcess) -> None:
        self.repository, self.root, self.ours = repository, root, ours
        self.starts = 0  # Triton's statistics start again at zero on each start
        self.triton = self._start_triton()

    def _start_triton(self) -> TritonServer:
        self.starts += 1
        triton = TritonServer(
            self.repository,
            self.root / f"triton-{time.monotonic_ns()}.log",
            args=["--exit-on-error=false"],
            wait_for="/v2/health/live",
        ).start()
        deadline = time.monotonic() + 60
        client = httpclient.InferenceServerClient(triton.http_address)
        while not client.is_model_ready("pipeline"):
            if time.monotonic() > deadline:
                triton.stop()
                raise TimeoutError(f"Triton did not load the ensemble:\n{triton.output()}")
            time.sleep(0.2)
        client.close()
        return triton

    def address(self, who: str, transport: str) -> str:
        server: Any = self.triton if who == "triton" else self.ours
        return server.http_address if transport == "http" else server.grpc_address

    def on_triton(self, call: Callable[[str], Any], transport: str) -> Any:
        try:
            answer = call(self.address("triton", transport))
            if not _no_answer(answer):
                return answer
        except Exception as exc:
            failure = {"error": type(exc).__name__, "message": str(exc)}
            if self.triton.alive() and not _no_answer(failure):
                raise
        # Dead, or hung (that build sometimes stops answering after a raising step): once
        # more on a fresh Triton, then the case cannot be compared here.
        self.triton.stop()
        self.triton = self._start_triton()
        try:
            answer = call(self.address("triton", transport))
        except Exception as exc:
            answer = {"error": type(exc).__name__, "message": str(exc)}
            if not _no_answer(answer):
                raise
        if _no_answer(answer):
            # The next case starts on a fresh Triton, not on this hung one.
            self.triton.stop()
            self.triton = self._start_triton()
            pytest.skip(f"Triton 2.51 stopped answering ({transport}) twice: {answer['message']}")
        return answer

    def both(self, call: Callable[[str], Any], transport: str) -> dict[str, Any]:
        return {
            "triton": self.on_triton(call, transport),
            "ours": call(self.address("ours", transport)),
        }

    def stop(self) -> None:
        self.triton.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    skip_without_triton()
    root = tmp_path_factory.mktemp("triton-ensemble")
    repository = write_repository(root / "models")
    with ServerProcess(["--model-repository", str(repository)]) as ours:
        both = Servers(repository, root, ours)
        try:
            yield both
        finally:
            both.stop()


CLIENTS: dict[str, Any] = {"http": httpclient, "grpc": grpcclient}
# No call waits for ever on a server that stopped answering.
CALL_TIMEOUT_S = 20.0


def _no_answer(answer: Any) -> bool:
    """Whether Triton gave no answer of its own: it hung (the call timed out) or it is gone
    (the connection was closed or refused), as that build sometimes is after a raising step."""
    if not isinstance(answer, dict) or "error" not in answer:
        return False
    error, message = str(answer["error"]), str(answer.get("message", "")).lower()
    return (
        error == "StatusCode.DEADLINE_EXCEEDED"
        or "timeout" in error.lower()
        or "timed out" in message
        or "connectionclosed" in error.lower()
        or "connection refused" in message
        or (error == "StatusCode.UNAVAILABLE" and "failed to connect" in message)
    )


def client_of(transport: str, address: str) -> Any:
    """A client of ``transport`` whose calls give up after CALL_TIMEOUT_S."""
    if transport == "http":
        return httpclient.InferenceServerClient(address, network_timeout=CALL_TIMEOUT_S)
    return grpcclient.InferenceServerClient(address)


def fp32(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def text(*values: bytes) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.object_)


def infer(
    transport: str, model: str, inputs: dict[str, np.ndarray], **kwargs: Any
) -> Callable[[str], dict[str, Any]]:
    """A call of ``model`` on ``inputs``, reduced to what the client sees."""

    def call(address: str) -> dict[str, Any]:
        module = CLIENTS[transport]
        client = client_of(transport, address)
        if transport == "grpc":
            kwargs.setdefault("client_timeout", CALL_TIMEOUT_S)
        tensors = []
        for name, array in inputs.items():
            datatype = "BYTES" if array.dtype == np.object_ else "FP32"
            tensor = module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        try:
            result = client.infer(model, tensors, **kwargs)
        except InferenceServerException as exc:
            return {"error": exc.status(), "message": exc.message()}
        finally:
            client.close()
        answer = {}
        for name in ("OUT", "SCALED", "SHOUT"):
            array = result.as_numpy(name)
            answer[name] = {
                "dtype": str(array.dtype),
                "shape": list(array.shape),
                "values": array.reshape(-1).tolist(),
            }
        return answer

    return call


def same(answers: dict[str, Any]) -> Any:
    assert answers["ours"] == answers["triton"]
    return answers["ours"]


def error_class(answers: dict[str, Any]) -> str:
    """The status both give (asserted equal); messages may differ (ours names the step)."""
    statuses = {who: answer.get("error") for who, answer in answers.items()}
    assert statuses["ours"] == statuses["triton"], answers
    assert statuses["ours"] is not None, answers
    return str(statuses["ours"])


GOOD = {
    "IN": fp32([1, 2, 3, 4], [0.5, -1, 7, 2]),
    "BIAS": fp32([1, 1, 1, 1], [10, 20, 30, 40]),
    "TEXT": text(b"hello", "\u00e9t\u00e9".encode()),
}


# -- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_ensemble_answers_alike(servers: Servers, transport: str) -> None:
    answer = same(servers.both(infer(transport, "pipeline", GOOD), transport))
    x, bias = GOOD["IN"], GOOD["BIAS"]
    assert answer["OUT"] == {
        "dtype": "float32",
        "shape": [2, 4],
        "values": (x * 2 + bias).reshape(-1).tolist(),
    }
    assert answer["SCALED"]["values"] == (x * 2).reshape(-1).tolist()
    assert answer["SHOUT"] == {
        "dtype": "object",
        "shape": [2, 1],
        "values": [b"HELLO", "\u00e9T\u00e9".encode()],  # bytes.upper: ASCII only
    }


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (-1.0, {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}),
        (999.0, {"http": "500", "grpc": "StatusCode.INTERNAL"}),
    ],
)
def test_a_failing_step_keeps_its_error_class(
    servers: Servers, transport: str, first: float, expected: dict[str, str]
) -> None:
    inputs = {**GOOD, "IN": fp32([first, 2, 3, 4], [1, 2, 3, 4])}
    answers = servers.both(infer(transport, "pipeline", inputs), transport)
    assert error_class(answers) == expected[transport]
    assert answers["triton"]["message"].startswith("in ensemble 'pipeline', ")
    assert answers["ours"]["message"].startswith("in ensemble 'pipeline', step 1 (model 'scale')")


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(
    "inputs",
    [
        {"IN": GOOD["IN"], "TEXT": GOOD["TEXT"]},  # BIAS missing
        {**GOOD, "IN": fp32([1, 2, 3], [4, 5, 6])},  # dims [3], not [4]
        {k: np.repeat(v, 5, axis=0) for k, v in GOOD.items()},  # a batch of 10 > 8
    ],
    ids=["missing-input", "wrong-dims", "batch-too-large"],
)
def test_bad_requests_are_refused_alike(
    servers: Servers, transport: str, inputs: dict[str, np.ndarray]
) -> None:
    answers = servers.both(infer(transport, "pipeline", inputs), transport)
    assert error_class(answers) == {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}[transport]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_request_parameters_reach_the_steps(servers: Servers, transport: str) -> None:
    parameters = {"temperature": 0.5, "mode": "fast", "top_k": 3}

    def call(address: str) -> Any:
        module = CLIENTS[transport]
        client = module.InferenceServerClient(address)
        tensor = module.InferInput("X", [2], "FP32")
        tensor.set_data_from_numpy(fp32([1, 2])[0])
        try:
            result = client.infer("echoed", [tensor], parameters=parameters)
        finally:
            client.close()
        # The JSON's spacing differs (dl-inference's python backend writes ", " and ": ").
        return json.loads(result.as_numpy("P")[0])

    assert same(servers.both(call, transport)) == parameters


# -- what clients read about the ensemble -----------------------------------------------------


def read(transport: str, what: str, *args: Any, **kwargs: Any) -> Callable[[str], Any]:
    def call(address: str) -> Any:
        client = CLIENTS[transport].InferenceServerClient(address)
        try:
            if transport == "grpc":
                kwargs["as_json"] = True
            return getattr(client, what)(*args, **kwargs)
        finally:
            client.close()

    return call


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_metadata_matches(servers: Servers, transport: str) -> None:
    for name in ("pipeline", "scale", "upper"):
        answer = same(servers.both(read(transport, "get_model_metadata", name), transport))
        assert answer["platform"] == ("ensemble" if name == "pipeline" else "python")


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("name", ["pipeline", "echoed"])
def test_model_config_is_tritons(servers: Servers, transport: str, name: str) -> None:
    """The whole configuration alike: platform "ensemble", no backend, the steps."""
    document = same(servers.both(read(transport, "get_model_config", name), transport))
    config = document["config"] if transport == "grpc" else document
    assert config["platform"] == "ensemble"
    assert not config.get("backend")
    steps = config["ensemble_scheduling"]["step"]
    if name == "pipeline":
        assert [(s["model_name"], int(s["model_version"])) for s in steps] == [
            ("add", -1),
            ("scale", -1),
            ("upper", 1),
        ]
        assert steps[0]["input_map"] == {"A": "SCALED", "B": "BIAS"}
        assert steps[2]["output_map"] == {"UPPER": "SHOUT"}
    else:
        assert steps[0]["input_map"] == {"X": "X"}


def test_a_broken_ensemble_is_not_loaded_by_either(servers: Servers) -> None:
    ready = servers.both(read("http", "is_model_ready", "broken"), "http")
    assert ready == {"triton": False, "ours": False}
    index = servers.on_triton(read("http", "get_model_repository_index"), "http")
    states = {row["name"]: row.get("state") for row in index}
    # Triton lists it without a state: its ensemble check runs before any load.
    assert (states["broken"], states["pipeline"]) == (None, "READY")
    assert "mapping to non-existing input NOPE in model add" in servers.triton.output()
    # dl-inference says why (its repository index is on the management listener).
    with pytest.raises(InferenceServerException) as caught:
        read("http", "get_model_metadata", "broken")(servers.address("ours", "http"))
    assert "step 0 (model 'add'): input_map names 'NOPE', which is not an input" in str(
        caught.value
    )


# -- statistics ---------------------------------------------------------------------------------

COUNTED = ("pipeline", "scale", "add", "upper")


def counts(transport: str) -> Callable[[str], dict[str, tuple[int, int, int, int]]]:
    """(inference_count, execution_count, success, fail) of each model."""

    def call(address: str) -> dict[str, tuple[int, int, int, int]]:
        document = read(transport, "get_inference_statistics")(address)
        found = {}
        for stats in document["model_stats"]:
            if stats["name"] in COUNTED:
                inference = stats["inference_stats"]
                found[stats["name"]] = (
                    int(stats.get("inference_count", 0)),
                    int(stats.get("execution_count", 0)),
                    int(inference["success"].get("count", 0)),
                    int(inference["fail"].get("count", 0)),
                )
        return found

    return call


def settled(servers: Servers) -> dict[str, Any]:
    """Both servers' counts once they stop changing: Triton counts an ensemble request
    that failed when its last step finishes, after the client got the error."""
    last, unchanged = servers.both(counts("http"), "http"), 0
    for _ in range(60):
        time.sleep(0.5)
        now = servers.both(counts("http"), "http")
        unchanged = unchanged + 1 if now == last else 0
        if unchanged == 3:  # 1.5 s without a change
            return now
        last = now
    raise AssertionError(f"statistics kept changing: {last}")


def deltas(before: dict[str, tuple[int, ...]], after: dict[str, tuple[int, ...]]) -> Any:
    return {
        name: tuple(a - b for a, b in zip(after[name], before[name], strict=True)) for name in after
    }


def counted_on_one_triton(servers: Servers) -> dict[str, Any]:
    """What three good requests and one refused one add to each model's counts. A Triton
    that crashed or hung on the refused one was started again with fresh counts, so the
    case is run once more on the new one."""
    for _ in range(2):
        starts, before = servers.starts, settled(servers)
        for _ in range(3):
            same(servers.both(infer("grpc", "pipeline", GOOD), "grpc"))
        refused = {**GOOD, "IN": fp32([-1, 2, 3, 4], [1, 2, 3, 4])}
        error_class(servers.both(infer("grpc", "pipeline", refused), "grpc"))
        after = settled(servers)
        if servers.starts == starts:
            return {who: deltas(before[who], after[who]) for who in before}
    pytest.skip("Triton 2.51 was started again during the statistics case twice: its counts reset")


def test_step_models_count_in_their_statistics_as_on_triton(servers: Servers) -> None:
    """Three good requests (batches of 2) then one a step refuses: the ensemble and the
    other step models count alike on both servers; the refusing step differs (below)."""
    seen = counted_on_one_triton(servers)
    triton_scale = seen["triton"].pop("scale")
    ours_scale = seen["ours"].pop("scale")
    assert seen["ours"]["pipeline"] == (6, 3, 3, 1)
    # Triton now and then counts the one failed ensemble request twice (seen in about one
    # run in three, with the parallel step still running as the other fails): its 1 or 2.
    triton_pipeline = seen["triton"]["pipeline"]
    assert triton_pipeline[:3] == (6, 3, 3) and triton_pipeline[3] in (1, 2), triton_pipeline
    seen["triton"]["pipeline"] = seen["ours"]["pipeline"]
    # upper runs in parallel with the refused step: on both, it may or may not have run.
    for who in seen:
        upper = seen[who].pop("upper")
        assert upper[:3] in ((6, 3, 3), (8, 4, 4)) and upper[3] == 0, (who, upper)
    assert seen["ours"] == seen["triton"]
    # Triton counts a python model's error response (TritonError) as a success of that
    # model, and its execution; dl-inference as a failure, not executed (README, Ensembles).
    assert triton_scale == (8, 4, 4, 0)
    assert ours_scale == (6, 3, 3, 1)
