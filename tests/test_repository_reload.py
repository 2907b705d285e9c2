"""Versions and models that appear on or leave the disk are applied without failing requests."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest

from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.errors import ConfigError, ModelNotFound, ModelNotReady
from dl_inference.spi.types import InferRequest, RequestContext
from dl_inference.testing import write_python_model

CONFIG = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def constant_model(value: int) -> str:
    return f"""
        import time
        from dl_inference import PythonModel

        class Constant(PythonModel):
            def load(self):
                time.sleep(0.05)  # a load that takes a while, as real ones do

            def predict(self, inputs):
                return {{"y": inputs["x"] * 0 + {value}}}
    """


async def start(root: Path) -> tuple[ModelRegistry, Runtime]:
    plugins = PluginHost(entry_points=[]).load()
    models = ModelRegistry(plugins)
    models.prepare(scan_repository(root))
    await models.load_all()
    return models, Runtime(plugins, models, access_log=False)


async def infer(runtime: Runtime, model: str = "m") -> float:
    request = InferRequest(model, {"x": np.ones(2, np.float32)})
    response = await runtime.infer(request, RequestContext("test", "infer"))
    return float(response.outputs["y"][0])


async def test_new_version_serves_and_old_one_retires(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", constant_model(1), CONFIG, version=1)
    models, runtime = await start(tmp_path)
    assert await infer(runtime) == 1
    write_python_model(tmp_path, "m", constant_model(2), version=2)
    assert await models.refresh(scan_repository(tmp_path))
    assert await infer(runtime) == 2
    assert [v.version for v in models.versions("m")] == ["2"]
    with pytest.raises(ModelNotFound, match="no version '1'"):
        models.resolve("m", "1")


async def test_no_request_fails_while_a_version_is_swapped(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", constant_model(1), CONFIG, version=1)
    models, runtime = await start(tmp_path)
    results: list[float] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            results.append(await infer(runtime))

    clients = [asyncio.create_task(traffic()) for _ in range(4)]
    await asyncio.sleep(0.05)
    write_python_model(tmp_path, "m", constant_model(2), version=2)
    await models.refresh(scan_repository(tmp_path))
    # Enough answers from v2 to see that v1 is gone (a failed client ends the wait).
    while results.count(2) < 20 and not any(c.done() for c in clients):
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*clients)  # any failed request would raise here
    assert results[0] == 1 and results[-1] == 2
    first_two = results.index(2)
    # Up to one call per other client was already running on v1 when v2 took over.
    assert set(results[first_two + len(clients) :]) <= {2}


async def test_a_broken_version_leaves_the_serving_one_and_is_retried(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", constant_model(1), CONFIG, version=1)
    models, runtime = await start(tmp_path)
    write_python_model(tmp_path, "m", "this is not python(", version=2)
    await models.refresh(scan_repository(tmp_path))
    assert await infer(runtime) == 1
    broken = next(v for v in models.versions("m") if v.version == "2")
    assert "SyntaxError" in broken.reason and "model.py:" in broken.reason
    assert models.all_ready()  # the model still has a serving version
    time.sleep(0.01)
    write_python_model(tmp_path, "m", constant_model(2), version=2)
    os.utime(tmp_path / "m" / "2" / "model.py")
    await models.refresh(scan_repository(tmp_path))
    assert await infer(runtime) == 2


async def test_models_added_and_removed(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", constant_model(1), CONFIG)
    models, runtime = await start(tmp_path)
    write_python_model(tmp_path, "n", constant_model(5), CONFIG)
    await models.refresh(scan_repository(tmp_path))
    assert await infer(runtime, "n") == 5
    (tmp_path / "n" / "1" / "model.py").unlink()
    (tmp_path / "n" / "config.yaml").unlink()
    (tmp_path / "n" / "1").rmdir()
    await models.refresh(scan_repository(tmp_path))
    assert models.names() == ["m"]
    with pytest.raises(ModelNotFound):
        await infer(runtime, "n")


COUNTS_ITS_LOADS = """
    from pathlib import Path
    from dl_inference import PythonModel

    class Late(PythonModel):
        def load(self):
            with open(%r, "a") as attempts:
                attempts.write("x")
            if not Path(%r).exists():
                raise RuntimeError("not yet")

        def predict(self, inputs):
            return {"y": inputs["x"] * 0 + 7}
"""


async def test_a_failed_load_backs_off_and_retries_at_once_when_its_files_change(
    tmp_path: Path,
) -> None:
    repo, attempts, flag = tmp_path / "repo", tmp_path / "attempts", tmp_path / "flag"
    folder = write_python_model(repo, "m", COUNTS_ITS_LOADS % (str(attempts), str(flag)), CONFIG)
    models, runtime = await start(repo)
    [late] = models.versions("m")
    assert late.state.value == "UNAVAILABLE" and attempts.read_text() == "x"
    # Polls before the back-off is due load nothing: no busy loop.
    for _ in range(3):
        await models.refresh(scan_repository(repo))
    assert attempts.read_text() == "x"
    assert "not yet" in late.reason and "failed once; next try at" in late.reason
    assert late.retry is not None and late.retry.due - time.monotonic() > 1.5

    late.retry.due = 0.0  # as if the 2 s had passed
    await models.refresh(scan_repository(repo))
    assert attempts.read_text() == "xx"
    [late] = models.versions("m")
    assert "failed 2 times" in late.reason
    assert late.retry is not None and late.retry.due - time.monotonic() > 3.5  # doubled

    # A change to config.yaml is tried at once, and the back-off starts over.
    (folder / "config.yaml").write_text((folder / "config.yaml").read_text() + "\n")
    await models.refresh(scan_repository(repo))
    assert attempts.read_text() == "xxx"
    [late] = models.versions("m")
    assert "failed once" in late.reason

    flag.touch()
    assert late.retry is not None
    late.retry.due = 0.0
    await models.refresh(scan_repository(repo))
    assert await infer(runtime) == 7
    assert models.versions("m")[0].reason == ""


def test_the_back_off_is_capped() -> None:
    from dl_inference.kernel.models import RETRY_FIRST_S, RETRY_MAX_S, LoadRetry

    delays = [LoadRetry.after(n, (), "").due - time.monotonic() for n in (1, 2, 3, 30)]
    assert abs(delays[0] - RETRY_FIRST_S) < 0.5 and abs(delays[1] - 2 * RETRY_FIRST_S) < 0.5
    assert abs(delays[2] - 4 * RETRY_FIRST_S) < 0.5 and abs(delays[3] - RETRY_MAX_S) < 0.5


async def test_an_unusable_folder_is_held_unavailable_unless_strict(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", constant_model(1), CONFIG)
    (tmp_path / "keras" / "1").mkdir(parents=True)
    (tmp_path / "keras" / "1" / "model.keras").write_bytes(b"\0")
    write_python_model(tmp_path, "typo", constant_model(2), "max_batch_sise: 4\n")
    plugins = PluginHost(entry_points=[]).load()
    with pytest.raises(ConfigError, match=r"model\.keras"):
        ModelRegistry(plugins).prepare(scan_repository(tmp_path))
    models = ModelRegistry(plugins)
    models.prepare(scan_repository(tmp_path, strict=False), strict=False)
    await models.load_all()
    runtime = Runtime(plugins, models, access_log=False)
    assert await infer(runtime) == 1
    rows = {row["name"]: row for row in models.index()}
    assert rows["keras"]["state"] == "UNAVAILABLE"
    assert "no installed backend recognises its files (model.keras)" in rows["keras"]["reason"]
    assert rows["typo"]["state"] == "UNAVAILABLE"
    assert "did you mean max_batch_size" in rows["typo"]["reason"]
    with pytest.raises(ModelNotReady, match=r"model\.keras"):
        await infer(runtime, "keras")
    assert not models.all_ready()


def test_an_invalid_override_in_the_server_config_stays_a_config_error(tmp_path: Path) -> None:
    # The server config's models.<name> is at fault, not the folder: never held as broken.
    write_python_model(tmp_path, "m", constant_model(1), CONFIG)
    models = ModelRegistry(PluginHost(entry_points=[]).load())
    sources = scan_repository(tmp_path, {"m": {"max_batch_sise": 4}}, strict=False)
    with pytest.raises(ConfigError, match=r"models\.m\.max_batch_sise"):
        models.prepare(sources, strict=False)
    with pytest.raises(ConfigError, match="max_queue_size"):
        scan_repository(tmp_path, {"m": {"max_queue_size": 0}}, strict=False)
