"""``Backend.client_error``: a backend classifies its framework's exceptions, and the kernel
asks it wherever code it does not own raises (``predict()`` itself, processor.py's
``preprocess()`` and ``run_model()``), so a framework's "wrong shape" is the client's
INVALID_ARGUMENT / 400 whichever code called the model, and anything else the model's."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dl_inference import Backend, BackendError, DlInferenceError, InvalidInput
from dl_inference.kernel.models import ModelRegistry
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.call_path import RequestContext
from dl_inference.spi.types import InferRequest


class FrameworkShapeError(RuntimeError):
    """What a framework raises when an op is given data of the wrong size."""


class FussyBackend(Backend):
    """Sums rows of exactly four values; raises its 'framework's' errors unclassified."""

    name = "fussy"
    model_files = ("*.fussy",)

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        (x,) = inputs.values()
        x = np.asarray(x)
        if x.shape[-1] != 4:
            raise FrameworkShapeError(
                f"op Sum wants 4 values per row, got {x.shape[-1]}\n  at /srv/framework/ops.cc:12"
            )
        if np.isnan(x).any():
            raise FrameworkShapeError("the op's lookup table is empty")  # not a shape error
        return {"y": x.sum(-1, keepdims=True)}

    def client_error(self, exc: BaseException) -> DlInferenceError | None:
        if isinstance(exc, FrameworkShapeError) and "wants" in str(exc):
            return InvalidInput(
                f"model {self.model_name!r} rejected the input: {str(exc).splitlines()[0]}"
            )
        return None


class AsyncFussyBackend(FussyBackend):
    """The same, as an ``async def predict`` (run on the event loop, as ensembles are)."""

    name = "fussy_async"
    model_files = ("*.afussy",)

    async def predict(  # type: ignore[override]
        self, inputs: dict[str, np.ndarray], /, **parameters: Any
    ) -> dict[str, np.ndarray]:
        return FussyBackend.predict(self, inputs, **parameters)


def write_model(root: Path, name: str, processor: str | None, suffix: str = "fussy") -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / f"m.{suffix}").write_text("")
    if processor is not None:
        (root / name / "processor.py").write_text(textwrap.dedent(processor))


def infer(root: Path, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    async def run() -> dict[str, np.ndarray]:
        host = PluginHost(entry_points=[]).load()
        host.backends.add(FussyBackend)
        host.backends.add(AsyncFussyBackend)
        models = ModelRegistry(host)
        models.prepare(scan_repository(root))
        await models.load_all(strict=True)
        runtime = Runtime(host, models, access_log=False)
        request = InferRequest(model, {"x": x})
        return (
            await runtime.infer(request, RequestContext(protocol="test", method="infer"))
        ).outputs

    return asyncio.run(run())


RUN_MODEL = """
    def run_model(model, x, **kwargs):
        return model(x)
"""


@pytest.mark.parametrize(
    ("processor", "suffix"),
    [(None, "fussy"), (RUN_MODEL, "fussy"), (None, "afussy")],
    ids=["predict", "run_model", "async_predict"],
)
def test_the_backends_client_error_decides(
    tmp_path: Path, processor: str | None, suffix: str
) -> None:
    write_model(tmp_path, "m", processor, suffix)
    (y,) = infer(tmp_path, "m", np.ones((1, 4), np.float32)).values()
    assert y.tolist() == [[4.0]]
    with pytest.raises(InvalidInput) as caught:
        infer(tmp_path, "m", np.ones((1, 5), np.float32))
    assert str(caught.value) == "model 'm' rejected the input: op Sum wants 4 values per row, got 5"
    # What client_error does not claim stays the model's failure.
    with pytest.raises(BackendError) as failed:
        infer(tmp_path, "m", np.full((1, 4), np.nan, np.float32))
    assert "the op's lookup table is empty" in str(failed.value)


def test_a_processor_bug_stays_the_models_error_naming_its_line(tmp_path: Path) -> None:
    write_model(
        tmp_path,
        "m",
        """
        def run_model(model, x, **kwargs):
            return model(x) * undefined_scale
        """,
    )
    with pytest.raises(BackendError) as caught:
        infer(tmp_path, "m", np.ones((1, 4), np.float32))
    assert str(caught.value) == (
        "processor.py run_model() raised NameError: name 'undefined_scale' is not defined "
        "(processor.py:3)"
    )
