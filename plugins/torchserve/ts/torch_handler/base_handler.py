"""``ts.torch_handler.base_handler.BaseHandler``: the base class of TorchServe handlers.

As TorchServe 0.12 documents it: ``initialize(context)`` loads the archive's model
(``modelFile`` + state dict: the model file's one class, ``load_state_dict``; otherwise a
``.pt`` serialized file with ``torch.jit.load``), moves it to ``cuda:<gpu_id>`` when a GPU
is given, and reads ``index_to_name.json``; ``handle(data, context)`` runs
``preprocess`` -> ``inference`` -> ``postprocess`` on the batch (a list with one entry
per request) and returns one answer per request.
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
import time
from typing import Any

from ts.utils.util import list_classes_from_module, load_label_mapping

logger = logging.getLogger(__name__)


class BaseHandler(abc.ABC):  # noqa: B024 - TorchServe's base class has no abstract method
    """Base default handler to load a TorchScript or eager model; subclass it and override
    ``preprocess``, ``inference``, ``postprocess`` (or ``handle``)."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device: Any = None
        self.initialized = False
        self.context: Any = None
        self.model_pt_path: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.map_location: str | None = None
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}

    def initialize(self, context: Any) -> None:
        """Load the archive's model on the context's device, then index_to_name.json."""
        import torch

        self.model_yaml_config = getattr(context, "model_yaml_config", {})
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")
        self.manifest = context.manifest
        model_dir = properties.get("model_dir")
        model = self.manifest["model"]
        self.model_pt_path = None
        if "serializedFile" in model:
            self.model_pt_path = os.path.join(model_dir, model["serializedFile"])
        model_file = model.get("modelFile", "")
        if model_file:
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
            self.model.to(self.device)
            self.model.eval()
        elif self.model_pt_path is not None and self.model_pt_path.endswith(".pt"):
            self.model = self._load_torchscript_model(self.model_pt_path)
            self.model.eval()
        else:
            raise RuntimeError("No model weights could be loaded")
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        import torch

        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(
        self, model_dir: str, model_file: str, model_pt_path: str | None
    ) -> Any:
        """The model file's one class, instantiated, with the state dict loaded into it."""
        import torch

        if not os.path.isfile(os.path.join(model_dir, model_file)):
            raise RuntimeError("Missing the model.py file")
        module = importlib.import_module(model_file.split(".")[0])
        classes = list_classes_from_module(module)
        if len(classes) != 1:
            raise ValueError(f"Expected only one class as model definition. {classes}")
        model = classes[0]()
        if model_pt_path:
            state_dict = torch.load(model_pt_path, map_location=self.device)
            model.load_state_dict(state_dict)
        return model

    def preprocess(self, data: Any) -> Any:
        """The batch as one tensor (``torch.as_tensor`` of the request list)."""
        import torch

        return torch.as_tensor(data, device=self.device)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        """``self.model(data)`` on the model's device, under ``torch.inference_mode()``."""
        import torch

        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    def postprocess(self, data: Any) -> Any:
        """The output tensor as nested lists, one entry per request."""
        return data.tolist()

    def handle(self, data: list[Any], context: Any) -> Any:
        """preprocess -> inference -> postprocess (or ``describe_handle`` / explanations
        when the first request's ``describe`` / ``explain`` header is ``"True"``)."""
        started = time.time()
        self.context = context
        if self._is_describe():
            output = [self.describe_handle()]
        else:
            data_preprocess = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(data_preprocess, data)
            else:
                output = self.postprocess(self.inference(data_preprocess))
        context.metrics.add_time(
            "HandlerTime", round((time.time() - started) * 1000, 2), None, "ms"
        )
        return output

    def explain_handle(self, data_preprocess: Any, raw_data: list[Any]) -> Any:
        """``self.get_insights(data_preprocess, inputs, target)`` (define it: Captum)."""
        inputs, target = None, 0
        row = raw_data[0]
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        return self.get_insights(data_preprocess, inputs, target)  # type: ignore[attr-defined]

    def _header(self, name: str) -> Any:
        if self.context is None:
            return None
        try:
            return self.context.get_request_header(0, name)
        except (IndexError, TypeError):
            return None

    def _is_explain(self) -> bool:
        if self._header("explain") == "True":
            self.explain = True
            return True
        return False

    def _is_describe(self) -> bool:
        return self._header("describe") == "True"

    def describe_handle(self) -> Any:
        """What a ``describe: True`` request gets (override it; the default: None)."""
        return None

    def get_device(self) -> Any:
        return self.device
