"""Hostile V2 requests over real servers: huge declared shapes with tiny data, deep JSON,
lone surrogates. Each is a client error (INVALID_ARGUMENT / 400), memory stays bounded by
the bytes sent, and the server answers correctly afterwards."""

from __future__ import annotations

import json
import re
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as triton
from tritonclient.grpc import service_pb2_grpc as triton_grpc

from dl_inference import InvalidInput
from dl_inference.builtin.v2.binary import deserialize_bytes
from dl_inference.builtin.v2.codec import json_to_array, raw_to_array
from dl_inference.builtin.v2.rest import decode_rest_request
from dl_inference.testing import ServerProcess

from .conftest import write_repository

BIG = 2**31
HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def stub(v2_server: ServerProcess) -> Iterator[triton_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(v2_server.grpc_address) as channel:
        yield triton_grpc.GRPCInferenceServiceStub(channel)


def post(server: ServerProcess, body: bytes, headers: dict[str, str] | None = None) -> Any:
    """POST to echo's infer; returns (status, parsed JSON body)."""
    request = urllib.request.Request(
        server.http_url + "/v2/models/echo/infer",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def binary_post(server: ServerProcess, tensors: list[dict[str, Any]], blob: bytes) -> Any:
    header = json.dumps({"inputs": tensors}).encode()
    return post(server, header + blob, {HEADER_LENGTH: str(len(header))})


def grpc_infer(
    stub: triton_grpc.GRPCInferenceServiceStub,
    datatype: str,
    shape: list[int],
    raw: bytes | None = None,
    **contents: Any,
) -> triton.ModelInferResponse:
    request = triton.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return stub.ModelInfer(request, timeout=30)


def assert_serving(server: ServerProcess, stub: triton_grpc.GRPCInferenceServiceStub) -> None:
    reply = grpc_infer(stub, "FP32", [2], np.array([1.5, -2], np.float32).tobytes())
    np.testing.assert_array_equal(
        np.frombuffer(reply.raw_output_contents[0], np.float32), [1.5, -2]
    )
    status, document = post(
        server,
        json.dumps(
            {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["ok"]}]}
        ).encode(),
    )
    assert status == 200 and document["outputs"][0]["data"] == ["ok"], document


def grpc_refused(stub: triton_grpc.GRPCInferenceServiceStub, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        grpc_infer(stub, *args, **kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details()


def rest_refused(reply: Any) -> str:
    status, document = reply
    assert status == 400, document
    assert set(document) == {"error"} and "internal error" not in document["error"]
    return document["error"]


# -- gRPC ModelInfer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "message"),
    [
        (
            "FP32",
            [BIG, BIG],
            b"\x00" * 4,
            r"holds 4 bytes but FP32 shape \[2147483648, 2147483648\]",
        ),
        ("FP32", [0, 2**62], b"", r"shape \[0, 4611686018427387904\] is too large"),
        ("BYTES", [BIG, BIG], b"\x00" * 4, "needs at least 18446744073709551616 bytes"),
        (
            "BYTES",
            [2**24],
            b"\x02\x00\x00\x00ab" * 5,
            "at least 67108864 bytes, but the request carries 30",
        ),
        ("BYTES", [0, 2**62], b"", "too large"),
        ("INT8", [1] * 33, b"\x00", "at most 32"),
    ],
)
def test_grpc_raw_shapes_beyond_the_data(
    v2_server: ServerProcess,
    stub: triton_grpc.GRPCInferenceServiceStub,
    datatype: str,
    shape: list[int],
    raw: bytes,
    message: str,
) -> None:
    details = grpc_refused(stub, datatype, shape, raw)
    assert details.startswith("input 'x': ") and re.search(message, details), details
    assert_serving(v2_server, stub)


@pytest.mark.parametrize(
    ("datatype", "shape", "contents", "message"),
    [
        ("FP32", [BIG, BIG], {"fp32_contents": [1.0]}, "holds 1 values but FP32 shape"),
        ("FP32", [0, 2**62], {}, "too large"),
        ("BYTES", [BIG, BIG], {"bytes_contents": [b"a"]}, "needs 4611686018427387904"),
        ("BYTES", [2**24], {"bytes_contents": [b"ab"] * 5}, "holds 5 values but BYTES shape"),
    ],
)
def test_grpc_typed_contents_shapes_beyond_the_data(
    v2_server: ServerProcess,
    stub: triton_grpc.GRPCInferenceServiceStub,
    datatype: str,
    shape: list[int],
    contents: dict[str, list[Any]],
    message: str,
) -> None:
    assert message in grpc_refused(stub, datatype, shape, **contents)
    assert_serving(v2_server, stub)


# -- REST: JSON and the binary-data extension --------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [BIG, BIG], [1.0], "data holds 1 values but FP32 shape"),
        ("FP32", [0, 2**62], [], "too large"),
        ("BYTES", [BIG, BIG], ["a"], "needs 4611686018427387904"),
        ("BYTES", [2**24], ["ab"] * 5, "holds 5 values but BYTES shape [16777216]"),
        ("FP32", [2**64], [1.0], "dimensions are integers from 0 to 2**63 - 1"),
    ],
)
def test_rest_json_shapes_beyond_the_data(
    v2_server: ServerProcess,
    stub: triton_grpc.GRPCInferenceServiceStub,
    datatype: str,
    shape: list[int],
    data: list[Any],
    message: str,
) -> None:
    tensor = {"name": "x", "datatype": datatype, "shape": shape, "data": data}
    reply = post(v2_server, json.dumps({"inputs": [tensor]}).encode())
    assert message in rest_refused(reply)
    assert_serving(v2_server, stub)


@pytest.mark.parametrize(
    ("datatype", "shape", "blob", "message"),
    [
        ("FP32", [BIG, BIG], b"\x00" * 4, "needs 18446744073709551616 bytes"),
        ("FP32", [0, 2**62], b"", "too large"),
        ("BYTES", [BIG, BIG], b"\x00" * 4, "needs at least 18446744073709551616 bytes"),
        ("BYTES", [2**24], b"\x02\x00\x00\x00ab" * 5, "but the request carries 30"),
    ],
)
def test_rest_binary_shapes_beyond_the_data(
    v2_server: ServerProcess,
    stub: triton_grpc.GRPCInferenceServiceStub,
    datatype: str,
    shape: list[int],
    blob: bytes,
    message: str,
) -> None:
    tensor = {
        "name": "x",
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": len(blob)},
    }
    assert message in rest_refused(binary_post(v2_server, [tensor], blob))
    assert_serving(v2_server, stub)


def deep(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize(
    "body",
    [
        '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": '
        + deep(100_000)
        + "}]}",
        '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], '
        '"parameters": {"p": ' + deep(100_000) + "}}",
        '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], '
        '"parameters": {"p": ' + '{"q": ' * 100_000 + "1" + "}" * 100_000 + "}}",
        # Under the parser's own limit, still too deep for code that walks the value.
        '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + deep(500) + "}]}",
    ],
    ids=["data", "parameters-lists", "parameters-objects", "data-500"],
)
def test_rest_deeply_nested_json(
    v2_server: ServerProcess, stub: triton_grpc.GRPCInferenceServiceStub, body: str
) -> None:
    assert "more than 64 levels deep" in rest_refused(post(v2_server, body.encode()))
    assert_serving(v2_server, stub)


def test_rest_lone_surrogate_in_bytes_data(
    v2_server: ServerProcess, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    tensor = {"name": "t", "datatype": "BYTES", "shape": [2], "data": ["fine", "bad \ud800"]}
    body = json.dumps({"inputs": [tensor]}).encode()  # ASCII: the surrogate as \ud800
    assert b"\\ud800" in body
    message = rest_refused(post(v2_server, body))
    assert message.startswith("input 't', element 1: the string holds an unpaired surrogate")
    # A surrogate pair is one character, not an error.
    tensor["data"] = ["\U0001f600"]
    tensor["shape"] = [1]
    status, document = post(v2_server, json.dumps({"inputs": [tensor]}).encode())
    assert status == 200 and document["outputs"][0]["data"] == ["\U0001f600"]
    assert_serving(v2_server, stub)


def test_rest_body_that_is_not_utf8(
    v2_server: ServerProcess, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    message = rest_refused(post(v2_server, b'{"inputs": "\xff"}'))
    assert "not UTF-8" in message and HEADER_LENGTH in message
    assert_serving(v2_server, stub)


# -- the output side: what a model may legitimately return -------------------------------------


def test_rest_json_outputs_of_every_kind(
    v2_server: ServerProcess, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    tensors = [
        {"name": "f16", "datatype": "FP16", "shape": [2], "data": [65504, -0.5]},
        {"name": "u64", "datatype": "UINT64", "shape": [1], "data": [2**64 - 1]},
        {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "empty", "datatype": "FP32", "shape": [0, 3], "data": []},
        {"name": "s", "datatype": "BYTES", "shape": [1, 1], "data": [["\u00e9t\u00e9"]]},
    ]
    status, document = post(
        v2_server, json.dumps({"inputs": tensors, "parameters": {"deep": [[[[1]]]]}}).encode()
    )
    assert status == 200, document
    outputs = {o["name"]: o for o in document["outputs"]}
    assert outputs["OUT_f16"]["data"] == [65504.0, -0.5]
    assert outputs["OUT_u64"]["data"] == [2**64 - 1]
    assert outputs["OUT_b"]["data"] == [True, False]
    assert outputs["OUT_empty"]["shape"] == [0, 3] and outputs["OUT_empty"]["data"] == []
    assert outputs["OUT_s"]["data"] == ["\u00e9t\u00e9"]
    assert json.loads(outputs["PARAMS"]["data"][0]) == {"deep": [[[[1]]]]}


def test_rest_bytes_output_that_is_not_utf8_asks_for_binary(
    v2_server: ServerProcess, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    blob = b"\x02\x00\x00\x00\xff\xfe"
    tensor = {
        "name": "raw",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": 6},
    }
    message = rest_refused(binary_post(v2_server, [tensor], blob))
    assert "output 'OUT_raw' holds bytes that are not UTF-8" in message and "binary_data" in message
    assert_serving(v2_server, stub)


# -- memory stays bounded by the bytes sent ----------------------------------------------------


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_tiny_requests_do_not_make_the_server_allocate(tmp_path: Path) -> None:
    """30-byte BYTES [2**24] requests once made the server reserve 128 MiB of pointers."""
    repo = write_repository(tmp_path / "models")
    with (
        ServerProcess(["--model-repository", str(repo)]) as server,
        grpc.insecure_channel(server.grpc_address) as channel,
    ):
        stub = triton_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):  # warm both transports up: threads, buffers, imports
            assert_serving(server, stub)
        before = peak_rss(server.process.pid)
        blob = b"\x02\x00\x00\x00ab" * 5
        grpc_refused(stub, "BYTES", [2**24], blob)
        tensor = {
            "name": "x",
            "datatype": "BYTES",
            "shape": [2**24],
            "parameters": {"binary_data_size": len(blob)},
        }
        rest_refused(binary_post(server, [tensor], blob))
        tensor = {"name": "x", "datatype": "BYTES", "shape": [2**24], "data": ["ab"] * 5}
        rest_refused(post(server, json.dumps({"inputs": [tensor]}).encode()))
        grpc_refused(stub, "BYTES", [2**24], bytes_contents=[b"ab"] * 5)
        grown = peak_rss(server.process.pid) - before
        assert grown < 16 * 2**20, f"the server's peak memory grew by {grown >> 20} MiB"
        assert_serving(server, stub)


def test_decoders_allocate_nothing_for_a_shape_the_data_cannot_fill() -> None:
    """The same reproducers in-process, each decoder's peak measured by tracemalloc."""
    blob = b"\x02\x00\x00\x00ab" * 5
    calls = [
        lambda: raw_to_array("x", "BYTES", [2**24], blob),
        lambda: deserialize_bytes(blob, 2**24, "x"),  # bounded even without the check
        lambda: raw_to_array("x", "BYTES", [BIG, BIG], blob[:4]),
        lambda: raw_to_array("x", "FP32", [BIG, BIG], blob[:4]),
        lambda: json_to_array("x", "BYTES", [2**24], ["ab"] * 5),
    ]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [2**24],
                    "parameters": {"binary_data_size": 30},
                }
            ]
        }
    ).encode()
    calls.append(lambda: decode_rest_request("echo", "", header + blob, str(len(header))))
    for call in calls:
        tracemalloc.start()
        try:
            with pytest.raises(InvalidInput):
                call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2**20, f"{peak >> 20} MiB allocated to refuse a 30-byte tensor"
