"""Importing a model's own Python files (model.py, processor.py) in isolation."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

from dl_inference.spi.errors import BackendError, InvalidInput

# sys.modules is process-wide and models load in parallel threads: the window in which a
# model's helpers shadow same-named modules of another model is one model at a time.
_IMPORT_LOCK = threading.RLock()


def _local_module_names(folder: Path) -> frozenset[str]:
    """Top-level names importable from ``folder``, except the standard library's."""
    names = {p.stem for p in folder.glob("*.py")} | {
        p.name for p in folder.iterdir() if p.is_dir() and p.name.isidentifier()
    }
    return frozenset(names - set(sys.stdlib_module_names))


def _is_local(module_name: str, local: frozenset[str]) -> bool:
    return module_name.partition(".")[0] in local


def _defined_in(module: ModuleType | None, prefixes: tuple[str, ...]) -> bool:
    filename = getattr(module, "__file__", None)
    return isinstance(filename, str) and filename.startswith(prefixes)


class _FolderFinder:
    """Finds ``folder``'s top-level modules, for imports made by one thread only.

    Putting the folder on ``sys.path`` instead is a race: another thread's import walks
    ``sys.path`` while it is edited, skips an entry and fails ("No module named
    'tensorflow'" while a Python model loads beside a SavedModel).
    """

    def __init__(self, folder: Path, local: frozenset[str]) -> None:
        self._folder = str(folder)
        self._local = local
        self._thread = threading.get_ident()

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        # Submodules are found through their package's __path__, as usual.
        if "." in fullname or fullname not in self._local:
            return None
        if threading.get_ident() != self._thread:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self._folder])

    def invalidate_caches(self) -> None:
        pass


@contextlib.contextmanager
def isolated_imports(folder: Path, *, keep: bool = False) -> Iterator[None]:
    """Make ``folder``'s Python modules importable, for this thread and this model only.

    Inside the block, ``import helpers`` (or unpickling a class from ``net.py``) finds the
    modules beside the model file. Same-named modules another model imported are hidden
    meanwhile; afterwards this model's are dropped from ``sys.modules`` (the objects built
    from them keep working: they hold their module's globals) and the others come back.
    ``keep=True`` leaves this model's modules imported, for code that pickles with them.
    ``sys.path`` is never edited, so imports in other threads are not disturbed.
    """
    local = _local_module_names(folder)
    # String prefixes, not Path.resolve() per module: sys.modules holds thousands once a
    # framework is imported.
    prefixes = tuple({str(folder) + os.sep, str(folder.resolve()) + os.sep})
    finder = _FolderFinder(folder, local)
    with _IMPORT_LOCK:
        hidden = {n: sys.modules.pop(n) for n in list(sys.modules) if _is_local(n, local)}
        # Rebinding, not inserting: an import in progress elsewhere keeps the list it walks.
        sys.meta_path = [finder, *sys.meta_path]
        try:
            yield
        finally:
            sys.meta_path = [f for f in sys.meta_path if f is not finder]
            if not keep:
                for name, module in list(sys.modules.items()):
                    if _is_local(name, local) or _defined_in(module, prefixes):
                        del sys.modules[name]
                sys.modules.update(hidden)


def private_module_name(kind: str, model_name: str, version: str) -> str:
    """A module name of its own for one model version's ``kind`` file."""
    return f"dl_inference_{kind}." + re.sub(r"\W", "_", f"{model_name}_v{version}")


def import_user_file(path: Path, module_name: str) -> ModuleType:
    """Execute ``path`` as module ``module_name``, with its folder's helpers importable.

    Helper modules beside the file are importable while it loads (import them at its
    top); see :func:`isolated_imports`.
    """
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BackendError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode = True  # the model folder is the user's: no __pycache__ in it
    with isolated_imports(path.parent):
        spec.loader.exec_module(module)
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


class ParameterCall:
    """Calls one function with fixed positional arguments and a request's parameters.

    The parameters are passed as keyword arguments when ``function`` takes ``**kwargs``
    (``takes_kwargs`` answers for signatures that cannot be read), else dropped. A
    parameter named like an argument the call fills positionally (``inputs``, ``self``,
    ``x``, ``model``) would make Python raise TypeError, a server error for a name the
    client chose: such a parameter is refused with InvalidInput naming it instead.
    Functions whose core arguments are positional-only (``def predict(self, inputs, /,
    **parameters)``) take every name. The signature is read once, here, not per call.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        positional: int,
        what: str,
        *,
        takes_kwargs: bool = True,
    ) -> None:
        self.function = function
        self.what = what
        self.passes = accepts_var_keyword(function, default=takes_kwargs)
        self.reserved, self._hint = _reserved_names(function, positional)

    def __call__(self, args: tuple[Any, ...], parameters: dict[str, Any]) -> Any:
        if not self.passes or not parameters:
            return self.function(*args)
        clash = self.reserved.intersection(parameters) if self.reserved else ()
        if clash:
            name = sorted(clash)[0]
            raise InvalidInput(
                f"request parameter {name!r} has the name of an argument of {self.what}, "
                "so it cannot be passed on; send it under another name (or the model's "
                f"author can accept it by making that argument positional-only: {self._hint})"
            )
        return self.function(*args, **parameters)


def _reserved_names(function: Any, positional: int) -> tuple[frozenset[str], str]:
    """Names that ``positional`` arguments bind by position and a keyword may not repeat
    (``self`` of a bound method included), and the signature made positional-only."""
    target, bound = function, 0
    if inspect.ismethod(target):
        target, bound = target.__func__, 1
    elif not inspect.isfunction(target) and not inspect.isclass(target):
        call = inspect.getattr_static(type(target), "__call__", None)
        if inspect.isfunction(call):
            target, bound = call, 1  # a callable object: its class's __call__ takes self
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return frozenset(), ""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ordered = [p for p in signature.parameters.values() if p.kind in kinds]
    taken = ordered[: positional + bound]
    reserved = frozenset(p.name for p in taken if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    plain = inspect.Parameter.empty
    rest = [
        str(p.replace(annotation=plain)) for p in signature.parameters.values() if p not in taken
    ]
    names = ", ".join([p.name for p in taken] + ["/"] + rest)
    return reserved, f"def {getattr(target, '__name__', 'function')}({names})"
