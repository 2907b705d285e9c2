"""Hostile Seldon requests against a real server: each gets a client error that says what
was wrong, is counted once (metrics, ``dli_on_error``), and the server answers after.

The server (a subprocess) serves python-backend models and a small test plugin found on
``PYTHONPATH`` through its own dist-info, as a pip-installed plugin is: it records the
``dli_authorize`` and ``dli_on_error`` calls it sees (with ``ctx.method``) to a file, and
refuses callers that the ``x-test-caller`` header names ``anonymous`` or ``stranger``.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from _seldon_real import real_messages
from google.protobuf import json_format

from dl_inference import MAX_JSON_DEPTH
from dl_inference.testing import ServerProcess, write_python_model
from dl_inference_seldon._proto import seldon_pb2 as pb
from dl_inference_seldon.protocol import PREDICT_PATHS, REST_PATH, STATUS_TRAILER

MODEL_PREDICT = "/seldon.protos.Model/Predict"
REST_METHOD = f"POST {REST_PATH}"
MAX_MESSAGE_MB = 2
LIMIT = MAX_MESSAGE_MB * 1024 * 1024
# Memory all hostile requests of one test may add to the server's peak resident size; a
# single 2**25-element float32 fill would take 128 MiB.
PEAK_GROWTH_LIMIT = 48 * 1024 * 1024

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
FP32_CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""
OVERFLOW = """
    import numpy as np
    from dl_inference import PythonModel

    class Overflow(PythonModel):
        def predict(self, inputs, **parameters):
            with np.errstate(over="ignore"):
                return {"y": inputs["x"] * np.float32(3e38)}
"""
DOUBLE = """
    from dl_inference import PythonModel

    class Double(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["ids"] * 2}
"""
INT64_CONFIG = """
    inputs: [{name: ids, datatype: INT64, shape: [-1]}]
    outputs: [{name: y, datatype: INT64, shape: [-1]}]
"""
RECORDER = '''
"""Records the per-request hooks it sees; refuses the callers tests name."""
import json
import os

from dl_inference import Decision, hookimpl


def _record(hook, ctx, **extra):
    if ctx.protocol != "seldon":
        return
    line = {"hook": hook, "method": ctx.method, "request_id": ctx.request_id, **extra}
    with open(os.environ["SELDON_RECORDER_LOG"], "a") as log:
        log.write(json.dumps(line) + "\\n")


@hookimpl
def dli_authorize(ctx):
    model = ctx.request.model_name if ctx.request is not None else None
    _record("authorize", ctx, model=model)
    caller = ctx.metadata.get("x-test-caller")
    if caller == "anonymous":
        return Decision.deny("send credentials", authenticated=False)
    if caller == "stranger":
        return Decision.deny("this caller may not call that model")
    return None


@hookimpl
def dli_on_error(ctx, error):
    _record("error", ctx, error=type(error).__name__)
'''


def install_recorder(site: Path) -> None:
    """The recorder as an installed distribution: a module and its dist-info."""
    site.mkdir(parents=True)
    (site / "seldon_recorder.py").write_text(RECORDER)
    info = site / "seldon_recorder-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: seldon-recorder\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dl_inference]\nseldon_recorder = seldon_recorder\n")


@dataclass
class Served:
    server: ServerProcess
    channel: grpc.Channel
    log: Path

    def grpc(
        self, body: bytes | pb.SeldonMessage, path: str = MODEL_PREDICT, **metadata: str
    ) -> pb.SeldonMessage:
        data = body if isinstance(body, bytes) else body.SerializeToString()
        stub = self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return pb.SeldonMessage.FromString(stub(data, metadata=tuple(metadata.items()), timeout=60))

    def grpc_error(
        self, body: bytes | pb.SeldonMessage, path: str = MODEL_PREDICT, **metadata: str
    ) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            self.grpc(body, path, **metadata)
        return caught.value

    def post(self, body: bytes | dict[str, Any], **headers: str) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(
            self.server.http_url + REST_PATH,
            data=data,
            headers={"Content-Type": "application/json", **headers},
            timeout=60,
        )

    def seldon_counts(self) -> dict[str, float]:
        """``dli_requests_total`` of protocol ``seldon``, summed by status."""
        text = requests.get(self.server.http_url + "/metrics", timeout=30).text
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("dli_requests_total{") and 'protocol="seldon"' in line:
                status = re.search(r'status="([A-Z_]+)"', line)
                assert status, line
                counts[status.group(1)] = counts.get(status.group(1), 0) + float(line.split()[-1])
        return counts

    def records(self, request_id: str) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [line for line in lines if line["request_id"] == request_id]

    def peak_rss(self) -> int:
        assert self.server.process is not None
        status = Path(f"/proc/{self.server.process.pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
        return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hostile")
    models = root / "models"
    write_python_model(models, "add_one", ADD_ONE, FP32_CONFIG)
    write_python_model(models, "overflow", OVERFLOW, FP32_CONFIG)
    write_python_model(models, "double", DOUBLE, INT64_CONFIG)
    install_recorder(root / "site")
    config = root / "server.yaml"
    config.write_text(
        f"model_repository: {models}\nserver: {{grpc: {{max_message_mb: {MAX_MESSAGE_MB}}}}}\n"
    )
    env = {"PYTHONPATH": str(root / "site"), "SELDON_RECORDER_LOG": str(root / "hooks.jsonl")}
    with ServerProcess(["-c", str(config)], env=env) as server:
        channel = grpc.insecure_channel(server.grpc_address)
        try:
            yield Served(server, channel, root / "hooks.jsonl")
        finally:
            channel.close()


def message(model: str | None = "add_one", **tags: Any) -> pb.SeldonMessage:
    out = pb.SeldonMessage()
    if model is not None:
        out.meta.tags["model"].string_value = model
    for key, value in tags.items():
        json_format.ParseDict(value, out.meta.tags[key])
    return out


def tensor(values: list[float], shape: list[int], model: str = "add_one") -> pb.SeldonMessage:
    out = message(model)
    out.data.tensor.shape.extend(shape)
    out.data.tensor.values.extend(values)
    return out


def tftensor(dtype: int, shape: list[int], **fields: Any) -> pb.SeldonMessage:
    out = message()
    out.data.tftensor.dtype = dtype
    out.data.tftensor.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=d) for d in shape)
    for name, value in fields.items():
        if isinstance(value, bytes):
            setattr(out.data.tftensor, name, value)
        else:
            getattr(out.data.tftensor, name).extend(value)
    return out


def seldon_status(error: grpc.RpcError) -> Any:
    trailers = dict(error.trailing_metadata() or ())
    return real_messages()["seldon.protos.Status"].FromString(trailers[STATUS_TRAILER])


def expect_invalid(error: grpc.RpcError, *fragments: str) -> None:
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    for fragment in fragments:
        assert fragment in error.details(), error.details()
    status = seldon_status(error)
    assert (status.code, status.reason, status.info) == (
        400,
        "MICROSERVICE_BAD_DATA",
        error.details(),
    )


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def nested_ndarray(depth: int) -> bytes:
    """A SeldonMessage for add_one whose data.ndarray nests ``depth`` lists around a 1.

    Built from the inside out with the headers joined once: concatenating 100,000 levels
    one by one would copy gigabytes.
    """
    one = b"\x11" + np.float64(1).tobytes()  # Value.number_value = 1.0
    headers: list[bytes] = []
    size = len(one)
    for _ in range(depth - 1):
        # ListValue.values (1) around a Value, then Value.list_value (6) around that list.
        for number in (1, 6):
            header = varint(number << 3 | 2) + varint(size)
            headers.append(header)
            size += len(header)
    payload = b"".join(reversed(headers)) + one
    ndarray = field(1, payload)  # the ndarray ListValue's first value
    return message().SerializeToString() + field(3, field(3, ndarray))


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested_json(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


# -- the call path --------------------------------------------------------------------------


@pytest.mark.parametrize("path", PREDICT_PATHS)
def test_unparsable_bytes_are_invalid_argument_counted_once_with_the_method_called(
    served: Served, path: str
) -> None:
    before = served.seldon_counts()
    request_id = uuid.uuid4().hex
    error = served.grpc_error(b"\x8a@\xe0", path, **{"x-request-id": request_id})
    expect_invalid(error, "the SeldonMessage could not be read")
    assert dict(error.trailing_metadata())["x-request-id"] == request_id
    after = served.seldon_counts()
    assert after.get("INVALID_ARGUMENT", 0) - before.get("INVALID_ARGUMENT", 0) == 1
    assert served.records(request_id) == [
        {"hook": "error", "method": path, "request_id": request_id, "error": "InvalidInput"}
    ]


def test_failures_in_and_around_inference_are_counted_once(served: Served) -> None:
    cases = [
        (tensor([1, 2], [2, 3]), "InvalidInput"),  # decoding: before infer
        (tensor([1, 2], [1, 2]), "InvalidInput"),  # shape validation: inside infer
        (tensor([1], [1], model="no_such_model"), "ModelNotFound"),
    ]
    for request, error_name in cases:
        before = served.seldon_counts()
        request_id = uuid.uuid4().hex
        served.grpc_error(request, **{"x-request-id": request_id})
        after = served.seldon_counts()
        assert sum(after.values()) - sum(before.values()) == 1, (error_name, before, after)
        errors = [r for r in served.records(request_id) if r["hook"] == "error"]
        assert errors == [
            {
                "hook": "error",
                "method": MODEL_PREDICT,
                "request_id": request_id,
                "error": error_name,
            }
        ]


def test_rest_failures_are_counted_once_with_the_route_as_method(served: Served) -> None:
    before = served.seldon_counts()
    request_id = uuid.uuid4().hex
    reply = served.post(b"{not json", **{"x-request-id": request_id})
    assert reply.status_code == 400 and reply.headers["x-request-id"] == request_id
    status = reply.json()["status"]
    assert (status["code"], status["status"], status["reason"]) == (
        400,
        1,  # FAILURE, as the number Seldon's wrapper writes
        "MICROSERVICE_BAD_DATA",
    )
    assert status["info"].startswith(
        "the body is not a JSON SeldonMessage: it is not valid JSON: Expecting property name"
    )
    assert status["info"].endswith(
        'A SeldonMessage looks like {"data": {"ndarray": [[1, 2]]}, '
        '"meta": {"tags": {"model": "name"}}}'
    )
    after = served.seldon_counts()
    assert after.get("INVALID_ARGUMENT", 0) - before.get("INVALID_ARGUMENT", 0) == 1
    assert [r["method"] for r in served.records(request_id)] == [REST_METHOD]


# -- authorization before any model lookup --------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "code", "status"),
    [
        ("anonymous", grpc.StatusCode.UNAUTHENTICATED, 401),
        ("stranger", grpc.StatusCode.PERMISSION_DENIED, 403),
        ("friend", grpc.StatusCode.NOT_FOUND, 404),
    ],
)
def test_unauthorized_callers_learn_nothing_about_unknown_models(
    served: Served, caller: str, code: grpc.StatusCode, status: int
) -> None:
    request_id = uuid.uuid4().hex
    error = served.grpc_error(
        tensor([1], [1], model="no_such_model"),
        **{"x-test-caller": caller, "x-request-id": request_id},
    )
    assert error.code() is code, error.details()
    assert ("no_such_model" in error.details()) is (caller == "friend"), error.details()
    authorized = [r for r in served.records(request_id) if r["hook"] == "authorize"]
    assert [r["model"] for r in authorized] == ["no_such_model"]

    reply = served.post(
        {"meta": {"tags": {"model": "no_such_model"}}, "data": {"ndarray": [1]}},
        **{"x-test-caller": caller},
    )
    assert reply.status_code == status, reply.text
    assert reply.json()["status"]["code"] == status


def test_authorization_is_asked_once_per_request(served: Served) -> None:
    request_id = uuid.uuid4().hex
    reply = served.grpc(tensor([1, 2], [2]), **{"x-request-id": request_id})
    assert list(reply.data.tensor.values) == [2, 3]
    assert [r["hook"] for r in served.records(request_id)] == ["authorize"]
    error = served.grpc_error(tensor([1], [1]), **{"x-test-caller": "stranger"})
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert seldon_status(error).code == 403


def test_unnamed_model_lists_the_models_only_to_authorized_callers(served: Served) -> None:
    unnamed = tensor([1], [1])
    del unnamed.meta.tags["model"]
    error = served.grpc_error(unnamed, **{"x-test-caller": "anonymous"})
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "add_one" not in error.details()
    error = served.grpc_error(unnamed)
    expect_invalid(error, "several models", "add_one")


# -- sizes bounded by the bytes sent --------------------------------------------------------


def test_huge_declared_shapes_are_refused_before_allocation(served: Served) -> None:
    baseline = served.peak_rss()
    error = served.grpc_error(tftensor(pb.DT_FLOAT, [2**31, 2**31], float_val=[1.0]))
    expect_invalid(error, "[2147483648, 2147483648]", "filling it out")
    error = served.grpc_error(tftensor(pb.DT_FLOAT, [2**31, 2**31], tensor_content=b"\0" * 4))
    expect_invalid(error, "tensor_content holds 4 bytes", "[2147483648, 2147483648]")
    error = served.grpc_error(tftensor(pb.DT_STRING, [2**31, 2**31], string_val=[b"a"]))
    expect_invalid(error, "[2147483648, 2147483648]")
    # 2**25 floats are 128 MiB: over the server's 2 MiB message limit, so never filled.
    error = served.grpc_error(tftensor(pb.DT_FLOAT, [2**25], float_val=[1.0]))
    expect_invalid(error, "filling it out with the last value would take 134217728 bytes")
    error = served.grpc_error(tensor([1.0], [2**30, 2**30]))
    expect_invalid(error, "tensor.values holds 1 values", "[1073741824, 1073741824]")
    error = served.grpc_error(tensor([1.0], [0, 2**31 - 1, 2**31 - 1]))
    expect_invalid(error, "tensor.values holds 1 values")
    error = served.grpc_error(tensor([1.0, 2.0], [-2]))
    expect_invalid(error, "shape [-2] is invalid")
    assert served.peak_rss() - baseline < PEAK_GROWTH_LIMIT


def test_tftensor_fill_within_the_limit_follows_tensorflow(served: Served) -> None:
    reply = served.grpc(tftensor(pb.DT_FLOAT, [4], float_val=[1.0, 2.5]))
    got = np.frombuffer(reply.data.tftensor.tensor_content, "<f4")
    assert got.tolist() == [2.0, 3.5, 3.5, 3.5]  # the last value repeated, plus one


def test_typed_values_out_of_range_for_the_dtype(served: Served) -> None:
    error = served.grpc_error(tftensor(pb.DT_UINT8, [1], int_val=[-1]))
    expect_invalid(error, "int_val holds -1", "DT_UINT8 (0..255)")
    error = served.grpc_error(tftensor(pb.DT_HALF, [1], half_val=[70000]))
    expect_invalid(error, "half_val holds 70000", "float16 bit patterns (0..65535)")
    error = served.grpc_error(tftensor(pb.DT_INT8, [2], int_val=[1, 300]))
    expect_invalid(error, "int_val holds 300")


def test_tensor_shape_and_values_must_agree(served: Served) -> None:
    error = served.grpc_error(tensor([1.0], [2, 3]))
    expect_invalid(error, "tensor.values holds 1 values but FP64 shape [2, 3] needs 6")


def test_oversize_rest_body_is_413_in_seldons_format(served: Served) -> None:
    before = served.seldon_counts()
    body = (
        b'{"data": {"ndarray": [' + b"1," * LIMIT + b'1]}, "meta": {"tags": {"model": "add_one"}}}'
    )
    reply = served.post(body)
    assert reply.status_code == 413, reply.text[:300]
    status = reply.json()["status"]
    assert status["code"] == 413 and status["status"] == 1
    assert f"({LIMIT} bytes)" in status["info"] and "max_message_mb" in status["info"]
    after = served.seldon_counts()
    assert after.get("RESOURCE_EXHAUSTED", 0) - before.get("RESOURCE_EXHAUSTED", 0) == 1


def test_rest_body_that_is_not_utf8_is_400(served: Served) -> None:
    reply = served.post(b'{"strData": "\xff\xfe"}')
    assert reply.status_code == 400
    assert "not UTF-8" in reply.json()["status"]["info"]


def test_rest_body_that_is_not_an_object_is_400(served: Served) -> None:
    reply = served.post(b"[1, 2]")
    assert reply.status_code == 400
    assert "it is a JSON list, not an object" in reply.json()["status"]["info"]
    reply = served.post({"data": {"tensor": {"shape": [1.5], "values": [1]}}})
    assert reply.status_code == 400
    assert "not a JSON SeldonMessage" in reply.json()["status"]["info"]


# -- deep nesting ---------------------------------------------------------------------------


def test_deeply_nested_grpc_values_are_invalid_argument(served: Served) -> None:
    body = nested_ndarray(100_000)
    assert len(body) < LIMIT
    expect_invalid(served.grpc_error(body), "could not be read")
    as_json = message()
    json_format.ParseDict(deep(40), as_json.jsonData)  # as deep as protobuf parses
    error = served.grpc_error(as_json)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT  # a 40-dimensional tensor
    assert "shape" in error.details(), error.details()


@pytest.mark.parametrize(
    "body",
    [
        '{"meta": {"tags": {"model": "add_one"}}, "data": {"ndarray": ND}}',
        '{"meta": {"tags": {"model": "add_one"}}, "jsonData": ND}',
        '{"meta": {"tags": {"model": "add_one", "deep": ND}}, "data": {"ndarray": [1]}}',
        "ND",
    ],
    ids=["ndarray", "jsonData", "tag", "body"],
)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 100_000])
def test_deeply_nested_rest_json_is_400(served: Served, body: str, depth: int) -> None:
    reply = served.post(body.replace("ND", nested_json(depth)).encode())
    assert reply.status_code == 400, reply.text[:300]
    assert "nests arrays or objects more than" in reply.json()["status"]["info"]


# -- NaN and infinities ---------------------------------------------------------------------


def test_nan_and_infinity_inputs_reach_the_model_over_grpc(served: Served) -> None:
    reply = served.grpc(tensor([math.nan, math.inf, 1.0], [3]))
    values = list(reply.data.tensor.values)
    assert math.isnan(values[0]) and values[1:] == [math.inf, 2.0]
    request = message()
    request.data.ndarray.extend([math.nan, -math.inf])
    values = [v.number_value for v in served.grpc(request).data.ndarray.values]
    assert math.isnan(values[0]) and values[1] == -math.inf


def test_nan_and_infinity_over_rest_are_bare_numbers_as_seldons_wrapper_writes(
    served: Served,
) -> None:
    body = '{"meta": {"tags": {"model": "add_one"}}, "data": {"ndarray": [NaN, -Infinity, 1]}}'
    reply = served.post(body.encode())
    assert reply.status_code == 200, reply.text
    assert '"ndarray":[NaN,-Infinity,2.0]' in reply.text
    body = '{"meta": {"tags": {"model": "add_one"}}, "data": {"tensor": {"values": [NaN, 1]}}}'
    reply = served.post(body.encode())
    assert reply.status_code == 200, reply.text
    values = json.loads(reply.text)["data"]["tensor"]["values"]
    assert math.isnan(values[0]) and values[1] == 2.0


def test_tags_holding_nan_are_echoed(served: Served) -> None:
    request = tensor([1.0], [1])
    request.meta.tags["threshold"].number_value = math.nan
    reply = served.grpc(request)
    assert list(reply.data.tensor.values) == [2.0]
    assert math.isnan(reply.meta.tags["threshold"].number_value)
    body = '{"meta": {"tags": {"model": "add_one", "threshold": NaN}}, "data": {"ndarray": [1]}}'
    reply = served.post(body.encode())
    assert reply.status_code == 200, reply.text
    assert '"threshold":NaN' in reply.text


def test_outputs_that_overflow_to_infinity_are_answered(served: Served) -> None:
    request = tensor([2.0, -2.0], [2], model="overflow")
    assert list(served.grpc(request).data.tensor.values) == [math.inf, -math.inf]
    as_ndarray = message("overflow")
    as_ndarray.data.ndarray.extend([2.0])
    assert served.grpc(as_ndarray).data.ndarray.values[0].number_value == math.inf
    as_json = message("overflow")
    json_format.ParseDict([2.0], as_json.jsonData)
    # A list in jsonData is answered as data.tensor, as Seldon's wrapper does.
    assert list(served.grpc(as_json).data.tensor.values) == [math.inf]
    for data in ({"ndarray": [2.0]}, {"tensor": {"values": [2.0]}}):
        reply = served.post({"meta": {"tags": {"model": "overflow"}}, "data": data})
        assert reply.status_code == 200 and "Infinity" in reply.text, reply.text
    reply = served.post({"meta": {"tags": {"model": "overflow"}}, "jsonData": [2.0]})
    assert reply.status_code == 200 and '"values":[Infinity]' in reply.text, reply.text


def test_nan_for_an_integer_input_is_a_client_error(served: Served) -> None:
    error = served.grpc_error(tensor([math.nan], [1], model="double"))
    expect_invalid(error, "'ids': tensor.values holds the non-integer number nan, but INT64")
    body = '{"meta": {"tags": {"model": "double"}}, "data": {"ndarray": [NaN]}}'
    reply = served.post(body.encode())
    assert reply.status_code == 400 and "non-integer" in reply.json()["status"]["info"]


# -- tags named like predict()'s own arguments ----------------------------------------------


@pytest.mark.parametrize("tag", ["self", "inputs"])
def test_tags_named_like_predict_arguments_are_client_errors(served: Served, tag: str) -> None:
    request = tensor([1.0], [1])
    request.meta.tags[tag].number_value = 1
    error = served.grpc_error(request)
    expect_invalid(error, f"request parameter {tag!r} has the name of an argument")
    reply = served.post(
        {"meta": {"tags": {"model": "add_one", tag: 1}}, "data": {"ndarray": [1.0]}}
    )
    assert reply.status_code == 400 and tag in reply.json()["status"]["info"]


def test_a_tag_named_x_reaches_the_model(served: Served) -> None:
    request = tensor([1.0], [1])
    request.meta.tags["x"].number_value = 5
    assert list(served.grpc(request).data.tensor.values) == [2.0]


# -- and afterwards -------------------------------------------------------------------------


def test_zz_good_requests_still_answer(served: Served) -> None:
    assert list(served.grpc(tensor([1.0, 2.0], [2])).data.tensor.values) == [2.0, 3.0]
    reply = served.post({"meta": {"tags": {"model": "add_one"}}, "data": {"ndarray": [1, 2]}})
    assert reply.status_code == 200 and reply.json()["data"]["ndarray"] == [2.0, 3.0]
    assert served.server.process is not None and served.server.process.poll() is None
