"""A PredictRequest of many tiny tensors may not make the server allocate many times its limit.

TensorFlow fills a short ``*_val`` list out with its last value. Capped per tensor only, a
373-byte request of 12 inputs, each filled to the message limit, cost 12 times the limit
before it was refused for naming inputs the model does not have. Now input names are checked
against the signature before any tensor is decoded, and the fill has one budget per request
(the server's message limit). ``dl-inference serve`` runs in a subprocess with a 16 MiB
limit; its peak resident size (``VmHWM``) is read before and after each request.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _tfs_shared import PREDICT, write_add_one

from dl_inference.testing import ServerProcess, write_python_model
from dl_inference_tfserving._proto import tfs_pb2

MAX_MESSAGE_MB = 16
LIMIT = MAX_MESSAGE_MB * 1024 * 1024
NAMES = [f"in{i}" for i in range(12)]
# What one refused request may add to the server's peak memory (12 fills would be 192 MiB).
GROWTH = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tfs_fill_budget")
    repo = root / "models"
    write_add_one(repo)
    specs = ", ".join(f"{{name: {name}, datatype: FP32, shape: [-1]}}" for name in NAMES)
    write_python_model(
        repo,
        "twelve",
        """
        import numpy as np
        from dl_inference import PythonModel

        class Sum(PythonModel):
            def predict(self, inputs):
                return {"total": np.float32(sum(float(v.sum()) for v in inputs.values()))[None]}
        """,
        config=f"""
        inputs: [{specs}]
        outputs: [{{name: total, datatype: FP32, shape: [1]}}]
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


def peak_rss(server: ServerProcess) -> int:
    """The server's peak resident set size (VmHWM), in bytes."""
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024  # type: ignore[union-attr]


def filled(model: str, names: list[str], elements: int) -> bytes:
    """A PredictRequest whose every input is one float, to be filled out to ``elements``."""
    request = tfs_pb2.PredictRequest()
    request.model_spec.name = model
    for name in names:
        tensor = request.inputs[name]
        tensor.dtype = tfs_pb2.DT_FLOAT
        tensor.tensor_shape.dim.add(size=elements)
        tensor.float_val.append(1.0)
    return request.SerializeToString()


def call(channel: grpc.Channel, body: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    stub = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
    try:
        return grpc.StatusCode.OK, "", stub(body, timeout=60)
    except grpc.RpcError as error:
        return error.code(), error.details() or "", b""


@pytest.fixture(scope="module", autouse=True)
def warm(channel: grpc.Channel) -> None:
    # The first calls import and allocate what every call needs: not what is measured here.
    for model, names in (("pyadd", ["x"]), ("twelve", NAMES)):
        code, details, _ = call(channel, filled(model, names, 1000))
        assert code == grpc.StatusCode.OK, details


def test_inputs_the_model_lacks_are_refused_before_any_is_decoded(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    body = filled("pyadd", NAMES, LIMIT // 4)  # each input alone fits the limit
    assert len(body) < 400
    before = peak_rss(server)
    code, details, _ = call(channel, body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "has no input named 'in0'; its inputs are: x" in details, details
    assert peak_rss(server) - before < GROWTH


def test_the_fill_has_one_budget_for_the_whole_request(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    body = filled("twelve", NAMES, LIMIT // 4)
    before = peak_rss(server)
    code, details, _ = call(channel, body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"12 inputs with their last value would take {12 * LIMIT} bytes" in details, details
    assert f"over the {LIMIT}-byte limit for one request" in details, details
    assert peak_rss(server) - before < GROWTH
    # Filled out within the budget together, the same twelve inputs are served.
    code, details, reply = call(channel, filled("twelve", NAMES, LIMIT // 4 // 12))
    assert code == grpc.StatusCode.OK, details
    total = tfs_pb2.PredictResponse.FromString(reply).outputs["total"]
    assert list(total.float_val) == [12 * (LIMIT // 4 // 12)]
