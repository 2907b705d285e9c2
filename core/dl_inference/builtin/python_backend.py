"""The built-in ``python`` backend: a ``model.py`` with one :class:`PythonModel` subclass."""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dl_inference.spi.backend import Backend
from dl_inference.spi.errors import BackendError
from dl_inference.spi.python_model import PythonModel
from dl_inference.spi.user_code import ParameterCall, import_user_file, private_module_name

# A word of its own: a longer class name ending in it may be another backend's.
_NAMES_PYTHON_MODEL = re.compile(rb"\bPythonModel\b")


class PythonBackend(Backend):
    """Serves ``model.py`` files; the user's class does the work."""

    name = "python"
    model_files = ("model.py",)

    @classmethod
    def can_load(cls, path: Path) -> bool:
        """A folder with ``model.py``, unless that file never names ``PythonModel`` and
        other files sit beside it: then it belongs to the backend those files are for (a
        framework's module class in ``model.py`` beside the weights it is built with).
        ``model.py`` with only other ``.py`` files is always this backend's, so one that
        lacks its class is told so when it loads."""
        if not super().can_load(path):
            return False
        source = path / "model.py"
        try:
            if _NAMES_PYTHON_MODEL.search(source.read_bytes()):
                return True
        except OSError:
            return True  # unreadable: load() reports it
        return all(p.suffix == ".py" or not p.is_file() for p in path.iterdir())

    def load(self) -> None:
        model_cls = _find_model_class(self.path / "model.py", self.model_name, self.version)
        self.model = model_cls()
        self.model.name = self.model_name
        self.model.version = self.version
        self.model.path = self.path
        self.model.config = self.config.model_dump() | self.settings.model_dump()
        self.model.load()
        self._predict = ParameterCall(self.model.predict, 1, "model.py predict()")
        self.self_contained = bool(self.model.self_contained)  # the user's word for it
        # A predict() that yields answers each request with a stream of responses.
        predict = self.model.predict
        self.decoupled = inspect.isgeneratorfunction(predict) or inspect.isasyncgenfunction(predict)

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> Any:
        """The user's outputs; of a decoupled model, a (sync or async) generator of them."""
        result = self._predict((inputs,), parameters)
        if self.decoupled:
            if inspect.isasyncgen(result):
                return self._each_async(result)
            return self._each(result)
        return self._outputs(result)

    def _each(self, produced: Iterator[Any]) -> Iterator[dict[str, np.ndarray]]:
        try:
            for result in produced:
                yield self._outputs(result)
        finally:
            produced.close()  # type: ignore[attr-defined]

    async def _each_async(
        self, produced: AsyncGenerator[Any]
    ) -> AsyncIterator[dict[str, np.ndarray]]:
        try:
            async for result in produced:
                yield self._outputs(result)
        finally:
            await produced.aclose()

    def _outputs(self, result: Any) -> dict[str, np.ndarray]:
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


def _find_model_class(path: Path, model_name: str, version: str) -> type[PythonModel]:
    """Import ``model.py`` privately and return its one PythonModel subclass."""
    module_name = private_module_name("models", model_name, version)
    module = import_user_file(path, module_name)
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
