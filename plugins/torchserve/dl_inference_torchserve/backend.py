"""The ``torchserve`` backend: a ``.mar`` archive's handler, run as TorchServe 0.12 runs it."""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import structlog

from dl_inference import Backend, BackendError, InvalidInput, TensorSpec, isolated_imports
from dl_inference_torchserve.archive import MANIFEST, REFUSED, read_manifest
from dl_inference_torchserve.requests import (
    BODY,
    FIELDS_BOUNDARY,
    HEADERS,
    STATUS,
    decoded,
    fields,
)

log = structlog.get_logger("dl_inference.torchserve")

# TorchServe's default handlers a manifest may name (``--handler image_classifier``), served
# from the ``ts`` package; the others TorchServe has are refused by name at load.
DEFAULT_HANDLERS = ("image_classifier", "image_segmenter", "object_detector", "text_classifier")
# What makes an archive a streaming model: a Python file of it naming the ts function that
# sends intermediate answers (TorchServe has no flag for it: any handler may call it).
STREAMING_MARK = b"send_intermediate_predict_response"
# How often a streaming handler blocked on a waiting answer looks whether the client left.
_POLL_S = 0.05


class HandlerFailed(BackendError):
    """The handler failed a batch; ``status`` and ``message`` are TorchServe's answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class TorchServeBackend(Backend):
    """A TorchServe model archive (unpacked): MAR-INF/MANIFEST.json names the handler
    (``handler.py``, ``handler.py:function``), loaded as TorchServe does: a module-level
    function (``handle`` by default) called once with ``(None, context)`` to initialize,
    else the module's one class, instantiated, ``initialize(context)``, then ``handle``.
    """

    name = "torchserve"
    # Each request is one element of body/headers: merged requests are a handler's batch.
    merges_requests: ClassVar[bool] = True

    @classmethod
    def can_load(cls, path: Path) -> bool:
        return (path / MANIFEST).is_file()

    @property
    def manifest_version(self) -> str:
        """The archive's ``modelVersion`` (what clients name), read before a load too: a
        version that failed to load is still found by it."""
        manifest = getattr(self, "manifest", None)
        if manifest is None:
            try:
                manifest = read_manifest(self.path)
            except (OSError, ValueError):
                return ""
        return str(manifest["model"].get("modelVersion", ""))

    def load(self) -> None:
        import ts
        from ts.context import Context
        from ts.utils.util import list_classes_from_module

        refused = self.path / REFUSED
        if refused.is_file():  # the archive broke the member rule: nothing was unpacked
            raise BackendError(refused.read_text(encoding="utf-8"))
        self.manifest = read_manifest(self.path)
        model = self.manifest["model"]
        handler = str(model.get("handler") or "")
        if not handler:
            raise BackendError(f"{self.path / MANIFEST}: names no handler")
        module_name, _, function_name = handler.partition(":")
        module_name = module_name.removesuffix(".py").split("/")[-1]
        device = self.settings.device
        gpu_id = int(device.partition(":")[2] or 0) if device.startswith("cuda") else None
        self.context = Context(
            self.model_name,
            str(self.path),
            self.manifest,
            max(1, self.config.max_batch_size),
            gpu_id,
            ts.__version__,
            model_yaml_config=self._yaml_config(model),
        )
        # The handler imports its archive's modules (model.py, helpers) by name, and
        # BaseHandler imports the model file while it initializes: all inside.
        with isolated_imports(self.path, keep=True):
            module = self._import_handler(module_name, handler)
            function_name = function_name or "handle"
            if hasattr(module, function_name):
                self._entry = getattr(module, function_name)
                self._entry(None, self.context)
            else:
                classes = list_classes_from_module(module)
                if len(classes) != 1:
                    raise BackendError(
                        f"handler {handler!r}: expected one class or a function "
                        f"{function_name}() in {module_name}, found classes "
                        f"{[c.__name__ for c in classes]}"
                    )
                service = classes[0]()
                if not hasattr(service, "handle"):
                    raise BackendError(f"handler class {classes[0].__name__} has no handle()")
                service.initialize(self.context)
                self._entry = service.handle
        # TorchServe runs a handler in one worker process at a time; here one call at a
        # time per loaded archive (the context is per batch).
        self._lock = threading.Lock()
        self.decoupled = streams(self.path)

    def _yaml_config(self, model: dict[str, Any]) -> dict[str, Any]:
        """The archive's model-config.yaml (``--config-file``), as ``context.model_yaml_config``."""
        from ts.utils.util import get_yaml_config

        config_file = model.get("configFile")
        if not config_file:
            return {}
        loaded = get_yaml_config(str(self.path / str(config_file)))
        return loaded if isinstance(loaded, dict) else {}

    def _import_handler(self, module_name: str, handler: str) -> Any:
        if (self.path / f"{module_name}.py").is_file() or (self.path / module_name).is_dir():
            return importlib.import_module(module_name)
        served = ", ".join(DEFAULT_HANDLERS)
        if module_name not in DEFAULT_HANDLERS:
            raise BackendError(
                f"handler {handler!r}: the archive has no {module_name}.py, and it is not one "
                f"of TorchServe's default handlers served by name ({served})"
            )
        return importlib.import_module(f"ts.torch_handler.{module_name}")

    def model_inputs(self) -> list[TensorSpec]:
        batch = (-1,) if self.config.max_batch_size > 0 else ()
        shape = batch or (-1,)
        return [TensorSpec(BODY, "BYTES", shape), TensorSpec(HEADERS, "BYTES", shape)]

    def model_outputs(self) -> list[TensorSpec]:
        batch = (-1,) if self.config.max_batch_size > 0 else ()
        shape = batch or (-1,)
        return [
            TensorSpec(BODY, "BYTES", shape),
            TensorSpec(STATUS, "INT32", shape),
            TensorSpec(HEADERS, "BYTES", shape),
        ]

    def predict(self, inputs: dict[str, np.ndarray], /) -> Any:
        """The batch's answers; a streaming archive's (:attr:`decoupled`): a generator of
        its intermediate answers, then the final one (see :meth:`_stream`)."""
        batch, processors, ids = self._batch(inputs)
        if self.decoupled:
            return self._stream(batch, processors, ids)
        with self._lock:
            self._set_batch(processors, ids)
            answers = self._handle(batch)
            return _outputs(answers, processors)

    def _batch(
        self, inputs: dict[str, np.ndarray]
    ) -> tuple[list[dict[str, Any]], list[Any], dict[int, str]]:
        """The handler's rows (one per request), their RequestProcessors and request ids."""
        from ts.context import RequestProcessor

        bodies = inputs[BODY].reshape(-1)
        metas = inputs[HEADERS].reshape(-1) if HEADERS in inputs else [b"{}"] * len(bodies)
        if len(metas) != len(bodies):
            raise InvalidInput(f"{len(bodies)} bodies but {len(metas)} headers: send one each")
        batch, processors, ids = [], [], {}
        for index, (body, meta) in enumerate(zip(bodies, metas, strict=True)):
            headers, request_id, boundary = _meta(meta)
            row: dict[str, Any] = {}
            request_headers: dict[str, Any] = {}
            try:
                found = fields(bytes(body), headers, boundary)
            except ValueError as exc:
                raise InvalidInput(f"the request body could not be read: {exc}") from None
            for name, content_type, value in found:
                row[name] = decoded(content_type, value)
                request_headers[name] = {"content-type": content_type}
            request_headers.update(headers)
            batch.append(row)
            processors.append(RequestProcessor(request_headers))
            ids[index] = request_id
        return batch, processors, ids

    def _set_batch(self, processors: list[Any], ids: dict[int, str]) -> None:
        self.context.request_ids = ids
        self.context.request_processor = processors
        self.context.metrics.request_ids = ids

    def _stream(
        self, batch: list[dict[str, Any]], processors: list[Any], ids: dict[int, str]
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run the handler in a thread of its own; yield each intermediate answer it sends
        (``send_intermediate_predict_response``), then its final one.

        The handler pushes while this generator is pulled (by the kernel's stream, in the
        model's thread): at most one answer waits, so a slow client pauses the handler at
        its next send. When the generator is closed (the client went away), that send
        raises ``StreamClosed`` in the handler, which stops it there.
        """
        from ts.protocol.otf_message_handler import StreamClosed

        answers: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        closed = threading.Event()

        def put(kind: str, value: Any) -> None:
            while not closed.is_set():
                try:
                    answers.put((kind, value), timeout=_POLL_S)
                    return
                except queue.Full:
                    continue
            raise StreamClosed("the client went away")

        def send(values: list[Any]) -> None:
            put("part", _outputs(values, processors))

        def run() -> None:
            try:
                with self._lock:
                    self._set_batch(processors, ids)
                    self.context.send_intermediate = send
                    try:
                        final = self._handle(batch)
                    finally:
                        self.context.send_intermediate = None
                    for processor in processors:
                        # The last answer of a stream says so, as TorchServe's does.
                        if processor.get_response_header("ts_stream_next") == "true":
                            processor.add_response_property("ts_stream_next", "false")
                    outputs = _outputs(final, processors)
            except BaseException as exc:  # to the consumer, in order after the parts
                with contextlib.suppress(StreamClosed):
                    put("error", exc)
            else:
                with contextlib.suppress(StreamClosed):
                    put("final", outputs)

        # The request's log fields reach the handler's thread too.
        context = contextvars.copy_context()
        worker = threading.Thread(
            target=context.run, args=(run,), name=f"dli-ts-stream-{self.model_name}"
        )
        worker.start()
        try:
            while True:
                kind, value = answers.get()
                if kind == "error":
                    raise value
                yield value
                if kind == "final":
                    return
        finally:
            closed.set()

    def _handle(self, batch: list[dict[str, Any]]) -> list[Any]:
        from ts.protocol.otf_message_handler import StreamClosed
        from ts.utils.util import PredictionException

        try:
            answers = self._entry(batch, self.context)
        except StreamClosed:
            raise  # the client of a stream went away: nobody to answer
        except MemoryError:
            log.error("handler ran out of memory", model=self.model_name, exc_info=True)
            raise HandlerFailed("Out of resources", 507) from None
        except PredictionException as exc:
            log.error("handler raised PredictionException", model=self.model_name, exc_info=True)
            raise HandlerFailed(exc.message, exc.error_code) from None
        except Exception as exc:
            if "CUDA" in str(exc):
                log.error("handler: CUDA out of memory", model=self.model_name, exc_info=True)
                raise HandlerFailed("Out of resources", 507) from None
            log.warning("handler failed", model=self.model_name, exc_info=True)
            raise HandlerFailed("Prediction failed", 503) from None
        if not isinstance(answers, list):
            log.warning(
                "handler returned no list", model=self.model_name, got=type(answers).__name__
            )
            raise HandlerFailed("Invalid model predict output", 503)
        if len(answers) != len(batch):
            log.warning(
                "handler answered a different number of requests",
                model=self.model_name,
                expected=len(batch),
                got=len(answers),
            )
            raise HandlerFailed("number of batch response mismatched", 503)
        return answers


def streams(folder: Path) -> bool:
    """Whether the unpacked archive in ``folder`` is a streaming model: one of its Python
    files names ``send_intermediate_predict_response`` (its answers then reach clients
    through the kernel's streams: each request runs alone, never merged into a batch)."""
    for path in folder.rglob("*.py"):
        try:
            if STREAMING_MARK in path.read_bytes():
                return True
        except OSError:
            continue
    return False


def _meta(meta: Any) -> tuple[dict[str, str], str, str]:
    """The ``headers`` input of one request: its HTTP headers, request id and form boundary."""
    try:
        value = json.loads(bytes(meta)) if meta is not None else {}
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"the headers input is not JSON: {exc}") from None
    headers = value.get("headers", {}) if isinstance(value, dict) else None
    if not isinstance(headers, dict):
        raise InvalidInput('the headers input must be a JSON object {"headers": {...}, "id": ...}')
    boundary = str(value.get(FIELDS_BOUNDARY) or "")
    return {str(k): str(v) for k, v in headers.items()}, str(value.get("id", "")), boundary


def _outputs(answers: list[Any], processors: list[Any]) -> dict[str, np.ndarray]:
    """Each answer's bytes as TorchServe's worker writes them: bytes as they are, str as
    UTF-8, a tensor with torch.save, anything else as JSON indented by 2."""
    bodies = np.empty(len(answers), dtype=object)
    for index, answer in enumerate(answers):
        if isinstance(answer, (bytes, bytearray)):
            bodies[index] = bytes(answer)
        elif isinstance(answer, str):
            bodies[index] = answer.encode("utf-8")
        elif type(answer).__module__.startswith("torch") and hasattr(answer, "detach"):
            import io

            import torch

            buffer = io.BytesIO()
            torch.save(answer, buffer)
            bodies[index] = buffer.getvalue()
        else:
            try:
                bodies[index] = json.dumps(answer, indent=2).encode("utf-8")
            except (TypeError, ValueError):
                log.warning("handler output cannot be serialized", exc_info=True)
                raise HandlerFailed("Unsupported model output data type.", 503) from None
    statuses = np.array([p.get_response_status_code() or 200 for p in processors], np.int32)
    headers = np.array(
        [json.dumps(p.get_response_headers()).encode() for p in processors], dtype=object
    )
    return {BODY: bodies, STATUS: statuses, HEADERS: headers}
