"""Differential tests: the same requests to a real Triton 2.51 and to dl-inference.

Both servers serve the models of models.py (Triton's python backend, our python backend).
Each case sends one request, good or bad, through tritonclient, plain HTTP or raw gRPC, to
both servers and reduces each answer to an outcome (wire.py): status / code, error-body
form, ids, names, datatypes, shapes, values. The assertion is that the two outcomes
differ exactly where :data:`KNOWN_DIFFERENCES` says, each entry with its reason (the same
list is docs/triton-differences.md): a new difference fails, and so does an entry that no
longer holds.

Requests Triton 2.51 cannot survive (a JSON shape of 2**40 elements, very deep JSON) are
never sent to it; dl-inference's answer to those is tested elsewhere (tests/fuzz).
"""

from __future__ import annotations

import gzip
import http.client
import json
import queue
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from dl_inference.builtin.v2.codec import CONTENTS_FIELD as V2_CONTENTS_FIELD

from .models import (
    DATATYPES,
    ERROR_MESSAGE,
    FAIL_MESSAGE,
    MAX_BATCH_SIZE,
    REFUSE_MESSAGE,
    TYPED,
)
from .wire import (
    HEADER_LENGTH,
    Outcome,
    Target,
    array_outcome,
    differences,
    grpc_call,
    grpc_infer_outcome,
    grpc_message_outcome,
    http_raw,
    http_request,
    infer_body,
    infer_response_outcome,
)

# -- inputs --------------------------------------------------------------------------------


def sample(datatype: str, shape: tuple[int, ...], utf8: bool = True) -> np.ndarray:
    """Values near each type's edges (so ``+ 1`` is exact), NaN-free, JSON-safe."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        pool = [b"", b"abc", "\u00e9t\u00e9".encode(), b"x" * 40]
        if not utf8:
            pool[0] = b"\x00\xfe\xff"
        out = np.empty(count, dtype=np.object_)
        out[:] = [pool[i % len(pool)] for i in range(count)]
        return out.reshape(shape)
    if datatype == "BOOL":
        return (np.arange(count) % 2 == 0).reshape(shape)
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind == "f":
        pool = [0.5, -3.25, 0.1, 1024.0, -0.0, 7.0]
    else:
        info = np.iinfo(dtype)
        pool = [info.max - 1, info.min, 0, 1, 42, (info.max // 3)]
    return np.array([pool[i % len(pool)] for i in range(count)], dtype=dtype).reshape(shape)


def types_inputs(shape: tuple[int, ...], utf8: bool = True) -> dict[str, np.ndarray]:
    return {f"INPUT_{t}": sample(t, shape, utf8) for t in DATATYPES}


def json_tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    values = array.reshape(-1).tolist()
    if datatype == "BYTES":
        values = [v.decode() for v in values]
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": values}


def types_json(shape: tuple[int, ...] = (2, 3), **replace: Any) -> list[dict[str, Any]]:
    """The ``types`` model's inputs as JSON tensors; ``replace`` swaps or drops (None) some.

    INPUT_FP16 is sent as binary data (see :func:`types_body`): Triton takes no FP16 in JSON.
    """
    tensors = {
        f"INPUT_{t}": json_tensor(f"INPUT_{t}", a, t)
        for t, a in zip(DATATYPES, types_inputs(shape).values(), strict=True)
    }
    for name, tensor in replace.items():
        if tensor is None:
            tensors.pop(name)
        else:
            tensors[name] = tensor
    return list(tensors.values())


def types_body(
    shape: tuple[int, ...] = (2, 3), extra: dict[str, Any] | None = None, **replace: Any
) -> tuple[bytes, dict[str, str]]:
    """A request to ``types``: JSON tensors, INPUT_FP16 as binary data after the JSON."""
    fp16 = sample("FP16", shape).tobytes()
    binary = {
        "name": "INPUT_FP16",
        "datatype": "FP16",
        "shape": list(shape),
        "parameters": {"binary_data_size": len(fp16)},
    }
    document = {
        "inputs": types_json(shape, **{"INPUT_FP16": binary, **replace}),
        "outputs": JSON_OUTPUT_LIST,
        **(extra or {}),
    }
    document = {key: value for key, value in document.items() if value is not None}
    head = json.dumps(document).encode()
    uses_binary = any(t["name"] == "INPUT_FP16" and "parameters" in t for t in document["inputs"])
    if not uses_binary:
        return head, {}
    return head + fp16, {HEADER_LENGTH: str(len(head))}


# -- cases ---------------------------------------------------------------------------------

Case = Callable[[Target], Outcome]
CASES: dict[str, Case] = {}


def datatype_of(name: str) -> str:
    """The datatype of a models.py input: ``INPUT_<T>`` is ``T``, ``x`` is FP32."""
    return name.removeprefix("INPUT_") if name.startswith("INPUT_") else "FP32"


def tc_http_outcome(result: httpclient.InferResult) -> Outcome:
    """What a tritonclient.http user reads from a result (outputs as as_numpy gives them)."""
    response = result.get_response()
    outputs = {}
    for entry in response["outputs"]:
        array = result.as_numpy(entry["name"])
        outputs[entry["name"]] = {
            "datatype": entry["datatype"],
            "binary": "binary_data_size" in (entry.get("parameters") or {}),
            **array_outcome(array),
        }
    return {
        "model_name": response["model_name"],
        "model_version": response.get("model_version"),
        "id": response.get("id"),
        "parameters": response.get("parameters"),
        "outputs": outputs,
    }


def tc_http(
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    binary_inputs: bool | Callable[[str], bool],
    outputs: dict[str, bool] | None = None,
    **options: Any,
) -> Case:
    """A tritonclient.http call: ``outputs`` maps requested names to binary_data."""

    def run(target: Target) -> Outcome:
        client = httpclient.InferenceServerClient(target.http_address)
        request = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), datatype_of(name))
            binary = binary_inputs(name) if callable(binary_inputs) else binary_inputs
            tensor.set_data_from_numpy(array, binary_data=binary)
            request.append(tensor)
        requested = None
        if outputs is not None:
            requested = [
                httpclient.InferRequestedOutput(n, binary_data=b) for n, b in outputs.items()
            ]
        try:
            result = client.infer(model, request, outputs=requested, **options)
        except InferenceServerException as error:
            return {"status": error.status()}
        finally:
            client.close()
        return tc_http_outcome(result)

    return run


def tc_grpc(
    model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None, **options: Any
) -> Case:
    """A tritonclient.grpc call (raw contents), ``outputs`` the names requested."""

    def run(target: Target) -> Outcome:
        client = grpcclient.InferenceServerClient(target.grpc_address)
        request = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), datatype_of(name))
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        try:
            result = client.infer(model, request, outputs=requested, **options)
        except InferenceServerException as error:
            return {"code": error.status()}
        finally:
            client.close()
        return infer_response_outcome(result.get_response())

    return run


TYPES_2x3 = types_inputs((2, 3))


def FP16_ONLY(name: str) -> bool:
    """Binary data for FP16 only: Triton takes no FP16 in JSON."""
    return name == "INPUT_FP16"


ALL_OUTPUTS = [f"OUTPUT_{t}" for t in DATATYPES]
# Every output as JSON but FP16, which Triton sends only as binary data.
JSON_OUTPUTS = {name: name == "OUTPUT_FP16" for name in ALL_OUTPUTS}
JSON_OUTPUT_LIST = [{"name": n, "parameters": {"binary_data": b}} for n, b in JSON_OUTPUTS.items()]

# Good requests over every datatype, both transports, JSON and binary data.
CASES["http.json.types"] = tc_http(
    "types", TYPES_2x3, binary_inputs=FP16_ONLY, outputs=JSON_OUTPUTS
)
CASES["http.binary.types"] = tc_http(
    "types", TYPES_2x3, binary_inputs=True, outputs=dict.fromkeys(ALL_OUTPUTS, True)
)
CASES["http.binary.default-outputs"] = tc_http("types", TYPES_2x3, binary_inputs=True)
CASES["http.mixed.types"] = tc_http(
    "types",
    TYPES_2x3,
    binary_inputs=lambda name: (
        DATATYPES.index(name.removeprefix("INPUT_")) % 2 == 0 or FP16_ONLY(name)
    ),
    outputs={name: i % 3 == 0 for i, name in enumerate(ALL_OUTPUTS)},
)
CASES["http.binary.non-utf8-bytes"] = tc_http(
    "types",
    types_inputs((2, 2), utf8=False),
    binary_inputs=True,
    outputs=dict.fromkeys(ALL_OUTPUTS, True),
)
CASES["http.non-utf8-bytes-as-json"] = tc_http(
    "types",
    types_inputs((2, 2), utf8=False),
    binary_inputs=True,
    outputs={"OUTPUT_BYTES": False},
)
CASES["http.json.subset-outputs"] = tc_http(
    "types",
    TYPES_2x3,
    binary_inputs=FP16_ONLY,
    outputs={"OUTPUT_UINT16": False, "OUTPUT_INT64": True},
)
CASES["http.json.request-id"] = tc_http(
    "types", TYPES_2x3, binary_inputs=FP16_ONLY, outputs={"OUTPUT_BOOL": False}, request_id="req-42"
)
CASES["http.batched.3"] = tc_http(
    "types_batched",
    types_inputs((3, 4)),
    binary_inputs=True,
    outputs=dict.fromkeys(ALL_OUTPUTS, True),
)
CASES["http.batched.1-json"] = tc_http(
    "types_batched", types_inputs((1, 2)), binary_inputs=FP16_ONLY, outputs=JSON_OUTPUTS
)
CASES["http.params"] = tc_http(
    "params",
    {"x": np.array([1.5, 2.5], dtype=np.float32)},
    binary_inputs=False,
    outputs={"y": False, "PARAMS": False},
    parameters={"temperature": 0.5, "count": 3, "flag": True, "label": "abc"},
)
CASES["grpc.types"] = tc_grpc("types", TYPES_2x3)
CASES["grpc.non-utf8-bytes"] = tc_grpc("types", types_inputs((2, 2), utf8=False))
CASES["grpc.subset-outputs"] = tc_grpc(
    "types", TYPES_2x3, outputs=["OUTPUT_UINT64", "OUTPUT_BYTES"]
)
CASES["grpc.request-id"] = tc_grpc("types", TYPES_2x3, outputs=["OUTPUT_BOOL"], request_id="r-7")
CASES["grpc.batched.3"] = tc_grpc("types_batched", types_inputs((3, 4)))
CASES["grpc.version-1"] = tc_grpc("types", TYPES_2x3, outputs=["OUTPUT_FP32"], model_version="1")
CASES["grpc.params"] = tc_grpc(
    "params",
    {"x": np.array([1.5, 2.5], dtype=np.float32)},
    parameters={"temperature": 0.5, "count": 3, "flag": True, "label": "abc"},
)
CASES["grpc.scheduling-parameters"] = tc_grpc(
    "params",
    {"x": np.array([1.5], dtype=np.float32)},
    parameters={"label": "kept"},
    priority=1,
    timeout=5_000_000,
    sequence_id=7,
    sequence_start=True,
)
CASES["http.scheduling-parameters"] = tc_http(
    "params",
    {"x": np.array([1.5], dtype=np.float32)},
    binary_inputs=False,
    outputs={"PARAMS": False},
    parameters={"label": "kept"},
    priority=1,
    timeout=5_000_000,
)
CASES["grpc.batched.too-big"] = tc_grpc("types_batched", types_inputs((MAX_BATCH_SIZE + 1, 1)))
CASES["http.batched.too-big"] = tc_http(
    "types_batched", types_inputs((MAX_BATCH_SIZE + 1, 1)), binary_inputs=True
)
CASES["grpc.failing"] = tc_grpc("failing", {"x": np.array([1.0], dtype=np.float32)})
CASES["grpc.failing-error"] = tc_grpc("failing_error", {"x": np.array([1.0], dtype=np.float32)})
CASES["grpc.refusing"] = tc_grpc("refusing", {"x": np.array([1.0], dtype=np.float32)})


# -- plain HTTP: good and bad --------------------------------------------------------------


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> Case:
    return lambda target: http_request(target, "POST", path, body, headers)


def infer(model: str, body: bytes, headers: dict[str, str] | None = None) -> Case:
    return post(f"/v2/models/{model}/infer", body, headers)


def get(path: str, method: str = "GET") -> Case:
    return lambda target: http_request(target, method, path)


X1 = [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]


def types_case(
    path: str = "/v2/models/types/infer", extra: dict[str, Any] | None = None, **replace: Any
) -> Case:
    """A plain-HTTP request to ``types`` with some inputs replaced (or dropped with None)."""
    body, headers = types_body(extra=extra, **replace)
    return post(path, body, headers)


def tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def x_case(data: str, datatype: str = "FP32", shape: str = "[2]") -> Case:
    """``params`` with x written as literal JSON text (for numbers json.dumps cannot write)."""
    tensor = f'{{"name": "x", "datatype": "{datatype}", "shape": {shape}, "data": {data}}}'
    return infer("params", f'{{"inputs": [{tensor}]}}'.encode())


CASES["http.failing"] = infer("failing", infer_body(X1))
CASES["http.failing-error"] = infer("failing_error", infer_body(X1))
CASES["http.refusing"] = infer("refusing", infer_body(X1))
CASES["http.versioned-infer"] = types_case(
    "/v2/models/types/versions/1/infer", extra={"outputs": [{"name": "OUTPUT_INT8"}]}
)
CASES["http.json.all-outputs"] = types_case()
CASES["http.json.default-outputs"] = types_case(extra={"outputs": None})
CASES["http.json.fp16-output"] = types_case(extra={"outputs": [{"name": "OUTPUT_FP16"}]})
CASES["http.json.fp16"] = types_case(
    INPUT_FP16=json_tensor("INPUT_FP16", sample("FP16", (2, 3)), "FP16")
)
CASES["http.unknown-model"] = infer("nope", infer_body(X1))
CASES["http.unknown-version"] = types_case("/v2/models/types/versions/7/infer")
CASES["http.malformed-json"] = infer("types", b'{"inputs": [')
CASES["http.json-array-body"] = infer("types", b"[]")
CASES["http.empty-body"] = infer("types", b"")
CASES["http.no-inputs-key"] = infer("types", b"{}")
CASES["http.empty-inputs"] = infer("types", b'{"inputs": []}')
CASES["http.inputs-not-list"] = infer("types", b'{"inputs": 3}')
CASES["http.input-not-object"] = infer("params", b'{"inputs": [3]}')
CASES["http.input-without-name"] = infer(
    "params", b'{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}'
)
CASES["http.input-without-data"] = infer(
    "params", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}'
)
CASES["http.shape-not-list"] = infer(
    "params", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": 1, "data": [1]}]}'
)
CASES["http.wrong-datatype"] = types_case(INPUT_FP32=tensor("INPUT_FP32", "FP64", [2, 3], [1] * 6))
CASES["http.unknown-datatype"] = types_case(INPUT_FP32=tensor("INPUT_FP32", "FP8", [2, 3], [1] * 6))
CASES["http.wrong-shape"] = types_case(INPUT_FP32=tensor("INPUT_FP32", "FP32", [3, 2], [1] * 6))
CASES["http.wrong-rank"] = types_case(INPUT_FP32=tensor("INPUT_FP32", "FP32", [6], [1] * 6))
CASES["http.count-mismatch"] = types_case(INPUT_FP32=tensor("INPUT_FP32", "FP32", [2, 3], [1] * 5))
CASES["http.negative-dim"] = types_case(INPUT_FP32=tensor("INPUT_FP32", "FP32", [2, -3], [1] * 6))
CASES["http.missing-input"] = types_case(INPUT_INT16=None)
CASES["http.extra-input"] = types_case(EXTRA=tensor("EXTRA", "FP32", [1], [1]))
CASES["http.duplicate-input"] = infer(
    "params", infer_body([tensor("x", "FP32", [1], [1]), tensor("x", "FP32", [1], [2])])
)
CASES["http.unknown-output"] = types_case(extra={"outputs": [{"name": "NOPE"}]})
CASES["http.duplicate-output"] = infer(
    "params", infer_body(X1, outputs=[{"name": "y"}, {"name": "y"}])
)
CASES["http.string-dim"] = infer(
    "params", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": ["1"], "data": [1]}]}'
)
CASES["http.float-dim"] = infer(
    "params", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1.0], "data": [1]}]}'
)
CASES["http.lowercase-datatype"] = infer(
    "params", b'{"inputs": [{"name": "x", "datatype": "fp32", "shape": [1], "data": [1]}]}'
)
CASES["http.datatype-not-string"] = infer(
    "params", b'{"inputs": [{"name": "x", "datatype": 11, "shape": [1], "data": [1]}]}'
)
CASES["http.name-not-string"] = infer(
    "params", b'{"inputs": [{"name": 5, "datatype": "FP32", "shape": [1], "data": [1]}]}'
)
CASES["http.output-name-unknown-type"] = infer(
    "params", json.dumps({"inputs": X1, "outputs": [{"name": 5}]}).encode()
)
CASES["http.binary-data-not-bool"] = infer(
    "params",
    json.dumps(
        {"inputs": X1, "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}
    ).encode(),
)
CASES["http.binary-data-output-not-bool"] = infer(
    "params", json.dumps({"inputs": X1, "parameters": {"binary_data_output": "false"}}).encode()
)
CASES["http.binary-data-size-negative"] = infer(
    "params",
    json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "parameters": {"binary_data_size": -4},
                }
            ]
        }
    ).encode(),
)
CASES["http.int64-beyond-range"] = types_case(
    INPUT_INT64=tensor("INPUT_INT64", "INT64", [2, 3], [2**63] * 6)
)
CASES["http.uint64-beyond-range"] = types_case(
    INPUT_UINT64=tensor("INPUT_UINT64", "UINT64", [2, 3], [2**64] * 6)
)
CASES["http.string-for-bool"] = types_case(
    INPUT_BOOL=tensor("INPUT_BOOL", "BOOL", [2, 3], ["true"] * 6)
)
CASES["http.scalar-shape"] = infer(
    "params", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [], "data": [1]}]}'
)
CASES["http.fp32-beyond-fp32"] = x_case("[3.5e38, 1]")
CASES["grpc.scalar-shape"] = lambda target: grpc_infer_outcome(
    target,
    pb.ModelInferRequest(
        model_name="params",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[])],
        raw_input_contents=[np.float32(1).tobytes()],
    ),
)
CASES["grpc.version-latest"] = tc_grpc(
    "types", TYPES_2x3, outputs=["OUTPUT_FP32"], model_version="latest"
)
CASES["http.version-latest"] = types_case("/v2/models/types/versions/latest/infer")
CASES["http.output-order"] = lambda target: output_order(
    CASES["http.json.reversed-outputs"](target)
)
CASES["http.json.reversed-outputs"] = types_case(
    extra={"outputs": [{"name": n} for n in ("OUTPUT_BYTES", "OUTPUT_FP32", "OUTPUT_INT8")]}
)
CASES["http.int8-out-of-range"] = types_case(
    INPUT_INT8=tensor("INPUT_INT8", "INT8", [2, 3], [300] * 6)
)
CASES["http.uint8-negative"] = types_case(
    INPUT_UINT8=tensor("INPUT_UINT8", "UINT8", [2, 3], [-1] * 6)
)
CASES["http.uint64-max"] = types_case(
    INPUT_UINT64=tensor("INPUT_UINT64", "UINT64", [2, 3], [2**64 - 2] * 6)
)
CASES["http.string-for-number"] = types_case(
    INPUT_FP32=tensor("INPUT_FP32", "FP32", [2, 3], ["1"] * 6)
)
CASES["http.number-for-bool"] = types_case(INPUT_BOOL=tensor("INPUT_BOOL", "BOOL", [2, 3], [1] * 6))
CASES["http.float-for-int"] = types_case(
    INPUT_INT32=tensor("INPUT_INT32", "INT32", [2, 3], [1.5] * 6)
)
CASES["http.integral-float-for-int"] = types_case(
    INPUT_INT32=tensor("INPUT_INT32", "INT32", [2, 3], [2.0] * 6)
)
CASES["http.number-for-bytes"] = types_case(
    INPUT_BYTES=tensor("INPUT_BYTES", "BYTES", [2, 3], [1] * 6)
)
CASES["http.null-value"] = types_case(INPUT_FP32=tensor("INPUT_FP32", "FP32", [2, 3], [None] * 6))
CASES["http.nested-data"] = types_case(
    INPUT_FP32=tensor("INPUT_FP32", "FP32", [2, 3], [[1, 2, 3], [4, 5, 6]])
)
CASES["http.scalar-data"] = x_case("7", shape="[1]")
CASES["http.1e400"] = x_case("[1e400, 1]")


def fp64_literal_case(literal: str) -> Case:
    """``types`` with one FP64 value written as ``literal`` (json.dumps cannot write 1e400)."""
    marker = 12345.5
    body, headers = types_body(INPUT_FP64=tensor("INPUT_FP64", "FP64", [2, 3], [marker] * 6))
    size = int(headers[HEADER_LENGTH])
    head = body[:size].replace(str(marker).encode(), literal.encode(), 1)
    return post("/v2/models/types/infer", head + body[size:], {HEADER_LENGTH: str(len(head))})


CASES["http.1e400-fp64"] = fp64_literal_case("1e400")
CASES["http.nan-literal-fp64"] = fp64_literal_case("NaN")
CASES["http.1e39-fp32"] = x_case("[1e39, 1]")
CASES["http.nan-literal"] = x_case("[NaN, 1]")
CASES["http.infinity-literal"] = x_case("[-Infinity, 1]")
CASES["http.parameter-named-inputs"] = infer(
    "params", infer_body(X1, parameters={"inputs": 1}, outputs=[{"name": "PARAMS"}])
)
CASES["http.parameters"] = infer(
    "params",
    infer_body(
        X1, parameters={"a": 1, "b": "two", "c": True, "d": 0.25}, outputs=[{"name": "PARAMS"}]
    ),
)
CASES["http.parameters-not-object"] = infer(
    "params", b'{"inputs": %s, "parameters": [1]}' % json.dumps(X1).encode()
)
CASES["http.id-not-string"] = infer("params", json.dumps({"id": 5, "inputs": X1}).encode())
CASES["http.id-echoed"] = infer("params", json.dumps({"id": "abc-1", "inputs": X1}).encode())
CASES["http.outputs-null"] = infer("params", json.dumps({"inputs": X1, "outputs": None}).encode())
CASES["http.outputs-not-list"] = infer("params", json.dumps({"inputs": X1, "outputs": 3}).encode())
CASES["http.output-without-name"] = infer(
    "params", json.dumps({"inputs": X1, "outputs": [{}]}).encode()
)


def binary_body(
    header_extra: dict[str, Any] | None = None, raw: bytes | None = None
) -> tuple[bytes, int]:
    """The ``params`` model's x as a binary tensor: JSON header + raw bytes."""
    data = np.array([1.0, 2.0], dtype=np.float32).tobytes() if raw is None else raw
    tensor = {
        "name": "x",
        "datatype": "FP32",
        "shape": [2],
        "parameters": {"binary_data_size": len(data)},
    }
    tensor.update(header_extra or {})
    head = json.dumps({"inputs": [tensor], "outputs": [{"name": "y"}]}).encode()
    return head + data, len(head)


def binary_case(header: Callable[[int, int], str], **kwargs: Any) -> Case:
    body, size = binary_body(**kwargs)
    return infer("params", body, {HEADER_LENGTH: header(size, len(body))})


CASES["http.binary.good"] = binary_case(lambda head, total: str(head))
CASES["http.binary.header-length-past-body"] = binary_case(lambda head, total: str(total + 10))
CASES["http.binary.header-length-not-int"] = binary_case(lambda head, total: "abc")
CASES["http.binary.header-length-negative"] = binary_case(lambda head, total: "-1")
CASES["http.binary.header-length-short"] = binary_case(lambda head, total: str(head - 3))
CASES["http.binary.size-past-end"] = binary_case(
    lambda head, total: str(head), header_extra={"parameters": {"binary_data_size": 100}}
)
CASES["http.binary.size-mismatch-shape"] = binary_case(
    lambda head, total: str(head), raw=np.zeros(3, dtype=np.float32).tobytes()
)
CASES["http.binary.leftover-bytes"] = lambda target: http_request(
    target,
    "POST",
    "/v2/models/params/infer",
    binary_body()[0] + b"\0\0\0\0",
    {HEADER_LENGTH: str(binary_body()[1])},
)
CASES["http.binary.without-header-length"] = infer("params", binary_body()[0])


def framed(
    body: bytes, content_length: str | None, extra: str = "", half_close: bool = False
) -> Case:
    def run(target: Target) -> Outcome:
        head = f"POST /v2/models/params/infer HTTP/1.1\r\nHost: {target.http_address}\r\n"
        if content_length is not None:
            head += f"Content-Length: {content_length}\r\n"
        head += extra + "\r\n"
        return http_raw(target, head.encode() + body, half_close)

    return run


GOOD = infer_body(X1)
CASES["http.content-length-short"] = framed(GOOD, str(len(GOOD) - 5))
CASES["http.content-length-long"] = framed(GOOD, str(len(GOOD) + 50), half_close=True)
CASES["http.content-length-not-int"] = framed(GOOD, "abc")
CASES["http.content-length-good"] = framed(GOOD, str(len(GOOD)))
CASES["http.chunked"] = framed(
    f"{len(GOOD):x}\r\n".encode() + GOOD + b"\r\n0\r\n\r\n", None, "Transfer-Encoding: chunked\r\n"
)


def compressed(encoding: str) -> Case:
    body = infer_body(X1, outputs=[{"name": "y"}])
    if encoding == "gzip":
        data = gzip.compress(body)
    elif encoding == "deflate":
        data = zlib.compress(body)
    else:
        data = body
    return infer("params", data, {"Content-Encoding": encoding})


CASES["http.gzip-body"] = compressed("gzip")
CASES["http.deflate-body"] = compressed("deflate")
CASES["http.unknown-content-encoding"] = compressed("br")
CASES["http.ragged-data"] = types_case(
    INPUT_FP32=tensor("INPUT_FP32", "FP32", [2, 3], [[1, 2], [3, 4, 5, 6]])
)
CASES["http.binary-data-output-overridden"] = types_case(
    extra={
        "parameters": {"binary_data_output": True},
        "outputs": [
            {"name": "OUTPUT_INT32", "parameters": {"binary_data": False}},
            {"name": "OUTPUT_BYTES"},
        ],
    }
)
CASES["http.reserved-parameters"] = infer(
    "params",
    infer_body(X1, parameters={"priority": 1, "timeout": 5000000}, outputs=[{"name": "PARAMS"}]),
)
CASES["http.parameter-triton-reserved"] = infer(
    "params", infer_body(X1, parameters={"triton_foo": 1}, outputs=[{"name": "PARAMS"}])
)
CASES["http.sequence-parameters"] = infer(
    "params",
    infer_body(
        X1, parameters={"sequence_id": 3, "sequence_start": True}, outputs=[{"name": "PARAMS"}]
    ),
)
CASES["http.binary-data-size-on-json-tensor"] = infer(
    "params",
    infer_body(
        [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1],
                "data": [1.0],
                "parameters": {"binary_data_size": 4},
            }
        ]
    ),
)
CASES["http.zero-size"] = types_case(
    shape=(2, 0), extra={"outputs": [{"name": n} for n in ("OUTPUT_FP32", "OUTPUT_BYTES")]}
)
CASES["http.batched.zero-rows"] = tc_http(
    "types_batched", types_inputs((0, 2)), binary_inputs=True, outputs={"OUTPUT_INT32": True}
)
CASES["http.bytes-with-nul-and-escapes"] = types_case(
    INPUT_BYTES=tensor(
        "INPUT_BYTES", "BYTES", [2, 3], ["a\u0000b", "\u00e9", "\ud83d\ude00", "", " ", "\n"]
    ),
    extra={"outputs": [{"name": "OUTPUT_BYTES"}]},
)
CASES["http.classification"] = types_case(
    extra={"outputs": [{"name": "OUTPUT_FP32", "parameters": {"classification": 2}}]}
)
CASES["http.duplicate-key"] = infer(
    "params",
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], '
    b'"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}',
)
CASES["http.large-gzip-response"] = lambda target: http_request(
    target,
    "POST",
    "/v2/models/params/infer",
    infer_body(
        [tensor("x", "FP32", [5000], [float(i) for i in range(5000)])], outputs=[{"name": "y"}]
    ),
    {"Accept-Encoding": "gzip"},
)
for _model in ("versioned", "versioned_all"):
    for _version in ("", "1", "2", "3"):
        _path = f"/v2/models/{_model}" + (f"/versions/{_version}" if _version else "")
        _label = f"{_model}.{_version or 'default'}"
        CASES[f"http.version.infer.{_label}"] = post(f"{_path}/infer", infer_body(X1))
        CASES[f"http.version.metadata.{_label}"] = get(_path)
        CASES[f"http.version.ready.{_label}"] = get(f"{_path}/ready")
        CASES[f"grpc.version.infer.{_label}"] = tc_grpc(
            _model, {"x": np.array([1.5], dtype=np.float32)}, model_version=_version
        )
        CASES[f"grpc.version.metadata.{_label}"] = lambda target, m=_model, v=_version: (
            grpc_message_outcome(
                target,
                "ModelMetadata",
                pb.ModelMetadataRequest(name=m, version=v),
                pb.ModelMetadataResponse,
            )
        )
        CASES[f"grpc.version.ready.{_label}"] = lambda target, m=_model, v=_version: (
            grpc_message_outcome(
                target, "ModelReady", pb.ModelReadyRequest(name=m, version=v), pb.ModelReadyResponse
            )
        )
CASES["http.ready.version-1"] = get("/v2/models/types/versions/1/ready")
CASES["http.ready.unknown-version"] = get("/v2/models/types/versions/7/ready")

# Health, metadata and routing.
CASES["http.server-live"] = get("/v2/health/live")
CASES["http.server-ready"] = get("/v2/health/ready")
CASES["http.server-metadata"] = get("/v2")
for _model in ("types", "types_batched", "params", "failing"):
    CASES[f"http.metadata.{_model}"] = get(f"/v2/models/{_model}")
    CASES[f"http.ready.{_model}"] = get(f"/v2/models/{_model}/ready")
for _model in ("types", "types_batched", "params"):
    CASES[f"http.config.{_model}"] = get(f"/v2/models/{_model}/config")
    CASES[f"grpc.config.{_model}"] = lambda target, m=_model: grpc_message_outcome(
        target, "ModelConfig", pb.ModelConfigRequest(name=m), pb.ModelConfigResponse
    )
CASES["http.config.unknown-model"] = get("/v2/models/nope/config")
CASES["grpc.config.unknown-model"] = lambda target: grpc_message_outcome(
    target, "ModelConfig", pb.ModelConfigRequest(name="nope"), pb.ModelConfigResponse
)


def structure(value: Any) -> Any:
    """The shape of a document: keys kept, numbers and strings replaced by their type, a
    list by its first element (statistics differ in their figures, not their form)."""
    if isinstance(value, dict):
        return {key: structure(item) for key, item in value.items()}
    if isinstance(value, list):
        return [structure(value[0])] if value else []
    return type(value).__name__


def stats_structure(outcome: Outcome) -> Outcome:
    if "document" in outcome:
        outcome["document"] = structure(outcome["document"])
    return outcome


CASES["http.stats.params"] = lambda target: stats_structure(
    http_request(target, "GET", "/v2/models/params/stats")
)
CASES["grpc.stats.params"] = lambda target: stats_structure(
    grpc_message_outcome(
        target,
        "ModelStatistics",
        pb.ModelStatisticsRequest(name="params"),
        pb.ModelStatisticsResponse,
    )
)
CASES["http.stats.unknown-model"] = get("/v2/models/nope/stats")


def counts(value: Any) -> Any:
    """A statistics document without its timings (``ns``, ``last_inference``): both servers
    saw the same requests, so the counts must agree."""
    if isinstance(value, dict):
        return {k: counts(v) for k, v in value.items() if k not in ("ns", "last_inference")}
    if isinstance(value, list):
        return [counts(item) for item in value]
    return value


# Only the failing model's requests are the same set on both servers (others meet accepted
# differences: a request one server takes and the other refuses counts on one side only).
CASES["http.stats.counts.failing"] = lambda target: {
    key: counts(value)
    for key, value in http_request(target, "GET", "/v2/models/failing/stats").items()
}
CASES["http.repository-index"] = post("/v2/repository/index", b"{}")
CASES["grpc.repository-index"] = lambda target: grpc_message_outcome(
    target, "RepositoryIndex", pb.RepositoryIndexRequest(), pb.RepositoryIndexResponse
)
CASES["http.trace-setting"] = get("/v2/trace/setting")
CASES["http.logging"] = get("/v2/logging")
CASES["http.shared-memory-status"] = get("/v2/systemsharedmemory/status")
CASES["http.cuda-shared-memory-status"] = get("/v2/cudasharedmemory/status")
CASES["grpc.shared-memory-status"] = lambda target: grpc_message_outcome(
    target,
    "SystemSharedMemoryStatus",
    pb.SystemSharedMemoryStatusRequest(),
    pb.SystemSharedMemoryStatusResponse,
)
CASES["grpc.trace-setting"] = lambda target: grpc_message_outcome(
    target, "TraceSetting", pb.TraceSettingRequest(), pb.TraceSettingResponse
)
CASES["grpc.unknown-method"] = lambda target: {"code": grpc_call(target, "NoSuchMethod", b"")[0]}
CASES["http.metadata.version-1"] = get("/v2/models/types/versions/1")
CASES["http.metadata.unknown-version"] = get("/v2/models/types/versions/7")
CASES["http.metadata.unknown-model"] = get("/v2/models/nope")
CASES["http.ready.unknown-model"] = get("/v2/models/nope/ready")
CASES["http.head-model"] = get("/v2/models/types", "HEAD")
CASES["http.get-infer"] = get("/v2/models/types/infer")
CASES["http.post-metadata"] = get("/v2/models/types", "POST")
CASES["http.delete-model"] = get("/v2/models/types", "DELETE")
CASES["http.unknown-path"] = get("/v2/nothing-here")


# -- raw gRPC: good and bad ----------------------------------------------------------------


def grpc_request(model: str = "types", version: str = "", **fields: Any) -> pb.ModelInferRequest:
    """ModelInfer for ``types`` with raw contents; ``fields`` replaces parts of it."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in types_inputs((2, 3)).items():
        datatype = name.removeprefix("INPUT_")
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        request.raw_input_contents.append(raw)
    for key, value in fields.items():
        value(request) if callable(value) else setattr(request, key, value)
    return request


def edit_request(function: Callable[[pb.ModelInferRequest], Any]) -> pb.ModelInferRequest:
    request = grpc_request()
    function(request)
    return request


def edit(function: Callable[[pb.ModelInferRequest], Any]) -> Case:
    return lambda target: grpc_infer_outcome(target, edit_request(function))


def set_datatype(request: pb.ModelInferRequest, index: int, datatype: str) -> None:
    request.inputs[index].datatype = datatype


FP32 = DATATYPES.index("FP32")
CASES["grpc.raw.types"] = lambda target: grpc_infer_outcome(target, grpc_request())
CASES["grpc.empty-request"] = lambda target: grpc_infer_outcome(target, b"")
CASES["grpc.garbage"] = lambda target: grpc_infer_outcome(target, b"\xff\xff\xff\xff")
CASES["grpc.unknown-model"] = lambda target: grpc_infer_outcome(target, grpc_request("nope"))
CASES["grpc.unknown-model-bad-data"] = lambda target: grpc_infer_outcome(
    target, pb.ModelInferRequest(model_name="nope", raw_input_contents=[b"1"])
)
CASES["http.unknown-model-bad-data"] = infer("nope", b'{"inputs": [{"name": "x"}]}')
CASES["grpc.unknown-version"] = lambda target: grpc_infer_outcome(target, grpc_request(version="7"))
CASES["grpc.wrong-datatype"] = edit(lambda r: set_datatype(r, FP32, "INT32"))
CASES["grpc.unknown-datatype"] = edit(lambda r: set_datatype(r, FP32, "FP8"))
CASES["grpc.wrong-shape"] = edit(lambda r: r.inputs[FP32].shape.__setitem__(slice(None), [3, 2]))
CASES["grpc.raw-size-mismatch"] = edit(lambda r: r.raw_input_contents.__setitem__(FP32, b"\0" * 20))
CASES["grpc.raw-count-mismatch"] = edit(lambda r: r.raw_input_contents.pop())
CASES["grpc.missing-input"] = edit(lambda r: (r.inputs.pop(FP32), r.raw_input_contents.pop(FP32)))
CASES["grpc.extra-input"] = edit(
    lambda r: (
        r.inputs.add(name="EXTRA", datatype="FP32", shape=[1]),
        r.raw_input_contents.append(b"\0" * 4),
    )
)
CASES["grpc.duplicate-input"] = edit(
    lambda r: (
        r.inputs.add(name="INPUT_FP32", datatype="FP32", shape=[2, 3]),
        r.raw_input_contents.append(b"\0" * 24),
    )
)
CASES["grpc.unknown-output"] = edit(lambda r: r.outputs.add(name="NOPE"))


def output_order(outcome: Outcome) -> Outcome:
    """Only the order of the outputs (the outcome's dicts compare regardless of order)."""
    return {"order": list(outcome.get("outputs", {}))} if "outputs" in outcome else outcome


def reversed_outputs(request: pb.ModelInferRequest) -> None:
    for name in ("OUTPUT_BYTES", "OUTPUT_FP32", "OUTPUT_INT8"):
        request.outputs.add(name=name)


CASES["grpc.output-order"] = lambda target: output_order(
    grpc_infer_outcome(target, edit_request(reversed_outputs))
)


def typed_and_raw(request: pb.ModelInferRequest) -> None:
    request.inputs[FP32].contents.fp32_contents.extend([1.0] * 6)


def output_binary_parameter(request: pb.ModelInferRequest) -> None:
    request.outputs.add(name="OUTPUT_INT16").parameters["binary_data"].bool_param = False


CASES["grpc.typed-and-raw"] = edit(typed_and_raw)
CASES["grpc.output-binary-parameter"] = edit(output_binary_parameter)
CASES["grpc.bool-byte-2"] = edit(
    lambda r: r.raw_input_contents.__setitem__(0, bytes([2, 0, 1, 0, 1, 255]))
)


def ask_classification(request: pb.ModelInferRequest) -> None:
    request.outputs.add(name="OUTPUT_FP32").parameters["classification"].int64_param = 2


CASES["grpc.classification"] = edit(ask_classification)
CASES["grpc.bad-bytes-element"] = edit(
    lambda r: r.raw_input_contents.__setitem__(len(DATATYPES) - 1, b"\xff\0\0\0abc")
)


def typed(datatype: str, **contents: Any) -> Case:
    def run(target: Target) -> Outcome:
        request = pb.ModelInferRequest(model_name="params")
        tensor = request.inputs.add(name="x", datatype=datatype, shape=[2])
        for field, values in contents.items():
            getattr(tensor.contents, field).extend(values)
        return grpc_infer_outcome(target, request)

    return run


# The same typed fields go to both servers, so Triton judges the table too.
CONTENTS_FIELD = V2_CONTENTS_FIELD


def typed_all(**values: list[Any]) -> Case:
    """``typed`` with every input in its typed contents field; ``values`` replaces some."""

    def run(target: Target) -> Outcome:
        request = pb.ModelInferRequest(model_name="typed")
        for datatype in TYPED:
            data = values.get(datatype, sample(datatype, (4,), utf8=False).tolist())
            tensor = request.inputs.add(name=f"INPUT_{datatype}", datatype=datatype, shape=[4])
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(data)
        return grpc_infer_outcome(target, request)

    return run


CASES["grpc.typed.all"] = typed_all()
CASES["grpc.typed.int8-out-of-range"] = typed_all(INT8=[300, 1, 2, 3])
CASES["grpc.typed.uint16-out-of-range"] = typed_all(UINT16=[70000, 1, 2, 3])
CASES["grpc.typed.bool-count-short"] = typed_all(BOOL=[True])
CASES["grpc.typed.fp32"] = typed("FP32", fp32_contents=[1.5, 2.5])
CASES["grpc.typed.wrong-field"] = typed("FP32", int_contents=[1, 2])
CASES["grpc.typed.count-mismatch"] = typed("FP32", fp32_contents=[1.5])
CASES["grpc.typed.fp16"] = typed("FP16", fp32_contents=[1.5, 2.5])


def grpc_params(parameters: dict[str, pb.InferParameter]) -> Case:
    def run(target: Target) -> Outcome:
        request = pb.ModelInferRequest(model_name="params")
        request.inputs.add(name="x", datatype="FP32", shape=[1])
        request.raw_input_contents.append(np.array([1], dtype=np.float32).tobytes())
        request.outputs.add(name="PARAMS")
        for key, value in parameters.items():
            request.parameters[key].CopyFrom(value)
        return grpc_infer_outcome(target, request)

    return run


CASES["grpc.parameter-named-inputs"] = grpc_params({"inputs": pb.InferParameter(string_param="x")})
CASES["grpc.parameter-types"] = grpc_params(
    {
        "b": pb.InferParameter(bool_param=True),
        "i": pb.InferParameter(int64_param=-(2**40)),
        "s": pb.InferParameter(string_param="text \u00e9"),
        "d": pb.InferParameter(double_param=0.1),
    }
)
CASES["grpc.parameter-triton-reserved"] = grpc_params(
    {"triton_foo": pb.InferParameter(bool_param=True)}
)
CASES["grpc.parameter-empty-final-response"] = grpc_params(
    {
        "triton_enable_empty_final_response": pb.InferParameter(bool_param=True),
        "headers": pb.InferParameter(string_param="kept"),
    }
)
CASES["grpc.parameter-uint64"] = grpc_params({"u": pb.InferParameter(uint64_param=2**63 + 5)})
CASES["grpc.parameter-unset"] = grpc_params({"unset": pb.InferParameter()})

for _model in ("types", "types_batched", "params", "nope"):
    CASES[f"grpc.metadata.{_model}"] = lambda target, m=_model: grpc_message_outcome(
        target, "ModelMetadata", pb.ModelMetadataRequest(name=m), pb.ModelMetadataResponse
    )
    CASES[f"grpc.ready.{_model}"] = lambda target, m=_model: grpc_message_outcome(
        target, "ModelReady", pb.ModelReadyRequest(name=m), pb.ModelReadyResponse
    )


def stream(requests: list[tuple[str, dict[str, np.ndarray]]]) -> Case:
    """ModelStreamInfer through tritonclient: one request at a time, each answer awaited;
    a failed request is reported in the stream, which goes on."""

    def run(target: Target) -> Outcome:
        answers: queue.Queue[Any] = queue.Queue()
        outcomes = []
        with grpcclient.InferenceServerClient(target.grpc_address) as client:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            try:
                for index, (model, inputs) in enumerate(requests):
                    tensors = []
                    for name, array in inputs.items():
                        tensor = grpcclient.InferInput(name, list(array.shape), datatype_of(name))
                        tensor.set_data_from_numpy(array)
                        tensors.append(tensor)
                    client.async_stream_infer(model, tensors, request_id=f"s{index}")
                    result, error = answers.get(timeout=20)
                    if error is not None:
                        outcomes.append({"error": "reported in the stream"})
                    else:
                        outcomes.append(infer_response_outcome(result.get_response()))
            finally:
                client.stop_stream()
        return {f"answer {i}": outcome for i, outcome in enumerate(outcomes)}

    return run


X_FP32 = {"x": np.array([1.5, -2.0], dtype=np.float32)}
CASES["grpc.stream"] = stream(
    [
        ("types_batched", types_inputs((2, 3))),
        ("nope", X_FP32),
        ("params", X_FP32),
        ("failing", X_FP32),
        ("types", {**TYPES_2x3, "INPUT_FP32": np.zeros((3, 3), dtype=np.float32)}),
        ("types", TYPES_2x3),
    ]
)
CASES["grpc.server-metadata"] = lambda target: grpc_message_outcome(
    target, "ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse
)
CASES["grpc.server-live"] = lambda target: grpc_message_outcome(
    target, "ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse
)


# -- the known, accepted differences -------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A difference from Triton kept on purpose: ``why``, and in which cases it shows, as
    ``{case: paths in the outcome that differ}``."""

    title: str
    why: str
    cases: dict[str, tuple[str, ...]]


def _each(names: str, *paths: str) -> dict[str, tuple[str, ...]]:
    return {name: paths for name in names.split()}


SUCCESS = ("status", "form", "model_name", "model_version", "id", "parameters", "outputs")
SUCCESS_TC = ("status", "model_name", "model_version", "id", "parameters", "outputs")
ANY = ("*",)  # the case's whole outcome differs (written out in the docs)

# The same list, in words, is docs/triton-differences.md: keep the two in step.
KNOWN_DIFFERENCES: list[Accepted] = [
    Accepted(
        "Client errors are 400, not 500",
        "Triton answers 500 (a server error, which clients and proxies retry) to many "
        "malformed requests: bad JSON, wrong JSON types, value counts that do not fit the "
        "shape, a bad Inference-Header-Content-Length. dl-inference answers 400 with the same "
        '{"error": ...} body: no client-caused condition is a 5xx here.',
        _each(
            "http.malformed-json http.json-array-body http.no-inputs-key http.inputs-not-list "
            "http.count-mismatch http.float-for-int http.integral-float-for-int "
            "http.input-without-name http.negative-dim http.null-value http.number-for-bool "
            "http.number-for-bytes http.output-without-name http.outputs-not-list "
            "http.parameters-not-object http.shape-not-list http.string-for-number "
            "http.uint8-negative http.binary.header-length-short http.binary-data-not-bool "
            "http.binary-data-output-not-bool http.binary-data-size-negative "
            "http.datatype-not-string http.float-dim http.name-not-string "
            "http.output-name-unknown-type http.string-dim http.int64-beyond-range "
            "http.uint64-beyond-range http.string-for-bool",
            "status",
        ),
    ),
    Accepted(
        "Out-of-range integers are refused, not wrapped",
        "Triton stores an integer that does not fit the datatype modulo 2**bits, from JSON "
        "and from gRPC's typed contents alike (300 as INT8 reaches the model as 44). "
        "dl-inference refuses it with 400 / INVALID_ARGUMENT, naming the input and the "
        "range: silently changed data is worse than an error.",
        _each(
            "http.int8-out-of-range grpc.typed.int8-out-of-range grpc.typed.uint16-out-of-range",
            *ANY,
        ),
    ),
    Accepted(
        "FP16 in JSON",
        "Triton refuses FP16 values in JSON, in requests and in responses (400, use binary "
        "data), including when a request asks for no outputs and gets all of them as JSON. "
        "dl-inference reads and writes FP16 as JSON numbers. A request that works on Triton "
        "works here too.",
        _each("http.json.fp16 http.json.fp16-output http.json.default-outputs", *ANY),
    ),
    Accepted(
        "Nested data must be regular",
        'Triton flattens any nesting of "data" ([[1, 2], [3, 4, 5, 6]] for shape [2, 3] '
        "included). dl-inference takes flat data or nesting that matches the shape, and "
        "refuses ragged nesting with 400: it cannot mean the declared shape.",
        _each("http.ragged-data", *ANY),
    ),
    Accepted(
        "An unknown Content-Encoding is 415",
        "Triton answers 501, a server error, to a request body in an encoding it does not "
        "know (br); dl-inference answers 415, the client error RFC 9110 gives it, naming the "
        "encodings it takes (gzip, deflate).",
        _each("http.unknown-content-encoding", "status"),
    ),
    Accepted(
        "A batch of zero rows is served",
        "Triton refuses a batched request of zero rows (400, 'input byte size mismatch'); "
        "dl-inference answers outputs of zero rows, as both do for a zero-size dimension "
        "that is not the batch.",
        _each("http.batched.zero-rows", *ANY),
    ),
    Accepted(
        "A JSON name given twice: the last one counts",
        "RFC 8259 leaves an object with a name given twice undefined. Triton reads the first "
        '"inputs"; dl-inference reads the last, as Python\'s and most JSON parsers do.',
        _each("http.duplicate-key", "outputs.y.shape", "outputs.y.values"),
    ),
    Accepted(
        "No classification extension",
        "Triton answers an output requested with the classification parameter as the "
        'top-k classes (BYTES "value:index"). dl-inference does not implement the '
        "extension and refuses such a request with 400 / INVALID_ARGUMENT naming it, "
        "rather than return something other than what was asked for.",
        _each("http.classification grpc.classification", *ANY),
    ),
    Accepted(
        "More lenient requests",
        'A numeric request "id" (Triton: 500) is taken and answered as a string; a bare '
        'number as "data" of a one-element tensor (Triton: 500) is taken as that element; '
        '"outputs": null (Triton: 500) is taken as no outputs listed. Over gRPC a '
        "uint64_param parameter and one with no value set (Triton: INVALID_ARGUMENT) reach "
        "the model as an integer and as None.",
        _each(
            "http.id-not-string http.scalar-data http.outputs-null grpc.parameter-uint64 "
            "grpc.parameter-unset",
            *ANY,
        ),
    ),
    Accepted(
        "Numbers beyond the double range read as infinity",
        "Triton's JSON parser refuses a number beyond the double range such as 1e400 "
        "(500); Python's JSON reads it as infinity, the value Triton itself hands a model "
        "for the literal Infinity (which it accepts), or for 1e39 sent as FP32. Telling "
        "1e400 from Infinity would take a Python call per number parsed, on every request.",
        _each("http.1e400 http.1e400-fp64", *ANY),
    ),
    Accepted(
        "A non-numeric Inference-Header-Content-Length is refused",
        "Triton ignores a header length it cannot read and decodes the body as if the "
        "header were absent, answering 200 with the bytes reinterpreted as numbers. "
        "dl-inference answers 400.",
        _each("http.binary.header-length-not-int", *ANY),
    ),
    Accepted(
        "Non-UTF-8 BYTES asked for as JSON",
        "Triton writes the raw bytes into the JSON string, so the response is not valid "
        "JSON (UTF-8) and clients fail to read it. dl-inference answers 400 and says to ask "
        'for the output with "binary_data": true.',
        _each("http.non-utf8-bytes-as-json", "status"),
    ),
    Accepted(
        "Broken HTTP framing",
        "A Content-Length that is not a number: Triton closes the connection without an "
        "answer, dl-inference's HTTP layer answers 400 (plain text). A Content-Length "
        "shorter than the body: Triton answers 500, dl-inference 400 in V2's JSON error "
        "form, as Triton's (the body it read ends early, so it is not valid JSON; the bytes "
        "left over wait as the start of a next request). Both are errors a client sees at "
        "once; neither reaches a model.",
        {
            "http.content-length-not-int": ("status", "form"),
            "http.content-length-short": ("status",),
        },
    ),
    Accepted(
        "An unparseable gRPC message is INVALID_ARGUMENT",
        "Triton answers INTERNAL to bytes that are not a ModelInferRequest; the client sent "
        "them, so dl-inference answers INVALID_ARGUMENT.",
        _each("grpc.garbage", "code"),
    ),
    Accepted(
        "An empty gRPC model_name is INVALID_ARGUMENT",
        'Triton looks up a model named "" and answers NOT_FOUND; dl-inference says the '
        "required model_name is missing (INVALID_ARGUMENT). Neither is retried by clients; "
        "the message names the field to fill.",
        _each("grpc.empty-request", "code"),
    ),
    Accepted(
        "A malformed request for an unknown model reports the malformed body",
        "Triton looks the model up before it reads the body (404 / NOT_FOUND). dl-inference "
        "reads the body, then authorizes the request, and only then looks the model up (so "
        "a client without rights learns nothing of which models exist); a malformed body is "
        "reported first (400 / INVALID_ARGUMENT). A well-formed request for an unknown model "
        "gets 404 / NOT_FOUND on both.",
        {
            "grpc.unknown-model-bad-data": ("code",),
            "http.unknown-model-bad-data": ("status",),
        },
    ),
    Accepted(
        "A version that is not a number is an unknown version",
        "dl-inference resolves version labels (version_labels in config.yaml), so a version "
        "that is not a number and not a label is an unknown version: NOT_FOUND. Triton has "
        "no labels over V2 and refuses it over gRPC as INVALID_ARGUMENT (over REST both "
        "answer 404).",
        _each("grpc.version-latest", "code"),
    ),
    Accepted(
        "Health and readiness bodies",
        "Same status codes; Triton sends an empty body, dl-inference a JSON document such as "
        '{"ready": true} (KServe V2 defines these bodies; clients read the status).',
        {
            "http.server-live": ("document", "form", "content_type"),
            "http.server-ready": ("document", "form", "content_type"),
            **_each(
                "http.ready.types http.ready.types_batched http.ready.params http.ready.failing "
                "http.ready.version-1 http.version.ready.versioned.default "
                "http.version.ready.versioned.2 http.version.ready.versioned_all.default "
                "http.version.ready.versioned_all.1 http.version.ready.versioned_all.2",
                "document",
                "form",
                "content_type",
            ),
        },
    ),
    Accepted(
        "Readiness of an unknown model is 404",
        "Triton answers 400 to GET /v2/models/<unknown>/ready (and to a version it does not "
        "serve), dl-inference 404 with the list of models or versions, as for every other "
        "request naming an unknown model or version (tritonclient's is_model_ready is False "
        "either way).",
        _each(
            "http.ready.unknown-model http.ready.unknown-version http.version.ready.versioned.1 "
            "http.version.ready.versioned.3 http.version.ready.versioned_all.3",
            "status",
        ),
    ),
    Accepted(
        "HEAD is answered on GET routes",
        "HTTP (RFC 9110) expects a server to answer HEAD wherever it answers GET; "
        "dl-inference's HTTP layer does (200 without a body), Triton answers 405.",
        _each("http.head-model", "status"),
    ),
    Accepted(
        "Model configuration",
        "default_model_filename: Triton fills in its python backend's model.py; "
        "dl-inference's backends find their files themselves and leave it empty. "
        "optimization.input/output_pinned_memory: Triton's default (staging through pinned "
        "GPU memory) is true; dl-inference does no such staging and says false. "
        "dynamic_batching: dl-inference merges concurrent requests for every model with "
        "max_batch_size > 0 and says so; Triton batches only when config.pbtxt asks.",
        {
            **{
                f"http.config.{model}": (
                    "document.default_model_filename",
                    "document.optimization.input_pinned_memory.enable",
                    "document.optimization.output_pinned_memory.enable",
                )
                + (("document.dynamic_batching",) if model == "types_batched" else ())
                for model in ("types", "types_batched", "params")
            },
            **{
                f"grpc.config.{model}": (
                    "document.config.defaultModelFilename",
                    "document.config.optimization.inputPinnedMemory.enable",
                    "document.config.optimization.outputPinnedMemory.enable",
                )
                + (("document.config.dynamicBatching",) if model == "types_batched" else ())
                for model in ("types", "types_batched", "params")
            },
        },
    ),
    Accepted(
        "Failed executions in statistics",
        "Both count a request whose model raised in inference_stats.fail. Triton also "
        "counts the failed execution in execution_count and batch_stats; dl-inference "
        "counts there only executions that produced outputs.",
        _each(
            "http.stats.counts.failing",
            "document.model_stats",
        ),
    ),
    Accepted(
        "The repository extension is on the management listener",
        "Triton answers repository index, load and unload on its main ports. dl-inference "
        "serves them on its management listener (off by default, loopback, with a token) "
        "and refuses them on the main ports with 503 / UNAVAILABLE naming that listener.",
        {
            "http.repository-index": ("status", "form", "document", "content_type"),
            "grpc.repository-index": ("code", "document"),
        },
    ),
    Accepted(
        "No shared-memory, trace or logging extension",
        "Triton serves shared-memory registration (system and CUDA), trace settings and "
        "log settings; dl-inference has none of them: REST answers 404 with a JSON error "
        "body, gRPC UNIMPLEMENTED. Its logs and metrics are configured at start-up; "
        "tensors travel in the request.",
        {
            **{
                f"http.{name}": ("status", "form", "document", "content_type")
                for name in (
                    "trace-setting",
                    "logging",
                    "shared-memory-status",
                    "cuda-shared-memory-status",
                )
            },
            "grpc.shared-memory-status": ("code", "document"),
            "grpc.trace-setting": ("code", "document"),
        },
    ),
    Accepted(
        "Server metadata",
        'The server\'s own "name" and "version", and "extensions": the ones this server '
        "implements, not Triton's list.",
        {
            "http.server-metadata": (
                "document.name",
                "document.version",
                "document.extensions",
            ),
            "grpc.server-metadata": (
                "document.name",
                "document.version",
                "document.extensions",
            ),
        },
    ),
]

# Every response to a request that carried no id has one here: dl-inference gives each
# request an id (the request_id of its log lines and access log) and answers with it,
# where Triton leaves "id" out. A client that sent an id gets exactly its own back.
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


def accepted_paths(case_name: str) -> dict[str, str]:
    """``{path: title}`` of the accepted differences of one case."""
    found = {}
    for accepted in KNOWN_DIFFERENCES:
        for path in accepted.cases.get(case_name, ()):
            found[path] = accepted.title
    return found


def unexplained(found: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """``found`` less the generated ids (see GENERATED_ID)."""
    out = {}
    for path, (theirs, ours) in found.items():
        if path == "id" and theirs in ("", None) and GENERATED_ID.match(str(ours)):
            continue
        out[path] = (theirs, ours)
    return out


# -- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def targets(triton_pair: Any) -> tuple[Target, Target]:
    triton = Target("triton", triton_pair.triton.http_address, triton_pair.triton.grpc_address)
    ours = Target("dl-inference", triton_pair.ours.http_address, triton_pair.ours.grpc_address)
    return triton, ours


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_answer(name: str, targets: tuple[Target, Target], triton_pair: Any) -> None:
    """Each case's outcomes differ exactly where KNOWN_DIFFERENCES says (and nowhere else)."""
    triton, ours = targets
    expected = CASES[name](triton)
    assert triton_pair.triton.alive(), f"Triton died on {name}:\n{triton_pair.triton.output()}"
    got = CASES[name](ours)
    found = unexplained(differences(expected, got))
    known = accepted_paths(name)
    if "*" in known:
        assert found, f"{name}: listed as differing ({known['*']}) but the answers agree"
        return
    new = {path: pair for path, pair in found.items() if path not in known}
    stale = sorted(set(known) - set(found))
    assert not new, f"{name}: differences from Triton (triton, ours): {new}"
    assert not stale, f"{name}: listed differences that no longer hold, remove them: {stale}"


def test_known_differences_name_real_cases() -> None:
    for accepted in KNOWN_DIFFERENCES:
        assert set(accepted.cases) <= set(CASES), accepted.title


def test_docs_list_every_known_difference() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "triton-differences.md").read_text()
    for accepted in KNOWN_DIFFERENCES:
        assert f"## {accepted.title}" in text, (
            f"docs/triton-differences.md lacks {accepted.title!r}"
        )
        for name in accepted.cases:
            assert f"`{name}`" in text, f"docs/triton-differences.md lacks case {name!r}"


@pytest.mark.parametrize(
    ("model", "message", "status", "code"),
    [
        ("failing", FAIL_MESSAGE, 500, "INTERNAL"),
        ("failing_error", ERROR_MESSAGE, 500, "INTERNAL"),
        ("refusing", REFUSE_MESSAGE, 400, "INVALID_ARGUMENT"),
    ],
)
def test_model_errors_carry_the_models_message(
    model: str, message: str, status: int, code: str, targets: tuple[Target, Target]
) -> None:
    """A model's exception (Triton: also a TritonError response) is 500 / INTERNAL on both,
    a model's refusal of its input 400 / INVALID_ARGUMENT, and the client reads the model's
    own message in the error."""
    for target in targets:
        connection = http.client.HTTPConnection(target.http_address, timeout=20)
        connection.request("POST", f"/v2/models/{model}/infer", body=infer_body(X1))
        reply = connection.getresponse()
        assert reply.status == status, target.name
        assert message in json.loads(reply.read())["error"], target.name
        connection.close()
        with grpcclient.InferenceServerClient(target.grpc_address) as client:
            tensor = grpcclient.InferInput("x", [1], "FP32")
            tensor.set_data_from_numpy(np.array([1.0], dtype=np.float32))
            with pytest.raises(InferenceServerException) as error:
                client.infer(model, [tensor])
        assert error.value.status() == f"StatusCode.{code}", target.name
        assert message in error.value.message(), target.name
