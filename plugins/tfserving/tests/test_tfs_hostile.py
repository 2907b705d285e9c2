"""Hostile TF Serving requests against a real server: each gets a client error that says what
was wrong, none costs memory beyond what its bytes justify, each failure is counted once,
and the server answers correctly afterwards.

``dl-inference serve`` runs in a subprocess with only the kernel and this plugin, python-backend
models and a 2 MiB message limit; requests are raw bytes (gRPC) and raw bodies (REST), as an
attacker sends them.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from _tfs_shared import GRPC_METHODS, PREDICT, SEED_PREDICT, write_add_one

from dl_inference.testing import ServerProcess, write_python_model
from dl_inference_tfserving._proto import tfs_pb2

MAX_MESSAGE_MB = 2
GARBAGE = b"\x8a@\xe0"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tfs_hostile")
    repo = root / "models"
    write_add_one(repo)
    write_python_model(
        repo,
        "words",
        """
        import numpy as np
        from dl_inference import PythonModel

        class Words(PythonModel):
            def predict(self, inputs):
                text = inputs["text"].reshape(-1)
                return {"length": np.array([len(t) for t in text], dtype=np.int32)}
        """,
        config="""
        backend: python
        inputs: [{name: text, datatype: BYTES, shape: [-1]}]
        outputs: [{name: length, datatype: INT32, shape: [-1]}]
        """,
    )
    config = root / "server.yaml"
    config.write_text(
        f"model_repository: {repo}\nplugins: {{allow: [tfserving]}}\n"
        f"server: {{grpc: {{max_message_mb: {MAX_MESSAGE_MB}}}}}\n"
    )
    with ServerProcess(["-c", str(config)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as chan:
        yield chan


def raw_call(channel: grpc.Channel, path: str, body: bytes) -> tuple[grpc.StatusCode, str, str]:
    """Send ``body`` as it is; the status code, its details and the request id."""
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        _, info = call.with_call(body, timeout=30)
    except grpc.RpcError as error:
        trailing = dict(error.trailing_metadata() or ())
        return error.code(), error.details(), trailing.get("x-request-id", "")
    return grpc.StatusCode.OK, "", dict(info.trailing_metadata() or ()).get("x-request-id", "")


def http(server: ServerProcess, method: str, path: str, body: bytes | None = None) -> Any:
    """(status, JSON document, request id) of a raw HTTP request."""
    request = urllib.request.Request(server.http_url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read()), reply.headers["x-request-id"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers["x-request-id"]


def predict(name: str, dtype: int, shape: list[int], key: str = "x", **values: Any) -> bytes:
    request = tfs_pb2.PredictRequest()
    request.model_spec.name = name
    tensor = request.inputs[key]
    tensor.dtype = dtype
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    for field, value in values.items():
        if field == "tensor_content":
            tensor.tensor_content = value
        else:
            getattr(tensor, field).extend(value)
    return request.SerializeToString()


def peak_rss(server: ServerProcess) -> int:
    """The server's peak resident set size (VmHWM), in bytes."""
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024  # type: ignore[union-attr]


def counted(server: ServerProcess, status: str) -> float:
    """dli_requests_total for protocol tfserving and ``status``, every model, from /metrics."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dli_requests_total{")
        and 'protocol="tfserving"' in line
        and f'status="{status}"' in line
    )


def good_predict(channel: grpc.Channel) -> None:
    request = predict("pyadd", tfs_pb2.DT_FLOAT, [2], float_val=[1.5, -1.0])
    call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
    reply = tfs_pb2.PredictResponse.FromString(call(request, timeout=30))
    assert list(reply.outputs["y"].float_val) == [2.5, 0.0]


# -- gRPC ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GRPC_METHODS, ids=lambda path: path.rsplit("/", 1)[1])
def test_an_unparsable_body_is_invalid_argument(channel: grpc.Channel, path: str) -> None:
    code, details, request_id = raw_call(channel, path, GARBAGE)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "could not be read" in details and "Request" in details, details
    assert len(request_id) == 32


HOSTILE_TENSORS = {
    "shape 2^31 x 2^31, one value": (
        predict("pyadd", tfs_pb2.DT_FLOAT, [2**31, 2**31], float_val=[1.0]),
        ["[2147483648, 2147483648]", "over the"],
    ),
    "shape 2^31 x 2^31, 4 bytes": (
        predict("pyadd", tfs_pb2.DT_FLOAT, [2**31, 2**31], tensor_content=b"\0" * 4),
        ["holds 4 bytes", "[2147483648, 2147483648]"],
    ),
    "shape 0 x 2^62": (
        predict("pyadd", tfs_pb2.DT_FLOAT, [0, 2**62]),
        ["[0, 4611686018427387904]", "too large"],
    ),
    "strings 2^31 x 2^31": (
        predict("words", tfs_pb2.DT_STRING, [2**31, 2**31], key="text", string_val=[b"a"]),
        ["[2147483648, 2147483648]", "over the"],
    ),
    "uint8 -1": (
        predict("pyadd", tfs_pb2.DT_UINT8, [1], int_val=[-1]),
        ["int_val holds -1", "DT_UINT8", "0..255"],
    ),
    "int8 300": (
        predict("pyadd", tfs_pb2.DT_INT8, [2], int_val=[1, 300]),
        ["int_val holds 300", "DT_INT8", "-128..127"],
    ),
    "half 70000": (
        predict("pyadd", tfs_pb2.DT_HALF, [1], half_val=[70000]),
        ["half_val holds 70000", "DT_HALF", "0..65535"],
    ),
    "unknown dtype 99": (
        predict("pyadd", 99, [1], float_val=[1.0]),
        ["dtype 99 is not supported", "DT_FLOAT"],
    ),
    "complex64": (
        predict("pyadd", tfs_pb2.DT_COMPLEX64, [1], float_val=[1.0, 2.0]),
        ["DT_COMPLEX64 is not supported"],
    ),
    "negative dimension": (
        predict("pyadd", tfs_pb2.DT_FLOAT, [-1], float_val=[1.0]),
        ["[-1] is invalid"],
    ),
}


@pytest.mark.parametrize("path", [PREDICT, SEED_PREDICT], ids=["Predict", "seed Predict"])
@pytest.mark.parametrize("case", list(HOSTILE_TENSORS))
def test_hostile_tensors_are_invalid_argument(channel: grpc.Channel, path: str, case: str) -> None:
    body, words = HOSTILE_TENSORS[case]
    code, details, _ = raw_call(channel, path, body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    for word in words:
        assert word in details, (word, details)


def test_filling_out_a_short_list_is_capped_by_the_message_limit(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    """TF Serving repeats the last value to fill a shape; 33 bytes may not cost 128 MiB."""
    good_predict(channel)  # warm: the first call imports and allocates what every call needs
    before = peak_rss(server)
    body = predict("pyadd", tfs_pb2.DT_FLOAT, [2**25], float_val=[1.0])
    assert len(body) < 40
    code, details, _ = raw_call(channel, PREDICT, body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"over the {MAX_MESSAGE_MB * 1024 * 1024}-byte limit" in details, details
    assert peak_rss(server) - before < 32 * 1024 * 1024
    # Within the limit the fill still works, as in TF Serving.
    fill = predict("pyadd", tfs_pb2.DT_FLOAT, [1000], float_val=[1.0, 2.0])
    call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
    reply = tfs_pb2.PredictResponse.FromString(call(fill, timeout=30))
    got = np.array(reply.outputs["y"].float_val, np.float32)
    assert got[:2].tolist() == [2.0, 3.0] and set(got[2:].tolist()) == {3.0}


def test_a_failure_is_counted_once_and_logged_once(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    before = counted(server, "INVALID_ARGUMENT"), counted(server, "OK")
    code, _, request_id = raw_call(channel, PREDICT, GARBAGE)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    status, _, rest_id = http(server, "POST", "/v1/models/pyadd:predict", b"\xff not UTF-8")
    assert status == 400
    assert counted(server, "INVALID_ARGUMENT") == before[0] + 2
    # One access-log line for each failure, carrying its request id.
    for rid in (request_id, rest_id):
        lines = [line for line in server.output().splitlines() if rid in line]
        assert len(lines) == 1 and "request failed" in lines[0], lines
    good_predict(channel)
    assert counted(server, "OK") == before[1] + 1


# -- REST ------------------------------------------------------------------------------------


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


DEEP = 100_000
HOSTILE_BODIES = {
    "deep instances": (
        "/v1/models/pyadd:predict",
        f'{{"instances": {nested(DEEP)}}}',
        400,
        ["nests", "levels deep"],
    ),
    "deep inputs": (
        "/v1/models/pyadd:predict",
        f'{{"inputs": {{"x": {nested(DEEP)}}}}}',
        400,
        ["nests", "levels deep"],
    ),
    "deep around b64": (
        "/v1/models/words:predict",
        f'{{"inputs": {nested(DEEP, json.dumps({"b64": "YQ=="}))}}}',
        400,
        ["nests", "levels deep"],
    ),
    "deep inside b64": (
        "/v1/models/words:predict",
        f'{{"instances": [{{"b64": {nested(DEEP)}}}]}}',
        400,
        ["nests", "levels deep"],
    ),
    "b64 holding a list": (
        "/v1/models/words:predict",
        '{"instances": [{"b64": [["YQ=="]]}]}',
        400,
        ['{"b64": "<base64>"}'],
    ),
    "deep examples": (
        "/v1/models/pyadd:classify",
        f'{{"examples": [{{"f": {nested(DEEP)}}}]}}',
        400,
        ["nests", "levels deep"],
    ),
    "not UTF-8": ("/v1/models/pyadd:predict", b'{"instances": ["\xff"]}', 400, ["not UTF-8"]),
    "lone surrogate": (
        "/v1/models/words:predict",
        '{"instances": ["\\ud800"]}',
        400,
        ["unpaired surrogate", "element 0"],
    ),
    "version beyond int64": (
        f"/v1/models/pyadd/versions/{2**70}:predict",
        '{"instances": [1.0]}',
        400,
        ["Failed to convert version", str(2**70)],
    ),
    "version of 5000 digits": (
        f"/v1/models/pyadd/versions/{'9' * 5000}:predict",
        '{"instances": [1.0]}',
        400,
        ["Failed to convert version", "(5000 digits)"],
    ),
    "ragged": (
        "/v1/models/pyadd:predict",
        '{"inputs": {"x": [[1.0], [1.0, 2.0]]}}',
        400,
        ["not a rectangular array"],
    ),
    "string for a number": (
        "/v1/models/pyadd:predict",
        '{"instances": [1.0, "a"]}',
        400,
        ["instances element 1", "takes numbers"],
    ),
    "integer beyond any float": (
        "/v1/models/pyadd:predict",
        '{"instances": [1.0, 1' + "0" * 400 + "]}",
        400,
        ["instances holds an integer of 1329 bits"],
    ),
    "int64 example feature": (
        "/v1/models/pyadd:regress",
        f'{{"examples": [{{"f": {2**64}}}]}}',
        400,
        ["examples[0].f", "int64"],
    ),
    "signature_name not a string": (
        "/v1/models/pyadd:predict",
        '{"signature_name": [1], "instances": [1.0]}',
        400,
        ["signature_name"],
    ),
    "not an object": ("/v1/models/pyadd:predict", "[1.0]", 400, ["JSON object"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
def test_hostile_rest_bodies_are_client_errors(server: ServerProcess, case: str) -> None:
    path, body, code, words = HOSTILE_BODIES[case]
    data = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    status, document, _ = http(server, "POST", path, data)
    assert status == code, (case, document)
    if code != 200:
        assert set(document) == {"error"}, document
    for word in words:
        assert word in document["error"], (word, document)


def test_status_of_a_version_beyond_int64(server: ServerProcess) -> None:
    for path in (
        f"/v1/models/pyadd/versions/{2**63}",
        f"/v1/models/pyadd/versions/{2**63}/metadata",
    ):
        status, document, _ = http(server, "GET", path)
        assert status == 400 and "Failed to convert version" in document["error"], document
    status, document, _ = http(server, "GET", f"/v1/models/pyadd/versions/{2**63 - 1}")
    assert status == 404 and "pyadd" in document["error"], document


def test_oversize_bodies_are_413(server: ServerProcess) -> None:
    body = b'{"instances": [' + b"1.0," * (MAX_MESSAGE_MB * 1024 * 1024 // 4) + b"1.0]}"
    for verb in ("predict", "classify", "regress"):
        status, document, _ = http(server, "POST", f"/v1/models/pyadd:{verb}", body)
        assert status == 413, document
        assert "larger than this server accepts" in document["error"], document


def test_the_server_answers_correctly_after_all_that(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    good_predict(channel)
    status, document, _ = http(
        server, "POST", "/v1/models/words:predict", b'{"instances": ["ab", {"b64": "YWJj"}]}'
    )
    assert status == 200 and document["predictions"] == [2, 3], document
    # Every failure above was the client's: none may have become an INTERNAL error.
    assert "unexpected error" not in server.output()
    assert counted(server, "INTERNAL") == 0 and counted(server, "UNKNOWN") == 0
