"""KServe V2 over REST, end to end: tritonclient.http (binary extension) and plain HTTP."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from dl_inference.testing import ServerProcess, write_python_model
from dl_inference.testing.datatypes import EDGE_VALUES

ALL_DATATYPES = EDGE_VALUES


@pytest.fixture(scope="module")
def client(v2_server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(v2_server.http_address)
    yield c
    c.close()


def http(
    server: ServerProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP call; returns (status, headers, body) whatever the status."""
    request = urllib.request.Request(
        server.http_url + path, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post_json(server: ServerProcess, path: str, document: Any) -> tuple[int, Any]:
    status, _, body = http(
        server, "POST", path, json.dumps(document).encode(), {"Content-Type": "application/json"}
    )
    return status, json.loads(body)


def make_input(
    name: str, array: np.ndarray, datatype: str | None = None, binary: bool = True
) -> httpclient.InferInput:
    datatype = datatype or ("BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype))
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def add_sub_inputs(binary: bool = True) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    return a, b, [make_input("INPUT0", a, binary=binary), make_input("INPUT1", b, binary=binary)]


def assert_still_serving(server: ServerProcess) -> None:
    status, reply = post_json(
        server,
        "/v2/models/add_sub/infer",
        {
            "inputs": [
                {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [4, 3, 2, 1]},
            ]
        },
    )
    assert status == 200, reply
    assert reply["outputs"][0]["data"] == [5, 5, 5, 5]


def expect_error(server: ServerProcess, status: int, reply: tuple[int, Any]) -> str:
    got_status, document = reply
    assert got_status == status, document
    assert set(document) == {"error"} and "Traceback" not in document["error"]
    assert_still_serving(server)
    return document["error"]


# -- health and metadata -----------------------------------------------------------------------


def test_health_and_server_metadata(
    v2_server: ServerProcess, client: httpclient.InferenceServerClient
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    status, _, body = http(v2_server, "GET", "/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, _, body = http(v2_server, "GET", "/v2/health/live")
    assert status == 200 and json.loads(body) == {"live": True}
    metadata = client.get_server_metadata()
    assert metadata["name"] == "dl-inference"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_and_ready(
    v2_server: ServerProcess, client: httpclient.InferenceServerClient
) -> None:
    metadata = client.get_model_metadata("add_sub")
    assert metadata["versions"] == ["1"] and metadata["platform"] == "python"
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}
    versioned = client.get_model_metadata("versioned", model_version="1")
    assert versioned["versions"] == ["1"]  # the version asked for, as Triton answers
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("versioned", "1")
    assert not client.is_model_ready("no_such_model")
    status, _, body = http(v2_server, "GET", "/v2/models/no_such_model/ready")
    assert status == 404 and "add_sub" in json.loads(body)["error"]
    status, _, body = http(v2_server, "GET", "/v2/models/no_such_model")
    assert status == 404 and "no_such_model" in json.loads(body)["error"]
    status, _, body = http(v2_server, "GET", "/v2/models/versioned/versions/9")
    assert status == 404 and "9" in json.loads(body)["error"]


# -- inference ---------------------------------------------------------------------------------


def test_binary_in_binary_out_is_tritonclient_default(
    v2_server: ServerProcess, client: httpclient.InferenceServerClient
) -> None:
    a, b, inputs = add_sub_inputs(binary=True)
    result = client.infer("add_sub", inputs, request_id="rest-1")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    response = result.get_response()
    assert response["id"] == "rest-1"
    assert response["outputs"][0]["parameters"]["binary_data_size"] == a.nbytes
    assert "data" not in response["outputs"][0]


def test_json_in_json_out(client: httpclient.InferenceServerClient) -> None:
    a, b, inputs = add_sub_inputs(binary=False)
    outputs = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    result = client.infer("add_sub", inputs, outputs=outputs)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["OUTPUT1"]
    assert "data" in response["outputs"][0]
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def test_mixed_binary_and_json_outputs(client: httpclient.InferenceServerClient) -> None:
    a, b, inputs = add_sub_inputs(binary=True)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=False),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=True),
    ]
    result = client.infer("add_sub", inputs, outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_bodies(
    client: httpclient.InferenceServerClient, algorithm: str
) -> None:
    a, b, inputs = add_sub_inputs(binary=True)
    result = client.infer("add_sub", inputs, request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_responses(
    v2_server: ServerProcess, client: httpclient.InferenceServerClient, algorithm: str
) -> None:
    a, b, inputs = add_sub_inputs(binary=True)
    result = client.infer("add_sub", inputs, response_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    # Eight rows of sevenths and elevenths: a JSON answer over 1 KiB, compressed as asked.
    sevenths = [[(4 * i + j + 1) / 7 for j in range(4)] for i in range(8)]
    elevenths = [[(4 * i + j + 1) / 11 for j in range(4)] for i in range(8)]
    document = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [8, 4], "data": sevenths},
            {"name": "INPUT1", "datatype": "FP32", "shape": [8, 4], "data": elevenths},
        ]
    }
    body = json.dumps(document).encode()
    status, headers, reply = http(
        v2_server, "POST", "/v2/models/add_sub/infer", body, {"Accept-Encoding": algorithm}
    )
    assert status == 200 and headers["Content-Encoding"] == algorithm
    plain = gzip.decompress(reply) if algorithm == "gzip" else zlib.decompress(reply)
    assert len(plain) >= 1024
    added = np.float32(sevenths) + np.float32(elevenths)
    np.testing.assert_allclose(json.loads(plain)["outputs"][0]["data"], added.ravel())
    # A small answer costs more to deflate than it saves: it goes out as it is.
    document["inputs"] = [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
    ]
    status, headers, reply = http(
        v2_server,
        "POST",
        "/v2/models/add_sub/infer",
        json.dumps(document).encode(),
        {"Accept-Encoding": algorithm},
    )
    assert status == 200 and "Content-Encoding" not in headers
    assert json.loads(reply)["outputs"][0]["data"] == [2, 3, 4, 5]


def test_every_datatype_binary(client: httpclient.InferenceServerClient) -> None:
    inputs = [make_input(f"in_{dt}", array, dt) for dt, array in ALL_DATATYPES.items()]
    result = client.infer("echo", inputs)
    for datatype, array in ALL_DATATYPES.items():
        got = result.as_numpy(f"OUT_in_{datatype}")
        if datatype == "BYTES":
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array)


def test_every_datatype_json(client: httpclient.InferenceServerClient) -> None:
    json_types = {dt: a for dt, a in ALL_DATATYPES.items() if dt != "BYTES"}
    json_types["BYTES"] = np.array([["hello", "w\u00f6rld"]], dtype=object)
    inputs = [make_input(f"in_{dt}", a, dt, binary=False) for dt, a in json_types.items()]
    outputs = [
        httpclient.InferRequestedOutput(f"OUT_in_{dt}", binary_data=False) for dt in json_types
    ]
    result = client.infer("echo", inputs, outputs=outputs)
    for datatype, array in json_types.items():
        got = result.as_numpy(f"OUT_in_{datatype}")
        if datatype == "BYTES":
            assert got.tolist() == array.tolist()  # tritonclient keeps JSON strings as str
        else:
            np.testing.assert_array_equal(got.astype(array.dtype), array)


def test_plain_json_nested_data_and_parameters(v2_server: ServerProcess) -> None:
    status, reply = post_json(
        v2_server,
        "/v2/models/echo/versions/1/infer",
        {
            "id": "plain-1",
            "parameters": {"temperature": 0.5, "mode": "fast", "binary_data_output": False},
            "inputs": [
                {"name": "m", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["caf\u00e9"]},
            ],
        },
    )
    assert status == 200, reply
    assert reply["id"] == "plain-1" and reply["model_version"] == "1"
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert outputs["OUT_m"] == {
        "name": "OUT_m",
        "datatype": "INT64",
        "shape": [2, 2],
        "data": [1, 2, 3, 4],
    }
    assert outputs["OUT_s"]["data"] == ["caf\u00e9"]
    # Transport parameters (binary_data_output) stay out of the model's parameters.
    assert json.loads(outputs["PARAMS"]["data"][0]) == {"mode": "fast", "temperature": 0.5}


def test_bytes_model_binary(client: httpclient.InferenceServerClient) -> None:
    text = np.array([b"abc", b"\xffraw"], dtype=object)
    result = client.infer("strings", [make_input("TEXT", text)])
    assert result.as_numpy("UPPER").tolist() == [b"ABC", b"\xffRAW"]
    np.testing.assert_array_equal(result.as_numpy("LENGTHS"), [3, 4])


def test_non_utf8_bytes_as_json_asks_for_binary(v2_server: ServerProcess) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "TEXT",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 5},
                }
            ],
            "outputs": [{"name": "UPPER", "parameters": {"binary_data": False}}],
        }
    ).encode()
    body = header + b"\x01\x00\x00\x00\xff"
    status, _, reply = http(
        v2_server,
        "POST",
        "/v2/models/strings/infer",
        body,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and "binary_data" in json.loads(reply)["error"]
    assert_still_serving(v2_server)


def test_binary_reply_headers(v2_server: ServerProcess) -> None:
    status, headers, body = http(
        v2_server,
        "POST",
        "/v2/models/add_sub/infer",
        json.dumps(
            {
                "parameters": {"binary_data_output": True},
                "inputs": [
                    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                    {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
                ],
            }
        ).encode(),
    )
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    size = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:size])
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [16, 16]
    np.testing.assert_array_equal(np.frombuffer(body[size : size + 16], np.float32), [2, 3, 4, 5])
    np.testing.assert_array_equal(np.frombuffer(body[size + 16 :], np.float32), [0, 1, 2, 3])


# -- bad input ---------------------------------------------------------------------------------


def test_garbage_json_is_400(v2_server: ServerProcess) -> None:
    status, _, body = http(v2_server, "POST", "/v2/models/add_sub/infer", b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    assert_still_serving(v2_server)


def test_wrong_header_length_is_400(v2_server: ServerProcess) -> None:
    body = b'{"inputs": []}'
    for value in ("999", "-1", "abc"):
        status, _, reply = http(
            v2_server,
            "POST",
            "/v2/models/add_sub/infer",
            body,
            {"Inference-Header-Content-Length": value},
        )
        assert status == 400 and "Inference-Header-Content-Length" in json.loads(reply)["error"]
    assert_still_serving(v2_server)


def test_binary_size_past_end_and_leftover_bytes_are_400(v2_server: ServerProcess) -> None:
    def send(size: int, extra: bytes) -> tuple[int, Any]:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": size},
                    }
                ]
            }
        ).encode()
        status, _, reply = http(
            v2_server,
            "POST",
            "/v2/models/failing/infer",
            header + extra,
            {"Inference-Header-Content-Length": str(len(header))},
        )
        return status, json.loads(reply)

    assert "runs past the end" in expect_error(v2_server, 400, send(8, b"\x00" * 4))
    assert "no input's binary_data_size" in expect_error(v2_server, 400, send(4, b"\x00" * 8))
    assert "holds 2 bytes" in expect_error(v2_server, 400, send(2, b"\x00" * 2))


def test_unknown_model_is_404(v2_server: ServerProcess) -> None:
    reply = post_json(
        v2_server,
        "/v2/models/nope/infer",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]},
    )
    assert "nope" in expect_error(v2_server, 404, reply)


def test_wrong_datatype_shape_and_missing_input_are_400(v2_server: ServerProcess) -> None:
    def infer(inputs: list[dict[str, Any]]) -> tuple[int, Any]:
        return post_json(v2_server, "/v2/models/add_sub/infer", {"inputs": inputs})

    good = {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    wrong_type = {"name": "INPUT0", "datatype": "INT32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    assert "INT32 given" in expect_error(v2_server, 400, infer([wrong_type, good]))
    wrong_shape = {"name": "INPUT0", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}
    assert "[2, 2]" in expect_error(v2_server, 400, infer([wrong_shape, good]))
    assert "INPUT0" in expect_error(v2_server, 400, infer([good]))
    unknown = {"name": "INPUT0", "datatype": "FLOAT", "shape": [1, 4], "data": [1, 2, 3, 4]}
    assert "'FLOAT'" in expect_error(v2_server, 400, infer([unknown, good]))
    count = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2]}
    assert "holds 2 values" in expect_error(v2_server, 400, infer([count, good]))
    no_data = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4]}
    assert "neither" in expect_error(v2_server, 400, infer([no_data, good]))


def test_malformed_documents_are_400(v2_server: ServerProcess) -> None:
    path = "/v2/models/add_sub/infer"
    assert "inputs" in expect_error(v2_server, 400, post_json(v2_server, path, {"inputs": []}))
    assert "JSON object" in expect_error(v2_server, 400, post_json(v2_server, path, [1, 2]))
    bad_outputs = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
    bad_outputs["outputs"] = "OUTPUT0"
    assert "outputs" in expect_error(v2_server, 400, post_json(v2_server, path, bad_outputs))


def test_failing_model_is_500_with_its_message(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("failing", [make_input("x", np.ones(2, np.float32))])
    assert info.value.status() == "500"
    assert "the tokenizer vocabulary is missing" in info.value.message()


def test_gzip_body_via_plain_http(v2_server: ServerProcess) -> None:
    document = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
        ]
    }
    status, _, body = http(
        v2_server,
        "POST",
        "/v2/models/add_sub/infer",
        gzip.compress(json.dumps(document).encode()),
        {"Content-Encoding": "gzip"},
    )
    assert status == 200 and json.loads(body)["outputs"][1]["data"] == [0, 1, 2, 3]
    status, _, body = http(
        v2_server,
        "POST",
        "/v2/models/add_sub/infer",
        b"\x1f\x8b garbage",
        {"Content-Encoding": "gzip"},
    )
    assert status == 400
    assert_still_serving(v2_server)


# -- a server that is not ready ----------------------------------------------------------------

BROKEN = """
    from dl_inference import PythonModel

    class Broken(PythonModel):
        def load(self):
            raise RuntimeError("weights file is truncated")
"""


def test_not_ready_server_and_model_are_503(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_python_model(repo, "broken", BROKEN)
    with ServerProcess(["--model-repository", str(repo)]) as server:
        status, _, body = http(server, "GET", "/v2/health/ready")
        assert status == 503 and json.loads(body) == {"ready": False}
        assert http(server, "GET", "/v2/health/live")[0] == 200
        status, _, body = http(server, "GET", "/v2/models/broken/ready")
        assert status == 503 and json.loads(body) == {"name": "broken", "ready": False}
        status, document = post_json(
            server,
            "/v2/models/broken/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]},
        )
        assert status == 503 and "weights file is truncated" in document["error"]
