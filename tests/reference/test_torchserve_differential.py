"""Side by side with the real TorchServe 0.12: one model store of ``.mar`` archives made by
TorchServe's own ``torch-model-archiver``, served by ``torchserve`` and by
``dl-inference serve --model-repository <store>`` (the dl-inference-torchserve plugin);
the same request bytes (raw, JSON, multipart, urlencoded) get the same status and answer
bytes, errors included.

Archives: a TorchScript model with a BaseHandler subclass (JSON in, labelled JSON out, an
index_to_name.json extra file), an eager model (model.py + state dict) with a module-level
handle(), a handler answering bytes / str with its own content type and status, and
handlers that raise (an exception; a PredictionException with its code).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dl_inference.testing import ServerProcess

from .torchserve import (
    TorchServeServer,
    archive,
    call,
    skip_without_torchserve,
    wait_answered,
)

CLASSIFIER = """
import json

import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import map_class_to_label


class Classifier(BaseHandler):
    \"\"\"JSON rows in ({"instances": [[...], ...]} or a bare list), top-2 labels out.\"\"\"

    def preprocess(self, data):
        self.counts, rows = [], []
        for request in data:
            value = request.get("data") or request.get("body")
            if isinstance(value, (bytes, bytearray)):
                value = json.loads(value)
            if isinstance(value, dict):
                value = value["instances"]
            self.counts.append(len(value))
            rows.extend(value)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        top = torch.softmax(data, dim=1).topk(2, dim=1)
        labelled = map_class_to_label(top.values.tolist(), self.mapping, top.indices.tolist())
        answers, start = [], 0
        for index, count in enumerate(self.counts):
            answers.append(
                {
                    "labels": labelled[start : start + count],
                    "model": self.context.model_name,
                    "version": self.manifest["model"]["modelVersion"],
                    "batch_size": self.context.system_properties["batch_size"],
                    "server": self.context.system_properties["server_name"],
                    "content_type": self.context.get_request_header(index, "Content-Type"),
                }
            )
            start += count
        return answers

    def get_insights(self, tensor, inputs, target):
        # /explanations: BaseHandler.explain_handle passes the first request's raw input
        # and its "target" field.
        return [{"rows": list(tensor.shape), "target": target, "raw": str(inputs)[:20]}]
"""

EAGER_MODEL = """
import torch


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x):
        return self.linear(x) * 2
"""

EAGER_HANDLER = """
import json
import os

import torch

from model import Tiny

_model = None


def handle(data, context):
    global _model
    if data is None:  # TorchServe calls handle(None, context) once, to initialize
        folder = context.system_properties["model_dir"]
        _model = Tiny()
        _model.load_state_dict(torch.load(os.path.join(folder, "tiny.pth")))
        _model.eval()
        return None
    answers = []
    for request in data:
        rows = request.get("body")
        if isinstance(rows, (bytes, bytearray)):
            rows = json.loads(rows)
        with torch.inference_mode():
            y = _model(torch.tensor(rows, dtype=torch.float32))
        answers.append({"y": y.reshape(-1).tolist()})
    return answers
"""

BYTES_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    answers = []
    for index, request in enumerate(data):
        value = request.get("data", request.get("body"))
        if isinstance(value, (bytes, bytearray)):
            context.set_response_content_type(index, "application/x-reversed")
            context.set_response_status(201, "Reversed", index)
            answers.append(bytes(reversed(value)))
        elif isinstance(value, str):
            answers.append(value.upper())
        else:
            answers.append({"fields": sorted(request), "value": value})
    return answers
"""

VERSIONED = """
def handle(data, context):
    if data is None:
        return None
    return [{"version": context.manifest["model"]["modelVersion"]} for _ in data]
"""

RAISING = """
def handle(data, context):
    if data is None:
        return None
    raise ValueError("this handler always fails")
"""

PREDICTION_EXCEPTION = """
from ts.utils.util import PredictionException


def handle(data, context):
    if data is None:
        return None
    raise PredictionException("the row is not what this model takes", 422)
"""

WRONG_COUNT = """
def handle(data, context):
    if data is None:
        return None
    return data + data
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def make_store(work: Path) -> Path:
    """Every archive, made by the real torch-model-archiver."""
    import torch

    store = work / "store"
    src = work / "src"
    src.mkdir()
    torch.manual_seed(3)
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 4)))
    scripted.save(str(src / "classifier.pt"))
    labels = write(src / "index_to_name.json", json.dumps({str(i): f"class-{i}" for i in range(4)}))
    archive(
        store,
        "classify",
        write(src / "classifier_handler.py", CLASSIFIER),
        serialized_file=src / "classifier.pt",
        extra_files=[labels],
    )
    eager = src / "eager"
    eager.mkdir()
    write(eager / "model.py", EAGER_MODEL)
    torch.manual_seed(5)
    # The state dict of model.py's class, made the way users make it.
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(EAGER_MODEL), namespace)
    state = namespace["Tiny"]().state_dict()  # type: ignore[operator]
    torch.save(state, eager / "tiny.pth")
    archive(
        store,
        "eager",
        write(eager / "handler.py", EAGER_HANDLER),
        version="2.0",
        serialized_file=eager / "tiny.pth",
        model_file=eager / "model.py",
    )
    archive(store, "reverse", write(src / "reverse.py", BYTES_HANDLER))
    # Two archives of one model name: its versions (the first by file name the default).
    versioned = write(src / "versioned.py", VERSIONED)
    for version, file in (("1.0", "multi-a.mar"), ("2.0", "multi-b.mar")):
        archive(store, "multi", versioned, version=version).rename(store / file)
    archive(store, "raising", write(src / "raising.py", RAISING))
    archive(store, "refusing", write(src / "refusing.py", PREDICTION_EXCEPTION))
    archive(store, "miscount", write(src / "miscount.py", WRONG_COUNT))
    return store


@dataclass
class Pair:
    theirs: TorchServeServer
    ours: ServerProcess


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    skip_without_torchserve()
    work = tmp_path_factory.mktemp("torchserve-differential")
    store = make_store(work)
    before = sorted(p.name for p in store.iterdir())
    theirs = TorchServeServer(store, work / "torchserve").start()
    try:
        env = {"DLI_TORCHSERVE_CACHE": str(work / "cache")}
        with ServerProcess(["--model-repository", str(store)], env=env) as ours:
            wait_answered(ours.http_url, "/ping", method="GET")
            yield Pair(theirs, ours)
    finally:
        theirs.stop()
    # Served unchanged: neither server wrote into the store.
    assert sorted(p.name for p in store.iterdir()) == before


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body: (name, content type or None, value) per part."""
    boundary = "dli-test-boundary-7d1f"
    chunks = []
    for name, content_type, value in parts:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        if content_type is not None:
            head += f'; filename="{name}.bin"\r\nContent-Type: {content_type}'
        chunks.append(head.encode() + b"\r\n\r\n" + value + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def same(pair: Pair, path: str, body: bytes, headers: dict[str, str], method: str = "POST"):
    """Both servers' answers to the same bytes; asserts they are alike and returns ours."""
    theirs = call(pair.theirs.http_url, path, body, headers, method)
    ours = call(pair.ours.http_url, path, body, headers, method)
    assert ours[0] == theirs[0], (path, theirs, ours)
    assert ours[1] == theirs[1], (path, theirs[1], ours[1])
    if theirs[2] is not None:  # TorchServe sends no Content-Type unless the handler set one
        assert ours[2] == theirs[2], (path, theirs, ours)
    return ours


JSON = {"Content-Type": "application/json"}
ROWS = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]


def test_ping(pair: Pair) -> None:
    assert same(pair, "/ping", b"", {}, method="GET")[0] == 200


def test_basehandler_subclass_json_body(pair: Pair) -> None:
    status, body, _ = same(
        pair, "/predictions/classify", json.dumps({"instances": ROWS}).encode(), JSON
    )
    answer = json.loads(body)
    assert status == 200 and len(answer["labels"]) == 2
    assert set(answer["labels"][0]) <= {f"class-{i}" for i in range(4)}
    assert answer["server"] == "MMS" and answer["version"] == "1.0"


def test_basehandler_subclass_raw_and_multipart_bodies(pair: Pair) -> None:
    raw = json.dumps(ROWS).encode()
    same(pair, "/predictions/classify", raw, {"Content-Type": "application/octet-stream"})
    same(pair, "/predictions/classify/1.0", raw, {"Content-Type": "application/octet-stream"})
    body, headers = multipart([("data", "application/json", raw)])
    same(pair, "/predictions/classify", body, headers)


def test_explanations_and_other_methods(pair: Pair) -> None:
    status, body, _ = same(pair, "/explanations/classify", json.dumps(ROWS[:1]).encode(), JSON)
    assert status == 200 and json.loads(body)["rows"] == [1, 3]
    form, headers = multipart(
        [("data", "application/json", b"[[1, 2, 3]]"), ("target", None, b"2")]
    )
    # The target field arrives as a bytearray, which the answer cannot carry as JSON.
    status, body, _ = same(pair, "/explanations/classify/1.0", form, headers)
    assert (status, json.loads(body)["message"]) == (503, "Unsupported model output data type.")
    # TorchServe takes any method on /predictions: a GET has an empty body.
    assert same(pair, "/predictions/reverse", b"", {}, method="GET")[0] == 201
    same(pair, "/predictions/reverse", b"xy", {"Content-Type": "x/y"}, method="PUT")


def test_archives_of_one_model_are_its_versions(pair: Pair) -> None:
    answers = [same(pair, f"/predictions/multi{v}", b"x", {})[1] for v in ("", "/1.0", "/2.0")]
    assert [json.loads(a)["version"] for a in answers] == ["1.0", "1.0", "2.0"]
    assert same(pair, "/predictions/multi/3.0", b"x", {})[0] == 404


def test_eager_model_with_a_module_level_handle(pair: Pair) -> None:
    status, body, _ = same(
        pair, "/predictions/eager", json.dumps([[1.0, 2.0], [3.0, -4.0]]).encode(), JSON
    )
    assert status == 200 and len(json.loads(body)["y"]) == 2
    same(pair, "/predictions/eager/2.0", b"[[0.5, 0.5]]", JSON)


def test_bytes_str_and_form_answers(pair: Pair) -> None:
    status, body, content_type = same(
        pair,
        "/predictions/reverse",
        b"\x00\x01abc\xff",
        {"Content-Type": "application/octet-stream"},
    )
    assert (status, body, content_type) == (201, b"\xffcba\x01\x00", "application/x-reversed")
    assert (
        same(pair, "/predictions/reverse", b"hello", {"Content-Type": "text/plain"})[1] == b"HELLO"
    )
    body, headers = multipart(
        [("data", "application/octet-stream", b"\x10\x20"), ("note", None, b"n")]
    )
    assert same(pair, "/predictions/reverse", body, headers)[1] == b"\x20\x10"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    same(pair, "/predictions/reverse", b"a=1&b=x%20y&c", form)
    same(pair, "/predictions/reverse", b'{"k": [1, 2]}', JSON)


@pytest.mark.parametrize(
    "path",
    [
        "/predictions/nope",
        "/predictions/classify/9.9",
        "/predictions/raising",
        "/predictions/refusing",
        "/predictions/miscount",
    ],
)
def test_errors_as_torchserve_answers_them(pair: Pair, path: str) -> None:
    status, body, _ = same(pair, path, b"[[1, 2, 3]]", JSON)
    error = json.loads(body)
    assert error["code"] == status >= 400 and error["type"].endswith("Exception")


# -- gRPC: org.pytorch.serve.grpc.inference.InferenceAPIsService ----------------------------

SERVICE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"


def grpc_call(address: str, method: str, message: object, reply_type: type) -> object:
    import grpc

    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply_type.FromString,  # type: ignore[attr-defined]
        )
        return stub(message, timeout=60)


def grpc_both(pair: Pair, method: str, message: object, reply_type: type) -> tuple:
    """(theirs, ours): each a reply, or (code, details) of the error."""
    import grpc

    answers = []
    for address in (pair.theirs.grpc_address, pair.ours.grpc_address):
        try:
            answers.append(grpc_call(address, method, message, reply_type))
        except grpc.RpcError as error:
            answers.append((error.code(), error.details()))
    return tuple(answers)


def test_grpc_ping_and_predictions(pair: Pair) -> None:
    from dl_inference_torchserve._proto import torchserve_pb2 as pb
    from google.protobuf import empty_pb2

    theirs, ours = grpc_both(pair, "Ping", empty_pb2.Empty(), pb.TorchServeHealthResponse)
    assert ours == theirs and json.loads(ours.health) == {"status": "Healthy"}
    requests = [
        pb.PredictionsRequest(model_name="classify", input={"data": json.dumps(ROWS).encode()}),
        pb.PredictionsRequest(
            model_name="classify", model_version="1.0", input={"body": b'{"instances": [[1,2,3]]}'}
        ),
        pb.PredictionsRequest(model_name="reverse", input={"data": b"\x00\x01xyz"}),
        pb.PredictionsRequest(model_name="reverse", input={"a": b"1", "b": b"2"}),
    ]
    for request in requests:
        theirs, ours = grpc_both(pair, "Predictions", request, pb.PredictionResponse)
        assert isinstance(ours, pb.PredictionResponse), ours
        assert ours.prediction == theirs.prediction, request


def test_grpc_errors(pair: Pair) -> None:
    import grpc
    from dl_inference_torchserve._proto import torchserve_pb2 as pb

    cases = {
        # TorchServe answers INTERNAL for a model or version it does not have; a client's
        # mistake is NOT_FOUND here (plugins/torchserve/README.md), with TorchServe's text.
        ("nope", ""): grpc.StatusCode.NOT_FOUND,
        ("classify", "9.9"): grpc.StatusCode.NOT_FOUND,
        ("raising", ""): None,
        ("refusing", ""): None,
        ("miscount", ""): None,
    }
    for (model, version), code in cases.items():
        request = pb.PredictionsRequest(model_name=model, model_version=version, input={"d": b"1"})
        theirs, ours = grpc_both(pair, "Predictions", request, pb.PredictionResponse)
        assert isinstance(theirs, tuple) and isinstance(ours, tuple), (model, theirs, ours)
        assert ours[1] == theirs[1], (model, theirs, ours)
        assert ours[0] == (code or theirs[0]), (model, theirs, ours)
