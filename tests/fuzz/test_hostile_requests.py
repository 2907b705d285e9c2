"""Seeded hostile requests over every protocol and transport, against a real server.

One ``dl-inference serve`` process (V2, TF Serving and Seldon; gRPC and REST) serves small
python-backend models. Hypothesis sends it random bytes, mutations of valid messages and
structured messages with hostile shapes, datatypes and values, derandomized (the same
requests every run) and bounded in count. Every answer must be a client error or a
success — never INTERNAL / UNKNOWN / HTTP 5xx — and afterwards the server must be alive,
answer correctly on every protocol, and not have grown its memory.

``DLI_FUZZ_EXAMPLES`` scales the number of requests per test (CI: the default).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dl_inference._proto import kserve_v2_pb2 as v2
from dl_inference.testing import ServerProcess, write_python_model

tfs = pytest.importorskip(
    "dl_inference_tfserving._proto.tfs_pb2", reason="needs the dl-inference-tfserving plugin"
)
seldon = pytest.importorskip(
    "dl_inference_seldon._proto.seldon_pb2", reason="needs the dl-inference-seldon plugin"
)

EXAMPLES = int(os.environ.get("DLI_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
CLIENT_ERRORS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
MAX_MESSAGE_MB = 2
# Memory a whole fuzz run may add to the server's peak resident size.
PEAK_GROWTH_LIMIT = 96 * 1024 * 1024

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
ADD_ONE_CONFIG = """
    max_batch_size: 8
    max_queue_delay_ms: 1
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""
UPPER = """
    import numpy as np
    from dl_inference import PythonModel

    class Upper(PythonModel):
        def predict(self, inputs, **parameters):
            values = [bytes(v).upper() for v in inputs["text"].reshape(-1)]
            return {"upper": np.array(values, dtype=object).reshape(inputs["text"].shape)}
"""
UPPER_CONFIG = """
    inputs: [{name: text, datatype: BYTES, shape: [-1]}]
    outputs: [{name: upper, datatype: BYTES, shape: [-1]}]
"""

V2 = "inference.GRPCInferenceService"
TFS = "tensorflow.serving.PredictionService"
TFS_MODEL = "tensorflow.serving.ModelService"
SEED = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fuzz") / "models"
    write_python_model(root, "add_one", ADD_ONE, ADD_ONE_CONFIG)
    write_python_model(root, "upper", UPPER, UPPER_CONFIG)
    config = root.parent / "server.yaml"
    config.write_text(
        f"model_repository: {root}\nserver: {{grpc: {{max_message_mb: {MAX_MESSAGE_MB}}}}}\n"
    )
    with ServerProcess(["-c", str(config), "--log-level", "error"]) as process:
        yield process


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


BASELINE: dict[str, int] = {}


def peak_rss(server: ServerProcess) -> int:
    """The server's peak resident set size (VmHWM), in bytes."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


# -- valid messages to mutate ----------------------------------------------------------------


def v2_infer() -> bytes:
    request = v2.ModelInferRequest(model_name="add_one", id="fuzz")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    tensor.contents.fp32_contents.extend([1, 2, 3])
    return request.SerializeToString()


def v2_infer_raw() -> bytes:
    request = v2.ModelInferRequest(model_name="upper")
    request.inputs.add(name="text", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(b"\x02\x00\x00\x00ab\x01\x00\x00\x00c")
    return request.SerializeToString()


def tf_predict(name: str = "add_one") -> bytes:
    request = tfs.PredictRequest()
    request.model_spec.name = name
    tensor = request.inputs["x"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=3)
    tensor.float_val.extend([1, 2, 3])
    return request.SerializeToString()


def tf_metadata() -> bytes:
    request = tfs.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "add_one"
    return request.SerializeToString()


def tf_status() -> bytes:
    request = tfs.GetModelStatusRequest()
    request.model_spec.name = "add_one"
    return request.SerializeToString()


def seldon_tensor() -> bytes:
    message = seldon.SeldonMessage()
    message.meta.tags["model"].string_value = "add_one"
    message.data.tensor.shape.extend([1, 3])
    message.data.tensor.values.extend([1, 2, 3])
    return message.SerializeToString()


def seldon_ndarray() -> bytes:
    message = seldon.SeldonMessage()
    message.meta.tags["model"].string_value = "add_one"
    message.data.ndarray.values.add().list_value.values.add().number_value = 1.0
    return message.SerializeToString()


def seldon_tftensor() -> bytes:
    message = seldon.SeldonMessage()
    message.meta.tags["model"].string_value = "add_one"
    tensor = message.data.tftensor
    tensor.dtype = 1
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=3)
    tensor.float_val.extend([1, 2, 3])
    return message.SerializeToString()


GRPC_TARGETS: list[tuple[str, bytes]] = [
    (f"/{V2}/ModelInfer", v2_infer()),
    (f"/{V2}/ModelInfer", v2_infer_raw()),
    (f"/{V2}/ModelMetadata", v2.ModelMetadataRequest(name="add_one").SerializeToString()),
    (f"/{V2}/ModelReady", v2.ModelReadyRequest(name="add_one").SerializeToString()),
    (f"/{V2}/ServerMetadata", b""),
    (f"/{SEED}/TisPredict", v2_infer()),
    (f"/{TFS}/Predict", tf_predict()),
    (f"/{TFS}/Classify", b"\n\t\n\x07add_one"),
    (f"/{TFS}/Regress", b"\n\t\n\x07add_one"),
    (f"/{TFS}/MultiInference", b"\n\x0b\n\t\n\x07add_one"),
    (f"/{TFS}/GetModelMetadata", tf_metadata()),
    (f"/{TFS_MODEL}/GetModelStatus", tf_status()),
    (f"/{SEED}/Predict", tf_predict("add_one-69")),
    ("/seldon.protos.Model/Predict", seldon_tensor()),
    ("/seldon.protos.Seldon/Predict", seldon_ndarray()),
    ("/seldon.protos.Model/Predict", seldon_tftensor()),
    (f"/{SEED}/PytorchPredict", seldon_tensor()),
]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few random edits: flipped, inserted, deleted, duplicated bytes."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


HOSTILE_DIMS = st.sampled_from([-1, 0, 1, 3, 2**24, 2**31, 2**62, 2**63 - 1])


@st.composite
def hostile_v2(draw: st.DrawFn) -> bytes:
    """A well-formed ModelInferRequest with hostile shapes, datatypes and contents."""
    request = v2.ModelInferRequest(model_name=draw(st.sampled_from(["add_one", "upper", "", "x"])))
    datatype = draw(st.sampled_from(["FP32", "BYTES", "INT8", "UINT64", "FP16", "BOOL", "NOPE"]))
    tensor = request.inputs.add(
        name=draw(st.sampled_from(["x", "text", ""])),
        datatype=datatype,
        shape=draw(st.lists(HOSTILE_DIMS, max_size=4)),
    )
    if draw(st.booleans()):
        request.raw_input_contents.append(draw(st.binary(max_size=40)))
    else:
        tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=4), max_size=3)))
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=3)))
    for key in draw(st.lists(st.sampled_from(["inputs", "self", "x", "model", "timeout"]))):
        request.parameters[key].int64_param = 1
    return request.SerializeToString()


@st.composite
def hostile_tensor_proto(draw: st.DrawFn, tensor) -> None:
    """Fill a TensorProto with a hostile dtype, shape and typed values."""
    tensor.dtype = draw(st.sampled_from([0, 1, 2, 3, 4, 6, 7, 9, 10, 19, 23, 99]))
    for size in draw(st.lists(HOSTILE_DIMS, max_size=3)):
        tensor.tensor_shape.dim.add(size=size)
    field = draw(st.sampled_from(["float", "int", "int64", "half", "string", "bool", "content"]))
    if field == "float":
        tensor.float_val.extend(draw(st.lists(st.floats(width=32), max_size=3)))
    elif field == "int":
        tensor.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3)))
    elif field == "int64":
        tensor.int64_val.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)))
    elif field == "half":
        tensor.half_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3)))
    elif field == "string":
        tensor.string_val.extend(draw(st.lists(st.binary(max_size=4), max_size=3)))
    elif field == "bool":
        tensor.bool_val.extend(draw(st.lists(st.booleans(), max_size=3)))
    else:
        tensor.tensor_content = draw(st.binary(max_size=24))


@st.composite
def hostile_tf(draw: st.DrawFn) -> bytes:
    request = tfs.PredictRequest()
    request.model_spec.name = draw(st.sampled_from(["add_one", "upper", ""]))
    if draw(st.booleans()):
        request.model_spec.version.value = draw(st.integers(-(2**63), 2**63 - 1))
    draw(hostile_tensor_proto(request.inputs[draw(st.sampled_from(["x", "text", ""]))]))
    return request.SerializeToString()


@st.composite
def hostile_tf_inputs(draw: st.DrawFn) -> bytes:
    """A PredictRequest of several inputs, named or not as the model's, many of them filled.

    TensorFlow fills a short ``*_val`` list out with its last value: a few hundred bytes
    naming twelve inputs, each one value for a tensor at the message limit, would cost twelve
    times the limit if anything were decoded before the names and the request's fill budget
    were checked.
    """
    request = tfs.PredictRequest()
    request.model_spec.name = draw(st.sampled_from(["add_one", "upper"]))
    names = st.sampled_from(["x", "text", ""] + [f"in{i}" for i in range(12)])
    for name in draw(st.lists(names, min_size=2, max_size=12, unique=True)):
        tensor = request.inputs[name]
        if draw(st.booleans()):
            draw(hostile_tensor_proto(tensor))
            continue
        tensor.dtype = draw(st.sampled_from([1, 2, 7, 9]))  # FLOAT, DOUBLE, STRING, INT64
        # One value for up to the whole 2 MiB limit (and past it).
        tensor.tensor_shape.dim.add(size=draw(st.sampled_from([2, 2**17, 2**18, 2**19, 2**20])))
        if tensor.dtype == 7:
            tensor.string_val.append(b"a")
        elif tensor.dtype == 9:
            tensor.int64_val.append(1)
        else:
            tensor.float_val.append(1.0)
    return request.SerializeToString()


@st.composite
def hostile_seldon(draw: st.DrawFn) -> bytes:
    message = seldon.SeldonMessage()
    tag = draw(st.sampled_from(["model", "self", "inputs", "x"]))
    value = draw(st.one_of(st.text(max_size=8), st.floats(), st.booleans()))
    if isinstance(value, str):
        message.meta.tags[tag].string_value = value
    elif isinstance(value, bool):
        message.meta.tags[tag].bool_value = value
    else:
        message.meta.tags[tag].number_value = value
    message.meta.tags["model"].string_value = draw(st.sampled_from(["add_one", "upper", "z"]))
    form = draw(st.sampled_from(["tensor", "ndarray", "tftensor", "bin", "str"]))
    if form == "tensor":
        message.data.tensor.shape.extend(
            draw(st.lists(HOSTILE_DIMS.map(lambda d: d % 2**31), max_size=3))
        )
        message.data.tensor.values.extend(draw(st.lists(st.floats(), max_size=4)))
    elif form == "ndarray":
        for number in draw(st.lists(st.floats(), max_size=3)):
            message.data.ndarray.values.add().number_value = number
    elif form == "tftensor":
        draw(hostile_tensor_proto(message.data.tftensor))
    elif form == "bin":
        message.binData = draw(st.binary(max_size=16))
    else:
        message.strData = draw(st.text(max_size=16))
    return message.SerializeToString()


def check_grpc(channel: grpc.Channel, path: str, body: bytes) -> None:
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        call(body, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in CLIENT_ERRORS, (path, body, error.code(), error.details())


@FUZZ
@given(data=st.data())
def test_grpc_bytes_and_mutations(channel: grpc.Channel, data: st.DataObject) -> None:
    path, valid = data.draw(st.sampled_from(GRPC_TARGETS))
    body = data.draw(st.one_of(st.binary(max_size=48), mutated(valid)))
    check_grpc(channel, path, body)


@FUZZ
@given(data=st.data())
def test_grpc_hostile_tensors(channel: grpc.Channel, data: st.DataObject) -> None:
    path, strategy = data.draw(
        st.sampled_from(
            [
                (f"/{V2}/ModelInfer", hostile_v2()),
                (f"/{SEED}/TisPredict", hostile_v2()),
                (f"/{TFS}/Predict", hostile_tf()),
                (f"/{SEED}/Predict", hostile_tf()),
                (f"/{TFS}/Predict", hostile_tf_inputs()),
                ("/seldon.protos.Model/Predict", hostile_seldon()),
                (f"/{SEED}/PytorchPredict", hostile_seldon()),
            ]
        )
    )
    check_grpc(channel, path, data.draw(strategy))


# -- REST --------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
REST_TARGETS: list[tuple[str, dict]] = [
    (
        "/v2/models/add_one/infer",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
    ),
    (
        "/v2/models/upper/infer",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
    ),
    ("/v1/models/add_one:predict", {"instances": [[1.0, 2.0]]}),
    ("/v1/models/add_one:predict", {"inputs": {"x": [1.0, 2.0]}}),
    (
        "/v1/models/add_one/versions/1:predict",
        {"signature_name": "serving_default", "instances": [1]},
    ),
    ("/v1/models/add_one:classify", {"examples": [{"x": 1.0}]}),
    ("/v1/models/add_one:regress", {"examples": [{"x": [1.0]}]}),
    (
        "/api/v1.0/predictions",
        {"data": {"ndarray": [[1, 2, 3]]}, "meta": {"tags": {"model": "add_one"}}},
    ),
    ("/api/v1.0/predictions", {"data": {"tensor": {"shape": [1, 3], "values": [1, 2, 3]}}}),
    ("/api/v1.0/predictions", {"strData": "abc", "meta": {"tags": {"model": "upper"}}}),
]


@st.composite
def replaced(draw: st.DrawFn, document: object) -> object:
    """``document`` with one subtree (or leaf) replaced by random JSON."""
    if isinstance(document, dict) and document and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(document)))
        return {**document, key: draw(replaced(document[key]))}
    if isinstance(document, list) and document and draw(st.booleans()):
        index = draw(st.integers(0, len(document) - 1))
        copy = list(document)
        copy[index] = draw(replaced(copy[index]))
        return copy
    return draw(JSON)


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@st.composite
def rest_body(draw: st.DrawFn, valid: dict) -> bytes:
    kind = draw(st.sampled_from(["replace", "replace", "bytes", "deep", "surrogate", "huge"]))
    if kind == "bytes":
        return draw(st.binary(max_size=48))
    if kind == "deep":
        text = json.dumps(valid)
        at = draw(st.sampled_from(["1", "2", '"a"', "1.0"]))
        return text.replace(at, nested(draw(st.sampled_from([100, 5000, 100_000]))), 1).encode()
    if kind == "surrogate":
        return json.dumps(valid).replace('"a"', '"\\ud800"').replace("1", '"\\udfff"', 1).encode()
    if kind == "huge":
        text = json.dumps(valid)
        return (
            text.replace("[1, 2]", "[4294967296, 4294967296]")
            .replace("[1, 3]", "[0, 4611686018427387904]")
            .encode()
        )
    return json.dumps(draw(replaced(valid)), allow_nan=True).encode()


@FUZZ
@given(data=st.data())
def test_rest_documents(server: ServerProcess, data: st.DataObject) -> None:
    path, valid = data.draw(st.sampled_from(REST_TARGETS))
    body = data.draw(rest_body(valid))
    reply = requests.post(server.http_url + path, data=body, timeout=30)
    assert reply.status_code < 500, (path, body[:300], reply.status_code, reply.text[:300])


REST_PATHS = sorted(
    {path for path, _ in REST_TARGETS}
    | {"/v1/models/add_one", "/v1/models/add_one/metadata", "/v1/models/nope", "/v2/models/add_one"}
)


@pytest.mark.parametrize("method", ["HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_rest_paths_under_other_methods(server: ServerProcess, method: str) -> None:
    """No method answers 5xx; TF Serving's tree answers each as a malformed request."""
    for path in REST_PATHS:
        reply = requests.request(method, server.http_url + path, data=b"{}", timeout=30)
        assert reply.status_code < 500, (method, path, reply.status_code, reply.text[:300])
        if path.startswith("/v1/"):
            assert 400 <= reply.status_code < 500, (method, path, reply.status_code)
            if method != "HEAD":
                assert reply.json() == {"error": f"Malformed request: {method} {path}"}


def test_oversize_bodies_are_413(server: ServerProcess) -> None:
    body = b"[" + b"1," * (MAX_MESSAGE_MB * 1024 * 1024) + b"1]"
    for path, _ in REST_TARGETS[::3]:
        reply = requests.post(server.http_url + path, data=body, timeout=60)
        assert reply.status_code == 413, (path, reply.status_code, reply.text[:200])


def test_version_beyond_int64_is_a_client_error(server: ServerProcess) -> None:
    path = f"/v1/models/add_one/versions/{2**70}:predict"
    reply = requests.post(server.http_url + path, json={"instances": [1.0]}, timeout=30)
    assert 400 <= reply.status_code < 500, reply.text


# -- after all of that -----------------------------------------------------------------------


def test_zz_server_alive_correct_and_memory_flat(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    """Runs last in this module (pytest keeps file order): the fuzz tests ran before it."""
    baseline = BASELINE.get("peak")
    call = channel.unary_unary(
        f"/{V2}/ModelInfer", request_serializer=None, response_deserializer=None
    )
    reply = v2.ModelInferResponse.FromString(call(v2_infer(), timeout=30))
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2, 3, 4]
    predict = channel.unary_unary(
        f"/{TFS}/Predict", request_serializer=None, response_deserializer=None
    )
    answer = tfs.PredictResponse.FromString(predict(tf_predict(), timeout=30))
    values = answer.outputs["y"]
    got = list(values.float_val) or list(np.frombuffer(values.tensor_content, np.float32))
    assert got == [2, 3, 4]
    seldon_call = channel.unary_unary(
        "/seldon.protos.Model/Predict", request_serializer=None, response_deserializer=None
    )
    message = seldon.SeldonMessage.FromString(seldon_call(seldon_tensor(), timeout=30))
    assert list(message.data.tensor.values) == [2, 3, 4]
    reply = requests.post(
        server.http_url + "/v2/models/add_one/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
        timeout=30,
    )
    assert reply.json()["outputs"][0]["data"] == [2, 3]
    if baseline is not None:
        assert peak_rss(server) - baseline < PEAK_GROWTH_LIMIT


@pytest.fixture(scope="module", autouse=True)
def _baseline(server: ServerProcess) -> None:
    # Warm the server (first calls import and compile), then note its peak memory.
    for path, body in GRPC_TARGETS:
        with grpc.insecure_channel(server.grpc_address) as channel:
            check_grpc(channel, path, body)
    BASELINE["peak"] = peak_rss(server)
