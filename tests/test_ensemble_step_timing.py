"""``ExecutionTiming.steps``: the calls an ensemble's steps make for a request, as the
per-request hooks see them (what the otel plugin turns into ``step`` spans; its end-to-end
test checks the spans). The ensemble and its step models are tests/test_ensemble.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dl_inference import (
    ExecutionTiming,
    InferRequest,
    InvalidInput,
    RequestContext,
    StepExecution,
)
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from tests.test_ensemble import fp32, step, steps, write_outer, write_repository
from tests.test_request_hooks import plugin_module


async def serve(root: Path, *entry_points: object) -> tuple[Runtime, ModelRegistry]:
    plugins = PluginHost(entry_points=list(entry_points)).load()  # type: ignore[arg-type]
    models = ModelRegistry(plugins)
    runtime = Runtime(plugins, models, access_log=False)
    models.prepare(scan_repository(root, strict=False), strict=False)
    await models.load_all()
    return runtime, models


def watching(seen: list[ExecutionTiming | None]) -> object:
    def dli_on_response(ctx: RequestContext) -> None:
        seen.append(ctx.execution)

    def dli_on_error(ctx: RequestContext, error: BaseException) -> None:
        seen.append(ctx.execution)

    return plugin_module(
        "dli_test_step_timing", dli_on_response=dli_on_response, dli_on_error=dli_on_error
    )


def call(runtime: Runtime, model: str, **inputs: np.ndarray) -> object:
    return runtime.infer(InferRequest(model, inputs), RequestContext("test", "infer"))


def check(step: StepExecution, model: str, rows: int) -> None:
    assert (step.model, step.version, step.error) == (model, "1", None)
    assert step.started <= step.timing.queued <= step.timing.started
    assert step.timing.started <= step.timing.finished <= step.finished
    assert step.timing.batch_size == rows


async def test_each_step_is_recorded_with_its_own_timing(tmp_path: Path) -> None:
    seen: list[ExecutionTiming | None] = []
    runtime, models = await serve(write_repository(tmp_path), watching(seen))
    try:
        x = fp32([1, 2, 3, 4], [0, 0, 0, 1])
        await call(runtime, "pipeline", IN=x, BIAS=x)
        (timing,) = seen
        assert timing is not None
        by_model = {step.model: step for step in timing.steps}
        assert sorted(by_model) == ["add", "left", "right", "scale"]
        for step in timing.steps:
            check(step, step.model, 2)
            assert timing.started <= step.started <= step.finished <= timing.finished
        # add reads scale's output: it starts once scale is done.
        assert by_model["scale"].finished <= by_model["add"].started
        # left and right meet at a barrier: they ran at the same time.
        left, right = by_model["left"], by_model["right"]
        assert left.started < right.finished and right.started < left.finished
    finally:
        await models.unload_all()


async def test_a_nested_ensemble_keeps_its_steps_and_a_failed_step_its_error(
    tmp_path: Path,
) -> None:
    write_repository(tmp_path)
    write_outer(tmp_path)
    (tmp_path / "doubled" / "1").mkdir(parents=True)
    (tmp_path / "doubled" / "config.pbtxt").write_text(
        steps(step("scale", {"X": "IN"}, {"Y": "OUT"}))
    )
    seen: list[ExecutionTiming | None] = []
    runtime, models = await serve(tmp_path, watching(seen))
    try:
        await call(runtime, "outer", IN=fp32([1, 2, 3, 4]))
        (timing,) = seen
        assert timing is not None
        (pipeline,) = timing.steps
        check(pipeline, "pipeline", 1)
        assert sorted(s.model for s in pipeline.timing.steps) == ["add", "left", "right", "scale"]
        # scale refuses negative input (tests/test_ensemble.py): its error, in its step. (An
        # ensemble of scale alone: pipeline's branches would meet at their barrier no more.)
        seen.clear()
        with pytest.raises(InvalidInput):
            await call(runtime, "doubled", IN=fp32([-1, 2, 3, 4]))
        (timing,) = seen
        assert timing is not None
        (scale,) = timing.steps
        assert scale.model == "scale"
        assert isinstance(scale.error, InvalidInput)
        assert scale.started <= scale.finished
    finally:
        await models.unload_all()


async def test_without_a_plugin_watching_nothing_is_recorded(tmp_path: Path) -> None:
    runtime, models = await serve(write_repository(tmp_path))
    try:
        ctx = RequestContext("test", "infer")
        x = fp32([1, 2, 3, 4])
        await runtime.infer(InferRequest("pipeline", {"IN": x, "BIAS": x}), ctx)
        assert ctx.execution is None
    finally:
        await models.unload_all()
