"""Request lists: a backend that takes the queued requests as a list (Triton's python
backend, ``Backend.takes_request_lists``) gets them gathered, never concatenated, and
answers each on its own; one failing request fails alone.

The scheduler alone (``Batcher(run_requests=...)``), then a backend through the model
registry and ``Runtime.infer`` (the path every wire protocol takes), with statistics.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

import dl_inference
from dl_inference import BackendError, InferRequest, InvalidInput, RequestContext
from dl_inference.kernel.batching import Batcher
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime


class ListModel:
    """Doubles ``x`` per request; records each call's requests; blocks on a gate so tests
    can queue requests behind a running call. ``x`` starting with -1 fails its request
    (an Exception in its place), -2 makes the whole call raise."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.calls: list[list[InferRequest]] = []

    def run(self, requests: list[InferRequest], queued: list[float]) -> list[Any]:
        assert len(queued) == len(requests)
        self.calls.append(requests)
        self.started.set()
        self.gate.wait(10)
        if any(r.inputs["x"].flat[0] == -2 for r in requests):
            raise ValueError("the whole call failed")
        return [
            InvalidInput(f"bad request {r.id}")
            if r.inputs["x"].flat[0] == -1
            else {"y": r.inputs["x"] * 2, "mode": np.array([r.parameters.get("mode", "")], object)}
            for r in requests
        ]

    def sizes(self) -> list[list[int]]:
        """Each call's requests, by their rows."""
        return [[len(r.inputs["x"]) for r in call] for call in self.calls]


def merged_run(*_: Any) -> dict[str, np.ndarray]:
    raise AssertionError("a list-taking batcher never merges")


async def submit(batcher: Batcher, x: Any, request_id: str = "", **parameters: Any) -> Any:
    """One request from its own task, its id bound as the runtime binds it."""

    async def one() -> Any:
        structlog.contextvars.bind_contextvars(request_id=request_id)
        return await batcher.submit({"x": np.asarray(x, np.float32)}, parameters, None)

    return await asyncio.create_task(one())


async def hold_busy(batcher: Batcher, model: ListModel) -> asyncio.Task:
    model.gate.clear()
    model.started.clear()
    first = asyncio.create_task(submit(batcher, np.zeros((1, 2)), "first"))
    await asyncio.to_thread(model.started.wait, 10)
    return first


async def test_queued_requests_reach_the_model_as_one_list_never_concatenated() -> None:
    model = ListModel()
    batcher = Batcher("m", merged_run, max_batch_size=8, run_requests=model.run)
    first = await hold_busy(batcher, model)
    rows = [1, 3, 2, 4]  # 10 rows: the last does not fit beside the others' 6 in 8
    modes = ["a", "b", "a", "c"]  # parameters differ: each request keeps its own
    waiting = [
        asyncio.create_task(submit(batcher, np.full((n, 2), n), f"r{n}", mode=mode))
        for n, mode in zip(rows, modes, strict=True)
    ]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*waiting)
    await first
    assert model.sizes() == [[1], [1, 3, 2], [4]]
    assert [r.id for r in model.calls[1]] == ["r1", "r3", "r2"]
    assert [r.parameters for r in model.calls[1]] == [{"mode": m} for m in modes[:3]]
    for n, mode, out in zip(rows, modes, results, strict=True):
        np.testing.assert_array_equal(out["y"], np.full((n, 2), 2 * n, np.float32))
        assert out["mode"].tolist() == [mode]
    assert batcher.stats.sizes == {1: 1, 6: 1, 4: 1}  # rows per execution
    await batcher.close()


async def test_requests_of_other_shapes_go_to_another_list() -> None:
    model = ListModel()
    batcher = Batcher("m", merged_run, max_batch_size=8, run_requests=model.run)
    first = await hold_busy(batcher, model)
    waiting = [asyncio.create_task(submit(batcher, np.ones((1, width)))) for width in (2, 3, 2, 3)]
    await asyncio.sleep(0.05)
    model.gate.set()
    outs = await asyncio.gather(*waiting)
    await first
    assert [o["y"].shape for o in outs] == [(1, 2), (1, 3), (1, 2), (1, 3)]
    assert [[r.inputs["x"].shape[1] for r in call] for call in model.calls] == [
        [2],
        [2, 2],
        [3, 3],
    ]
    await batcher.close()


async def test_a_request_the_model_fails_fails_alone_in_its_list() -> None:
    model = ListModel()
    batcher = Batcher("m", merged_run, max_batch_size=8, run_requests=model.run)
    first = await hold_busy(batcher, model)
    values = [1, -1, 2, 3]
    waiting = [
        asyncio.create_task(submit(batcher, np.full((1, 2), v), f"id{i}"))
        for i, v in enumerate(values)
    ]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    await first
    assert model.sizes() == [[1], [1, 1, 1, 1]]  # one execution: no reruns were needed
    assert isinstance(results[1], InvalidInput) and "bad request id1" in str(results[1])
    for value, result in zip(values, results, strict=True):
        if value > 0:
            np.testing.assert_array_equal(result["y"], np.full((1, 2), 2 * value, np.float32))
    assert batcher.stats.isolated == 0
    await batcher.close()


async def test_a_call_that_raises_is_bisected_so_its_faulty_request_fails_alone() -> None:
    model = ListModel()
    batcher = Batcher("m", merged_run, max_batch_size=8, run_requests=model.run)
    first = await hold_busy(batcher, model)
    values = [1, 2, -2, 3]
    waiting = [asyncio.create_task(submit(batcher, np.full((1, 2), v))) for v in values]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    await first
    assert isinstance(results[2], ValueError)
    for value, result in zip(values, results, strict=True):
        if value > 0:
            np.testing.assert_array_equal(result["y"], np.full((1, 2), 2 * value, np.float32))
    assert batcher.stats.isolated == 1
    await batcher.close()


async def test_a_model_answering_with_too_few_results_fails_its_list() -> None:
    gate, started = threading.Event(), threading.Event()

    def short(requests: list[InferRequest], queued: list[float]) -> list[Any]:
        started.set()
        gate.wait(10)
        return [{"y": r.inputs["x"]} for r in requests][:1]

    batcher = Batcher("m", merged_run, max_batch_size=8, run_requests=short)
    busy = asyncio.create_task(submit(batcher, np.ones((1, 2))))
    await asyncio.to_thread(started.wait, 10)
    waiting = [asyncio.create_task(submit(batcher, np.ones((1, 2)))) for _ in range(3)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    await busy  # alone in its call: its one result is right
    assert all(
        isinstance(r, BackendError) and "returned 1 results for 3 requests" in str(r)
        for r in results
    )
    await batcher.close()


async def test_without_merging_each_list_holds_one_request_of_any_shape() -> None:
    model = ListModel()
    batcher = Batcher("m", merged_run, max_batch_size=1, merge=False, run_requests=model.run)
    first = await hold_busy(batcher, model)
    waiting = [asyncio.create_task(submit(batcher, np.ones((n, 2)))) for n in (3, 5)]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(first, *waiting)
    assert model.sizes() == [[1], [3], [5]]
    await batcher.close()


# -- a backend through the registry and the runtime ------------------------------------------


class ListBackend(dl_inference.Backend):
    """Sums each request's rows; one call per list, recorded as its requests' rows."""

    name = "listed"
    model_files = ("listed.txt",)
    takes_request_lists = True
    gate = threading.Event()
    started = threading.Event()
    calls: list[list[int]] = []

    def predict(self, inputs: dict[str, np.ndarray], /) -> dict[str, np.ndarray]:
        raise AssertionError("predict_requests serves every request")

    def predict_requests(self, requests: list[InferRequest], /) -> list[Any]:
        type(self).calls.append([len(r.inputs["x"]) for r in requests])
        self.started.set()
        self.gate.wait(10)
        return [
            ZeroDivisionError("a zero row") if not r.inputs["x"].all() else {"s": r.inputs["x"]}
            for r in requests
        ]


async def test_a_list_taking_backend_counts_one_execution_per_list(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "listed.txt").write_text("")
    (folder / "config.yaml").write_text("max_batch_size: 8\nmax_queue_delay_ms: 100\n")
    host = PluginHost().load()
    host.backends.add(ListBackend)
    models = ModelRegistry(host)
    runtime = Runtime(host, models, access_log=False)
    models.prepare(scan_repository(tmp_path))
    await models.load_all()
    ListBackend.calls.clear()
    ListBackend.gate.clear()
    ListBackend.started.clear()

    async def infer(x: np.ndarray) -> Any:
        request = InferRequest("m", {"x": x})
        return await runtime.infer(request, RequestContext(protocol="test", method="infer"))

    rows = [1, 2, 1, 3, 1]
    tasks = [asyncio.create_task(infer(np.full((1, 1), 1, np.float32)))]
    await asyncio.to_thread(ListBackend.started.wait, 10)  # the first runs: the rest queue
    tasks += [asyncio.create_task(infer(np.full((n, 1), n, np.float32))) for n in rows[1:]]
    zero = asyncio.create_task(infer(np.zeros((1, 1), np.float32)))
    await asyncio.sleep(0.2)
    ListBackend.gate.set()
    answers = await asyncio.gather(*tasks)
    for n, answer in zip(rows, answers, strict=True):
        np.testing.assert_array_equal(answer.outputs["s"], np.full((n, 1), n, np.float32))
    with pytest.raises(BackendError, match="ZeroDivisionError: a zero row"):
        await zero  # failed alone, as a model error (500 / INTERNAL)
    assert ListBackend.calls == [[1], [2, 1, 3, 1, 1]]
    stats = runtime.statistics.of("m", "1")
    # Triton's rule: one execution per call; only the answered requests' rows count.
    assert (stats.executions, stats.rows) == (2, 8)
    await models.unload_all()
