"""A request alone on an idle, self-contained model runs on the event loop's thread.

The scheduler first (``Batcher(alone_on_loop=...)``): which thread ran each execution,
when requests come one by one, together, after a long execution, and from another loop
meanwhile. Then the model registry: the backend's word (``self_contained``, for the
python backend the user's class attribute), and processor.py hooks that take it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dl_inference import InferRequest, RequestContext
from dl_inference.kernel import batching
from dl_inference.kernel.batching import Batcher
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.errors import BackendError
from dl_inference.testing import write_python_model


class ThreadRecorder:
    """Doubles ``x``; records the thread and rows of each execution, and how many overlap."""

    def __init__(self, seconds: Callable[[int], float] = lambda call: 0.0) -> None:
        self.seconds = seconds  # how long execution number ``call`` takes
        self.threads: list[int] = []
        self.rows: list[int] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def run(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any], *_: Any) -> dict:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            call = len(self.threads)
            self.threads.append(threading.get_ident())
            self.rows.append(len(inputs["x"]))
        try:
            if parameters.get("fail"):
                raise BackendError("the model failed on purpose")
            time.sleep(self.seconds(call))
            return {"y": inputs["x"] * 2}
        finally:
            with self._lock:
                self.running -= 1


def one_row(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), value, np.float32)}


@contextlib.asynccontextmanager
async def scheduler(model: ThreadRecorder, *, alone: bool) -> AsyncIterator[Batcher]:
    """``model``'s scheduler (one instance, batches of up to 8 rows), closed afterwards;
    ``alone``: whether its backend lets a request alone run on the loop."""
    batcher = Batcher("m", model.run, max_batch_size=8, alone_on_loop=lambda: alone)
    try:
        yield batcher
    finally:
        await batcher.close()


@pytest.fixture(autouse=True)
def patient_loop(monkeypatch: pytest.MonkeyPatch) -> float:
    """A longest execution on the loop far above these models' own (a cold first call of
    a model may take a few milliseconds on a busy machine; the tests are not about that)."""
    monkeypatch.setattr(batching, "LOOP_RUN_MAX_S", 0.05)
    return 0.05


async def test_a_request_alone_runs_on_the_loops_thread_once_the_model_ran_short() -> None:
    model = ThreadRecorder()
    async with scheduler(model, alone=True) as batcher:
        for value in (1.0, 2.0, 3.0):
            outputs = await batcher.submit(one_row(value), {}, None)
            np.testing.assert_array_equal(outputs["y"], np.full((1, 2), value * 2))
        loop_thread = threading.get_ident()
        # The first execution's length is unknown, so it runs in the instance; then the
        # model is known short and idle requests stay on the loop.
        assert model.threads[0] != loop_thread
        assert model.threads[1:] == [loop_thread, loop_thread]
        assert batcher.stats.batches == 3 and batcher.stats.rows == 3


async def test_without_the_backends_word_every_request_runs_in_an_instance() -> None:
    model = ThreadRecorder()
    async with scheduler(model, alone=False) as batcher:
        for _ in range(3):
            await batcher.submit(one_row(), {}, None)
        assert threading.get_ident() not in model.threads


async def test_requests_arriving_together_batch_in_the_instance() -> None:
    model = ThreadRecorder()
    async with scheduler(model, alone=True) as batcher:
        await batcher.submit(one_row(), {}, None)  # the model is now known short
        results = await asyncio.gather(*(batcher.submit(one_row(i), {}, None) for i in range(6)))
        for i, outputs in enumerate(results):
            np.testing.assert_array_equal(outputs["y"], np.full((1, 2), i * 2.0))
        assert threading.get_ident() not in model.threads
        assert model.rows[1:] == [6]  # one merged batch, not six runs on the loop


async def test_a_long_execution_keeps_the_next_requests_off_the_loop(patient_loop: float) -> None:
    long_call = 2  # the third execution takes longer than the loop may stall
    model = ThreadRecorder(lambda call: patient_loop * 4 if call == long_call else 0.0)
    async with scheduler(model, alone=True) as batcher:
        for _ in range(4):
            await batcher.submit(one_row(), {}, None)
        loop_thread = threading.get_ident()
        on_loop = [thread == loop_thread for thread in model.threads]
        # instance (unknown), loop, loop (the long one), then the instance again
        assert on_loop == [False, True, True, False]
        for _ in range(20):  # 4x the limit decays below it in 14 executions
            await batcher.submit(one_row(), {}, None)
        assert model.threads[-1] == loop_thread


async def test_a_failure_on_the_loop_reaches_its_caller_and_the_next_request_is_served() -> None:
    model = ThreadRecorder()
    async with scheduler(model, alone=True) as batcher:
        await batcher.submit(one_row(), {}, None)
        with pytest.raises(BackendError, match="failed on purpose"):
            await batcher.submit(one_row(), {"fail": True}, None)
        assert model.threads[1] == threading.get_ident()
        outputs = await batcher.submit(one_row(4.0), {}, None)
        np.testing.assert_array_equal(outputs["y"], np.full((1, 2), 8.0))


async def test_a_request_from_another_loop_waits_while_one_runs_on_this_loop() -> None:
    """The execution on the loop holds the model's one instance: a request submitted
    meanwhile from another thread's loop runs after it, never beside it."""
    other: list[Any] = []

    def seconds(call: int) -> float:
        if call == 1:  # on the loop: another thread submits while it runs
            thread = threading.Thread(
                target=lambda: other.append(asyncio.run(batcher.submit(one_row(5.0), {}, None)))
            )
            thread.start()
            other.append(thread)
            return 0.3
        return 0.0

    model = ThreadRecorder(seconds)
    async with scheduler(model, alone=True) as batcher:
        await batcher.submit(one_row(), {}, None)
        await batcher.submit(one_row(), {}, None)
        thread = other[0]
        await asyncio.to_thread(thread.join, 10)
        np.testing.assert_array_equal(other[1]["y"], np.full((1, 2), 10.0))
        assert model.threads[1] == threading.get_ident()
        assert model.threads[2] != threading.get_ident()
        assert model.most_at_once == 1


# -- through the model registry: who may run on the loop ---------------------------------

THREAD_MODEL = """
    import threading

    import numpy as np

    from dl_inference import PythonModel


    class Where(PythonModel):
        {attribute}
        def predict(self, inputs):
            where = threading.current_thread().name.encode()
            rows = len(inputs["x"])
            return {{"y": inputs["x"] * 2, "thread": np.array([[where]] * rows, object)}}
"""
THREAD_CONFIG = """
    max_batch_size: 8
    inputs: [{name: x, datatype: FP32, shape: [2]}]
    outputs: [{name: y, datatype: FP32, shape: [2]}, {name: thread, datatype: BYTES, shape: [1]}]
"""


@pytest.fixture
async def where_runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    """Three python models answering with the thread that ran them: ``vouched`` says it is
    self-contained, ``plain`` does not, ``hooked`` says so but has a processor.py hook."""
    vouched = THREAD_MODEL.format(attribute="self_contained = True")
    write_python_model(tmp_path, "vouched", vouched, THREAD_CONFIG)
    write_python_model(tmp_path, "plain", THREAD_MODEL.format(attribute=""), THREAD_CONFIG)
    write_python_model(tmp_path, "hooked", vouched, THREAD_CONFIG)
    (tmp_path / "hooked" / "processor.py").write_text('def preprocess(x):\n    return {"x": x}\n')
    host = PluginHost(entry_points=[]).load()
    models = ModelRegistry(host)
    runtime = Runtime(host, models, access_log=False)
    models.prepare(scan_repository(tmp_path))
    await models.load_all(strict=True)
    yield runtime
    await models.unload_all()


async def threads_of(runtime: Runtime, model: str, count: int) -> list[str]:
    names = []
    for _ in range(count):
        request = InferRequest(model, {"x": np.ones((1, 2), np.float32)})
        response = await runtime.infer(request, RequestContext(protocol="test", method="infer"))
        names.append(response.outputs["thread"].item().decode())
    return names


async def test_only_a_self_contained_model_without_hooks_runs_on_the_loop(
    where_runtime: Runtime,
) -> None:
    loop_thread = threading.current_thread().name
    vouched = await threads_of(where_runtime, "vouched", 3)
    assert vouched[1:] == [loop_thread, loop_thread], vouched
    for model in ("plain", "hooked"):
        names = await threads_of(where_runtime, model, 3)
        assert all(name.startswith(f"dli-batch-{model}") for name in names), (model, names)
