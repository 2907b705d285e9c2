"""TF Serving on the kernel's call path, in process: a real Runtime with a probe plugin,
this plugin's gRPC handlers on a grpc.aio server and its REST routes on an aiohttp server,
both on loopback.

What the probe sees is what every plugin's ``dli_on_request`` / ``dli_on_error`` sees: the
method as called, and each failure exactly once.
"""

from __future__ import annotations

import sys
import types
from collections.abc import AsyncIterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import grpc
import pytest
from _tfs_shared import GRPC_METHODS, PREDICT, SEED_PREDICT
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from dl_inference import Decision, RequestContext, hookimpl
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.testing import write_python_model
from dl_inference_tfserving._proto import tfs_pb2
from dl_inference_tfserving.grpc_api import INFERENCE_METHODS, grpc_handlers
from dl_inference_tfserving.protocol import PREDICTION_SERVICE
from dl_inference_tfserving.rest import http_routes
from dl_inference_tfserving.signatures import CLASSIFY_METHOD, REGRESS_METHOD

GARBAGE = b"\x8a@\xe0"
MULTI_INFERENCE = f"/{PREDICTION_SERVICE}/MultiInference"
MAX_MESSAGE_BYTES = 256 * 1024


def probe_plugin(seen: dict[str, list[Any]]) -> EntryPoint:
    """A plugin module made on the fly that records what the per-request hooks see."""

    def dli_on_request(ctx: RequestContext) -> None:
        seen["methods"].append(ctx.method)

    def dli_on_error(ctx: RequestContext, error: BaseException) -> None:
        seen["errors"].append((ctx.method, type(error).__name__))

    def dli_authorize(ctx: RequestContext) -> Decision | None:
        seen["authorized"].append(ctx.request.model_name if ctx.request else None)
        if ctx.metadata.get("x-deny"):
            return Decision.deny("this caller may not use the model")
        return None

    module = types.ModuleType("tfs_call_path_probe")
    for hook in (dli_on_request, dli_on_error, dli_authorize):
        setattr(module, hook.__name__, hookimpl(hook))
    sys.modules[module.__name__] = module
    return EntryPoint(name=module.__name__, value=module.__name__, group="dl_inference")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Any, ...]]:
    write_python_model(
        tmp_path,
        "add_one",
        """
        from dl_inference import PythonModel

        class AddOne(PythonModel):
            def predict(self, inputs):
                return {"y": inputs["x"] + 1}
        """,
        config="""
        inputs: [{name: x, datatype: FP32, shape: [-1]}]
        outputs: [{name: y, datatype: FP32, shape: [-1]}]
        """,
    )
    # Classify and Regress both fit its synthesized serving_default signature (one string
    # input; scores, and regression outputs).
    write_python_model(
        tmp_path,
        "scorer",
        """
        import numpy as np
        from dl_inference import PythonModel

        class Scorer(PythonModel):
            def predict(self, inputs):
                count = len(inputs["inputs"])
                scores = np.full((count, 2), 0.5, dtype=np.float32)
                return {"scores": scores, "outputs": np.arange(count, dtype=np.float32)}
        """,
        config="""
        inputs: [{name: inputs, datatype: BYTES, shape: [-1]}]
        outputs:
          - {name: scores, datatype: FP32, shape: [-1, 2]}
          - {name: outputs, datatype: FP32, shape: [-1]}
        """,
    )
    seen: dict[str, list[Any]] = {"methods": [], "errors": [], "authorized": []}
    plugins = PluginHost(entry_points=[probe_plugin(seen)]).load()
    models = ModelRegistry(plugins)
    models.prepare(scan_repository(tmp_path))
    await models.load_all()
    runtime = Runtime(plugins, models, max_message_bytes=MAX_MESSAGE_BYTES, access_log=False)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(grpc_handlers(runtime))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    app.add_routes(http_routes(runtime))
    rest = TestServer(app, host="127.0.0.1")
    await rest.start_server()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    async with ClientSession(base_url=str(rest.make_url("/"))) as session:
        yield channel, session, runtime, seen
    await channel.close()
    await rest.close()
    await server.stop(None)
    await models.unload_all()


def raw_call(channel: grpc.aio.Channel, path: str) -> Any:
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


def requests_counted(runtime: Runtime, ok: bool) -> float:
    """Requests counted in the metrics for protocol tfserving, OK or not."""
    total = 0.0
    for line in runtime.metrics.render().decode().splitlines():
        series = line.startswith("dli_requests_total{") and 'protocol="tfserving"' in line
        if series and ('status="OK"' in line) == ok:
            total += float(line.rsplit(" ", 1)[1])
    return total


def predict_request(name: str, values: list[float]) -> bytes:
    request = tfs_pb2.PredictRequest()
    request.model_spec.name = name
    tensor = request.inputs["x"]
    tensor.dtype = tfs_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=len(values))
    tensor.float_val.extend(values)
    return request.SerializeToString()


@pytest.mark.parametrize("path", GRPC_METHODS, ids=lambda path: path.rsplit("/", 1)[1])
async def test_an_unparsable_body_is_invalid_argument_counted_once(served, path: str) -> None:
    channel, _, runtime, seen = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_call(channel, path)(GARBAGE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "could not be read" in caught.value.details()
    trailing = dict(caught.value.trailing_metadata() or ())
    assert len(trailing.get("x-request-id", "")) == 32
    # Inference methods count their failures once; metadata, status and reload are answered
    # with the same code and not counted as inference requests.
    counted = path.rsplit("/", 1)[1] in INFERENCE_METHODS
    assert seen["errors"] == ([(path, "InvalidInput")] if counted else [])
    assert requests_counted(runtime, ok=False) == (1 if counted else 0)


async def test_grpc_failures_and_successes_carry_the_method_as_called(served) -> None:
    channel, _, runtime, seen = served
    # An unknown model fails before the runtime's infer: the adapter counts it, once.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_call(channel, PREDICT)(predict_request("nope", [1.0]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # A tensor that cannot be decoded, on the seed's path.
    hostile = tfs_pb2.PredictRequest.FromString(predict_request("add_one", [1.0]))
    hostile.inputs["x"].tensor_shape.dim[0].size = 2**25
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_call(channel, SEED_PREDICT)(hostile.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"over the {MAX_MESSAGE_BYTES}-byte limit" in caught.value.details()
    assert seen["errors"] == [(PREDICT, "ModelNotFound"), (SEED_PREDICT, "InvalidInput")]
    assert requests_counted(runtime, ok=False) == 2

    reply = await raw_call(channel, SEED_PREDICT)(predict_request("add_one-42", [1.0, 2.0]))
    outputs = tfs_pb2.PredictResponse.FromString(reply).outputs["y"]
    assert list(outputs.float_val) == [2.0, 3.0]  # typed fields, as TF Serving answers
    assert seen["methods"] == [SEED_PREDICT]
    assert requests_counted(runtime, ok=True) == 1


async def test_authorization_comes_before_the_model_lookup(served) -> None:
    channel, _, _, seen = served
    deny = (("x-deny", "1"),)
    for name in ("add_one", "no_such_model"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw_call(channel, PREDICT)(predict_request(name, [1.0]), metadata=deny)
        # Refused alike: a caller who may not call learns nothing about which models exist.
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert seen["authorized"] == ["add_one", "no_such_model"]
    assert seen["errors"] == [(PREDICT, "PermissionDenied")] * 2
    # Allowed: asked once per call, not again by the runtime's infer.
    await raw_call(channel, PREDICT)(predict_request("add_one", [1.0]))
    assert seen["authorized"][2:] == ["add_one"]


async def test_rest_failures_counted_once_with_the_route_label(served) -> None:
    _, session, runtime, seen = served
    cases = [
        ("/v1/models/add_one:predict", b"\xff\xfe{}", 400, "not UTF-8"),
        ("/v1/models/add_one:predict", b"[" * 100_000, 400, "nests"),
        ("/v1/models/add_one:predict", b"[" + b"1," * MAX_MESSAGE_BYTES + b"1]", 413, "larger"),
        (f"/v1/models/add_one/versions/{2**70}:predict", b"{}", 400, "Failed to convert"),
        ("/v1/models/add_one:explode", b"{}", 404, "Malformed request"),
    ]
    for path, body, status, words in cases:
        async with session.post(path, data=body) as reply:
            document = await reply.json()
            assert reply.status == status, (path, document)
            assert set(document) == {"error"} and words in document["error"], document
            assert len(reply.headers["x-request-id"]) == 32
    label = "POST /v1/models/{name}:predict"
    assert seen["errors"] == [
        (label, "InvalidInput"),
        (label, "InvalidInput"),
        (label, "PayloadTooLarge"),
        (label, "InvalidInput"),
        ("POST /v1/models/...", "InvalidInput"),
    ]
    assert requests_counted(runtime, ok=False) == len(cases)
    async with session.get(f"/v1/models/add_one/versions/{2**64}") as reply:
        assert reply.status == 400 and "Failed to convert" in (await reply.json())["error"]
    assert len(seen["errors"]) == len(cases)  # a status call is not an inference request
    assert requests_counted(runtime, ok=False) == len(cases)

    async with session.post("/v1/models/add_one:predict", json={"instances": [1.5]}) as reply:
        assert reply.status == 200 and (await reply.json())["predictions"] == [2.5]
    assert seen["methods"] == [label]


def multi_inference_request(*tasks: tuple[str, str]) -> bytes:
    """A MultiInferenceRequest to ``scorer``: one (signature_name, method_name) per task."""
    request = tfs_pb2.MultiInferenceRequest()
    for signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "scorer"
        task.model_spec.signature_name = signature
    example = request.input.example_list.examples.add()
    example.features.feature["f"].float_list.value.append(1.0)
    return request.SerializeToString()


async def test_multi_inference_refuses_a_signature_named_twice(served) -> None:
    """TF Serving: "Duplicate evaluation of signature", before any task runs."""
    channel, _, runtime, seen = served
    duplicates = [
        ((("", CLASSIFY_METHOD), ("", REGRESS_METHOD))),  # the default signature, twice
        ((("serving_default", REGRESS_METHOD), ("", REGRESS_METHOD))),
        ((("", CLASSIFY_METHOD), ("", CLASSIFY_METHOD))),
    ]
    for tasks in duplicates:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw_call(channel, MULTI_INFERENCE)(multi_inference_request(*tasks))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        details = caught.value.details()
        assert "Duplicate evaluation of signature: serving_default" in details, details
    assert seen["methods"] == []  # the model never ran
    assert seen["errors"] == [(MULTI_INFERENCE, "InvalidInput")] * len(duplicates)
    assert requests_counted(runtime, ok=False) == len(duplicates)
    # Each signature once: each task runs once.
    reply = await raw_call(channel, MULTI_INFERENCE)(multi_inference_request(("", REGRESS_METHOD)))
    (result,) = tfs_pb2.MultiInferenceResponse.FromString(reply).results
    assert [r.value for r in result.regression_result.regressions] == [0.0]
    assert result.model_spec.signature_name == "serving_default"
    assert seen["methods"] == [MULTI_INFERENCE]


# HTTP's methods, and one of WebDAV's (aiohttp's parser refuses tokens it does not know).
OTHER_METHODS = ["HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"]


async def test_every_other_http_method_is_a_malformed_request_on_the_call_path(served) -> None:
    """As TF Serving: only POST :predict|:classify|:regress and GET status / metadata exist.

    HEAD used to reach a handler table without it (HTTP 500), and PUT / DELETE / ... were
    answered by aiohttp itself, off the call path (in aiohttp's format).
    """
    _, session, runtime, seen = served
    paths = [
        "/v1/models/add_one",
        "/v1/models/add_one/metadata",
        "/v1/models/add_one:predict",
        "/v1/models/add_one/versions/1:classify",
        "/v1/models/no_such_model",
    ]
    for method in OTHER_METHODS:
        for path in paths:
            async with session.request(method, path, data=b"{}") as reply:
                assert reply.status == 404, (method, path, reply.status)
                assert len(reply.headers["x-request-id"]) == 32
                if method != "HEAD":  # HEAD has no body, by HTTP's rules
                    document = await reply.json()
                    assert document == {"error": f"Malformed request: {method} {path}"}
    # No other method can run a model: answered, not counted as inference requests.
    assert seen["errors"] == []
    assert requests_counted(runtime, ok=False) == 0
    assert seen["methods"] == []
    # GET and POST still reach the API.
    async with session.get("/v1/models/add_one") as reply:
        assert reply.status == 200, await reply.text()
    async with session.post("/v1/models/add_one:predict", json={"instances": [1.0]}) as reply:
        assert reply.status == 200 and (await reply.json())["predictions"] == [2.0]
