"""Dynamic batching: merged along dimension 0, split back, deadlines and queue limits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dl_inference import InferRequest, RequestContext
from dl_inference.kernel.batching import Batcher
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.errors import BackendError, DeadlineExceeded, InvalidInput, ResourceExhausted
from dl_inference.testing import write_python_model


class GatedModel:
    """Doubles ``x``; blocks on a gate so tests can build a queue behind a running batch."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[int] = []
        self.started = threading.Event()

    def run(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any], *_: Any) -> dict:
        # Runs in a batcher thread, as a backend's predict() does.
        self.calls.append(len(inputs["x"]))
        self.started.set()
        self.gate.wait(10)
        return {"y": inputs["x"] * 2}


def queue_ones(batcher: Batcher, count: int) -> list[asyncio.Task]:
    """``count`` one-row requests of ones, submitted as tasks (they queue behind a busy model)."""
    return [
        asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, {}, None))
        for _ in range(count)
    ]


async def hold_model_busy(batcher: Batcher, model: GatedModel) -> asyncio.Task:
    """Start one request and wait until the model runs it, with the gate closed."""
    model.gate.clear()
    model.started.clear()
    first = asyncio.create_task(batcher.submit({"x": np.zeros((1, 2), np.float32)}, {}, None))
    await asyncio.to_thread(model.started.wait, 10)
    return first


async def test_an_idle_model_runs_a_request_alone() -> None:
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=8)
    out = await batcher.submit({"x": np.ones((2, 2), np.float32)}, {}, None)
    np.testing.assert_array_equal(out["y"], np.full((2, 2), 2, np.float32))
    assert model.calls == [2]
    await batcher.close()


async def test_queued_requests_merge_and_split_back_in_order() -> None:
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=8)
    first = await hold_model_busy(batcher, model)
    inputs = [np.full((1 + i % 2, 2), i, np.float32) for i in range(5)]  # 7 rows in all
    waiting = [asyncio.create_task(batcher.submit({"x": x}, {}, None)) for x in inputs]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*waiting)
    await first
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)
    assert model.calls == [1, 7]
    await batcher.close()


async def test_batches_stop_at_max_batch_size() -> None:
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=4)
    first = await hold_model_busy(batcher, model)
    waiting = queue_ones(batcher, 6)
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(first, *waiting)
    assert model.calls == [1, 4, 2]
    await batcher.close()


async def test_preferred_batch_sizes_cut_batches() -> None:
    """Triton's preferred_batch_size: at most the largest, cut at the largest reached."""
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=8, preferred_batch_sizes=[2, 4])
    first = await hold_model_busy(batcher, model)
    waiting = queue_ones(batcher, 7)
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(first, *waiting)
    assert model.calls == [1, 4, 2, 1]
    await batcher.close()


async def test_a_preferred_size_ends_the_queue_delay() -> None:
    model = GatedModel()
    batcher = Batcher(
        "m", model.run, max_batch_size=8, max_queue_delay_ms=60_000, preferred_batch_sizes=[3]
    )
    first = await hold_model_busy(batcher, model)
    queued = queue_ones(batcher, 2)
    await asyncio.sleep(0.05)
    model.gate.set()  # 2 rows waiting: the instance waits (a minute) for a third
    await asyncio.sleep(0.1)
    assert model.calls == [1]
    late = batcher.submit({"x": np.ones((1, 2), np.float32)}, {}, None)
    await asyncio.wait_for(asyncio.gather(first, late, *queued), 5)
    assert model.calls == [1, 3]
    await batcher.close()


async def test_shapes_that_cannot_merge_run_in_separate_batches() -> None:
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=8)
    first = await hold_model_busy(batcher, model)
    wide = asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)}, {}, None))
    narrow = asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, {}, None))
    other_params = asyncio.create_task(
        batcher.submit({"x": np.ones((1, 2), np.float32)}, {"mode": "b"}, None)
    )
    await asyncio.sleep(0.05)
    model.gate.set()
    outs = await asyncio.gather(wide, narrow, other_params)
    await first
    assert [o["y"].shape for o in outs] == [(1, 3), (1, 2), (1, 2)]
    assert model.calls == [1, 1, 1, 1]
    await batcher.close()


async def test_expired_requests_never_reach_the_model() -> None:
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=8)
    first = await hold_model_busy(batcher, model)
    expired = asyncio.create_task(
        batcher.submit({"x": np.ones((3, 2), np.float32)}, {}, time.monotonic() + 0.01)
    )
    live = asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, {}, None))
    await asyncio.sleep(0.05)
    model.gate.set()
    with pytest.raises(DeadlineExceeded, match="passed in the queue"):
        await expired
    await live
    await first
    assert model.calls == [1, 1]  # the 3-row request was dropped
    assert batcher.stats.expired == 1
    await batcher.close()


async def test_a_full_queue_refuses_at_once() -> None:
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=1, max_queue_size=2)
    first = await hold_model_busy(batcher, model)
    queued = queue_ones(batcher, 2)
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceExhausted, match="queue full"):
        await batcher.submit({"x": np.ones((1, 2), np.float32)}, {}, None)
    model.gate.set()
    await asyncio.gather(first, *queued)
    await batcher.close()


async def test_oversize_batches_and_ragged_inputs_are_refused() -> None:
    batcher = Batcher("m", GatedModel().run, max_batch_size=2)
    with pytest.raises(InvalidInput, match="exceeds its max_batch_size 2"):
        await batcher.submit({"x": np.ones((3, 2), np.float32)}, {}, None)
    with pytest.raises(InvalidInput, match="same first dimension"):
        await batcher.submit(
            {"x": np.ones((1, 2), np.float32), "z": np.ones((2, 2), np.float32)}, {}, None
        )


async def test_a_model_that_drops_the_batch_dimension_fails_every_caller() -> None:
    gate, started = threading.Event(), threading.Event()

    def bad(inputs: dict, parameters: dict, *_: Any) -> dict:
        started.set()
        gate.wait(10)
        return {"y": inputs["x"].sum(keepdims=True)[0]}

    batcher = Batcher("m", bad, max_batch_size=8)
    # A first request of another shape keeps the model busy while the three queue up.
    busy = asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)}, {}, None))
    await asyncio.to_thread(started.wait, 10)
    tasks = queue_ones(batcher, 3)
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, BackendError) and "first dimension" in str(r) for r in results)
    await busy
    await batcher.close()


async def test_queue_delay_gathers_a_fuller_batch_under_load() -> None:
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=4, max_queue_delay_ms=10_000)
    first = await hold_model_busy(batcher, model)
    queued = queue_ones(batcher, 2)
    await asyncio.sleep(0.05)
    model.gate.set()  # the instance finds 2 rows waiting: it waits for more, not 10 s
    await asyncio.sleep(0.1)
    late = batcher.submit({"x": np.ones((2, 2), np.float32)}, {}, None)
    await asyncio.wait_for(asyncio.gather(first, late, *queued), 5)
    assert model.calls == [1, 4]  # the late request filled the batch, which then ran
    await batcher.close()


async def test_the_queue_delay_counts_from_the_oldest_queued_request() -> None:
    """As in Triton's dynamic batcher: a request that already waited the delay behind a
    running batch runs as soon as the instance is free, without waiting once more."""
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=4, max_queue_delay_ms=2_000)
    first = await hold_model_busy(batcher, model)
    queued = queue_ones(batcher, 1)
    await asyncio.sleep(2.2)  # longer than the delay, behind the running batch
    model.gate.set()
    # Counted from the instance becoming free instead, it would wait 2 s more.
    await asyncio.wait_for(asyncio.gather(first, *queued), 1.5)
    assert model.calls == [1, 1]
    await batcher.close()


async def test_an_idle_model_does_not_wait_out_the_queue_delay() -> None:
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=4, max_queue_delay_ms=10_000)
    for _ in range(2):  # the first request, and one after the model went idle again
        out = await asyncio.wait_for(
            batcher.submit({"x": np.ones((1, 2), np.float32)}, {}, None), 5
        )
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2, np.float32))
    assert model.calls == [1, 1]
    await batcher.close()


def test_a_batcher_survives_a_new_event_loop() -> None:
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=4)
    for _ in range(2):  # each asyncio.run() is a fresh loop, as in plain scripts and tests
        out = asyncio.run(batcher.submit({"x": np.ones((1, 2), np.float32)}, {}, None))
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2, np.float32))


async def test_without_merging_each_request_runs_alone_and_expired_ones_are_dropped() -> None:
    # Models without dynamic batching share the queue: same limits, one request per run,
    # any shapes (no common first dimension needed).
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=1, merge=False)
    first = await hold_model_busy(batcher, model)
    expired = asyncio.create_task(
        batcher.submit({"x": np.ones((5, 2), np.float32)}, {}, time.monotonic() + 0.01)
    )
    queued = [
        asyncio.create_task(batcher.submit({"x": np.full((n, 2), n, np.float32)}, {}, None))
        for n in (2, 3)
    ]
    await asyncio.sleep(0.05)
    model.gate.set()
    with pytest.raises(DeadlineExceeded, match="passed in the queue"):
        await expired
    results = await asyncio.gather(*queued)
    await first
    assert model.calls == [1, 2, 3]  # never merged, never the expired 5-row request
    for n, out in zip((2, 3), results, strict=True):
        np.testing.assert_array_equal(out["y"], np.full((n, 2), 2 * n, np.float32))
    await batcher.close()


async def test_results_finished_together_reach_the_loop_in_one_wake_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    wakeups = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        wakeups.append(callback)
        return real(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    model = GatedModel()
    batcher = Batcher("m", model.run, max_batch_size=1, merge=False)
    first = await hold_model_busy(batcher, model)
    queued = [
        asyncio.create_task(batcher.submit({"x": np.full((1, 2), i, np.float32)}, {}, None))
        for i in range(20)
    ]
    await asyncio.sleep(0.02)
    # Release the model and block the loop while the thread runs all 21 requests: every
    # result lands in the delivery queue before the loop can take one.
    model.gate.set()
    deadline = time.monotonic() + 10
    while batcher.stats.batches < 21 and time.monotonic() < deadline:
        time.sleep(0.001)
    results = await asyncio.gather(first, *queued)
    for i, out in enumerate(results[1:]):
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2 * i, np.float32))
    # The first result woke the loop; the 20 that finished while it was blocked share
    # at most one more wake-up.
    assert 1 <= len(wakeups) <= 2, wakeups
    await batcher.close()


# -- batch isolation: one bad request fails alone ----------------------------------------------


class PoisonModel:
    """Doubles ``x``; a batch holding a value of 1000 or more fails, as an embedding lookup
    with an out-of-range token id does, naming the first bad value."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any], *_: Any) -> dict:
        x = inputs["x"]
        self.calls.append(len(x))
        bad = x[x >= 1000]
        if bad.size:
            raise BackendError(f"token id {int(bad[0])} is out of range")
        return {"y": x * 2}


async def merged(
    batcher: Batcher, values: list[float], deadlines: list[float | None] | None = None
) -> list:
    """Submit one one-row request per value (with its deadline) behind a busy model, so
    they run as one batch; returns each result or error, in order."""
    started = threading.Event()
    release = threading.Event()
    run = batcher._run

    def hold_first(inputs: dict, parameters: dict, *rest: Any) -> dict:
        if not started.is_set():
            started.set()
            release.wait(10)
        return run(inputs, parameters, *rest)

    batcher._run = hold_first
    busy = asyncio.create_task(batcher.submit({"x": np.zeros((1, 1), np.float32)}, {}, None))
    await asyncio.to_thread(started.wait, 10)
    tasks = [
        asyncio.create_task(batcher.submit({"x": np.full((1, 1), v, np.float32)}, {}, deadline))
        for v, deadline in zip(values, deadlines or [None] * len(values), strict=True)
    ]
    await asyncio.sleep(0.05)
    release.set()
    await busy
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_bad_request_fails_alone_and_bisection_keeps_the_cost_low() -> None:
    model = PoisonModel()
    batcher = Batcher("m", model.run, max_batch_size=32)
    values = [float(i) for i in range(32)]
    values[21] = 4242.0
    results = await merged(batcher, values)
    for value, result in zip(values, results, strict=True):
        if value == 4242.0:
            assert isinstance(result, BackendError) and "token id 4242" in str(result)
        else:
            np.testing.assert_array_equal(result["y"], [[value * 2]])
    assert model.calls[:2] == [1, 32]  # the busy request, then all 32 merged
    # Halves of 16, 8, 4, 2, 1 around the bad one: 10 executions, not 32.
    assert batcher.stats.isolated == 1 and batcher.stats.reruns == 10
    assert sorted(model.calls[2:], reverse=True) == [16, 16, 8, 8, 4, 4, 2, 2, 1, 1]
    assert batcher.stats.batches == 2  # batches taken from the queue; reruns count apart
    await batcher.close()


async def test_a_model_that_fails_everything_is_rerun_2_log2_n_times_not_2n() -> None:
    model = PoisonModel()
    batcher = Batcher("m", model.run, max_batch_size=32)
    values = [1000.0 + i for i in range(32)]
    results = await merged(batcher, values)
    assert all(isinstance(r, BackendError) and "token id 10" in str(r) for r in results)
    # Level by level: 16 16, 8 8 8 8, then four of the eight 4s; then the reruns are spent.
    assert model.calls[1:] == [32, 16, 16, 8, 8, 8, 8, 4, 4, 4, 4]
    assert batcher.stats.reruns == 10  # 2 * log2(32); without the bound: 62
    # Each caller fails with the error of the last part it ran in.
    assert "token id 1000 " in str(results[0]) and "token id 1016 " in str(results[16])
    await batcher.close()


async def test_reruns_stop_at_2_log2_n_however_many_are_bad() -> None:
    """The first half is good, the second all bad: the good half is answered, and the bad
    one is bisected only as far as 2 * log2(32) = 10 reruns allow (not 30)."""
    model = PoisonModel()
    batcher = Batcher("m", model.run, max_batch_size=32)
    values = [float(i) for i in range(16)] + [1000.0 + i for i in range(16)]
    results = await merged(batcher, values)
    for value, result in zip(values[:16], results[:16], strict=True):
        np.testing.assert_array_equal(result["y"], [[value * 2]])
    assert all(isinstance(r, BackendError) for r in results[16:])
    assert model.calls[1:] == [32, 16, 16, 8, 8, 4, 4, 4, 4, 2, 2]
    assert batcher.stats.reruns == 10
    await batcher.close()


async def test_two_bad_requests_are_set_apart_within_the_bound_where_it_allows() -> None:
    """The bound (2 * log2(8) = 6) sets apart one bad request per split path; with two in
    one half, the last part still failing fails whole."""
    model = PoisonModel()
    batcher = Batcher("m", model.run, max_batch_size=8)
    values = [0.0, 1.0, 2.0, 3.0, 1004.0, 5.0, 1006.0, 7.0]
    results = await merged(batcher, values)
    for value, result in zip(values[:4], results[:4], strict=True):
        np.testing.assert_array_equal(result["y"], [[value * 2]])
    # 4|4 (the second fails), 2|2 (both fail), then 1|1 of [1004, 5]: 6 reruns.
    assert batcher.stats.reruns == 6
    assert "token id 1004 " in str(results[4])
    np.testing.assert_array_equal(results[5]["y"], [[10.0]])
    assert all("token id 1006 " in str(r) for r in results[6:])  # [1006, 7] failed whole
    await batcher.close()


async def test_a_request_that_expires_while_its_batch_is_retried_fails_with_deadline() -> None:
    model = PoisonModel()
    # Room for a loaded machine to queue and take the batch before the deadline passes.
    deadline = time.monotonic() + 1.0

    def slow(inputs: dict, parameters: dict, *rest: Any) -> dict:
        if len(inputs["x"]) == 3:  # the merged batch outlives the short deadline, then fails
            time.sleep(max(0.0, deadline - time.monotonic()) + 0.1)
        return model.run(inputs, parameters, *rest)

    batcher = Batcher("m", slow, max_batch_size=8)
    short, poisoned, good = await merged(batcher, [1.0, 5000.0, 3.0], [deadline, None, None])
    assert isinstance(short, DeadlineExceeded) and "ran again" in str(short)
    assert isinstance(poisoned, BackendError) and "token id 5000" in str(poisoned)
    np.testing.assert_array_equal(good["y"], [[6]])
    assert batcher.stats.expired == 1
    # The expired request is left out before the split: the two others run alone.
    assert model.calls == [1, 3, 1, 1]
    await batcher.close()


async def test_a_passed_deadline_raised_by_the_model_is_not_retried() -> None:
    calls = []

    def late(inputs: dict, parameters: dict, *_: Any) -> dict:
        calls.append(len(inputs["x"]))
        if len(calls) > 1:
            raise DeadlineExceeded("the model gave up: the deadline passed")
        return {"y": inputs["x"]}

    batcher = Batcher("m", late, max_batch_size=8)
    results = await merged(batcher, [1.0, 2.0, 3.0])
    assert all(isinstance(r, DeadlineExceeded) for r in results)
    assert calls == [1, 3] and batcher.stats.isolated == 0
    await batcher.close()


POISON_MODEL = """
    import time
    import numpy as np
    from dl_inference import PythonModel

    class Embedding(PythonModel):
        def predict(self, inputs):
            x = inputs["x"]
            if (x < 0).any():
                time.sleep(0.5)  # keeps the model busy while the next requests queue up
            bad = x[x >= 1000]
            if bad.size:
                raise ValueError(f"token id {int(bad[0])} is out of range (vocabulary of 1000)")
            return {"y": x * 2}
"""
POISON_CONFIG = """
    max_batch_size: 32
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


@pytest.fixture
async def poison_runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime serving POISON_MODEL, as the server does (python backend, batching)."""
    write_python_model(tmp_path, "embedding", POISON_MODEL, POISON_CONFIG)
    host = PluginHost(entry_points=[]).load()
    models = ModelRegistry(host)
    runtime = Runtime(host, models, access_log=False)  # first: its metrics observe the models
    models.prepare(scan_repository(tmp_path))
    await models.load_all(strict=True)
    yield runtime
    await models.unload_all()


async def infer_rows(runtime: Runtime, rows: np.ndarray) -> Any:
    request = InferRequest("embedding", {"x": rows.astype(np.float32)})
    return (await runtime.infer(request, RequestContext(protocol="test", method="infer"))).outputs


def execution_rows(runtime: Runtime) -> tuple[float, float]:
    """(executions, rows) the metrics saw for the model: dli_batch_size's count and sum."""
    text = runtime.metrics.render().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == "embedding" and sample.name.startswith(
                "dli_batch_size_"
            ):
                found[sample.name.removeprefix("dli_batch_size_")] = sample.value
    return found["count"], found["sum"]


async def test_a_python_model_answers_twelve_good_requests_merged_with_a_poisoned_one(
    poison_runtime: Runtime,
) -> None:
    (version,) = poison_runtime.models.versions("embedding")
    busy = asyncio.create_task(infer_rows(poison_runtime, np.full((1, 2), -1)))
    await asyncio.sleep(0.1)  # the busy request runs; the next 13 queue behind it
    good = [np.array([[i, i + 0.5]]) for i in range(12)]
    requests = [*good[:7], np.array([[3.0, 1234.0]]), *good[7:]]
    results = await asyncio.gather(
        *(infer_rows(poison_runtime, rows) for rows in requests), return_exceptions=True
    )
    await busy
    assert version.scheduler.stats.sizes[13] == 1  # the 13 ran merged first
    poisoned = results.pop(7)
    assert isinstance(poisoned, BackendError), poisoned
    assert "token id 1234 is out of range" in str(poisoned)
    for rows, outputs in zip(good, results, strict=True):
        np.testing.assert_array_equal(outputs["y"], rows * 2)
    # Every answered row counted once: the busy row and the 12 good ones, whatever the
    # bisection ran; failed executions are not counted as executed batches.
    # Halves of 6 (good) and 7 (fails), 3 (fails) and 4 (good), 1 (good) and 2 (fails),
    # 1 (the poisoned one) and 1 (good): five executions answered rows, with the busy one.
    assert version.scheduler.stats.reruns == 8
    assert execution_rows(poison_runtime) == (5, 13)
    # Its own error (the model's ValueError, wrapped), not chained onto the batch's.
    assert poisoned.__cause__ is not None and poisoned.__cause__.__context__ is None


async def test_a_poisoned_request_alone_fails_with_its_error(poison_runtime: Runtime) -> None:
    (version,) = poison_runtime.models.versions("embedding")
    with pytest.raises(BackendError, match="token id 2000 is out of range"):
        await infer_rows(poison_runtime, np.array([[2000.0, 1.0]]))
    outputs = await infer_rows(poison_runtime, np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(outputs["y"], [[2.0, 4.0]])
    assert version.scheduler.stats.isolated == 0 and version.scheduler.stats.reruns == 0
