"""Importing a model's own Python files (model.py, processor.py) in isolation."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from dl_inference.errors import BackendError

_IMPORT_LOCK = threading.Lock()


def _local_module_names(folder: Path) -> frozenset[str]:
    """Top-level names importable from ``folder``, except the standard library's."""
    names = {p.stem for p in folder.glob("*.py")} | {
        p.name for p in folder.iterdir() if p.is_dir() and p.name.isidentifier()
    }
    return frozenset(names - set(sys.stdlib_module_names))


def _is_local(module_name: str, local: frozenset[str]) -> bool:
    return module_name.partition(".")[0] in local


def private_module_name(kind: str, model_name: str, version: str) -> str:
    """A module name of its own for one model version's ``kind`` file."""
    return f"dl_inference_{kind}." + re.sub(r"\W", "_", f"{model_name}_v{version}")


def import_user_file(path: Path, module_name: str) -> ModuleType:
    """Execute ``path`` as module ``module_name``, with its folder's helpers importable.

    Helper modules beside the file are importable while it loads (import them at its
    top). Imports share sys.path and sys.modules, so one file runs at a time, a helper
    another model imported under the same name is hidden, then ours is dropped: each model
    keeps its own helpers through its module's globals.
    """
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BackendError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    local = _local_module_names(path.parent)
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
    return module


def accepts_var_keyword(function: Any, default: bool = True) -> bool:
    """Whether ``function`` takes ``**kwargs`` (request parameters are passed only then).

    ``default`` answers for callables whose signature cannot be read (builtins).
    """
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return default
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
