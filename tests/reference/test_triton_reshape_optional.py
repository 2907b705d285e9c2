"""config.pbtxt's ``optional`` and ``reshape`` served as Triton 2.51 serves them: the SAME
repository folder served by the real Triton (python backend) and by ``dl-inference serve
--model-repository``, the same tritonclient requests to both, compared (values, dtypes,
shapes, error classes, metadata, the model configuration).

Models:

- ``maybe``: FP32 [2] ``A`` and an optional FP32 [2] ``B``, batching; the model answers
  ``A + B``, or ``A * 10`` when ``get_input_tensor_by_name`` gives None for ``B``;
- ``square``: INT32 ``X`` sent as [4], seen by the model as [2, 2] (``reshape``), batching;
  ``Y`` is each 2x2 matrix transposed, produced as [2, 2] and answered as [4]; ``SEEN`` is
  the shape the model saw;
- ``varlen``: FP32 ``X`` sent as [-1, 4], seen as [-1, 2, 2] (the variable size carried
  over); ``Y`` the other way round;
- ``flat``: no batching; FP32 ``X`` sent as [2, 3], seen as [6]; ``Y`` produced as [6],
  answered as [3, 2].
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dl_inference.testing import ServerProcess

from .test_triton_python_backend import CALLS, HEAD, Servers, both, same
from .triton import TritonServer, skip_without_triton

MODELS: dict[str, tuple[str, str]] = {
    "maybe": (
        """
        backend: "python"
        max_batch_size: 8
        dynamic_batching { max_queue_delay_microseconds: 20000 }
        input [
          { name: "A" data_type: TYPE_FP32 dims: [ 2 ] },
          { name: "B" data_type: TYPE_FP32 dims: [ 2 ] optional: true }
        ]
        output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                responses = []
                for request in requests:
                    a = get(request, "A")
                    b = pb_utils.get_input_tensor_by_name(request, "B")
                    out = a * 10 if b is None else a + b.as_numpy()
                    responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
                return responses
        """,
    ),
    "square": (
        """
        backend: "python"
        max_batch_size: 4
        dynamic_batching { }
        input [
          { name: "X" data_type: TYPE_INT32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } }
        ]
        output [
          { name: "Y" data_type: TYPE_INT32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } },
          { name: "SEEN" data_type: TYPE_INT64 dims: [ 3 ] }
        ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                responses = []
                for request in requests:
                    x = get(request, "X")
                    seen = np.array([x.shape] * x.shape[0], dtype=np.int64)
                    y = np.ascontiguousarray(x.transpose(0, 2, 1))
                    if x.flat[0] == -1:  # a model bug: 3 elements where reshape says 4
                        y = y.reshape(x.shape[0], 4)[:, :3].copy()
                    responses.append(pb_utils.InferenceResponse(
                        [pb_utils.Tensor("Y", y), pb_utils.Tensor("SEEN", seen)]))
                return responses
        """,
    ),
    "varlen": (
        """
        backend: "python"
        max_batch_size: 4
        input [
          { name: "X" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape: { shape: [ -1, 2, 2 ] } }
        ]
        output [
          { name: "Y" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape: { shape: [ -1, 2, 2 ] } },
          { name: "SEEN" data_type: TYPE_INT64 dims: [ 4 ] }
        ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                responses = []
                for request in requests:
                    x = get(request, "X")
                    seen = np.array([x.shape] * x.shape[0], dtype=np.int64)
                    responses.append(pb_utils.InferenceResponse(
                        [pb_utils.Tensor("Y", x + 1), pb_utils.Tensor("SEEN", seen)]))
                return responses
        """,
    ),
    "flat": (
        """
        backend: "python"
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 2, 3 ] reshape: { shape: [ 6 ] } } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3, 2 ] reshape: { shape: [ 6 ] } } ]
        """,
        """
        class TritonPythonModel:
            def execute(self, requests):
                out = []
                for request in requests:
                    x = get(request, "X")
                    assert x.shape == (6,), x.shape
                    out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
                return out
        """,
    ),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    skip_without_triton()
    root = tmp_path_factory.mktemp("triton-reshape-optional")
    repository = root / "models"
    for name, (config, code) in MODELS.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(textwrap.dedent(config))
        (repository / name / "1" / "model.py").write_text(HEAD + textwrap.dedent(code))
    triton = TritonServer(repository, root / "triton.log").start()
    try:
        with ServerProcess(["--model-repository", str(repository)]) as ours:
            yield Servers(triton, ours)
    finally:
        triton.stop()


def fp32(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_optional_input_given_and_left_out(servers: Servers, transport: str) -> None:
    a, b = fp32([1, 2], [3, 4]), fp32([0.5, 0.5], [1, 1])
    given = same(both(servers, transport, "maybe", [("A", a), ("B", b)], ["OUT"]))
    assert given["OUT"] == {"dtype": "float32", "shape": [2, 2], "values": [1.5, 2.5, 4, 5]}
    left_out = same(both(servers, transport, "maybe", [("A", a)], ["OUT"]))
    assert left_out["OUT"]["values"] == [10, 20, 30, 40]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_required_input_left_out_is_a_client_error(servers: Servers, transport: str) -> None:
    """A known difference (docs/compatibility.md): Triton 2.51 checks only how many inputs
    a request carries (between the required and all of them), so a request with ``B``
    alone reaches the model, whose ``get_input_tensor_by_name(request, "A")`` is None: an
    INTERNAL error there. dl-inference refuses it by name before the model, a client error
    like any other missing input."""
    client_error = ("400", "StatusCode.INVALID_ARGUMENT")
    answers = both(servers, transport, "maybe", [("B", fp32([1, 2]))], ["OUT"])
    assert answers["ours"]["error"] in client_error
    assert answers["triton"]["error"] in ("500", "StatusCode.INTERNAL")


def test_requests_with_and_without_the_optional_input_at_once(servers: Servers) -> None:
    """Concurrent requests, half with ``B``: each answered as if alone (never merged with
    a request carrying other inputs)."""
    call, index = CALLS["http"]
    calls = [[("A", fp32([i, i]))] + ([("B", fp32([1, 1]))] if i % 2 else []) for i in range(8)]
    for who, addresses in servers.targets().items():
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = list(
                pool.map(lambda c, a=addresses[index]: call(a, "maybe", c, ["OUT"]), calls)
            )
        for i, answer in enumerate(answers):
            expected = [i + 1.0] * 2 if i % 2 else [i * 10.0] * 2
            assert answer["OUT"]["values"] == expected, who


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_reshape_batched(servers: Servers, transport: str) -> None:
    x = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int32)
    answer = same(both(servers, transport, "square", [("X", x)], ["Y", "SEEN"]))
    assert answer["Y"] == {"dtype": "int32", "shape": [2, 4], "values": [1, 3, 2, 4, 5, 7, 6, 8]}
    assert answer["SEEN"]["values"] == [2, 2, 2] * 2


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_reshape_with_a_variable_dimension(servers: Servers, transport: str) -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    answer = same(both(servers, transport, "varlen", [("X", x)], ["Y", "SEEN"]))
    assert answer["Y"] == {"dtype": "float32", "shape": [2, 3, 4], "values": list(range(1, 25))}
    assert answer["SEEN"]["values"] == [2, 3, 2, 2] * 2


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_reshape_without_batching(servers: Servers, transport: str) -> None:
    x = fp32([1, 2, 3], [4, 5, 6])
    answer = same(both(servers, transport, "flat", [("X", x)], ["Y"]))
    assert answer["Y"] == {"dtype": "float32", "shape": [3, 2], "values": [2, 4, 6, 8, 10, 12]}


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(
    ("model", "array"),
    [
        ("square", np.arange(5, dtype=np.int32).reshape(1, 5)),
        ("flat", fp32([1, 2], [3, 4], [5, 6])),
    ],
)
def test_a_wrong_element_count_is_a_client_error(
    servers: Servers, transport: str, model: str, array: np.ndarray
) -> None:
    answer = same(both(servers, transport, model, [("X", array)], ["Y"]))
    assert answer["error"] in ("400", "StatusCode.INVALID_ARGUMENT")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_an_output_of_the_wrong_size_is_the_models_error(servers: Servers, transport: str) -> None:
    """A known difference (docs/compatibility.md): a model output that does not hold
    ``reshape``'s elements is the model's error here (500 / INTERNAL, naming the output);
    Triton 2.51 sends it as it is, labelled with ``dims``: a reply whose shape and data
    disagree, which tritonclient cannot read."""
    x = np.array([[-1, 2, 3, 4]], dtype=np.int32)
    call, index = CALLS[transport]
    ours = call(servers.targets()["ours"][index], "square", [("X", x)], ["Y"])
    assert ours == {"error": ("500", "StatusCode.INTERNAL")[index]}
    with pytest.raises(ValueError, match="cannot reshape array of size 3 into shape"):
        call(servers.targets()["triton"][index], "square", [("X", x)], ["Y"])


def test_metadata_and_config_match(servers: Servers) -> None:
    """Metadata shows ``dims`` (what clients send), not the reshape; the configuration
    keeps ``reshape`` and ``optional`` as config.pbtxt has them."""
    answers = {}
    for who, (http_address, grpc_address) in servers.targets().items():
        client = httpclient.InferenceServerClient(http_address)
        answers[who] = {
            name: (
                client.get_model_metadata(name)["inputs"],
                client.get_model_metadata(name)["outputs"],
                {k: client.get_model_config(name)[k] for k in ("input", "output")},
            )
            for name in MODELS
        }
        client.close()
        channel = grpcclient.InferenceServerClient(grpc_address)
        for name in MODELS:  # gRPC ModelConfig too (JSON form: 64-bit numbers as text)
            config = channel.get_model_config(name, as_json=True)["config"]
            answers[who][f"{name} (gRPC)"] = {k: config[k] for k in ("input", "output")}
        channel.close()
    assert answers["ours"] == answers["triton"]
    inputs, _, config = answers["ours"]["maybe"]
    assert [i["shape"] for i in inputs] == [[-1, 2], [-1, 2]]
    assert [i["optional"] for i in config["input"]] == [False, True]
    assert answers["ours"]["square"][2]["input"][0]["reshape"] == {"shape": [2, 2]}
