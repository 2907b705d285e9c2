"""Runtime.infer_stream in process: hooks run once per call and on each response; the
model's generator runs in its thread, its errors arrive after its values, and closing the
stream early closes the generator (GeneratorExit in the model's code)."""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from dl_inference import RequestContext, hookimpl
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.errors import BackendError
from dl_inference.spi.types import InferRequest
from dl_inference.testing import write_python_model

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, /, **parameters):
            return {"y": inputs["x"] + 1}
"""
# Yields x+1, x+2, ... (parameter "n" of them); records its thread and GeneratorExit.
COUNT_UP = """
    import threading
    from dl_inference import PythonModel

    SEEN = {"threads": set(), "closed": 0}

    class CountUp(PythonModel):
        def predict(self, inputs, /, **parameters):
            SEEN["threads"].add(threading.current_thread().name)
            try:
                for i in range(parameters.get("n", 3)):
                    if i == parameters.get("fail_at", -1):
                        raise ValueError("step failed")
                    yield {"y": inputs["x"] + i + 1}
            except GeneratorExit:
                SEEN["closed"] += 1
                raise
"""
CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def plugin_module(name: str, **hooks: object) -> EntryPoint:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    sys.modules[name] = module
    return EntryPoint(name=name, value=name, group="dl_inference")


async def make_runtime(root: Path, *entry_points: EntryPoint) -> Runtime:
    write_python_model(root, "add_one", ADD_ONE, CONFIG)
    write_python_model(root, "count_up", COUNT_UP, CONFIG)
    plugins = PluginHost(entry_points=list(entry_points)).load()
    models = ModelRegistry(plugins)
    models.prepare(scan_repository(root))
    await models.load_all()
    return Runtime(plugins, models, access_log=False)


def request(model: str, **parameters: object) -> tuple[InferRequest, RequestContext]:
    ctx = RequestContext("test", "stream")
    return InferRequest(model, {"x": np.zeros(1, np.float32)}, parameters=parameters), ctx


def seen(runtime: Runtime) -> dict:
    model = runtime.models.resolve("count_up")
    return model.backend.model.predict.__func__.__globals__["SEEN"]


async def test_hooks_run_once_per_call_and_on_each_response(tmp_path: Path) -> None:
    def dli_on_request(ctx: RequestContext) -> None:
        ctx.request.inputs["x"] = ctx.request.inputs["x"] + 10

    def dli_on_response(ctx: RequestContext) -> None:
        ctx.response.outputs["y"] = ctx.response.outputs["y"] * 2

    runtime = await make_runtime(
        tmp_path,
        plugin_module(
            "stream_hooks", dli_on_request=dli_on_request, dli_on_response=dli_on_response
        ),
    )
    answers = [r async for r in runtime.infer_stream(*request("add_one"))]
    assert [(a.outputs["y"].tolist(), a.final) for a in answers] == [([22.0], True)]
    answers = [r async for r in runtime.infer_stream(*request("count_up"))]
    assert [(a.outputs["y"].tolist(), a.final) for a in answers] == [
        ([22.0], False),
        ([24.0], False),
        ([26.0], False),
    ]


async def test_the_generator_runs_in_the_models_thread_and_fails_in_order(
    tmp_path: Path,
) -> None:
    runtime = await make_runtime(tmp_path)
    values = []
    with pytest.raises(BackendError, match="step failed"):
        async for response in runtime.infer_stream(*request("count_up", n=5, fail_at=2)):
            values.append(response.outputs["y"].tolist())
    assert values == [[1.0], [2.0]]
    assert seen(runtime)["threads"] == {"dli-stream-count_up_0"}
    assert threading.current_thread().name not in seen(runtime)["threads"]


async def test_closing_the_stream_early_closes_the_generator(tmp_path: Path) -> None:
    runtime = await make_runtime(tmp_path)
    stream = runtime.infer_stream(*request("count_up", n=1000))
    first = await anext(stream)
    assert first.outputs["y"].tolist() == [1.0]
    await stream.aclose()
    for _ in range(200):  # the model's thread closes it after the value it is computing
        if seen(runtime)["closed"]:
            break
        await asyncio.sleep(0.01)
    assert seen(runtime)["closed"] == 1
