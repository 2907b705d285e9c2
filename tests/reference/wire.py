"""Send one request to a server and reduce its answer to a comparable *outcome*.

An outcome is a plain dict: for an error, the HTTP status (or gRPC code) and the form of
the error body; for a success, the status and the response's ids, names, datatypes,
shapes and values (as lists, decoded the way a client decodes them). Two servers agree
when their outcomes are equal; :func:`differences` lists where they are not.

The decoding here uses tritonclient's own helpers, not dl-inference's codec, so a bug
in ours cannot hide itself.
"""

from __future__ import annotations

import http.client
import json
import socket
import zlib
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

HEADER_LENGTH = "Inference-Header-Content-Length"
GRPC_SERVICE = "/inference.GRPCInferenceService/"
Outcome = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """Where one server listens."""

    name: str
    http_address: str
    grpc_address: str


# -- values --------------------------------------------------------------------------------


def array_outcome(array: np.ndarray) -> dict[str, Any]:
    """dtype, shape and values of a decoded output (bytes kept as bytes)."""
    return {"dtype": str(array.dtype), "shape": list(array.shape), "values": array.tolist()}


def raw_to_array(datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw).reshape(shape)
    return np.frombuffer(raw, dtype=triton_to_np_dtype(datatype)).reshape(shape)


def json_to_array(datatype: str, shape: list[int], data: list[Any]) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([v.encode() for v in data], dtype=np.object_).reshape(shape)
    return np.array(data, dtype=triton_to_np_dtype(datatype)).reshape(shape)


# -- HTTP ----------------------------------------------------------------------------------


def error_form(body: bytes) -> str:
    """``json-error`` for the V2 form ``{"error": "<text>"}``; else what the body is."""
    try:
        document = json.loads(body)
    except ValueError:
        return "not JSON" if body else "empty"
    if isinstance(document, dict) and set(document) == {"error"}:
        return "json-error" if isinstance(document["error"], str) else "error not a string"
    return f"JSON with keys {sorted(document) if isinstance(document, dict) else '?'}"


def http_outcome(status: int, headers: http.client.HTTPMessage, body: bytes) -> Outcome:
    """Reduce an HTTP answer: errors to status + body form, V2 documents to their content."""
    if status >= 300 or not body:
        return {"status": status, "form": error_form(body) if status >= 300 else "empty"}
    size = headers.get(HEADER_LENGTH)
    head, binary = (body, b"") if size is None else (body[: int(size)], body[int(size) :])
    document = json.loads(head)
    # The media type of a success (error bodies: Triton sends some JSON as text/plain).
    media_type = (headers.get("Content-Type") or "").split(";")[0].strip()
    outcome: Outcome = {"status": status, "content_type": media_type}
    if not isinstance(document, dict) or "model_name" not in document:
        outcome["document"] = document
        return outcome
    outcome.update(
        model_name=document.get("model_name"),
        model_version=document.get("model_version"),
        id=document.get("id"),
        parameters=document.get("parameters"),
    )
    outputs = {}
    offset = 0
    for entry in document["outputs"]:
        datatype, shape = entry["datatype"], entry["shape"]
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = raw_to_array(datatype, shape, binary[offset : offset + size])
            offset += size
        else:
            array = json_to_array(datatype, shape, entry["data"])
        outputs[entry["name"]] = {
            "datatype": datatype,
            "binary": size is not None,
            **array_outcome(array),
        }
    outcome["outputs"] = outputs
    return outcome


def http_request(
    target: Target,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Outcome:
    """One plain HTTP request (http.client sets Content-Length from ``body``)."""
    connection = http.client.HTTPConnection(target.http_address, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        reply = connection.getresponse()
        data = reply.read()
        encoding = reply.headers.get("Content-Encoding", "")
        if encoding in ("gzip", "deflate"):
            # A client that asked for compression reads the body inflated.
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS if encoding == "gzip" else 15)
        return http_outcome(reply.status, reply.headers, data)
    finally:
        connection.close()


def http_raw(target: Target, request: bytes, half_close: bool = False) -> Outcome:
    """Bytes written as they are (for broken framing); the first reply's status and body form.

    ``half_close`` ends the sending side after the bytes, as a client that sent less than
    its Content-Length and gave up would.
    """
    host, port = target.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length and (chunk := sock.recv(65536)):
                body += chunk
        except TimeoutError:
            return {"status": "no answer in 10 s"}
    if not data:
        return {"status": "connection closed without an answer"}
    status = int(head.split(b" ", 2)[1])
    return {"status": status, "form": error_form(body) if status >= 300 else "success"}


def infer_body(
    inputs: list[dict[str, Any]],
    *,
    outputs: list[dict[str, Any]] | None = None,
    parameters: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> bytes:
    document: dict[str, Any] = {"inputs": inputs}
    if outputs is not None:
        document["outputs"] = outputs
    if parameters is not None:
        document["parameters"] = parameters
    if request_id is not None:
        document["id"] = request_id
    return json.dumps(document).encode()


# -- gRPC ----------------------------------------------------------------------------------


def grpc_call(target: Target, method: str, request: bytes) -> tuple[str, bytes]:
    """A unary V2 call with the request as bytes; the status code name and reply bytes."""
    with grpc.insecure_channel(target.grpc_address) as channel:
        stub = channel.unary_unary(GRPC_SERVICE + method)
        try:
            return "OK", stub(request, timeout=20)
        except grpc.RpcError as error:
            return error.code().name, b""


def grpc_infer_outcome(target: Target, request: pb.ModelInferRequest | bytes) -> Outcome:
    data = request if isinstance(request, bytes) else request.SerializeToString()
    code, reply = grpc_call(target, "ModelInfer", data)
    if code != "OK":
        return {"code": code}
    return infer_response_outcome(pb.ModelInferResponse.FromString(reply))


def infer_response_outcome(response: pb.ModelInferResponse) -> Outcome:
    outputs = {}
    for index, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        if response.raw_output_contents:
            array = raw_to_array(tensor.datatype, shape, response.raw_output_contents[index])
        else:
            array = np.array([], dtype=np.object_)  # typed contents: not used by either
        outputs[tensor.name] = {"datatype": tensor.datatype, **array_outcome(array)}
    return {
        "code": "OK",
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "parameters": {k: str(v).strip() for k, v in response.parameters.items()},
        "outputs": outputs,
    }


def grpc_message_outcome(target: Target, method: str, request: Any, reply_type: Any) -> Outcome:
    code, reply = grpc_call(target, method, request.SerializeToString())
    if code != "OK":
        return {"code": code}
    from google.protobuf.json_format import MessageToDict

    document = MessageToDict(
        reply_type.FromString(reply), always_print_fields_with_no_presence=True
    )
    return {"code": code, "document": document}


# -- comparison ----------------------------------------------------------------------------


def differences(triton: Any, ours: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    """``{path: (triton's, ours)}`` for every leaf where the two outcomes differ."""
    if isinstance(triton, dict) and isinstance(ours, dict):
        found: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(triton) | set(ours), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in triton or key not in ours:
                found[where] = (triton.get(key, "<absent>"), ours.get(key, "<absent>"))
            else:
                found.update(differences(triton[key], ours[key], where))
        return found
    if _same(triton, ours):
        return {}
    return {path or "<outcome>": (triton, ours)}


def _same(a: Any, b: Any) -> bool:
    # NaN equals NaN here: both servers returning NaN agree.
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
