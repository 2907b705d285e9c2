"""The built-in ``python`` backend: a ``model.py`` with one :class:`PythonModel` subclass."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from dl_inference.backend import Backend
from dl_inference.errors import BackendError
from dl_inference.models import accepts_var_keyword
from dl_inference.python_model import PythonModel


class PythonBackend(Backend):
    """Serves ``model.py`` files; the user's class does the work."""

    name = "python"
    model_files = ("model.py",)

    def load(self) -> None:
        model_cls = _find_model_class(self.path / "model.py", self.model_name, self.version)
        self.model = model_cls()
        self.model.name = self.model_name
        self.model.version = self.version
        self.model.path = self.path
        self.model.config = self.config.model_dump() | self.settings.model_dump()
        self.model.load()
        self._pass_parameters = accepts_var_keyword(self.model.predict)

    def predict(self, inputs: dict[str, np.ndarray], **parameters: Any) -> dict[str, np.ndarray]:
        result = (
            self.model.predict(inputs, **parameters)
            if self._pass_parameters
            else self.model.predict(inputs)
        )
        if not isinstance(result, dict):
            raise BackendError(
                f"{self.model_name}: predict() returned {type(result).__name__}; "
                "return a dict of output name -> numpy array"
            )
        return {str(name): np.asarray(value) for name, value in result.items()}

    def unload(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            model.unload()


_IMPORT_LOCK = threading.Lock()


def _local_module_names(folder: Path) -> frozenset[str]:
    """Top-level names importable from ``folder``, except the standard library's."""
    names = {p.stem for p in folder.glob("*.py")} | {
        p.name for p in folder.iterdir() if p.is_dir() and p.name.isidentifier()
    }
    return frozenset(names - set(sys.stdlib_module_names))


def _is_local(module_name: str, local: frozenset[str]) -> bool:
    return module_name.partition(".")[0] in local


def _find_model_class(path: Path, model_name: str, version: str) -> type[PythonModel]:
    """Import ``model.py`` privately and return its one PythonModel subclass."""
    module_name = "dl_inference_models." + re.sub(r"\W", "_", f"{model_name}_v{version}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BackendError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    local = _local_module_names(path.parent)
    # Helper modules beside model.py are importable while it loads (import them at its top).
    # Imports share sys.path and sys.modules, so one model.py runs at a time, and a helper
    # another model imported under the same name is hidden, then ours is dropped: each model
    # keeps its own helpers through its module's globals.
    with _IMPORT_LOCK:
        hidden = {n: sys.modules.pop(n) for n in list(sys.modules) if _is_local(n, local)}
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
            for name in [n for n in sys.modules if _is_local(n, local)]:
                del sys.modules[name]
            sys.modules.update(hidden)
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, PythonModel)
        and obj is not PythonModel
        and obj.__module__ == module_name
    ]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise BackendError(
            f"{path}: define exactly one subclass of dl_inference.PythonModel (found {found})"
        )
    return classes[0]
