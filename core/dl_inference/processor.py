"""The seed's per-model ``processor.py``, honoured for any backend.

A model folder (``<model>/<version>/`` or ``<model>/``) may hold ``processor.py`` with any
of ``preprocess(x, **kwargs)``, ``run_model(model, x, **kwargs)``,
``postprocess(y, **kwargs)``; ``kwargs`` are the request's parameters. ``x`` is the single
input array (``bytes`` for a single BYTES element) or a dict of arrays; ``model(x)`` runs
the backend and returns its single output array or a dict. Backends that run processors
themselves (pytorch: tensors on the model's device) set ``Backend.handles_processor``.
A ``ValueError``, ``TypeError``, ``KeyError``, ``IndexError`` or ``OSError`` from
``preprocess`` is the client's bad input; other errors are the model's. Both name
``processor.py:LINE``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dl_inference.backend import Backend
from dl_inference.errors import BackendError, DlInferenceError, InvalidInput
from dl_inference.user_code import accepts_var_keyword, import_user_file, private_module_name

HOOKS = ("preprocess", "run_model", "postprocess")
CLIENT_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError)
FILE = "processor.py"


@dataclass
class Processor:
    """The hooks found in one model's ``processor.py``."""

    path: Path
    hooks: dict[str, Callable[..., Any]]

    @classmethod
    def find(cls, backend: Backend) -> Processor | None:
        """The processor beside the version's files, else beside the model's config."""
        for folder in (backend.path, backend.path.parent):
            path = folder / FILE
            if path.is_file():
                name = private_module_name("processors", backend.model_name, backend.version)
                module = import_user_file(path, name)
                hooks = {h: getattr(module, h) for h in HOOKS if callable(getattr(module, h, None))}
                return cls(path, hooks) if hooks else None
        return None

    def run(
        self,
        backend: Backend,
        predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
    ) -> dict[str, np.ndarray]:
        """preprocess -> run_model (or the backend) -> postprocess, as named arrays."""
        x: Any = _unwrap(inputs)
        if "preprocess" in self.hooks:
            x = self._call("preprocess", (x,), parameters)

        def model(data: Any) -> Any:
            return _unwrap(predict(_named(data, backend.inputs(), "input", self.path)))

        if "run_model" in self.hooks:
            y = self._call("run_model", (model, x), parameters)
        else:
            y = model(x)
        if "postprocess" in self.hooks:
            y = self._call("postprocess", (y,), parameters)
        return {
            k: np.asarray(v) for k, v in _named(y, backend.outputs(), "output", self.path).items()
        }

    def _call(self, hook: str, args: tuple[Any, ...], parameters: dict[str, Any]) -> Any:
        function = self.hooks[hook]
        try:
            if accepts_var_keyword(function, default=False):
                return function(*args, **parameters)
            return function(*args)
        except DlInferenceError:
            raise
        except Exception as exc:
            where = f"{type(exc).__name__}: {exc}{_location(exc, self.path)}"
            if hook == "preprocess" and isinstance(exc, CLIENT_ERRORS):
                raise InvalidInput(
                    f"{FILE} preprocess() could not use the request: {where}"
                ) from exc
            raise BackendError(f"{FILE} {hook}() raised {where}") from exc


def _unwrap(named: dict[str, np.ndarray]) -> Any:
    """One tensor as itself (a lone BYTES element as ``bytes``), several as the dict."""
    if len(named) != 1:
        return named
    array = next(iter(named.values()))
    if array.dtype == np.object_ and array.size == 1:
        return array.reshape(-1)[0]
    return array


def _named(data: Any, specs: Any, kind: str, path: Path) -> dict[str, np.ndarray]:
    """Hook results back to named arrays: a dict as is, one array under the only name."""
    if isinstance(data, dict):
        return data
    names = [spec.name for spec in specs or []]
    if len(names) != 1:
        raise BackendError(
            f"{path.name}: return a dict of {kind} name -> array; the model has "
            f"{len(names) or 'no declared'} {kind}s" + (f" ({', '.join(names)})" if names else "")
        )
    return {names[0]: np.asarray(data)}


def _location(exc: BaseException, path: Path) -> str:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename) == path:
            return f" ({path.name}:{frame.lineno})"
    return ""
