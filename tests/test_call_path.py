"""The kernel's one call path: contexts built once, parse errors are client errors, every
failure counted once, the method as called — shown on the V2 gRPC adapter over a real
grpc.aio server on loopback."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import structlog.testing
from prometheus_client.parser import text_string_to_metric_families

from dl_inference import RequestContext
from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.builtin.v2.grpc_service import SEED_SERVICE, SERVICE, grpc_handlers
from dl_inference.spi.call_path import Call, CallPath
from dl_inference.spi.errors import InvalidInput, ResourceExhausted
from tests.test_request_hooks import make_runtime, plugin_module

GARBAGE = b"\x8a@\xe0"


@pytest.fixture
async def served(tmp_path: Path):
    seen: dict[str, list] = {"methods": [], "errors": []}

    def dli_on_request(ctx: RequestContext) -> None:
        seen["methods"].append(ctx.method)

    def dli_on_error(ctx: RequestContext, error: BaseException) -> None:
        seen["errors"].append((ctx.method, type(error).__name__))

    runtime = await make_runtime(
        tmp_path,
        plugin_module("call_path_probe", dli_on_request=dli_on_request, dli_on_error=dli_on_error),
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(grpc_handlers(runtime))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel, runtime, seen
    await channel.close()
    await server.stop(None)


def raw_call(channel: grpc.aio.Channel, path: str):
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


def failures(runtime, protocol: str = "v2") -> float:
    """Failed requests counted in the metrics for ``protocol``, every model and status."""
    text = runtime.metrics.render().decode()
    total = 0.0
    for line in text.splitlines():
        series = line.startswith("dli_requests_total{") and f'protocol="{protocol}"' in line
        if series and 'status="OK"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(
    "method", ["ModelMetadata", "ModelReady", "ServerMetadata", "ServerLive", "ModelInfer"]
)
async def test_unparsable_body_is_invalid_argument(served, method: str) -> None:
    channel, _, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_call(channel, f"/{SERVICE}/{method}")(GARBAGE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "could not be" in caught.value.details()
    trailing = dict(caught.value.trailing_metadata() or ())
    assert len(trailing.get("x-request-id", "")) == 32


async def test_failure_counted_once_with_the_method_as_called(served) -> None:
    channel, runtime, seen = served
    for path in (f"/{SERVICE}/ModelInfer", f"/{SEED_SERVICE}/TisPredict"):
        with pytest.raises(grpc.aio.AioRpcError):
            await raw_call(channel, path)(GARBAGE)
    # An unknown model fails inside the runtime: counted there, not again by the adapter.
    request = pb.ModelInferRequest(model_name="nope")
    request.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1, 2])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_call(channel, f"/{SEED_SERVICE}/TisPredict")(request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert seen["errors"] == [
        (f"/{SERVICE}/ModelInfer", "InvalidInput"),
        (f"/{SEED_SERVICE}/TisPredict", "InvalidInput"),
        (f"/{SEED_SERVICE}/TisPredict", "ModelNotFound"),
    ]
    # A good call reports the path it came in on.
    request.model_name = "add_one"
    reply = await raw_call(channel, f"/{SEED_SERVICE}/TisPredict")(request.SerializeToString())
    assert pb.ModelInferResponse.FromString(reply).model_name == "add_one"
    assert seen["methods"] == [f"/{SEED_SERVICE}/TisPredict"] * 2
    assert failures(runtime) == 3


async def test_the_deadline_reaches_the_request(served) -> None:
    channel, runtime, _ = served
    deadlines: list[float | None] = []
    infer = runtime.infer

    async def spy(request, ctx):
        deadlines.append(request.deadline)
        return await infer(request, ctx)

    runtime.infer = spy
    request = pb.ModelInferRequest(model_name="add_one")
    request.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1, 2])
    await raw_call(channel, f"/{SERVICE}/ModelInfer")(request.SerializeToString(), timeout=30)
    assert deadlines and deadlines[0] is not None


def test_parsing_turns_decoder_errors_into_invalid_input() -> None:
    call = Call(RequestContext("t", "m"), runtime=None)  # type: ignore[arg-type]
    for error in (ValueError("bad"), RecursionError(), OverflowError("big"), KeyError("k")):
        with (
            pytest.raises(InvalidInput, match="the thing could not be read"),
            call.parsing("the thing"),
        ):
            raise error
    with pytest.raises(InvalidInput, match="nested too deeply"), call.parsing("the thing"):
        raise RecursionError("maximum recursion depth exceeded")
    # Our own errors and server faults pass unchanged.
    with pytest.raises(RuntimeError), call.parsing("the thing"):
        raise RuntimeError("a bug")
    mine = InvalidInput("already said")
    with pytest.raises(InvalidInput) as raised, call.parsing("the thing"):
        raise mine
    assert raised.value is mine
    with (
        pytest.raises(ResourceExhausted, match="the thing declares more data"),
        call.parsing("the thing"),
    ):
        raise MemoryError()
    with call.parsing("the thing"):
        pass  # a block that reads fine


def test_call_path_names_the_protocol_as_its_plugin_by_default() -> None:
    assert CallPath(runtime=None, protocol="myproto").plugin == "myproto"  # type: ignore[arg-type]
    assert CallPath(runtime=None, protocol="p", plugin="pkg").plugin == "pkg"  # type: ignore[arg-type]


async def test_an_adapter_that_authorizes_first_is_not_asked_again(tmp_path: Path) -> None:
    from dl_inference import Decision, InferRequest
    from dl_inference.spi.errors import PermissionDenied

    asked: list[str] = []

    def dli_authorize(ctx: RequestContext) -> Decision | None:
        asked.append(ctx.request.model_name)
        return None if ctx.metadata.get("key") == "good" else Decision.deny("no key")

    runtime = await make_runtime(tmp_path, plugin_module("auth_once", dli_authorize=dli_authorize))
    ctx = RequestContext("t", "m", metadata={"key": "good"})
    ctx.request = InferRequest("add_one", {})
    runtime.authorize(ctx)
    request = InferRequest("add_one", {"x": np.zeros(2, np.float32)})
    await runtime.infer(request, ctx)
    assert asked == ["add_one"]
    refused = RequestContext("t", "m")
    refused.request = InferRequest("add_one", {})
    with pytest.raises(PermissionDenied):
        runtime.authorize(refused)


BAD_UTF8 = """
    import numpy as np
    from dl_inference import PythonModel

    class Latin1(PythonModel):
        def predict(self, inputs, **parameters):
            return {"text": np.array([b"caf\\xe9"], dtype=object)}
"""


async def test_a_reply_that_cannot_be_encoded_counts_as_a_failure(tmp_path: Path) -> None:
    """Success is counted once the reply is encoded: a JSON reply of non-UTF-8 BYTES fails."""
    from aiohttp import ClientSession, web

    from dl_inference.builtin.v2.rest import http_routes
    from dl_inference.testing import write_python_model

    write_python_model(
        tmp_path, "latin1", BAD_UTF8, "outputs: [{name: text, datatype: BYTES, shape: [1]}]\n"
    )
    runtime = await make_runtime(tmp_path)
    app = web.Application()
    app.add_routes(http_routes(runtime))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with ClientSession() as session:
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
            url = f"http://127.0.0.1:{port}/v2/models/latin1/infer"
            async with session.post(url, json=body) as reply:
                assert reply.status == 400, await reply.text()
            url = f"http://127.0.0.1:{port}/v2/models/add_one/infer"
            async with session.post(url, json=body) as reply:
                assert reply.status == 200, await reply.text()
    finally:
        await runner.cleanup()
    text = runtime.metrics.render().decode()
    assert (
        'dli_requests_total{model="latin1",protocol="v2",status="INVALID_ARGUMENT",version="1"} 1.0'
        in text
    )
    assert 'model="latin1",protocol="v2",status="OK"' not in text
    assert 'dli_requests_total{model="add_one",protocol="v2",status="OK",version="1"} 1.0' in text


# -- dli_on_error: always a ctx.request, once per call, and a broken plugin changes nothing --


@pytest.fixture
async def audited(tmp_path: Path):
    """The V2 gRPC adapter with two audit plugins: one reads ``ctx.request.model_name`` as
    docs/hook-plugins.md shows, the other raises on every call."""
    seen: list[tuple[str, str, str]] = []

    def read_model(ctx: RequestContext, error: BaseException) -> None:
        seen.append((ctx.method.rsplit("/", 1)[-1], ctx.request.model_name, type(error).__name__))

    def broken(ctx: RequestContext, error: BaseException) -> None:
        raise RuntimeError("the audit sink is down")

    runtime = await make_runtime(
        tmp_path,
        plugin_module("audit_reader", dli_on_error=read_model),
        plugin_module("audit_broken", dli_on_error=broken),
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(grpc_handlers(runtime))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel, runtime, seen
    await channel.close()
    await server.stop(None)


def infer_request(model: str, version: str = "", datatype: str = "FP32") -> bytes:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2])
    if datatype == "FP32":
        tensor.contents.fp32_contents.extend([1, 2])
    else:
        tensor.contents.int_contents.extend([1, 2])
    return request.SerializeToString()


async def test_on_error_hooks_always_get_a_request_and_a_raising_one_changes_nothing(
    audited,
) -> None:
    channel, runtime, seen = audited
    infer = raw_call(channel, f"/{SERVICE}/ModelInfer")
    cases = [
        (GARBAGE, grpc.StatusCode.INVALID_ARGUMENT),  # fails before any model is known
        (infer_request("nope"), grpc.StatusCode.NOT_FOUND),  # fails inside Runtime.infer
        (infer_request("add_one", datatype="INT32"), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    with structlog.testing.capture_logs() as logs:
        for body, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await infer(body)
            assert caught.value.code() == code, caught.value.details()
        reply = await infer(infer_request("add_one"))
    assert pb.ModelInferResponse.FromString(reply).model_name == "add_one"
    # Each failure reached each plugin once: the reader first, and the broken plugin
    # before it did not stop it (pluggy calls the last registered first).
    assert seen == [
        ("ModelInfer", "", "InvalidInput"),
        ("ModelInfer", "nope", "ModelNotFound"),
        ("ModelInfer", "add_one", "InvalidInput"),
    ]
    raised = [e for e in logs if e["event"] == "a plugin's hook raised; ignored"]
    assert [(e["plugin"], e["hook"], e["log_level"]) for e in raised] == [
        ("audit_broken", "dli_on_error", "error")
    ] * 3
    assert "the audit sink is down" in raised[0]["error"]
    assert failures(runtime) == 3  # each counted once


async def test_failures_of_calls_that_are_not_inference_are_not_counted(audited) -> None:
    channel, runtime, seen = audited
    for method in ("ModelMetadata", "ModelReady", "ServerMetadata", "ServerLive"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw_call(channel, f"/{SERVICE}/{method}")(GARBAGE)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        request = pb.ModelMetadataRequest(name="nope").SerializeToString()
        await raw_call(channel, f"/{SERVICE}/ModelMetadata")(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert seen == [] and failures(runtime) == 0


# -- metric labels name only the models this server holds ----------------------------------


def series(runtime) -> dict[str, int]:
    """How many labelled series each per-request family holds now."""
    text = runtime.metrics.render().decode()
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("dli_requests", "dli_request_duration", "dli_in_flight")):
            labels = {
                tuple(sorted(s.labels.items())) for s in family.samples if "le" not in s.labels
            }
            counts[family.name] = len(labels)
    return counts


async def test_invented_model_names_add_at_most_one_series_per_metric(served) -> None:
    channel, runtime, _ = served
    infer = raw_call(channel, f"/{SERVICE}/ModelInfer")
    await infer(infer_request("add_one"))
    with pytest.raises(grpc.aio.AioRpcError):
        await infer(infer_request("add_one", version="77"))  # a version it does not have
    with pytest.raises(grpc.aio.AioRpcError):
        await infer(infer_request("nope-0"))
    before = series(runtime)
    for i in range(500):
        body = infer_request(f"nope-{i}", version=str(i % 7)) if i % 2 else GARBAGE
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await infer(body)
        assert caught.value.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    after = series(runtime)
    assert set(after) == set(before) and all(after[k] - before[k] <= 1 for k in after), (
        before,
        after,
    )
    assert failures(runtime) == 502
    text = runtime.metrics.render().decode()
    assert 'model="nope' not in text and 'version="77"' not in text
    assert 'dli_requests_total{model="",protocol="v2",status="NOT_FOUND",version=""} 251.0' in text
    assert set(runtime.metrics.windows) <= {"", "add_one"}


# -- decoder errors that may be bugs are logged ----------------------------------------------


def test_python_errors_in_decoders_are_invalid_input_and_logged_with_a_traceback() -> None:
    call = Call(RequestContext("myproto", "/svc/Method"), runtime=None)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        for error in (TypeError("unhashable"), KeyError("inputs"), IndexError("out")):
            with pytest.raises(InvalidInput), call.parsing("the thing"):
                raise error
        with pytest.raises(InvalidInput), call.parsing("the thing"):
            raise ValueError("not a number")  # a reader's ordinary refusal: not logged
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["protocol"], e["method"], e["exc_info"].__class__) for e in warned] == [
        ("myproto", "/svc/Method", TypeError),
        ("myproto", "/svc/Method", KeyError),
        ("myproto", "/svc/Method", IndexError),
    ]
