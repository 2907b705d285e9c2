"""Dynamic batching: merged along dimension 0, split back, deadlines and queue limits."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from dl_inference.batching import Batcher
from dl_inference.errors import BackendError, DeadlineExceeded, InvalidInput, ResourceExhausted


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
