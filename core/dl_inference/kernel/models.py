"""Loaded models: choosing a backend per version, loading off the loop, lookup, prediction."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import re
import time
import traceback
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from pydantic import ValidationError

from dl_inference.kernel import heap
from dl_inference.kernel.batching import Batcher, Result, batch_rows
from dl_inference.kernel.config.errors import describe_errors
from dl_inference.kernel.config.model_config import KERNEL_KEYS
from dl_inference.kernel.plugins import PluginHost, install_hint
from dl_inference.kernel.process_instances import ProcessInstances
from dl_inference.kernel.processor import Processor, ProcessorAdapter, predict_call
from dl_inference.kernel.repository import ModelSource, read_model_folder
from dl_inference.kernel.streaming import is_generator_function, iterate
from dl_inference.kernel.validation import reshape_tensors
from dl_inference.kernel.warmup import WarmupFailed, warm_up
from dl_inference.spi.backend import Backend, BackendSettings, ModelRunner
from dl_inference.spi.errors import (
    BackendError,
    ConfigError,
    DlInferenceError,
    ModelNotFound,
    ModelNotReady,
    StreamingOnly,
)
from dl_inference.spi.types import ExecutionTiming, InferRequest, ModelMetadata, TensorSpec

log = structlog.get_logger("dl_inference.models")

# A version that failed to load (or could not be prepared) is tried again after
# RETRY_FIRST_S, then after twice the previous wait, at most RETRY_MAX_S apart (the
# repository poll drives it), and at once when its files or its model's config.yaml change:
# a GPU that appears, a file copied in halfway, a package installed afterwards.
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 300.0

# What a version was loaded from, compared to spot changes: its files, the model folder's.
Signature = tuple[Any, ...]


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass
class LoadRetry:
    """When a version whose load failed (with the files of ``signature``) is tried again."""

    attempts: int  # failed attempts with these files
    due: float  # time.monotonic() of the next attempt
    signature: Signature
    reason: str  # the last failure, without the retry note

    @classmethod
    def after(cls, attempts: int, signature: Signature, reason: str) -> LoadRetry:
        delay = min(RETRY_FIRST_S * 2 ** (attempts - 1), RETRY_MAX_S)
        return cls(attempts, time.monotonic() + delay, signature, reason)

    def note(self) -> str:
        """``failed 2 times; next try at 10:31:05 UTC``: for the reason users see."""
        wall = time.time() + self.due - time.monotonic()
        times = "once" if self.attempts == 1 else f"{self.attempts} times"
        return f"failed {times}; next try at {time.strftime('%H:%M:%S', time.gmtime(wall))} UTC"


@dataclass
class ModelVersion:
    """One version of one model, its backend instance, state and scheduler."""

    name: str
    version: str
    backend_name: str
    backend: Backend
    state: ModelState = ModelState.LOADING
    reason: str = ""
    in_flight: int = 0
    # observer(model, version, rows, queued, started, finished), called per executed batch:
    # the monotonic times each of its requests was queued, and it ran
    observer: Callable[[str, str, int, list[float], float, float], None] | None = None
    signature: Signature = ()
    # Set while a failed load waits for its next attempt: on an UNAVAILABLE version, its
    # own; on a READY one, a replacement's (new files or config) that failed to load.
    retry: LoadRetry | None = None
    # The model's processor.py and the backend's adapter that runs it (set by the load).
    processor: Processor | None = None
    adapter: ProcessorAdapter | None = None

    def __post_init__(self) -> None:
        config = self.backend.config
        self._served_once: tuple[bool, list[TensorSpec] | None, list[TensorSpec] | None] | None
        self._served_once = None
        self._predict = predict_call(self.backend)
        # An async predict (a backend composing other models) runs on the event loop.
        self.on_loop = inspect.iscoroutinefunction(self.backend.predict)
        # A backend taking request lists gets every execution's requests as a list (one
        # request when it does not batch), never concatenated.
        lists = self.backend.takes_request_lists and not self.on_loop
        self.batching = (
            config.max_batch_size > 0
            and config.dynamic_batching
            and (self.backend.merges_requests or lists)
        )
        # Every model runs in its scheduler's threads, off the event loop; only batching
        # models gather several requests into one execution.
        self.scheduler = Batcher(
            self.name,
            self._execute,
            max_batch_size=max(config.max_batch_size, 1),
            max_queue_delay_ms=config.max_queue_delay_ms if self.batching else 0.0,
            preferred_batch_sizes=config.preferred_batch_sizes if self.batching else (),
            max_queue_size=config.max_queue_size,
            instances=config.instances,
            merge=self.batching,
            run_requests=self._execute_requests if lists else None,
            alone_on_loop=self._self_contained,
        )
        # config's reshape (Triton's): what clients send / receive -> what the model sees.
        self._reshape_in = {
            t.name: (tuple(t.shape), tuple(t.reshape))
            for t in config.inputs or []
            if t.reshape is not None
        }
        self._reshape_out = {
            t.name: (tuple(t.reshape), tuple(t.shape))
            for t in config.outputs or []
            if t.reshape is not None
        }

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def _self_contained(self) -> bool:
        """Whether a request alone may run on the event loop (see
        :mod:`dl_inference.kernel.batching`): the backend vouches that its executions never
        wait for this server, and no processor.py hooks (code it cannot vouch for) run
        around them."""
        return self.backend.self_contained and not (self.processor and self.processor.hooks)

    @property
    def decoupled(self) -> bool:
        """Whether the model yields several responses per request (its ``predict``, or its
        processor.py ``run_model``, is a generator): see :mod:`dl_inference.kernel.streaming`."""
        return self._served()[0]

    def inputs(self) -> list[TensorSpec] | None:
        """What requests carry (see :meth:`Backend.inputs`)."""
        return self._served()[1]

    def outputs(self) -> list[TensorSpec] | None:
        """What responses carry (see :meth:`Backend.outputs`)."""
        return self._served()[2]

    def _served(self) -> tuple[bool, list[TensorSpec] | None, list[TensorSpec] | None]:
        """Whether the model is decoupled, its inputs and its outputs, which every request
        reads. Kept once the version is READY (a reload makes a new version) where they
        cannot change: whether predict (or run_model) is a generator, and the specs of a
        backend that takes them from its config (the kernel's own spec methods). A backend
        overriding them is asked each time, as :meth:`Backend.model_inputs` promises: its
        answer may depend on the request (TensorFlow's, on the signature it addresses)."""
        served = self._served_once
        if served is not None:
            if served[1] is _ASK or served[2] is _ASK:
                return served[0], self.backend.inputs(), self.backend.outputs()
            return served
        run_model = self.processor.hooks.get("run_model") if self.processor else None
        if run_model is not None:
            decoupled = is_generator_function(run_model.function)
        else:
            decoupled = self.backend.decoupled or is_generator_function(self.backend.predict)
        served = (decoupled, self.backend.inputs(), self.backend.outputs())
        if self.state is ModelState.READY:
            fixed = _specs_from_config(type(self.backend))
            self._served_once = served if fixed else (decoupled, _ASK, _ASK)
        return served

    def admit(self, inputs: dict[str, np.ndarray], *, streaming: bool = False) -> None:
        """Refuse (InvalidInput) a request whose batch exceeds ``max_batch_size``, and a
        unary call (not ``streaming``) of a decoupled model.

        Checked before the request reaches the scheduler: a refused request is the
        client's, not a failed execution of the model (Triton's statistics count it
        nowhere).
        """
        self.check_call(streaming=streaming)
        config = self.backend.config
        if config.max_batch_size > 0:
            batch_rows(self.name, inputs, config.max_batch_size)

    def check_call(self, *, streaming: bool) -> None:
        """Refuse (StreamingOnly) a unary call (not ``streaming``) of a decoupled model."""
        if self.decoupled and not streaming:
            raise StreamingOnly(
                f"model {self.name!r} is decoupled: it answers a request with a stream of "
                "responses, so a unary call cannot carry them; call it with V2 "
                f"ModelStreamInfer (gRPC) or POST /v2/models/{self.name}/generate_stream"
            )

    async def predict(
        self,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        deadline: float | None = None,
        timing: ExecutionTiming | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model on one request in its scheduler's threads (merged when it batches).

        Callers check the batch with :meth:`admit` first. ``timing``, when given, receives
        the request's queue and execution times (see :class:`ExecutionTiming`).
        """
        batched = self.backend.config.max_batch_size > 0
        if self._reshape_in:
            inputs = reshape_tensors(self.name, inputs, self._reshape_in, batched)
        self.in_flight += 1
        try:
            if self.on_loop:
                outputs = await self._run_on_loop(inputs, parameters, timing)
            else:
                outputs = await self.scheduler.submit(inputs, parameters, deadline, timing)
        finally:
            self.in_flight -= 1
        if self._reshape_out:
            outputs = reshape_tensors(self.name, outputs, self._reshape_out, batched, outputs=True)
        return outputs

    async def stream(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]
    ) -> AsyncIterator[dict[str, np.ndarray]]:
        """Run a decoupled model on one request: its responses' outputs, as produced.

        Never merged with other requests. A sync generator runs in this version's own
        threads (``instances`` of them), at most a few values ahead of the consumer;
        closing the iterator closes the model's generator (see
        :mod:`dl_inference.kernel.streaming`). Callers check with ``admit(...,
        streaming=True)`` first. The execution is observed once, when the stream ends.
        """
        batched = self.backend.config.max_batch_size > 0
        if self._reshape_in:
            inputs = reshape_tensors(self.name, inputs, self._reshape_in, batched)
        self.in_flight += 1
        started = time.monotonic()
        try:
            if self.processor is not None and self.adapter is not None:
                adapter, processor = self.adapter, self.processor
                produced: Any = adapter.run_stream(inputs, parameters, processor)
            else:
                produced = self._predict((inputs,), parameters)
            async with contextlib.aclosing(iterate(produced, self._stream_threads())) as values:
                async for outputs in values:
                    if self._reshape_out:
                        outputs = reshape_tensors(
                            self.name, outputs, self._reshape_out, batched, outputs=True
                        )
                    yield outputs
        except DlInferenceError:
            raise
        except Exception as exc:
            raise self._model_error(exc) from exc
        finally:
            self.in_flight -= 1
        self._observe(inputs, [started], started)

    def _stream_threads(self) -> ThreadPoolExecutor:
        """The threads decoupled requests run in: one per instance, made on first use."""
        threads = getattr(self, "_streams", None)
        if threads is None:
            threads = self._streams = ThreadPoolExecutor(
                max_workers=self.backend.config.instances,
                thread_name_prefix=f"dli-stream-{self.name}",
            )
        return threads

    async def _run_on_loop(
        self,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        timing: ExecutionTiming | None = None,
    ) -> dict[str, np.ndarray]:
        """One execution of an async predict, timed as the scheduler's are."""
        started = time.monotonic()
        try:
            outputs = await self._predict((inputs,), parameters)
        except DlInferenceError:
            raise
        except Exception as exc:
            raise self._model_error(exc) from exc
        finally:
            if timing is not None:
                timing.record(started, started, time.monotonic(), 1)
        self._observe(inputs, [started], started)
        return outputs

    def _execute(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, Any], queued: list[float]
    ) -> dict[str, np.ndarray]:
        """One execution (a request or a merged batch), timed for metrics and statistics."""
        started = time.monotonic()
        outputs = self._predict_sync(inputs, parameters)
        self._observe(inputs, queued, started)
        return outputs

    def _execute_requests(self, requests: list[InferRequest], queued: list[float]) -> list[Result]:
        """One execution of a list of requests (a backend that takes request lists): one
        result per request, its outputs or the error that fails it alone. An exception of
        the whole call fails them all (the scheduler then sets a faulty one apart).

        With processor.py hooks each request runs through them on its own, as for any
        backend. The execution is observed once, with the requests that were answered.
        """
        started = time.monotonic()
        results: list[Result]
        if self.processor is not None and self.adapter is not None:
            results = []
            for request in requests:
                try:
                    results.append(self._predict_sync(request.inputs, request.parameters))
                except Exception as exc:
                    results.append(exc)
        else:
            for request in requests:
                request.model_version = self.version
            try:
                results = self.backend.predict_requests(requests)
            except DlInferenceError:
                raise
            except Exception as exc:
                raise self._model_error(exc) from exc
            if not isinstance(results, list) or len(results) != len(requests):
                return results  # the scheduler fails the call's requests: a broken contract
            results = [self._result(result) for result in results]
        answered = [i for i, result in enumerate(results) if not isinstance(result, Exception)]
        if answered and self.observer is not None:
            rows = sum(self._rows(requests[i].inputs) for i in answered)
            finished = time.monotonic()
            times = [queued[i] for i in answered]
            self.observer(self.name, self.version, rows, times, started, finished)
        return results

    def _result(self, result: Any) -> Result:
        """One request's result from predict_requests(): its outputs, or the client's error."""
        if isinstance(result, DlInferenceError | dict):
            return result
        if isinstance(result, Exception):
            return self._model_error(result)
        return BackendError(
            f"model {self.name!r}: the {self.backend_name} backend's predict_requests() "
            f"returned {type(result).__name__} for a request; return a dict of outputs or "
            "an exception"
        )

    def _rows(self, inputs: dict[str, np.ndarray]) -> int:
        """The rows a request carries: its first dimension when the model batches, else 1."""
        first = next(iter(inputs.values()), None)
        batched = self.backend.config.max_batch_size > 0 and first is not None and first.ndim
        return int(first.shape[0]) if batched else 1

    def _observe(self, inputs: dict[str, np.ndarray], queued: list[float], started: float) -> None:
        if self.observer is not None:
            finished = time.monotonic()
            self.observer(self.name, self.version, self._rows(inputs), queued, started, finished)

    def _predict_sync(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        try:
            if self.processor is not None and self.adapter is not None:
                return self.adapter.run(inputs, parameters, self.processor)
            return self._predict((inputs,), parameters)
        except DlInferenceError:
            raise
        except Exception as exc:
            raise self._model_error(exc) from exc

    def instances_changed(self, running: bool, reason: str) -> None:
        """From a version whose instances run in processes: one died (``running`` False,
        the version turns UNAVAILABLE with ``reason``) or all run again (READY)."""
        if self.state in (ModelState.READY, ModelState.UNAVAILABLE):
            self.state = ModelState.READY if running else ModelState.UNAVAILABLE
            self.reason = _without_paths(f"model {self.name!r}: {reason}") if reason else ""

    def _model_error(self, exc: Exception) -> DlInferenceError:
        """What an exception from the backend's predict() (or processor.py around it) tells
        the client: the backend's own error when it says the request's data did not fit
        (:meth:`~dl_inference.Backend.client_error`), else BackendError naming
        ``file:line``; the traceback goes to the log either way."""
        fields = {"model": self.name, "version": self.version, "backend": self.backend_name}
        error = self.backend.client_error(exc)
        if error is not None:  # the framework refused the request's data
            log.info("model rejected the request's inputs", **fields, exc_info=exc)
            return error
        log.error("model raised", **fields, exc_info=exc)
        return BackendError(
            _without_paths(f"model {self.name!r} failed: {describe_exception(exc)}")
        )


class ModelRegistry:
    """Every model version this worker hosts, by name and version."""

    def __init__(self, plugins: PluginHost) -> None:
        self.plugins = plugins
        self._versions: dict[str, dict[str, ModelVersion]] = {}
        self._sources: dict[str, ModelSource] = {}
        self.observer: Callable[[str, str, int, list[float], float, float], None] | None = None
        # What backends composing models call them through (Backend.models; the runtime's).
        self.runner: ModelRunner | None = None
        self.unloaded: set[str] = set()

    # -- loading ---------------------------------------------------------------------------

    def prepare(self, sources: list[ModelSource], *, strict: bool = True) -> None:
        """Choose and configure the backend of every version; config errors surface here.

        With ``strict`` the first ConfigError / PluginError is raised. Without, a version
        that cannot be prepared (config.yaml invalid, files no backend recognises, invalid
        backend settings) is held UNAVAILABLE with that error as its reason, and retried
        like a failed load; the other models serve.
        """
        for source in sources:
            versions = {}
            for number in source.config.version_policy.select(source.versions):
                try:
                    versions[str(number)] = self._make_version(source, number)
                except DlInferenceError as exc:
                    if strict or self._blames_overrides(source, number):
                        raise
                    versions[str(number)] = self._unprepared(source, number, exc)
            self._versions[source.name] = versions
            self._sources[source.name] = source

    def _make_version(self, source: ModelSource, number: int) -> ModelVersion:
        if source.error:
            raise ConfigError(source.error)
        path = source.version_path(number)
        cls = self._backend_class(source, path)
        settings = _settings(cls, source)
        backend = cls(source.name, str(number), path, source.config, settings)
        if source.config.execution == "process":
            backend = ProcessInstances(backend)  # refuses what a child cannot run
        model = ModelVersion(source.name, str(number), cls.name, backend)
        if isinstance(backend, ProcessInstances):
            backend.on_change = model.instances_changed
        model.signature = _signature(source, number)
        model.observer = self.observer
        return model

    def _blames_overrides(self, source: ModelSource, number: int) -> bool:
        """Whether only the server config's ``models.<name>`` keeps this version from being
        prepared (the folder alone prepares): the server config's error, never held as a
        broken folder."""
        if not source.overrides or source.error:
            return False
        bare = read_model_folder(source.path, None, source.name, strict=False)
        if bare is None or bare.error:
            return False
        try:
            self._make_version(bare, number)
        except DlInferenceError:
            return False
        return True

    def _unprepared(self, source: ModelSource, number: int, error: Exception) -> ModelVersion:
        """An UNAVAILABLE stand-in for a version whose backend could not be prepared."""
        log.error(
            "model cannot be prepared; serving the others",
            model=source.name,
            version=number,
            error=str(error),
        )
        backend = _Unprepared(
            source.name, str(number), source.version_path(number), source.config, BackendSettings()
        )
        model = ModelVersion(source.name, str(number), source.config.backend or "none", backend)
        model.state = ModelState.UNAVAILABLE
        model.reason = str(error)
        model.signature = _signature(source, number)
        return model

    async def load_all(self, *, strict: bool = False) -> None:
        """Load every prepared version in worker threads; failures leave it UNAVAILABLE."""
        await asyncio.gather(
            *(
                self._load(v, strict)
                for versions in self._versions.values()
                for v in versions.values()
                if v.state is ModelState.LOADING  # not the versions that could not be prepared
            )
        )

    async def _load(self, model: ModelVersion, strict: bool) -> None:
        try:
            model.backend.models = self.runner
            await asyncio.to_thread(load_backend, model)
            await warm_up(model)  # config.yaml's warmup: and the backend's samples
        except Exception as exc:
            model.state = ModelState.UNAVAILABLE
            warm = isinstance(exc, WarmupFailed)
            model.reason = str(exc) if warm else f"failed to load: {describe_exception(exc)}"
            log.error(
                "model failed to load",
                model=model.name,
                version=model.version,
                backend=model.backend_name,
                error=model.reason,
                # A failed warm-up's model error was logged with its traceback already.
                exc_info=None if warm else exc,
            )
            if strict:
                raise BackendError(
                    f"model {model.name!r} version {model.version} {model.reason}"
                ) from exc
            return
        model.state = ModelState.READY
        log.info("model ready", model=model.name, version=model.version, backend=model.backend_name)

    async def unload_all(self) -> None:
        """Unload every version (after draining), releasing threads and backend resources."""
        for versions in list(self._versions.values()):
            for model in list(versions.values()):
                await self._retire(model)

    async def _retire(self, model: ModelVersion) -> None:
        """Stop routing to ``model``, let its in-flight calls finish, then unload it."""
        versions = self._versions.get(model.name, {})
        if versions.get(model.version) is model:
            del versions[model.version]
        model.state = ModelState.UNLOADING
        while model.in_flight:
            await asyncio.sleep(0.01)
        await model.scheduler.close()
        try:
            await asyncio.to_thread(model.backend.unload)
        except Exception as exc:
            log.warning("model failed to unload", model=model.name, error=str(exc))
        log.info("model unloaded", model=model.name, version=model.version)

    # -- changes on disk -------------------------------------------------------------------

    async def refresh(
        self, sources: list[ModelSource], root: Path | None = None, *, folders: bool = True
    ) -> bool:
        """Apply what changed on disk: load new versions/models, retire old ones.

        A new version serves once loaded; versions that left the policy are retired only
        after a newer one is ready, so requests never find the model without a version.
        A version whose files or model config.yaml changed is loaded again, and replaces
        the serving one once READY. A load that fails (or a folder that cannot be
        prepared) stays UNAVAILABLE beside the serving version, or leaves the serving
        version in place, and is retried with back-off (RETRY_FIRST_S doubling to
        RETRY_MAX_S) and at once when its files change. Returns whether anything changed.
        With ``folders`` False (a server with no model repository) only models that plugins
        offer leave when missing from ``sources``.
        """
        changed = False
        seen = {source.name for source in sources}
        for source in sources:
            if source.name in self.unloaded:
                continue  # unloaded through the management API: stays out until loaded again
            held = self._sources.get(source.name)
            if held is not None and held.managed and held.path != source.path:
                continue  # loaded from a protocol's folder through the management API
            changed |= await self._refresh_model(source)
        for name in sorted(set(self._versions) - seen):
            origin = self._sources.get(name)
            if (
                origin is not None
                and not origin.contributed
                and (not folders or (root is not None and origin.path.parent != root))
            ):
                continue  # loaded from another root through the management API
            log.info("model folder removed; unloading", model=name)
            for model in list(self._versions[name].values()):
                await self._retire(model)
            del self._versions[name]
            self._sources.pop(name, None)
            changed = True
        if changed:
            heap.settle_soon()
        return changed

    async def load_model(self, source: ModelSource) -> None:
        """Load (or reload) one model at run time; BackendError if no version became ready."""
        if source.error:
            raise ConfigError(source.error)
        self._backend_class(source, source.version_path(source.versions[-1]))  # fail early
        self.unloaded.discard(source.name)
        await self._refresh_model(source, reload=True)
        heap.settle_soon()
        versions = self._versions.get(source.name, {})
        if not any(v.ready for v in versions.values()):
            reasons = "; ".join(f"v{v.version}: {v.reason}" for v in versions.values())
            raise BackendError(f"model {source.name!r} could not be loaded ({reasons})")

    async def unload_model(self, name: str) -> None:
        """Unload every version of ``name`` (in-flight calls finish first)."""
        for model in self.versions(name):
            await self._retire(model)
        self._versions.pop(name, None)
        self._sources.pop(name, None)
        self.unloaded.add(name)
        heap.settle_soon()

    async def _refresh_model(self, source: ModelSource, reload: bool = False) -> bool:
        current = self._versions.setdefault(source.name, {})
        if source.error and current:
            # Without a readable config.yaml the version policy and labels are unknown:
            # keep the versions held (and the config they were loaded with).
            selected = set(current)
        else:
            self._sources[source.name] = source
            selected = {str(n) for n in source.config.version_policy.select(source.versions)}
        changed = False
        for number in sorted(selected, key=int):
            known = current.get(number)
            signature = _signature(source, int(number))
            if known is not None and not reload and not self._due(known, signature):
                continue
            model = await self._attempt(source, int(number), signature, known)
            changed = True
            if known is not None and known.ready and not model.ready and not reload:
                # The serving version stays until a replacement loads.
                assert model.retry is not None
                known.retry = model.retry
                known.reason = (
                    f"serving the files and config.yaml loaded before; loading the new ones "
                    f"failed: {model.reason}"
                )
                await self._discard(model)
                continue
            current[number] = model  # before the old one drains: requests find this one
            if known is not None:
                await self._retire(known)
        if any(current[v].ready for v in selected if v in current):
            for number in sorted(set(current) - selected, key=int):
                await self._retire(current[number])
                changed = True
        return changed

    def _due(self, known: ModelVersion, signature: Signature) -> bool:
        """Whether ``known`` should be loaded again from the files of ``signature``."""
        if known.state not in (ModelState.READY, ModelState.UNAVAILABLE):
            return False  # a load or unload in progress
        if known.ready and known.signature == signature:
            if known.retry is not None:  # the files went back to those that serve
                known.retry, known.reason = None, ""
            return False
        restarting = isinstance(known.backend, ProcessInstances) and known.backend.restarting
        if restarting and known.signature == signature:
            return False  # its instance processes start again on their own
        if known.retry is None and not known.ready:
            # Failed at start-up or through a run-time load: its back-off starts now.
            self._schedule_retry(known, 1)
        if known.retry is None or known.retry.signature != signature:
            return True  # new files or config: at once
        return time.monotonic() >= known.retry.due

    async def _attempt(
        self,
        source: ModelSource,
        number: int,
        signature: Signature,
        known: ModelVersion | None,
    ) -> ModelVersion:
        """Prepare and load one version; on failure its next attempt is scheduled."""
        before = known.retry if known is not None else None
        # The back-off grows while the files stay the same, and starts over when they change.
        attempts = before.attempts if before is not None and before.signature == signature else 0
        try:
            model = self._make_version(source, number)
        except DlInferenceError as exc:
            model = self._unprepared(source, number, exc)
        else:
            await self._load(model, strict=False)
        model.signature = signature
        if not model.ready:
            self._schedule_retry(model, attempts + 1)
        return model

    def _schedule_retry(self, model: ModelVersion, attempts: int) -> None:
        model.retry = LoadRetry.after(attempts, model.signature, model.reason)
        model.reason = f"{model.reason} ({model.retry.note()})"
        log.info(
            "model load will be retried",
            model=model.name,
            version=model.version,
            attempts=attempts,
            in_s=round(model.retry.due - time.monotonic(), 1),
        )

    async def _discard(self, model: ModelVersion) -> None:
        """Release a version that never served (a failed replacement)."""
        await model.scheduler.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(model.backend.unload)

    def _backend_class(self, source: ModelSource, path: Path) -> type[Backend]:
        if source.config.backend:
            return self.plugins.backend(source.config.backend)
        if source.triton_names:
            where = str(source.path / "config.pbtxt")
            return self.plugins.triton_backend(source.triton_names, where)
        candidates = [cls for cls in self.plugins.backends if cls.can_load(path)]
        if len(candidates) == 1:
            return candidates[0]
        files = ", ".join(sorted(p.name for p in path.iterdir())) or "no files"
        if not candidates:
            installed = ", ".join(self.plugins.backends.names())
            raise ConfigError(
                f"model {source.name!r} version {path.name}: no installed backend recognises "
                f"its files ({files}); installed backends: {installed}. "
                f"Name one with `backend:` in {source.path / 'config.yaml'} or install the plugin "
                f"(e.g. {install_hint('dl-inference-pytorch')})"
            )
        names = ", ".join(sorted(cls.name for cls in candidates))
        raise ConfigError(
            f"model {source.name!r} version {path.name}: several backends can serve {files} "
            f"({names}); choose one with `backend:` in {source.path / 'config.yaml'}"
        )

    # -- lookup ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._versions)

    def index(self) -> list[dict[str, str]]:
        """Every model version with its state, plus models unloaded at run time."""
        rows = [
            {"name": v.name, "version": v.version, "state": v.state.value, "reason": v.reason}
            for name in self.names()
            for v in self.versions(name)
        ]
        rows += [
            {"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}
            for name in sorted(self.unloaded - set(self._versions))
        ]
        return rows

    def serves(self, name: str, version: str = "") -> bool:
        """Whether ``name`` is a model held here (in any state) and, when ``version`` is
        given, whether it has that version number. Cheap: a lookup, for every request."""
        held = self._versions.get(name)
        return held is not None and (not version or version in held)

    def versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, oldest first; ModelNotFound if the model is unknown."""
        if name not in self._versions:
            raise ModelNotFound(
                f"unknown model {name!r}; models served here: {', '.join(self.names()) or 'none'}"
            )
        return sorted(self._versions[name].values(), key=lambda v: int(v.version))

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: ``""`` = newest ready one; a label maps through version_labels."""
        held = self._versions.get(name)
        if not version and held is not None:
            # Every request asks this: the newest ready version without sorting a list.
            newest: ModelVersion | None = None
            for model in held.values():
                if model.state is ModelState.READY and (
                    newest is None or int(model.version) >= int(newest.version)
                ):
                    newest = model
            if newest is not None:
                return newest
        versions = self.versions(name)
        if not version:
            ready = [v for v in versions if v.ready]
            if not ready:
                reasons = "; ".join(f"v{v.version}: {v.reason or v.state.value}" for v in versions)
                raise ModelNotReady(
                    _without_paths(f"model {name!r} has no ready version ({reasons})")
                )
            return ready[-1]
        labels = self._sources[name].config.version_labels
        number = str(labels[version]) if version in labels else version
        for model in versions:
            if model.version == number:
                if not model.ready:
                    raise ModelNotReady(
                        _without_paths(
                            f"model {name!r} version {number} is {model.state.value}"
                            + (f": {model.reason}" if model.reason else "")
                        )
                    )
                return model
        known = ", ".join(v.version for v in versions)
        raise ModelNotFound(f"model {name!r} has no version {version!r} (versions: {known})")

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.resolve(name, version)
        except DlInferenceError:
            return False
        return True

    def all_ready(self) -> bool:
        """Whether every model has a version ready to serve."""
        return all(any(v.ready for v in versions.values()) for versions in self._versions.values())

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        """Metadata of the resolved version; ``versions`` names the version asked for, or
        every version of the model when none is (as Triton answers)."""
        model = self.resolve(name, version)
        return ModelMetadata(
            name=name,
            versions=[model.version] if version else [v.version for v in self.versions(name)],
            platform=model.backend.platform,
            inputs=model.inputs() or [],
            outputs=model.outputs() or [],
        )


# In a version's kept specs: ask the backend on each request (see ModelVersion._served).
_ASK: Any = object()
_SPEC_METHODS = (
    "inputs",
    "outputs",
    "model_inputs",
    "model_outputs",
    "declared_inputs",
    "declared_outputs",
)


def _specs_from_config(cls: type[Backend]) -> bool:
    """Whether ``cls`` keeps the kernel's own spec methods, which read only the config and
    processor.py's hooks (fixed once the version has loaded)."""
    return all(getattr(cls, name) is getattr(Backend, name) for name in _SPEC_METHODS)


def load_backend(model: ModelVersion) -> None:
    """Load ``model``'s backend with its processor.py, blocking (in a worker thread, or in
    the instance process of a version with ``execution: process``, which runs processor.py
    itself)."""
    if not isinstance(model.backend, ProcessInstances):
        # Found before load(): with hooks, config.yaml's tensors may describe requests
        # rather than the model, and the backend must know that while it loads.
        model.processor = Processor.find(model.backend)
        if model.processor is not None:
            model.backend.processor_hooks = frozenset(model.processor.hooks)
    model.backend.load()
    if model.processor is not None:
        model.adapter = model.backend.processor_adapter()


def _settings(cls: type[Backend], source: ModelSource) -> Any:
    try:
        return cls.Settings.model_validate(source.config.backend_options)
    except ValidationError as exc:
        lines = describe_errors(
            exc, cls.Settings, prefix=f"models.{source.name}", also_known=KERNEL_KEYS
        )
        raise ConfigError(
            f"model {source.name!r} (backend {cls.name}; from {source.path / 'config.yaml'} or "
            "the server config's models section):\n  " + "\n  ".join(lines)
        ) from None


# An absolute path (not the path part of a URL): the text after a "/" that follows no word
# character, ".", ":" or "/", up to a space, quote or punctuation that ends a path in a message.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"`:,;()\[\]{}]+/)*([^\s'\"`:,;()\[\]{}/]+)")


def _without_paths(message: str) -> str:
    """``message`` with every absolute path cut to its file name, for a client: a model's
    failure names the file at fault, never where the server keeps it (the log has it all)."""
    return _ABSOLUTE_PATH.sub(lambda found: found.group(1), message)


def describe_exception(exc: BaseException) -> str:
    """``Type: message (file.py:line)`` pointing at the innermost frame, for user code errors."""
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} ({Path(exc.filename).name}:{exc.lineno})"
    if isinstance(exc, DlInferenceError):
        return text  # our own message already says where; kernel lines would mislead
    if frames:
        last = frames[-1]
        text += f" ({Path(last.filename).name}:{last.lineno})"
    return text


class _Unprepared(Backend):
    """Stands in for a version no backend could be prepared for (never loaded or called)."""

    name = "none"

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        raise ModelNotReady(f"model {self.model_name!r} version {self.version} is not loaded")


def _signature(source: ModelSource, number: int) -> Signature:
    """What version ``number`` of ``source`` is loaded from, to spot changes: its folder's
    files and the model folder's own (config.yaml, processor.py)."""
    own = []
    try:
        files = sorted(p for p in source.path.iterdir() if p.is_file())
    except OSError:
        files = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        own.append((file.name, stat.st_mtime_ns, stat.st_size))
    return (_folder_signature(source.version_path(number)), tuple(own))


def _folder_signature(path: Path) -> tuple[int, int, int]:
    """Newest mtime, file count and total size under ``path``: changes when a version is
    rewritten (also by a copy that keeps the files' times)."""
    newest, count, size = 0, 0, 0
    for file in path.rglob("*"):
        try:
            stat = file.stat()
        except OSError:
            continue
        newest = max(newest, stat.st_mtime_ns)
        count += 1
        size += stat.st_size
    return newest, count, size
