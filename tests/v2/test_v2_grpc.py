"""KServe V2 over gRPC, end to end: a real server, tritonclient.grpc and raw gRPC stubs."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as triton
from tritonclient.grpc import service_pb2_grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from dl_inference import to_numpy_dtype
from dl_inference.testing import ServerProcess
from dl_inference.testing.datatypes import EDGE_VALUES

ALL_DATATYPES = EDGE_VALUES


@pytest.fixture(scope="module")
def client(v2_server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(v2_server.grpc_address) as c:
        yield c


@pytest.fixture(scope="module")
def stub(v2_server: ServerProcess) -> Iterator[triton_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(v2_server.grpc_address) as channel:
        yield triton_grpc.GRPCInferenceServiceStub(channel)


def make_input(name: str, array: np.ndarray, datatype: str | None = None) -> grpcclient.InferInput:
    datatype = datatype or ("BYTES" if array.dtype == object else _v2(array.dtype))
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _v2(dtype: np.dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(dtype)


def add_sub_inputs(batch: int = 2) -> tuple[np.ndarray, np.ndarray, list[grpcclient.InferInput]]:
    rng = np.random.default_rng(batch)
    a = rng.standard_normal((batch, 4)).astype(np.float32)
    b = rng.standard_normal((batch, 4)).astype(np.float32)
    return a, b, [make_input("INPUT0", a), make_input("INPUT1", b)]


def assert_still_serving(client: grpcclient.InferenceServerClient) -> None:
    a, b, inputs = add_sub_inputs(3)
    result = client.infer("add_sub", inputs)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)


def expect_error(client: grpcclient.InferenceServerClient, code: grpc.StatusCode, call: Any) -> str:
    """Run ``call``; assert it fails with ``code``; check the server still answers."""
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code.name}", info.value.message()
    assert "Traceback" not in info.value.message()
    assert_still_serving(client)
    return info.value.message()


# -- health and metadata ---------------------------------------------------------------------


def test_server_live_ready_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "dl-inference"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("versioned", "1")
    assert client.is_model_ready("versioned", "2")
    assert not client.is_model_ready("versioned", "9")
    assert not client.is_model_ready("no_such_model")


def test_model_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("add_sub", as_json=True)
    assert metadata["name"] == "add_sub"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "python"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT0", "FP32", ["-1", "4"]),  # int64 shapes are strings in protobuf JSON
        ("INPUT1", "FP32", ["-1", "4"]),
    ]
    assert [t["name"] for t in metadata["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    assert client.get_model_metadata("versioned", as_json=True)["versions"] == ["1", "2"]


def test_model_metadata_of_unknown_model_is_not_found(
    client: grpcclient.InferenceServerClient,
) -> None:
    message = expect_error(
        client, grpc.StatusCode.NOT_FOUND, lambda: client.get_model_metadata("nope")
    )
    assert "'nope'" in message and "add_sub" in message


# -- inference ---------------------------------------------------------------------------------


def test_infer_raw_contents_matches_numpy(client: grpcclient.InferenceServerClient) -> None:
    a, b, inputs = add_sub_inputs(5)
    result = client.infer("add_sub", inputs, request_id="req-42")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    response = result.get_response()
    assert response.id == "req-42"
    assert response.model_name == "add_sub" and response.model_version == "1"
    # Triton's layout: data in raw_output_contents, none in typed contents.
    assert len(response.raw_output_contents) == 2
    assert not response.outputs[0].HasField("contents")


def test_requested_outputs_only(client: grpcclient.InferenceServerClient) -> None:
    a, b, inputs = add_sub_inputs()
    result = client.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def test_every_datatype_round_trips_raw(client: grpcclient.InferenceServerClient) -> None:
    inputs = [make_input(f"in_{dt}", array, dt) for dt, array in ALL_DATATYPES.items()]
    result = client.infer("echo", inputs)
    for datatype, array in ALL_DATATYPES.items():
        got = result.as_numpy(f"OUT_in_{datatype}")
        assert got.shape == array.shape, datatype
        if datatype == "BYTES":
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array)
    outputs = {o.name: o.datatype for o in result.get_response().outputs}
    assert all(outputs[f"OUT_in_{dt}"] == dt for dt in ALL_DATATYPES)


def test_typed_contents_every_field(
    client: grpcclient.InferenceServerClient, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    request = triton.ModelInferRequest(model_name="echo")
    typed = {
        "BOOL": ("bool_contents", [True, False]),
        "INT8": ("int_contents", [-128, 127]),
        "INT16": ("int_contents", [-5, 6]),
        "INT32": ("int_contents", [-(2**31), 7]),
        "INT64": ("int64_contents", [-(2**63), 8]),
        "UINT8": ("uint_contents", [0, 255]),
        "UINT16": ("uint_contents", [1, 65535]),
        "UINT32": ("uint_contents", [2, 2**32 - 1]),
        "UINT64": ("uint64_contents", [3, 2**64 - 1]),
        "FP32": ("fp32_contents", [0.5, -1.25]),
        "FP64": ("fp64_contents", [1e300, -2.5]),
        "BYTES": ("bytes_contents", [b"ab", b""]),
    }
    for datatype, (field, values) in typed.items():
        tensor = request.inputs.add(name=datatype, datatype=datatype, shape=[2])
        getattr(tensor.contents, field).extend(values)
    response = stub.ModelInfer(request)
    pairs = zip(response.outputs, response.raw_output_contents, strict=True)
    outputs = {o.name: (o, raw) for o, raw in pairs}
    for datatype, (_, values) in typed.items():
        output, raw = outputs[f"OUT_{datatype}"]
        assert output.datatype == datatype and list(output.shape) == [2]
        if datatype == "BYTES":
            assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
            continue
        dtype = to_numpy_dtype(datatype)
        np.testing.assert_array_equal(np.frombuffer(raw, dtype), np.array(values, dtype))


def test_bytes_model(client: grpcclient.InferenceServerClient) -> None:
    text = np.array(["hello", "w\u00f6rld", ""], dtype=object)
    result = client.infer("strings", [make_input("TEXT", text, "BYTES")])
    # bytes.upper() changes ASCII letters only; lengths count UTF-8 bytes.
    assert result.as_numpy("UPPER").tolist() == [t.encode().upper() for t in text]
    np.testing.assert_array_equal(result.as_numpy("LENGTHS"), [5, 6, 0])


def test_versions_are_served_separately(client: grpcclient.InferenceServerClient) -> None:
    x = np.array([1.5, 2.0], np.float32)
    for version, factor in (("1", 1), ("2", 2), ("", 2)):
        result = client.infer("versioned", [make_input("x", x)], model_version=version)
        np.testing.assert_allclose(result.as_numpy("y"), x * factor)
        assert result.get_response().model_version == (version or "2")


def test_request_parameters_reach_the_model(
    client: grpcclient.InferenceServerClient, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    x = np.array([1], np.int32)
    result = client.infer(
        "echo",
        [make_input("x", x)],
        parameters={"flag": True, "count": -7, "label": "cat", "ratio": 0.25},
    )
    params = json.loads(result.as_numpy("PARAMS")[0])
    assert params == {"flag": True, "count": -7, "label": "cat", "ratio": 0.25}
    request = triton.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="INT32", shape=[1], contents={"int_contents": [1]})
    request.parameters["big"].uint64_param = 2**64 - 1
    response = stub.ModelInfer(request)
    index = [o.name for o in response.outputs].index("PARAMS")
    assert json.loads(response.raw_output_contents[index][4:]) == {"big": 2**64 - 1}


def test_request_id_comes_from_x_request_id_metadata(
    client: grpcclient.InferenceServerClient,
) -> None:
    # Metadata reaches RequestContext, whose request_id the runtime uses for a request
    # without an id (gRPC itself only allows lower-case keys).
    _, _, inputs = add_sub_inputs()
    result = client.infer("add_sub", inputs, headers={"x-request-id": "trace-77"})
    assert result.get_response().id == "trace-77"


def test_stream_infer_reports_errors_in_stream(client: grpcclient.InferenceServerClient) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        a, b, inputs = add_sub_inputs()
        client.async_stream_infer("add_sub", inputs, request_id="s1")
        client.async_stream_infer("no_such_model", inputs, request_id="s2")
        client.async_stream_infer("add_sub", inputs, request_id="s3")
        got = [results.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    # The stream's requests run concurrently (as on Triton): the refusal may come first;
    # each answer carries its request's id.
    (error,) = [error for _, error in got if error is not None]
    assert "no_such_model" in error.message()
    answered = {result.get_response().id: result for result, error in got if error is None}
    assert sorted(answered) == ["s1", "s3"]
    for result in answered.values():
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_model_and_version_are_not_found(client: grpcclient.InferenceServerClient) -> None:
    _, _, inputs = add_sub_inputs()
    message = expect_error(
        client, grpc.StatusCode.NOT_FOUND, lambda: client.infer("no_such_model", inputs)
    )
    assert "no_such_model" in message
    message = expect_error(
        client,
        grpc.StatusCode.NOT_FOUND,
        lambda: client.infer("add_sub", inputs, model_version="7"),
    )
    assert "version" in message


def test_wrong_datatype_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 4), np.float64)
    inputs = [make_input("INPUT0", a), make_input("INPUT1", a)]
    message = expect_error(
        client, grpc.StatusCode.INVALID_ARGUMENT, lambda: client.infer("add_sub", inputs)
    )
    assert "FP64" in message and "FP32" in message


def test_wrong_shape_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((1, 5), np.float32)
    inputs = [make_input("INPUT0", a), make_input("INPUT1", a)]
    message = expect_error(
        client, grpc.StatusCode.INVALID_ARGUMENT, lambda: client.infer("add_sub", inputs)
    )
    assert "[1, 5]" in message


def test_missing_input_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    inputs = [make_input("INPUT0", np.ones((1, 4), np.float32))]
    message = expect_error(
        client, grpc.StatusCode.INVALID_ARGUMENT, lambda: client.infer("add_sub", inputs)
    )
    assert "INPUT1" in message


def test_unknown_requested_output_is_invalid_argument(
    client: grpcclient.InferenceServerClient,
) -> None:
    _, _, inputs = add_sub_inputs()
    outputs = [grpcclient.InferRequestedOutput("OUTPUT9")]
    message = expect_error(
        client,
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: client.infer("add_sub", inputs, outputs=outputs),
    )
    assert "OUTPUT9" in message


def raw_request(inputs: list[tuple[str, str, list[int]]], raw: list[bytes]) -> Any:
    request = triton.ModelInferRequest(model_name="add_sub")
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw)
    return request


def expect_stub_error(
    client: grpcclient.InferenceServerClient,
    stub: triton_grpc.GRPCInferenceServiceStub,
    request: Any,
    code: grpc.StatusCode,
) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == code, info.value.details()
    assert "Traceback" not in info.value.details()
    assert_still_serving(client)
    return info.value.details()


def test_raw_byte_count_mismatch_names_tensor_and_counts(
    client: grpcclient.InferenceServerClient, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    good = np.ones((1, 4), np.float32).tobytes()
    request = raw_request(
        [("INPUT0", "FP32", [1, 4]), ("INPUT1", "FP32", [1, 4])], [good, good[:12]]
    )
    message = expect_stub_error(client, stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "'INPUT1'" in message and "12 bytes" in message and "16 bytes" in message


def test_raw_entry_count_mismatch(
    client: grpcclient.InferenceServerClient, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    good = np.ones((1, 4), np.float32).tobytes()
    request = raw_request([("INPUT0", "FP32", [1, 4]), ("INPUT1", "FP32", [1, 4])], [good])
    message = expect_stub_error(client, stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "2 inputs but 1 raw_input_contents" in message


def test_unknown_datatype(
    client: grpcclient.InferenceServerClient, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    good = np.ones((1, 4), np.float32).tobytes()
    request = raw_request([("INPUT0", "FLOAT32", [1, 4]), ("INPUT1", "FP32", [1, 4])], [good, good])
    message = expect_stub_error(client, stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "'FLOAT32'" in message and "FP32" in message


def test_contents_count_mismatch(
    client: grpcclient.InferenceServerClient, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    request = triton.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    message = expect_stub_error(client, stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "holds 3 values" in message and "needs 4" in message


def test_mixing_raw_and_typed_contents(
    client: grpcclient.InferenceServerClient, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    good = np.ones((1, 4), np.float32).tobytes()
    request = raw_request([("INPUT0", "FP32", [1, 4]), ("INPUT1", "FP32", [1, 4])], [good, good])
    request.inputs[1].contents.fp32_contents.extend([1.0] * 4)
    message = expect_stub_error(client, stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "one or the other" in message


def test_no_data_at_all(
    client: grpcclient.InferenceServerClient, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    request = raw_request([("INPUT0", "FP32", [1, 4]), ("INPUT1", "FP32", [1, 4])], [])
    message = expect_stub_error(client, stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "'INPUT0'" in message


def test_garbage_bytes_are_invalid_argument(
    client: grpcclient.InferenceServerClient, v2_server: ServerProcess
) -> None:
    with grpc.insecure_channel(v2_server.grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a\xff\xff\xff\x0f")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be parsed" in info.value.details()
    assert_still_serving(client)


def test_failing_model_is_internal_with_its_message(
    client: grpcclient.InferenceServerClient,
) -> None:
    inputs = [make_input("x", np.ones(3, np.float32))]
    message = expect_error(
        client, grpc.StatusCode.INTERNAL, lambda: client.infer("failing", inputs)
    )
    assert "the tokenizer vocabulary is missing" in message


def test_reflection_shows_the_standard_service(v2_server: ServerProcess) -> None:
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(v2_server.grpc_address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "inference.GRPCInferenceService" in database.get_services()
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        method = service.methods_by_name["ModelInfer"]
        assert method.input_type.full_name == "inference.ModelInferRequest"
        fields = {f.name: f.number for f in method.input_type.fields}
        assert fields["raw_input_contents"] == 7 and fields["model_name"] == 1


def test_the_seeds_tis_predict_path_serves_v2_requests(v2_server) -> None:
    import grpc
    import numpy as np
    import tritonclient.grpc.service_pb2 as triton_pb2

    request = triton_pb2.ModelInferRequest(model_name="add_sub")
    a = np.arange(4, dtype=np.float32)
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend(a.tolist())
    with grpc.insecure_channel(v2_server.grpc_address) as channel:
        call = channel.unary_unary(
            "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/TisPredict",
            request_serializer=triton_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=triton_pb2.ModelInferResponse.FromString,
        )
        reply = call(request, timeout=10)
    names = [o.name for o in reply.outputs]
    total = np.frombuffer(reply.raw_output_contents[names.index("OUTPUT0")], np.float32)
    np.testing.assert_array_equal(total, a + a)
