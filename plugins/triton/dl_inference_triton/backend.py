"""The ``triton_python`` backend: Triton python-backend models (``model.py`` with
``class TritonPythonModel``) served unchanged.

Triton's life cycle, as its python backend runs it:

- ``auto_complete_config(auto_complete_model_config)`` (a static method, when defined) gets
  the configuration (:class:`triton_python_backend_utils.ModelConfig`) and returns it,
  with inputs / outputs it may add; those are what clients see;
- one ``TritonPythonModel`` object per instance (``instance_group`` count), each
  ``initialize(args)`` with Triton's arguments (all strings, ``model_config`` JSON);
- ``execute(requests)`` returns one ``InferenceResponse`` per request; a response whose
  ``error`` is set fails its request alone, with the status Triton gives its code
  (``TritonError.INVALID_ARG``: 400 / INVALID_ARGUMENT, the default INTERNAL: 500);
- ``finalize()`` when the version unloads.

Batching, as Triton's dynamic batcher does it: the kernel hands this backend the requests
it gathered as a list (``takes_request_lists``), never concatenated, so ``execute``
receives one ``InferenceRequest`` per client request, each with its tensors as the client
sent them (with the batch dimension when ``max_batch_size`` > 0), up to
``max_batch_size`` rows in all; the responses are matched to the requests by position.
Without ``dynamic_batching`` each ``execute`` gets one request. Concurrent executions run
on the model's instances in parallel.
"""

from __future__ import annotations

import json
import queue
import re
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import triton_python_backend_utils as pb_utils

import dl_inference
from dl_inference import (
    Backend,
    BackendError,
    BackendSettings,
    InvalidInput,
    ModelNotFound,
    TensorSpec,
    Unavailable,
)

log = structlog.get_logger("dl_inference.triton")

# TritonError code -> the kernel error the client gets, as Triton 2.51 answers a model's
# error (tests/reference/test_triton_python_backend.py): INVALID_ARG 400 / INVALID_ARGUMENT,
# NOT_FOUND 404 / NOT_FOUND, UNAVAILABLE 503 / UNAVAILABLE, INTERNAL 500 / INTERNAL. The
# kernel has no error for Triton's UNKNOWN (400 / UNKNOWN), UNSUPPORTED (501 /
# UNIMPLEMENTED) or ALREADY_EXISTS (400 / ALREADY_EXISTS): those are 500 / INTERNAL here.
_ERRORS: dict[int, type[dl_inference.DlInferenceError]] = {
    pb_utils.TritonError.INVALID_ARG: InvalidInput,
    pb_utils.TritonError.NOT_FOUND: ModelNotFound,
    pb_utils.TritonError.UNAVAILABLE: Unavailable,
}


class TritonPythonBackend(Backend):
    """A Triton python-backend model: ``<version>/model.py`` (or config.pbtxt's
    ``default_model_filename``) defining ``class TritonPythonModel``."""

    name = "triton_python"
    Settings = BackendSettings
    triton_platforms = ("python",)
    takes_request_lists = True
    # A kernel without request lists then still hands execute() one request at a time.
    merges_requests = False

    @property
    def platform(self) -> str:
        return "python"

    def load(self) -> None:
        folder = self.path.parent
        document = dl_inference.read_config_pbtxt(folder)
        # Triton's python backend fills the file name in before the model sees its config.
        filename = document["default_model_filename"] = (
            document.get("default_model_filename") or "model.py"
        )
        module_name = "dl_inference_triton_models." + re.sub(
            r"\W", "_", f"{self.model_name}_v{self.version}"
        )
        module = dl_inference.import_user_file(self.path / filename, module_name)
        model_cls = getattr(module, "TritonPythonModel", None)
        if not isinstance(model_cls, type):
            raise BackendError(f"{self.path / filename}: defines no class TritonPythonModel")
        if hasattr(model_cls, "auto_complete_config"):
            completed = model_cls.auto_complete_config(pb_utils.ModelConfig(document))
            document = completed.as_dict() if completed is not None else document
            if int(document.get("max_batch_size", 0)) != self.config.max_batch_size:
                raise BackendError(
                    f"{self.model_name}: auto_complete_config set max_batch_size "
                    f"{document.get('max_batch_size')}; dl-inference schedules by "
                    f"config.pbtxt's ({self.config.max_batch_size}): set it there"
                )
        self.document = document
        self._inputs = _specs(document.get("input"), self.config.max_batch_size)
        self._outputs = _specs(document.get("output"), self.config.max_batch_size)
        gpu = self.settings.device.startswith("cuda")
        if gpu and not Path("/dev/nvidiactl").exists():
            log.warning(
                "instance_group asks for KIND_GPU and no GPU is visible; the model runs as "
                "its code is written (Triton would refuse to load it)",
                model=self.model_name,
            )
        device_id = self.settings.device.partition(":")[2] or "0"
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._models: list[Any] = []
        for index in range(self.config.instances):
            model = model_cls()
            if hasattr(model, "initialize"):
                model.initialize(
                    {
                        "model_config": json.dumps(document),
                        "model_instance_kind": "GPU" if gpu else "CPU",
                        "model_instance_name": f"{self.model_name}_0_{index}",
                        "model_instance_device_id": device_id,
                        "model_repository": str(folder),
                        "model_version": self.version,
                        "model_name": self.model_name,
                    }
                )
            self._models.append(model)
            self._pool.put(model)

    def model_inputs(self) -> list[TensorSpec] | None:
        return self._inputs

    def model_outputs(self) -> list[TensorSpec] | None:
        return self._outputs

    def predict_requests(
        self, requests: list[dl_inference.InferRequest], /
    ) -> list[dict[str, np.ndarray] | Exception]:
        """One ``execute`` of the gathered requests; one result per request, by position."""
        batch = [
            pb_utils.InferenceRequest(
                [pb_utils.Tensor(name, array) for name, array in request.inputs.items()],
                request_id=request.id,
                parameters=request.parameters,
                model_name=self.model_name,
                model_version=int(self.version),
            )
            for request in requests
        ]
        # At most `instances` scheduler threads call at once: a model object is always free.
        model = self._pool.get()
        try:
            responses = model.execute(batch)
        finally:
            self._pool.put(model)
        if not isinstance(responses, list | tuple) or len(responses) != len(batch):
            count = (
                len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            )
            raise BackendError(
                f"{self.model_name}: execute() must return a list of one InferenceResponse "
                f"per request ({len(batch)} request{'s' * (len(batch) > 1)}, got {count})"
            )
        return [self._outputs_of(response) for response in responses]

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        """One request alone (what processor.py's hooks call)."""
        request = dl_inference.InferRequest(
            self.model_name,
            inputs,
            id=structlog.contextvars.get_contextvars().get("request_id", ""),
            parameters=parameters,
        )
        (result,) = self.predict_requests([request])
        if isinstance(result, Exception):
            raise result
        return result

    def _outputs_of(self, response: Any) -> dict[str, np.ndarray] | Exception:
        """A response's outputs, or the error that fails its request alone."""
        if not isinstance(response, pb_utils.InferenceResponse):
            return BackendError(
                f"{self.model_name}: execute() returned {type(response).__name__} for a "
                "request; return triton_python_backend_utils.InferenceResponse objects"
            )
        if response.has_error():
            error = response.error()
            return _ERRORS.get(error.code(), BackendError)(error.message())
        return {t.name(): _bytes_elements(t.as_numpy()) for t in response.output_tensors()}

    def unload(self) -> None:
        for model in getattr(self, "_models", []):
            if hasattr(model, "finalize"):
                model.finalize()
        self._models = []


def _specs(tensors: list[dict[str, Any]] | None, max_batch_size: int) -> list[TensorSpec] | None:
    if not tensors:
        return None
    batch = (-1,) if max_batch_size > 0 else ()
    specs = []
    for tensor in tensors:
        data_type = str(tensor.get("data_type", "TYPE_INVALID"))
        datatype = "BYTES" if data_type == "TYPE_STRING" else data_type.removeprefix("TYPE_")
        dims = tuple(int(d) for d in tensor.get("dims", []))
        optional = bool(tensor.get("optional", False))
        specs.append(TensorSpec(str(tensor["name"]), datatype, batch + dims, optional))
    return specs


def _bytes_elements(array: np.ndarray) -> np.ndarray:
    """BYTES outputs as object arrays of bytes (a model may put str in them, as Triton
    allows: it sends them UTF-8 encoded)."""
    if array.dtype != np.object_ or not any(isinstance(v, str) for v in array.flat):
        return array
    out = np.empty(array.shape, dtype=np.object_)
    out.flat[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in array.flat]
    return out
