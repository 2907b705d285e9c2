"""Model warm-up: sample requests run through a model after it loads, before it turns ready.

The first calls of many models are slow (TorchScript's profiling runs, TensorFlow's graph
tracing, cuDNN's algorithm search, lazily allocated memory): a version that turns ready
cold answers its first clients late. As Triton's ``model_warmup`` and TF Serving's
``assets.extra/tf_serving_warmup_requests``, the kernel runs samples through the version
first:

- config.yaml's ``warmup:`` entries (:class:`~.config.model_config.WarmupSample`), each
  ``count`` times;
- then the requests the backend supplies (:meth:`dl_inference.Backend.warmup_samples`: the
  tensorflow backend reads TF Serving's warm-up file), each once.

They take the path of a client's request from the model's scheduler on: validated against
the model's inputs as requests are, ``admit``, the scheduler's threads, ``processor.py``
(the adapter), the backend's ``predict``. They are not clients' requests, so they count in
no statistics or metrics. A sample that fails fails the load, as on Triton: the version
stays UNAVAILABLE with the reason ``warm-up 'NAME' failed: ...``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from dl_inference.kernel.config.model_config import WarmupInput, WarmupSample
from dl_inference.kernel.validation import validate_inputs
from dl_inference.spi.datatypes import from_numpy_dtype, to_numpy_dtype
from dl_inference.spi.errors import BackendError, DlInferenceError
from dl_inference.spi.types import InferRequest, TensorSpec

if TYPE_CHECKING:
    from dl_inference.kernel.models import ModelVersion

log = structlog.get_logger("dl_inference.models")


class WarmupFailed(BackendError):
    """A warm-up sample failed: the version does not turn ready (the message is its reason)."""


async def warm_up(model: ModelVersion) -> None:
    """Run every warm-up sample of ``model`` (loaded, not yet ready); WarmupFailed on the
    first that fails. Logs one line per sample set, with its duration."""
    samples = model.backend.config.warmup
    try:
        # Off the loop: a backend reads its samples from disk.
        supplied = await asyncio.to_thread(model.backend.warmup_samples)
    except Exception as exc:
        raise WarmupFailed(f"warm-up samples could not be read: {_describe(exc)}") from exc
    if not samples and not supplied:
        return
    # Warm-up runs are not clients' requests: no statistics, no metrics (the observer
    # reports executions to both). Nothing else runs on a version that is not ready.
    observer, model.observer = model.observer, None
    try:
        for sample in samples:
            await _run_sample(model, sample)
        if supplied:
            await _run_supplied(model, supplied)
    finally:
        model.observer = observer


async def _run_sample(model: ModelVersion, sample: WarmupSample) -> None:
    started = time.monotonic()
    try:
        inputs = sample_inputs(model, sample)
        validate_inputs(model.name, inputs, model.inputs())
        model.admit(inputs)
        for _ in range(sample.count):
            await model.predict(inputs, {})
    except Exception as exc:
        raise WarmupFailed(f"warm-up {sample.name!r} failed: {_describe(exc)}") from exc
    _log_done(model, sample.name, sample.count, started)


async def _run_supplied(model: ModelVersion, requests: list[InferRequest]) -> None:
    """The backend's own samples, each once; validated by the backend (a TF Serving warm-up
    record names its signature, whose inputs only the backend knows)."""
    started = time.monotonic()
    for index, request in enumerate(requests):
        label = request.id or f"{model.backend_name} sample {index}"
        try:
            model.admit(request.inputs)
            await model.predict(request.inputs, request.parameters)
        except Exception as exc:
            raise WarmupFailed(f"warm-up {label!r} failed: {_describe(exc)}") from exc
    _log_done(model, f"{model.backend_name} samples", len(requests), started)


def _log_done(model: ModelVersion, sample: str, runs: int, started: float) -> None:
    """The one line a sample set leaves in the log: which, how many runs, how long."""
    log.info(
        "model warm-up",
        model=model.name,
        version=model.version,
        sample=sample,
        runs=runs,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )


def sample_inputs(model: ModelVersion, sample: WarmupSample) -> dict[str, np.ndarray]:
    """The arrays of one warm-up sample: config.yaml's ``inputs``, or zeros for every input
    the model declares when the sample names none."""
    batch = (sample.batch_size,) if model.backend.config.max_batch_size > 0 else ()
    if sample.inputs is None:
        specs = model.inputs()
        if not specs:
            raise WarmupFailed(
                "the sample gives no inputs and the model declares none; list them under "
                "the sample's inputs: (datatype, shape, zero_data: true)"
            )
        return {spec.name: _zeros_for(spec, batch) for spec in specs}
    return {name: _array(model, name, spec, batch) for name, spec in sample.inputs.items()}


def _zeros_for(spec: TensorSpec, batch: tuple[int, ...]) -> np.ndarray:
    # The spec's first dimension is the batch when the model batches.
    dims = spec.shape[len(batch) :]
    shape = batch + tuple(1 if dim < 0 else dim for dim in dims)
    return _generated(spec.datatype, shape, random=False)


def _array(model: ModelVersion, name: str, spec: WarmupInput, batch: tuple[int, ...]) -> np.ndarray:
    if spec.input_data_file is None:
        assert spec.datatype is not None and spec.shape is not None  # the config checks it
        return _generated(spec.datatype, batch + tuple(spec.shape), random=spec.random_data)
    path = _data_file(model, spec.input_data_file)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WarmupFailed(
            f"input {name!r}: {path} is not a .npy file numpy can read: {exc}"
        ) from exc
    if spec.datatype is not None and from_numpy_dtype(array.dtype) != spec.datatype:
        raise WarmupFailed(
            f"input {name!r}: {path.name} holds {from_numpy_dtype(array.dtype)}, "
            f"datatype says {spec.datatype}"
        )
    if spec.shape is not None and list(array.shape) != list(batch) + spec.shape:
        raise WarmupFailed(
            f"input {name!r}: {path.name} has shape {list(array.shape)}, the sample says "
            f"{list(batch) + spec.shape}"
        )
    if array.dtype.kind in ("S", "U"):
        array = np.array([_as_bytes(v) for v in array.flat], dtype=object).reshape(array.shape)
    return array


def _data_file(model: ModelVersion, name: str) -> Path:
    version_folder = model.backend.path
    candidates = [version_folder / name, version_folder.parent / name]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise WarmupFailed(
            f"input_data_file {name!r} not found (looked at "
            f"{', '.join(str(p) for p in candidates)})"
        )
    return found


def _generated(datatype: str, shape: tuple[int, ...], *, random: bool) -> np.ndarray:
    if datatype == "BYTES":
        # Triton's zero data for strings is the empty string; random ones are digits.
        rng = np.random.default_rng()
        out = np.empty(shape, dtype=object)
        for index in np.ndindex(shape):
            out[index] = str(rng.integers(0, 1_000_000)).encode() if random else b""
        return out
    dtype = to_numpy_dtype(datatype)
    if not random:
        return np.zeros(shape, dtype=dtype)
    rng = np.random.default_rng()
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    # Small non-negative integers: valid as indices (embeddings) and for every int type.
    return rng.integers(0, 100, shape).astype(dtype)


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _describe(exc: BaseException) -> str:
    from dl_inference.kernel.models import describe_exception

    return str(exc) if isinstance(exc, DlInferenceError) else describe_exception(exc)
