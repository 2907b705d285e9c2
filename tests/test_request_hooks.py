"""Per-request hooks: authorize, rewrite requests and responses, observe errors."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import structlog.testing

from dl_inference import Decision, RequestContext, hookimpl
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.call_path import Call
from dl_inference.spi.errors import (
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    Unauthenticated,
)
from dl_inference.spi.types import InferRequest
from dl_inference.testing import write_python_model

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def plugin_module(name: str, **hooks: object) -> EntryPoint:
    """A plugin module made on the fly, reachable through a real EntryPoint object."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    sys.modules[name] = module
    return EntryPoint(name=name, value=name, group="dl_inference")


async def make_runtime(root: Path, *entry_points: EntryPoint) -> Runtime:
    write_python_model(root, "add_one", ADD_ONE, CONFIG)
    plugins = PluginHost(entry_points=list(entry_points)).load()
    models = ModelRegistry(plugins)
    models.prepare(scan_repository(root))
    await models.load_all()
    return Runtime(plugins, models, access_log=False)


def call(runtime: Runtime, token: str = "", model: str = "add_one"):
    ctx = RequestContext("test", "infer", metadata={"authorization": token})
    return runtime.infer(InferRequest(model, {"x": np.zeros(2, np.float32)}), ctx)


async def test_authorize_refuses_and_allows(tmp_path: Path) -> None:
    def dli_authorize(ctx: RequestContext) -> Decision | None:
        token = ctx.metadata.get("authorization")
        if not token:
            return Decision.deny("send an authorization token", authenticated=False)
        if token != "good":
            return Decision.deny(f"token may not call {ctx.request.model_name}")
        return None

    runtime = await make_runtime(
        tmp_path, plugin_module("auth_plugin", dli_authorize=dli_authorize)
    )
    with pytest.raises(Unauthenticated, match="send an authorization token"):
        await call(runtime)
    with pytest.raises(PermissionDenied, match="may not call add_one"):
        await call(runtime, "bad")
    response = await call(runtime, "good")
    np.testing.assert_array_equal(response.outputs["y"], np.ones(2, np.float32))


async def test_request_and_response_rewriting(tmp_path: Path) -> None:
    def dli_on_request(ctx: RequestContext) -> None:
        ctx.request.inputs["x"] = ctx.request.inputs["x"] + 10

    def dli_on_response(ctx: RequestContext) -> None:
        ctx.response.outputs["y"] = ctx.response.outputs["y"] * 2
        ctx.response.parameters["rewritten"] = True

    runtime = await make_runtime(
        tmp_path,
        plugin_module(
            "rewrite_plugin", dli_on_request=dli_on_request, dli_on_response=dli_on_response
        ),
    )
    response = await call(runtime)
    np.testing.assert_array_equal(response.outputs["y"], np.full(2, 22, np.float32))
    assert response.parameters == {"rewritten": True}


async def test_on_error_sees_the_failure(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def dli_on_error(ctx: RequestContext, error: BaseException) -> None:
        seen.append((ctx.request_id, type(error).__name__))

    runtime = await make_runtime(tmp_path, plugin_module("audit_plugin", dli_on_error=dli_on_error))
    ctx = RequestContext("test", "infer", metadata={"x-request-id": "req-42"})
    with pytest.raises(InvalidInput):
        await runtime.infer(InferRequest("add_one", {"x": np.zeros(2, np.int32)}), ctx)
    assert seen == [("req-42", "InvalidInput")]


async def test_hooks_cost_nothing_when_unimplemented(tmp_path: Path) -> None:
    runtime = await make_runtime(tmp_path)
    hooks = (runtime._authorize, runtime._on_request, runtime._on_response, runtime._on_error)
    assert hooks == (None, None, None, None)
    response = await call(runtime)
    assert response.id  # a request id is always assigned


async def test_several_authorizers_answer_first_result_and_one_may_take_fewer_arguments(
    tmp_path: Path,
) -> None:
    seen: list[str] = []

    def allow_good(ctx: RequestContext) -> Decision | None:
        return Decision.allow() if ctx.metadata.get("authorization") == "good" else None

    def deny_the_rest(ctx: RequestContext) -> Decision | None:
        if ctx.metadata.get("authorization") == "good":
            return None  # no objection: the next plugin is asked
        return Decision.deny("only good tokens")

    def note_error(error: BaseException) -> None:  # takes only one of (ctx, error)
        seen.append(type(error).__name__)

    runtime = await make_runtime(
        tmp_path,
        plugin_module("deny_plugin", dli_authorize=deny_the_rest),
        plugin_module("allow_plugin", dli_authorize=allow_good, dli_on_error=note_error),
    )
    # Each answers in either order: None lets the other decide.
    response = await call(runtime, "good")
    np.testing.assert_array_equal(response.outputs["y"], np.ones(2, np.float32))
    with pytest.raises(PermissionDenied, match="only good tokens"):
        await call(runtime, "bad")
    assert seen == ["PermissionDenied"]


async def test_a_raising_on_error_hook_neither_replaces_the_error_nor_runs_twice(
    tmp_path: Path,
) -> None:
    calls: list[str] = []

    def dli_on_error(ctx: RequestContext, error: BaseException) -> None:
        calls.append(type(error).__name__)
        raise RuntimeError("audit sink down")

    runtime = await make_runtime(
        tmp_path, plugin_module("raising_audit", dli_on_error=dli_on_error)
    )
    ctx = RequestContext("test", "infer", deferred=True)
    with structlog.testing.capture_logs() as logs, pytest.raises(ModelNotFound):
        await runtime.infer(InferRequest("nope", {"x": np.zeros(2, np.float32)}), ctx)
    # The call path reports what infer raised: infer counted it already.
    Call(ctx, runtime).fail(ModelNotFound("again"))
    runtime.report_failure(ctx, ModelNotFound("and again"))
    assert calls == ["ModelNotFound"]
    assert [(e["plugin"], e["log_level"]) for e in logs if e.get("hook") == "dli_on_error"] == [
        ("raising_audit", "error")
    ]
    text = runtime.metrics.render().decode()
    assert 'dli_requests_total{model="",protocol="test",status="NOT_FOUND",version=""} 1.0' in text


async def test_on_request_and_authorize_may_still_refuse_by_raising(tmp_path: Path) -> None:
    def dli_on_request(ctx: RequestContext) -> None:
        if ctx.metadata.get("authorization") == "odd":
            raise InvalidInput("odd requests are refused here")

    def dli_authorize(ctx: RequestContext) -> Decision | None:
        if ctx.metadata.get("authorization") == "banned":
            raise PermissionDenied("banned")
        return None

    runtime = await make_runtime(
        tmp_path,
        plugin_module("refusing", dli_on_request=dli_on_request, dli_authorize=dli_authorize),
    )
    with pytest.raises(InvalidInput, match="odd requests"):
        await call(runtime, "odd")
    with pytest.raises(PermissionDenied, match="banned"):
        await call(runtime, "banned")


async def test_on_error_wrappers_are_called_through_pluggy_and_their_failure_logged(
    tmp_path: Path,
) -> None:
    seen: list[str] = []

    def wrap(ctx: RequestContext, error: BaseException):  # type: ignore[no-untyped-def]
        seen.append("before")
        yield
        raise RuntimeError("the wrapper broke")

    module = types.ModuleType("wrapping_audit")
    module.dli_on_error = hookimpl(wrapper=True)(wrap)  # type: ignore[attr-defined]
    sys.modules["wrapping_audit"] = module
    entry = EntryPoint(name="wrapping_audit", value="wrapping_audit", group="dl_inference")
    runtime = await make_runtime(
        tmp_path,
        entry,
        plugin_module("plain_audit", dli_on_error=lambda error: seen.append("plain")),
    )
    with structlog.testing.capture_logs() as logs, pytest.raises(ModelNotFound):
        await call(runtime, model="nope")
    assert seen == ["before", "plain"]
    (logged,) = [e for e in logs if e.get("hook") == "dli_on_error"]
    assert "wrapping_audit" in logged["plugin"] and "the wrapper broke" in logged["error"]


async def test_execution_timing_is_filled_only_for_plugins_that_read_it(tmp_path: Path) -> None:
    # RequestContext.execution: queue and compute instants and the execution's rows, for a
    # tracing plugin; without a dli_on_response / dli_on_error plugin nothing is made.
    seen: list[object] = []
    bare = await make_runtime(tmp_path / "bare")
    ctx = RequestContext("test", "infer")
    await bare.infer(InferRequest("add_one", {"x": np.zeros(2, np.float32)}), ctx)
    assert ctx.execution is None

    def dli_on_response(ctx: RequestContext) -> None:
        seen.append(ctx.execution)

    runtime = await make_runtime(
        tmp_path / "timed", plugin_module("timing_plugin", dli_on_response=dli_on_response)
    )
    ctx = RequestContext("test", "infer")
    await runtime.infer(InferRequest("add_one", {"x": np.zeros(2, np.float32)}), ctx)
    (timing,) = seen
    assert timing is ctx.execution
    assert ctx.started <= timing.queued <= timing.started <= timing.finished
    assert timing.batch_size == 1  # a model that does not batch: one request, one row
