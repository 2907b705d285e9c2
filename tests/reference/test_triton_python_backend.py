"""Triton python-backend models served unchanged: the SAME repository folder (config.pbtxt
+ ``<version>/model.py`` importing ``triton_python_backend_utils``) served by the real
Triton 2.51 and by ``dl-inference serve --model-repository`` (the dl-inference-triton
plugin), the same requests through tritonclient (HTTP and gRPC) to both, compared: output
names, values, dtypes and shapes, and for failures the error class (HTTP status, gRPC code).

Models (written by :func:`write_repository`):

- ``add_sub``: FP32 [4] sum and difference, ``max_batch_size`` 8, dynamic batching, two
  instances;
- ``upper``: BYTES [-1] upper-cased, no batching;
- ``picky``: FP32 [1] echo, ``max_batch_size`` 8, dynamic batching with a queue delay; its
  execute answers a request whose first value is negative with ``TritonError(...,
  INVALID_ARG)``, one whose first value is 999 with a plain ``TritonError`` (INTERNAL), and
  raises for 666: concurrent requests, some bad, fail alone;
- ``params``: the request's parameters (``parameters()``, JSON) and its ``request_id()``
  (which differs: see the test);
- ``args``: what ``initialize(args)`` received, as JSON (``model_config`` whole, as
  Triton completes it);
- ``completed``: config.pbtxt without inputs / outputs; ``auto_complete_config`` adds them.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def get(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()
"""

MODELS: dict[str, tuple[str, str]] = {
    "add_sub": (
        """
        backend: "python"
        max_batch_size: 8
        input [
          { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
          { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
        ]
        output [
          { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
          { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
        ]
        dynamic_batching { }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        """,
        """
        class TritonPythonModel:
            def initialize(self, args):
                config = json.loads(args["model_config"])
                out = pb_utils.get_output_config_by_name(config, "OUTPUT0")
                self.dtype = pb_utils.triton_string_to_numpy(out["data_type"])

            def execute(self, requests):
                responses = []
                for request in requests:
                    a, b = get(request, "INPUT0"), get(request, "INPUT1")
                    responses.append(pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtype)),
                        pb_utils.Tensor("OUTPUT1", (a - b).astype(self.dtype)),
                    ]))
                return responses
        """,
    ),
    "upper": (
        """
        backend: "python"
        input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] } ]
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
    "picky": (
        """
        backend: "python"
        max_batch_size: 8
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 200000 }
        instance_group [ { count: 1 kind: KIND_CPU } ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                # Triton binds TritonError & co. after model.py's import: read them here.
                E = pb_utils.TritonError
                codes = (E.UNKNOWN, E.NOT_FOUND, E.UNAVAILABLE, E.UNSUPPORTED, E.ALREADY_EXISTS)
                CODES = {1000 + int(c): c for c in codes}
                responses = []
                for request in requests:
                    x = get(request, "X")
                    if x.reshape(-1)[0] == 666:
                        raise ValueError("picky raised on 666")
                    if x.reshape(-1)[0] < 0:
                        code = pb_utils.TritonError.INVALID_ARG
                        error = pb_utils.TritonError("negative input", code)
                        responses.append(pb_utils.InferenceResponse([], error=error))
                    elif x.reshape(-1)[0] in CODES:
                        error = pb_utils.TritonError("coded", CODES[x.reshape(-1)[0]])
                        responses.append(pb_utils.InferenceResponse(error=error))
                    elif x.reshape(-1)[0] == 999:
                        error = pb_utils.TritonError("999 is not served")
                        responses.append(pb_utils.InferenceResponse(error=error))
                    else:
                        responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
                return responses
        """,
    ),
    "params": (
        """
        backend: "python"
        input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [
          { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] },
          { name: "ID" data_type: TYPE_STRING dims: [ 1 ] }
        ]
        instance_group [ { kind: KIND_CPU } ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                responses = []
                for request in requests:
                    params = json.dumps(json.loads(request.parameters()), sort_keys=True)
                    responses.append(pb_utils.InferenceResponse([
                        pb_utils.Tensor("PARAMS", np.array([params.encode()], dtype=np.object_)),
                        pb_utils.Tensor("ID", np.array([request.request_id()], dtype=np.bytes_)),
                    ]))
                return responses
        """,
    ),
    "args": (
        """
        name: "args"
        backend: "python"
        max_batch_size: 2
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [ { name: "ARGS" data_type: TYPE_STRING dims: [ 1 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 100 }
        instance_group [ { kind: KIND_CPU } ]
        parameters [ { key: "threshold" value: { string_value: "0.5" } } ]
        """,
        """
        class TritonPythonModel:
            def initialize(self, args):
                config = json.loads(args["model_config"])
                seen = {k: v for k, v in args.items() if k != "model_config"}
                seen["config"] = config  # the whole document, as completed
                seen["input_config"] = pb_utils.get_input_config_by_name(config, "X")["dims"]
                self.seen = json.dumps(seen, sort_keys=True).encode()

            def execute(self, requests):
                rows = [get(r, "X").shape[0] for r in requests]
                return [
                    pb_utils.InferenceResponse(
                        [pb_utils.Tensor("ARGS", np.array([[self.seen]] * n, dtype=np.object_))]
                    )
                    for n in rows
                ]
        """,
    ),
    "completed": (
        """
        backend: "python"
        max_batch_size: 4
        instance_group [ { kind: KIND_CPU } ]
        """,
        """
        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(auto_complete_model_config):
                auto_complete_model_config.add_input(
                    {"name": "IN", "data_type": "TYPE_INT32", "dims": [2]})
                auto_complete_model_config.add_output(
                    {"name": "OUT", "data_type": "TYPE_INT64", "dims": [2]})
                return auto_complete_model_config

            def execute(self, requests):
                return [
                    pb_utils.InferenceResponse(
                        [pb_utils.Tensor("OUT", get(r, "IN").astype(np.int64) * 10)])
                    for r in requests
                ]
        """,
    ),
}


def write_repository(root: Path) -> Path:
    """One folder per model: ``config.pbtxt`` and ``1/model.py``."""
    for name, (config, code) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(textwrap.dedent(config))
        (root / name / "1" / "model.py").write_text(HEAD + textwrap.dedent(code))
    return root


@dataclass
class Servers:
    triton: TritonServer
    ours: ServerProcess

    def targets(self) -> dict[str, tuple[str, str]]:
        return {
            "triton": (self.triton.http_address, self.triton.grpc_address),
            "ours": (self.ours.http_address, self.ours.grpc_address),
        }


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    skip_without_triton()
    root = tmp_path_factory.mktemp("triton-python-backend")
    repository = write_repository(root / "models")
    triton = TritonServer(repository, root / "triton.log").start()
    try:
        with ServerProcess(["--model-repository", str(repository)]) as ours:
            yield Servers(triton, ours)
    finally:
        triton.stop()


# -- one request, reduced to what a client sees ----------------------------------------------

Outcome = dict[str, Any]
Input = tuple[str, np.ndarray]


def _datatype(array: np.ndarray) -> str:
    if array.dtype == np.object_:
        return "BYTES"
    return {"f": "FP", "i": "INT", "u": "UINT", "b": "BOOL"}[array.dtype.kind] + (
        str(array.dtype.itemsize * 8) if array.dtype.kind != "b" else ""
    )


def _result(result: Any, outputs: list[str]) -> Outcome:
    arrays = {name: result.as_numpy(name) for name in outputs}
    return {
        name: {
            "dtype": str(a.dtype),
            "shape": list(a.shape),
            "values": [v.decode() if isinstance(v, bytes) else v for v in a.reshape(-1).tolist()],
        }
        for name, a in arrays.items()
    }


def http_infer(
    address: str, model: str, inputs: list[Input], outputs: list[str], **kwargs: Any
) -> Outcome:
    client = httpclient.InferenceServerClient(address)
    tensors = []
    for name, array in inputs:
        tensor = httpclient.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array, binary_data=kwargs.pop("binary", True))
        tensors.append(tensor)
    try:
        return _result(client.infer(model, tensors, **kwargs), outputs)
    except InferenceServerException as exc:
        return {"error": exc.status()}
    finally:
        client.close()


def grpc_infer(
    address: str, model: str, inputs: list[Input], outputs: list[str], **kwargs: Any
) -> Outcome:
    client = grpcclient.InferenceServerClient(address)
    tensors = []
    for name, array in inputs:
        tensor = grpcclient.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    try:
        return _result(client.infer(model, tensors, **kwargs), outputs)
    except InferenceServerException as exc:
        return {"error": exc.status()}
    finally:
        client.close()


Call = Callable[..., Outcome]
CALLS: dict[str, tuple[Call, int]] = {"http": (http_infer, 0), "grpc": (grpc_infer, 1)}


def both(servers: Servers, transport: str, *args: Any, **kwargs: Any) -> dict[str, Outcome]:
    call, index = CALLS[transport]
    return {
        who: call(addresses[index], *args, **dict(kwargs))
        for who, addresses in servers.targets().items()
    }


def same(answers: dict[str, Outcome]) -> Outcome:
    assert answers["ours"] == answers["triton"]
    return answers["ours"]


def fp32(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# -- the cases -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_add_sub_batched(servers: Servers, transport: str) -> None:
    a = fp32([1, 2, 3, 4], [0.5, -1, 7, 2])
    b = fp32([1, 1, 1, 1], [2, 2, 2, 2])
    answer = same(
        both(servers, transport, "add_sub", [("INPUT0", a), ("INPUT1", b)], ["OUTPUT0", "OUTPUT1"])
    )
    assert answer["OUTPUT0"] == {
        "dtype": "float32",
        "shape": [2, 4],
        "values": (a + b).ravel().tolist(),
    }
    assert answer["OUTPUT1"]["values"] == (a - b).ravel().tolist()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_bytes_upper(servers: Servers, transport: str) -> None:
    text = np.array([b"hello", "\u00e9t\u00e9".encode(), b""], dtype=np.object_)
    answer = same(both(servers, transport, "upper", [("TEXT", text)], ["UPPER"]))
    assert answer["UPPER"] == {
        "dtype": "object",
        "shape": [3],
        "values": ["HELLO", "\u00e9T\u00e9", ""],  # bytes.upper: ASCII only
    }


def test_error_codes_seen_by_clients(servers: Servers) -> None:
    """The other TritonError codes: NOT_FOUND and UNAVAILABLE as Triton answers them;
    UNKNOWN, UNSUPPORTED and ALREADY_EXISTS differ (no such kernel error: 500 / INTERNAL
    here), a known difference the plugin's README lists."""
    matching = {1002.0: ("404", "StatusCode.NOT_FOUND"), 1004.0: ("503", "StatusCode.UNAVAILABLE")}
    differing = {
        1000.0: ("400", "StatusCode.UNKNOWN"),
        1005.0: ("501", "StatusCode.UNIMPLEMENTED"),
        1006.0: ("400", "StatusCode.ALREADY_EXISTS"),
    }
    for index, transport in enumerate(("http", "grpc")):
        for value, expected in matching.items():
            answers = both(servers, transport, "picky", [("X", fp32([value]))], ["Y"])
            assert same(answers) == {"error": expected[index]}, (transport, value)
        for value, expected in differing.items():
            answers = both(servers, transport, "picky", [("X", fp32([value]))], ["Y"])
            assert answers["triton"] == {"error": expected[index]}, (transport, value)
            assert answers["ours"] == {"error": ("500", "StatusCode.INTERNAL")[index]}


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1.0, {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}),
        (999.0, {"http": "500", "grpc": "StatusCode.INTERNAL"}),
        (666.0, {"http": "500", "grpc": "StatusCode.INTERNAL"}),
    ],
)
def test_error_responses_keep_triton_error_class(
    servers: Servers, transport: str, value: float, error: dict[str, str]
) -> None:
    answer = same(both(servers, transport, "picky", [("X", fp32([value]))], ["Y"]))
    assert answer == {"error": error[transport]}


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_failing_request_fails_alone_among_concurrent_ones(
    servers: Servers, transport: str
) -> None:
    """Eight requests at once to a batching model (Triton hands them to one execute):
    the bad ones fail with their own error class, the others get their answers."""
    values = [1.0, -1.0, 2.0, 999.0, 3.0, 4.0, -5.0, 6.0]
    call, index = CALLS[transport]
    for who, addresses in servers.targets().items():
        with ThreadPoolExecutor(len(values)) as pool:
            answers = list(
                pool.map(
                    lambda v, a=addresses[index]: call(a, "picky", [("X", fp32([v]))], ["Y"]),
                    values,
                )
            )
        for value, answer in zip(values, answers, strict=True):
            if value < 0:
                assert "error" in answer and answer["error"] in (
                    "400",
                    "StatusCode.INVALID_ARGUMENT",
                ), who
            elif value == 999:
                assert answer["error"] in ("500", "StatusCode.INTERNAL"), who
            else:
                assert answer == {
                    "Y": {"dtype": "float32", "shape": [1, 1], "values": [value * 2]}
                }, who


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_request_parameters_and_id(servers: Servers, transport: str) -> None:
    parameters = {"temperature": 0.5, "mode": "fast", "top_k": 3, "greedy": True}
    answers = both(
        servers,
        transport,
        "params",
        [("X", fp32([1.0, 2.0])[0])],
        ["PARAMS", "ID"],
        parameters=parameters,
        request_id="req-42",
    )
    ids = {who: answer.pop("ID")["values"] for who, answer in answers.items()}
    answer = same(answers)
    assert json.loads(answer["PARAMS"]["values"][0]) == parameters
    # A known difference (plugins/triton/README.md): request_id() is the request's id on
    # Triton, the id of dl-inference's log lines (x-request-id or its own) here.
    assert ids["triton"] == ["req-42"]
    assert ids["ours"][0] and ids["ours"] != ["req-42"]


def test_initialize_args(servers: Servers) -> None:
    answer = same(both(servers, "http", "args", [("X", fp32([1, 2, 3]))], ["ARGS"]))
    seen = json.loads(answer["ARGS"]["values"][0])
    assert seen["model_name"] == "args"
    assert seen["model_version"] == "1"
    assert seen["model_instance_kind"] == "CPU"
    assert [t["dims"] for t in seen["config"]["input"]] == [[3]] == [seen["input_config"]]
    assert seen["config"]["parameters"] == {"threshold": {"string_value": "0.5"}}
    assert seen["config"]["instance_group"][0]["name"] == "args_0"


def test_auto_complete_config(servers: Servers) -> None:
    x = np.array([[1, 2], [3, 4]], dtype=np.int32)
    answer = same(both(servers, "grpc", "completed", [("IN", x)], ["OUT"]))
    assert answer["OUT"] == {"dtype": "int64", "shape": [2, 2], "values": [10, 20, 30, 40]}
    metadata = {}
    for who, (http_address, _) in servers.targets().items():
        client = httpclient.InferenceServerClient(http_address)
        document = client.get_model_metadata("completed")
        client.close()
        metadata[who] = {k: document[k] for k in ("inputs", "outputs", "platform")}
    assert metadata["ours"] == metadata["triton"]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_bad_input_is_refused_by_both(servers: Servers, transport: str) -> None:
    """A shape config.pbtxt does not allow: a client error on both, before the model."""
    answer = same(
        both(
            servers,
            transport,
            "add_sub",
            [("INPUT0", fp32([1, 2, 3])), ("INPUT1", fp32([1, 2, 3]))],
            ["OUTPUT0"],
        )
    )
    assert answer["error"] in ("400", "StatusCode.INVALID_ARGUMENT")


def test_metadata_matches(servers: Servers) -> None:
    metadata = {}
    for who, (http_address, _) in servers.targets().items():
        client = httpclient.InferenceServerClient(http_address)
        metadata[who] = {
            name: client.get_model_metadata(name) for name in ("add_sub", "upper", "picky")
        }
        client.close()
    assert metadata["ours"] == metadata["triton"]


# Where the model configuration extension's answer differs, and why (leftovers, listed in
# plugins/triton/README.md): the backend's name is dl-inference's (``triton_python``, the
# platform ``python``), Triton fills ``default_model_filename`` in, and dl-inference pins
# no memory (``optimization``: input/output pinned memory off).
CONFIG_DIFFERENCES = {"backend", "platform", "default_model_filename", "optimization"}


def test_model_config_matches_but_for_known_fields(servers: Servers) -> None:
    for name in ("add_sub", "upper", "picky", "completed"):
        documents = {}
        for who, (http_address, _) in servers.targets().items():
            client = httpclient.InferenceServerClient(http_address)
            documents[who] = client.get_model_config(name)
            client.close()
        differing = {
            k
            for k in documents["ours"] | documents["triton"]
            if documents["ours"].get(k) != documents["triton"].get(k)
        }
        assert differing == CONFIG_DIFFERENCES, name
