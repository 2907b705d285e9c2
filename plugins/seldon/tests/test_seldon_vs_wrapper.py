"""Side by side with Seldon Core's own Python wrapper (seldon-core 1.18.2), the reference.

The wrapper (``seldon-core-microservice``, from its own venv: it pins protobuf<4) runs as a
separate process on free ports with a small user model; a dl-inference worker serves the
equivalent python-backend model. Every request form goes to both, over gRPC (our messages
bound to ``/seldon.protos.Model/Predict``: the bytes are the same) and REST, with and
without ``names``, ``meta.puid`` and tags, and the replies must be equal: which oneof is
set, names, values, tags and puid, status codes and error bodies. What differs on purpose
is pinned by a test here and listed in the plugin's README ("Differences from Seldon Core's
wrapper"), with the reason.

The wrapper is found as ``$DLI_REFERENCE_DIR/seldon`` (default ``<repo>/.reference/seldon``,
made by ``scripts/install_reference_servers.sh``); the tests skip, saying why, when it is
missing or cannot start.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format

from dl_inference.testing import ServerProcess, free_port, write_python_model
from dl_inference_seldon._proto import seldon_pb2 as pb
from dl_inference_seldon.protocol import REST_PATH, SEED_SERVICE

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = Path(os.environ.get("DLI_REFERENCE_DIR", ROOT / ".reference")) / "seldon"
MODEL_PREDICT = "/seldon.protos.Model/Predict"

# A payload (bytes, or text for strData / a JSON string) says what the model returns, so
# that both models answer every value type the wrapper knows: str/bytes, lists of strings,
# integers, 1-D and 2-D floats.
WRAPPER_MODEL = """
    import numpy as np


    def respond(payload):
        raw = payload.encode() if isinstance(payload, str) else payload
        if raw.startswith(b"echo:"):
            return payload[5:]  # str for strData, bytes for binData
        if raw.startswith(b"words:"):
            return raw[6:].decode().split()
        if raw.startswith(b"ints:"):
            return np.array([int(t) for t in raw[5:].split()]) * 2
        if raw.startswith(b"rows:"):
            return np.array([[float(t) for t in raw[5:].split()]]) * 2
        return np.frombuffer(raw, dtype=np.uint8).astype(np.float64) * 2


    class Doubler:
        def predict(self, X, features_names=None, **kwargs):
            if isinstance(X, (bytes, str)):
                return respond(X)
            if isinstance(X, dict):
                return {"y": (np.asarray(X["x"], dtype=np.float64) * 2).tolist()}
            array = np.asarray(X)
            if array.dtype.kind in "USb":  # strings and booleans come back as they are
                return array
            return array.astype(np.float64) * 2
"""
OUR_MODEL = """
    import numpy as np
    from dl_inference import PythonModel


    def respond(raw):
        if raw.startswith(b"echo:"):
            out = np.empty(1, dtype=object)
            out[0] = raw[5:]
            return out
        if raw.startswith(b"words:"):
            return np.array(raw[6:].split(), dtype=object)
        if raw.startswith(b"ints:"):
            return np.array([int(t) for t in raw[5:].split()], dtype=np.int64) * 2
        if raw.startswith(b"rows:"):
            return np.array([[float(t) for t in raw[5:].split()]]) * 2
        return np.frombuffer(raw, dtype=np.uint8).astype(np.float64) * 2


    class Doubler(PythonModel):
        def predict(self, inputs, **parameters):
            if "x" in inputs:  # jsonData {"x": ...}
                return {"y": inputs["x"].astype(np.float64) * 2}
            (array,) = inputs.values()
            if array.dtype == object and array.size == 1 and array.ndim <= 1:
                return {"y": respond(bytes(array.reshape(-1)[0]))}
            if array.dtype == object or array.dtype == bool:
                return {"y": array}
            return {"y": array.astype(np.float64) * 2}
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Every request form, as the JSON body REST sends; gRPC sends the same message.
FORMS: dict[str, dict[str, Any]] = {
    "tensor": {"data": {"tensor": {"shape": [2, 2], "values": [1, 2, 3, 4.5]}}},
    "tensor-1d": {"data": {"tensor": {"shape": [3], "values": [1, -2, 0.5]}}},
    "ndarray": {"data": {"ndarray": [[1, 2], [3, 4.5]]}},
    "ndarray-names": {"data": {"names": ["a", "b"], "ndarray": [[1, 2.5]]}},
    "tensor-names": {"data": {"names": ["a"], "tensor": {"shape": [1], "values": [7.5]}}},
    "ndarray-strings": {"data": {"ndarray": [["a", "b"], ["c", "d"]]}},
    "ndarray-booleans": {"data": {"ndarray": [True, False]}},
    "binData": {"binData": b64(b"\x01\x02\xff")},
    "binData-echo": {"binData": b64(b"echo:\x00\xffraw")},
    "strData": {"strData": "rows:1 2.5 -3"},
    "strData-echo": {"strData": "echo:bonjour"},
    "strData-words": {"strData": "words:un deux"},
    "strData-ints": {"strData": "ints:1 2"},
    "jsonData-object": {"jsonData": {"x": [1, 2.5]}},
    "jsonData-list": {"jsonData": [[1, 2], [3, 4.5]]},
    "jsonData-string": {"jsonData": "echo:salut"},
    "jsonData-strings": {"jsonData": ["a", "b"]},
}
META = {"puid": "puid-7", "tags": {"a": 1.5, "n": 69, "s": "x", "flag": True}}


@dataclass
class Wrapper:
    """Seldon Core's wrapper serving the Doubler model."""

    grpc_address: str
    http_url: str


@dataclass
class Side:
    """One server under comparison: gRPC path calls and REST posts."""

    grpc_address: str
    http_url: str

    def call(
        self, message: pb.SeldonMessage, path: str = MODEL_PREDICT, timeout: float = 30
    ) -> pb.SeldonMessage:
        with grpc.insecure_channel(self.grpc_address) as channel:
            stub = channel.unary_unary(
                path,
                request_serializer=pb.SeldonMessage.SerializeToString,
                response_deserializer=pb.SeldonMessage.FromString,
            )
            return stub(message, timeout=timeout)

    def failure(self, request: pb.SeldonMessage | bytes) -> grpc.RpcError:
        with grpc.insecure_channel(self.grpc_address) as channel:
            stub = channel.unary_unary(MODEL_PREDICT)  # raw bytes both ways
            data = request if isinstance(request, bytes) else request.SerializeToString()
            with pytest.raises(grpc.RpcError) as caught:
                stub(data, timeout=30)
        return caught.value

    def post(self, body: dict[str, Any] | list[Any] | bytes) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.http_url + REST_PATH, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the wrapper's own process group (it forks gunicorn and gRPC workers)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _ready(side: Side, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(side.http_url + "/health/ping", timeout=2):
                pass
            with grpc.insecure_channel(side.grpc_address) as channel:
                grpc.channel_ready_future(channel).result(timeout=2)
            return True
        except (OSError, grpc.FutureTimeoutError):
            time.sleep(0.3)
    return False


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    command = REFERENCE / "bin" / "seldon-core-microservice"
    if not command.exists():
        pytest.skip(
            f"Seldon Core's wrapper is not installed at {REFERENCE} "
            "(scripts/install_reference_servers.sh makes it)"
        )
    folder = tmp_path_factory.mktemp("wrapper")
    (folder / "Doubler.py").write_text(textwrap.dedent(WRAPPER_MODEL))
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log = folder / "wrapper.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(command),
                "Doubler",
                "--service-type",
                "MODEL",
                "--http-port",
                str(http),
                "--grpc-port",
                str(grpc_port),
                "--metrics-port",
                str(metrics),
                "--workers",
                "1",
                "--threads",
                "2",
                "--grpc-workers",
                "1",
            ],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    side = Side(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http}")
    try:
        if not _ready(side, process, timeout=90):
            tail = log.read_text(errors="replace")[-2000:]
            pytest.skip(f"Seldon Core's wrapper did not start; its log ends with:\n{tail}")
        yield side
    finally:
        _stop_group(process)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    root = tmp_path_factory.mktemp("repo")
    write_python_model(root, "doubler", OUR_MODEL)
    with ServerProcess(["--model-repository", str(root)]) as server:
        yield Side(server.grpc_address, server.http_url)


def message_of(form: dict[str, Any], meta: dict[str, Any] | None) -> pb.SeldonMessage:
    message = pb.SeldonMessage()
    json_format.ParseDict({**form, **({"meta": meta} if meta else {})}, message)
    return message


def typed(value: Any) -> Any:
    """JSON with its number types kept: 2 and 2.0 differ, as they do on the wire."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (type(value).__name__, value)
    return value


def without_our_puid(reply: dict[str, Any], meta: dict[str, Any] | None) -> dict[str, Any]:
    """Ours with the puid it generates when the request has none (the wrapper writes none)."""
    if meta and meta.get("puid"):
        return reply
    assert reply["meta"].pop("puid"), reply  # a generated puid, never empty
    return reply


CASES = [
    pytest.param(name, meta, id=f"{name}{'-meta' if meta else ''}")
    for name in FORMS
    for meta in (None, META)
]


# -- replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "meta"), CASES)
def test_grpc_replies_equal_the_wrappers(
    wrapper: Side, ours: Side, name: str, meta: dict[str, Any] | None
) -> None:
    message = message_of(FORMS[name], meta)
    theirs = json_format.MessageToDict(wrapper.call(message))
    mine = without_our_puid(json_format.MessageToDict(ours.call(message)), meta)
    assert mine == theirs


@pytest.mark.parametrize(("name", "meta"), CASES)
def test_rest_replies_equal_the_wrappers(
    wrapper: Side, ours: Side, name: str, meta: dict[str, Any] | None
) -> None:
    body = {**FORMS[name], **({"meta": meta} if meta else {})}
    their_code, theirs = wrapper.post(body)
    my_code, mine = ours.post(body)
    assert (my_code, their_code) == (200, 200), (mine, theirs)
    assert typed(without_our_puid(mine, meta)) == typed(theirs)


def test_the_seeds_client_reads_data_tensor_values_for_bin_data(wrapper: Side, ours: Side) -> None:
    """The seed's PyTorchMnist client sends image bytes and reads ``data.tensor.values``."""
    message = pb.SeldonMessage(binData=bytes(range(10)))
    for side in (wrapper, ours):
        reply = side.call(message)
        assert reply.data.WhichOneof("data_oneof") == "tensor"
        assert list(reply.data.tensor.values) == [2.0 * i for i in range(10)]


def test_tftensor_needs_tensorflow_in_the_wrapper(wrapper: Side, ours: Side) -> None:
    """The wrapper reads and writes a tftensor with TensorFlow, which its venv lacks; ours
    answers in kind, numbers in ``tensor_content`` as ``tf.make_tensor_proto`` writes them."""
    form = {
        "data": {
            "tftensor": {
                "dtype": "DT_FLOAT",
                "tensorShape": {"dim": [{"size": "2"}]},
                "floatVal": [1, 2.5],
            }
        }
    }
    error = wrapper.failure(message_of(form, None))
    assert error.code() is grpc.StatusCode.UNKNOWN and "'tf' is not defined" in error.details()
    code, body = wrapper.post(form)
    assert code == 500 and "TensorProto" in body["status"]["info"]

    reply = ours.call(message_of(form, None)).data
    assert reply.WhichOneof("data_oneof") == "tftensor" and list(reply.names) == []
    assert reply.tftensor.dtype == pb.DT_DOUBLE and reply.tftensor.tensor_content
    code, body = ours.post(form)
    assert code == 200 and body["data"]["tftensor"]["dtype"] == "DT_DOUBLE"


def test_a_tensor_without_shape_is_read_flat_here(wrapper: Side, ours: Side) -> None:
    """The wrapper cannot read a ``data.tensor`` with no shape (gRPC UNKNOWN, REST 500);
    here its values are a flat list."""
    form = {"data": {"tensor": {"values": [1, 2.5]}}}
    assert wrapper.failure(message_of(form, None)).code() is grpc.StatusCode.UNKNOWN
    assert wrapper.post(form)[0] == 500
    reply = ours.call(message_of(form, None)).data.tensor
    assert (list(reply.shape), list(reply.values)) == ([2], [2.0, 5.0])
    code, body = ours.post(form)
    assert code == 200 and body["data"]["tensor"] == {"shape": [2], "values": [2.0, 5.0]}


# -- errors ----------------------------------------------------------------------------------

# (body, what both answer) for bad REST requests the wrapper also refuses with a 400.
REST_REFUSED = [
    pytest.param(b"{not json", id="not-json"),
    pytest.param({"meta": {"puid": "p"}}, id="no-data"),
    pytest.param([1, 2], id="not-an-object"),
]


@pytest.mark.parametrize("body", REST_REFUSED)
def test_rest_client_errors_are_400_bad_data_as_the_wrappers(
    wrapper: Side, ours: Side, body: Any
) -> None:
    their_code, theirs = wrapper.post(body)
    my_code, mine = ours.post(body)
    assert my_code == their_code == 400
    assert set(mine) == set(theirs) == {"status"}
    assert set(mine["status"]) == set(theirs["status"]) == {"code", "info", "reason", "status"}
    for status in (mine["status"], theirs["status"]):
        assert (status["status"], status["reason"]) == (1, "MICROSERVICE_BAD_DATA")
        assert status["info"]
    # The wrapper's code is always -1; ours is the HTTP status.
    assert (theirs["status"]["code"], mine["status"]["code"]) == (-1, 400)


def test_data_the_model_cannot_take_is_a_client_error_here(wrapper: Side, ours: Side) -> None:
    """The wrapper answers 500 MICROSERVICE_INTERNAL_ERROR when the model's numpy call fails
    on what the client sent (values that do not fill the shape); here it is the client's
    error, 400 MICROSERVICE_BAD_DATA, before the model runs."""
    body = {"data": {"tensor": {"shape": [3], "values": [1, 2]}}}
    their_code, theirs = wrapper.post(body)
    assert (their_code, theirs["status"]["reason"]) == (500, "MICROSERVICE_INTERNAL_ERROR")
    my_code, mine = ours.post(body)
    assert (my_code, mine["status"]["reason"]) == (400, "MICROSERVICE_BAD_DATA")
    assert "[3]" in mine["status"]["info"]


def test_empty_data_is_refused_here(wrapper: Side, ours: Side) -> None:
    """``{"data": {}}``: the wrapper hands the model an empty array; here it is refused."""
    their_code, theirs = wrapper.post({"data": {}})
    assert their_code == 200 and theirs["data"]["ndarray"] == []
    my_code, mine = ours.post({"data": {}})
    assert my_code == 400 and "holds no tensor, ndarray or tftensor" in mine["status"]["info"]


@pytest.mark.parametrize(
    ("request_bytes", "their_code"),
    [
        pytest.param(b"", grpc.StatusCode.UNKNOWN, id="no-data"),
        pytest.param(b"\xff\xff\xff", grpc.StatusCode.INTERNAL, id="not-a-message"),
        pytest.param(
            message_of(
                {"data": {"tensor": {"shape": [3], "values": [1]}}}, None
            ).SerializeToString(),
            grpc.StatusCode.UNKNOWN,
            id="values-short-of-the-shape",
        ),
    ],
)
def test_grpc_client_errors_are_invalid_argument_here(
    wrapper: Side, ours: Side, request_bytes: bytes, their_code: grpc.StatusCode
) -> None:
    """The wrapper answers every failure as UNKNOWN ("Exception calling application") or
    INTERNAL; here a client's error is INVALID_ARGUMENT with Seldon's Status in a trailer."""
    theirs = wrapper.failure(request_bytes)
    assert theirs.code() is their_code
    mine = ours.failure(request_bytes)
    assert mine.code() is grpc.StatusCode.INVALID_ARGUMENT, mine.details()
    assert "seldon-status-bin" in dict(mine.trailing_metadata() or ())


# -- the seed's methods through a gateway, to the wrapper -----------------------------------


@pytest.fixture(scope="module")
def gateway_to_wrapper(wrapper: Side, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    config = tmp_path_factory.mktemp("gateway") / "gateway.yaml"
    routes = [{"model": "wrapped", "nodes": [{"address": wrapper.grpc_address}]}]
    config.write_text(yaml.safe_dump({"routes": routes}))
    with ServerProcess(["-c", str(config)]) as server:
        yield Side(server.grpc_address, server.http_url)


@pytest.mark.parametrize("method", ["PytorchPredict", "CaffePredict"])
def test_the_seeds_methods_reach_a_real_seldon_node_through_a_gateway(
    wrapper: Side, gateway_to_wrapper: Side, method: str
) -> None:
    """The wrapper serves only Seldon's own services: the gateway sends PytorchPredict and
    CaffePredict on as ``/seldon.protos.Model/Predict``, the same bytes, as the seed did."""
    message = message_of(FORMS["binData"], {"tags": {"model": "wrapped"}, "puid": "p"})
    direct = wrapper.call(message)
    routed = gateway_to_wrapper.call(message, path=f"/{SEED_SERVICE}/{method}")
    assert routed == direct and routed.data.WhichOneof("data_oneof") == "tensor"
    # The path as called does not exist on the wrapper: only the rewrite reaches it.
    with pytest.raises(grpc.RpcError) as caught:
        wrapper.call(message, path=f"/{SEED_SERVICE}/{method}")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
