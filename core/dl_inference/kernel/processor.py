"""The seed's per-model ``processor.py``: one implementation, run by the kernel for every backend.

Where it is found: ``<model>/<version>/processor.py``, else ``<model>/processor.py`` (the
version's own file wins). It defines any of::

    def preprocess(x, **kwargs): ...          # request data -> model input
    def run_model(model, x, **kwargs): ...    # replaces model(x); may call model(x) often
    def postprocess(y, **kwargs): ...         # model output -> response data

A ``run_model`` that ``yield``s instead of returning makes the model decoupled: each
yielded value goes through ``postprocess`` and out as one response of a stream (see
:mod:`dl_inference.kernel.streaming`). A file that defines none of them fails the
model's load (a misspelt hook is not silently skipped). ``kwargs`` are the request's
parameters (V2 ``parameters``, Seldon ``meta.tags``, ...), passed when the hook takes
``**kwargs``, and ``meta={"tags": {...}}`` holding them all again, as the seed's Seldon
wrapper passes it (so ``kwargs["meta"]["tags"]`` works for every protocol). A parameter
named like the argument a hook takes by position (``x``, ``model``, ``y``), or named
``meta``, is refused as the client's error (see
:class:`~dl_inference.spi.user_code.ParameterCall`).

Without ``run_model``, a request carrying more than one parameter calls the model with
them as keywords, ``model(x, **tags)``, as the seed's predictor does (its clients always
send ``taskId``, so "more than one" means "tags besides the task id"); see
:meth:`ProcessorAdapter.call_with_tags`. Without a ``processor.py`` the model is called as
``model(x)``, as the seed's default ``processor.py`` (whose ``run_model`` does just that).

What the hooks see, on every backend alike:

- one input: its array; a BYTES input holding exactly one element arrives as that
  ``bytes`` object (the seed's Seldon ``binData``), when the model does not batch
  (``max_batch_size: 0``). A batching model's hooks always get arrays: its data may hold
  the rows of several requests;
- several inputs: a dict name -> array, in the order the model's inputs are declared;
- model results, in ``run_model``'s ``model(x)`` and in ``postprocess``: the one output
  alone, several as a dict.

Without ``run_model`` the kernel calls the model on what ``preprocess`` returned (without
either, on the request's named arrays). Values handed on unnamed take names in order:
a dict keeps its own; a tuple (or, for results, a list of arrays/tensors) is several
values, anything else one. Model inputs are named by the model's inputs, results by the
outputs clients are told (config.yaml's ``outputs`` with ``postprocess``, else the
model's); where those are unknown, ``input__0``/``output__0``, ``..__1``, ...

With ``preprocess``, config.yaml's ``inputs`` describe what clients send and requests are
checked against them (:meth:`~dl_inference.Backend.inputs`); with ``postprocess`` its
``outputs`` describe responses. A ``ValueError``, ``TypeError``, ``KeyError``,
``IndexError`` or ``OSError`` from ``preprocess`` is the client's bad input
(:class:`~dl_inference.InvalidInput`); other errors are the model's
(:class:`~dl_inference.BackendError`). Both name ``processor.py:LINE``. Before either, a
framework's error from ``preprocess`` or ``run_model`` (which may call the model itself:
``model(x)`` on a torch module) goes to :meth:`~dl_inference.Backend.client_error`: when
the backend says the request's data did not fit (a shape the model cannot take), the
client gets the backend's short :class:`~dl_inference.InvalidInput` instead, and the log
the traceback. ``postprocess`` sees the model's results, not the request: its errors are
always the model's.

A backend keeps its own tensor type by returning a :class:`ProcessorAdapter` subclass
from :meth:`~dl_inference.Backend.processor_adapter` (the pytorch backend: torch tensors
on the model's device); the kernel never imports a framework.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from dl_inference.spi.datatypes import from_numpy_dtype
from dl_inference.spi.errors import BackendError, DlInferenceError, InvalidInput
from dl_inference.spi.types import TensorSpec
from dl_inference.spi.user_code import ParameterCall, import_user_file, private_module_name

if TYPE_CHECKING:
    from dl_inference.spi.backend import Backend

HOOKS = ("preprocess", "run_model", "postprocess")
# Arguments each hook takes by position (what a request parameter may not be named).
HOOK_ARGUMENTS = {"preprocess": 1, "run_model": 2, "postprocess": 1}
# Exceptions from preprocess() that mean "this request's data is not what the model takes"
# (PIL's "cannot identify image file" is an OSError).
CLIENT_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError)
FILE = "processor.py"
# The keyword under which the seed's wrapper hands hooks the request's tags.
META = "meta"
# Hooks that handle the request's data, so a framework error in them may be the client's.
REQUEST_HOOKS = frozenset({"preprocess", "run_model"})

log = structlog.get_logger("dl_inference.processor")


@dataclass
class Processor:
    """The hooks found in one model's ``processor.py``."""

    path: Path
    hooks: dict[str, ParameterCall]

    @classmethod
    def find(cls, backend: Backend) -> Processor | None:
        """The processor beside the version's files, else beside the model's config.yaml."""
        for folder in (backend.path, backend.path.parent):
            path = folder / FILE
            if path.is_file():
                return cls.load(path, backend.model_name, backend.version)
        return None

    @classmethod
    def load(cls, path: Path, model_name: str, version: str) -> Processor:
        """Import ``path`` under a private name; BackendError when it defines no hook."""
        module = import_user_file(path, private_module_name("processors", model_name, version))
        hooks = {
            name: ParameterCall(
                function, HOOK_ARGUMENTS[name], f"{FILE} {name}()", takes_kwargs=False
            )
            for name in HOOKS
            if callable(function := getattr(module, name, None))
        }
        if not hooks:
            raise BackendError(
                f"{path} defines none of {', '.join(HOOKS)}(); define at least one, or "
                "remove or rename the file"
            )
        return cls(path, hooks)

    def call(
        self,
        hook: str,
        args: tuple[Any, ...],
        parameters: dict[str, Any],
        backend: Backend | None = None,
    ) -> Any:
        """Run one hook; its errors become InvalidInput (what ``backend`` calls the client's
        fault, preprocess's client errors) or BackendError, naming the hook and
        ``processor.py:LINE``."""
        call = self.hooks[hook]
        try:
            return call(args, hook_keywords(parameters) if call.passes else parameters)
        except DlInferenceError:
            raise
        except Exception as exc:
            if backend is not None and hook in REQUEST_HOOKS:
                error = backend.client_error(exc)
                if error is not None:
                    log.info(
                        "model rejected the request's inputs",
                        model=backend.model_name,
                        version=backend.version,
                        hook=f"{FILE} {hook}()",
                        exc_info=exc,
                    )
                    raise error from exc
            where = f"{type(exc).__name__}: {exc}{_location(exc, self.path)}"
            if hook == "preprocess" and isinstance(exc, CLIENT_ERRORS):
                raise InvalidInput(
                    f"{FILE} preprocess() could not use the request's data: {where}"
                ) from exc
            raise BackendError(f"{FILE} {hook}() raised {where}") from exc


class ProcessorAdapter:
    """How a model's ``processor.py`` hooks meet its backend's tensors; also the one
    request path (:meth:`run`) from named arrays through the hooks to named arrays.

    The default serves any backend with numpy arrays: the model is called through
    :meth:`~dl_inference.Backend.predict`. A backend whose framework has tensors of its
    own subclasses it and returns an instance from
    :meth:`~dl_inference.Backend.processor_adapter`, overriding what it needs:
    :meth:`scope` (around one run), :meth:`to_model` (hook data -> its tensors),
    :meth:`model` (what ``run_model`` receives), :meth:`call` (running the model),
    :meth:`call_with_tags` (running it with the request's tags as keywords) and
    :meth:`to_numpy` (its tensors -> numpy). Such a backend may serve its own
    :meth:`~dl_inference.Backend.predict` with ``adapter.run(inputs, parameters)``, so
    requests with and without a processor follow one path.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._predict = predict_call(backend)

    # -- what a backend may override -------------------------------------------------------

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Entered around one run (hooks and model): e.g. ``torch.inference_mode()``."""
        return contextlib.nullcontext()

    def to_model(self, x: Any) -> Any:
        """Data for the model (what ``preprocess`` returned, or the request's data) in the
        backend's own type; the default keeps it as it is."""
        return x

    def model(self, parameters: dict[str, Any]) -> Any:
        """What ``run_model(model, x)`` receives: by default a callable running
        :meth:`call` and handing back its result as hooks see results."""

        def model(x: Any) -> Any:
            return _view(self.call(self.to_model(x), parameters), self._batched)

        return model

    def call(self, x: Any, parameters: dict[str, Any]) -> Any:
        """Run the model on ``x`` once. The default names ``x`` by the model's inputs and
        calls :meth:`~dl_inference.Backend.predict` (a dict of arrays goes as it is)."""
        if not isinstance(x, dict):
            specs = self.backend.model_inputs()
            x = {n: _array(n, v, "input") for n, v in _names(x, specs, "input", self.backend)}
        return self._predict((x,), parameters)

    def call_with_tags(self, x: Any, tags: dict[str, Any]) -> Any:
        """Run the model on ``x`` once as ``model(x, **tags)``: what the kernel does instead
        of :meth:`call` when ``processor.py`` has no ``run_model`` and the request carries
        more than one parameter (the seed's predictor). The default is :meth:`call`, whose
        :meth:`~dl_inference.Backend.predict` already receives the parameters as keywords;
        a backend whose framework calls a model object (the ``pytorch`` backend's module)
        passes them to it."""
        return self.call(x, tags)

    def to_numpy(self, value: Any) -> Any:
        """One response value in numpy terms (array, bytes, str, list); default as is."""
        return value

    # -- the one request path --------------------------------------------------------------

    @property
    def _batched(self) -> bool:
        return self.backend.config.max_batch_size > 0

    def run(
        self,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any],
        processor: Processor | None = None,
    ) -> dict[str, np.ndarray]:
        """Named arrays -> preprocess -> run_model (or the model) -> postprocess -> named
        arrays, with the hooks ``processor`` has (none: the model alone)."""
        hooks = processor.hooks if processor is not None else {}
        with self.scope():
            x = self._model_input(inputs, parameters, processor)
            tags = tags_for_model(parameters) if processor is not None else None
            if processor is not None and "run_model" in hooks:
                model = self.model(parameters)
                y = processor.call("run_model", (model, x), parameters, self.backend)
            elif tags is not None:
                y = self.call_with_tags(x, tags)
            else:
                y = self.call(x, parameters)
            if processor is not None and "postprocess" in hooks:
                y = processor.call("postprocess", (_view(y, self._batched),), parameters)
            return self._named_outputs(y)

    def run_stream(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, Any], processor: Processor
    ) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`run` for a ``run_model`` that is a generator (a decoupled model): each
        value it yields goes through ``postprocess`` and out as one response. Runs in one
        thread from start to end; closing it closes ``run_model``'s generator."""
        hooks = processor.hooks
        with self.scope():
            x = self._model_input(inputs, parameters, processor)
            model = self.model(parameters)
            produced = processor.call("run_model", (model, x), parameters, self.backend)
            try:
                for y in produced:
                    if "postprocess" in hooks:
                        y = processor.call("postprocess", (_view(y, self._batched),), parameters)
                    yield self._named_outputs(y)
            finally:
                produced.close()

    def _model_input(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, Any], processor: Processor | None
    ) -> Any:
        """The request's arrays as the model (or ``run_model``) takes them, after
        ``preprocess``."""
        hooks = processor.hooks if processor is not None else {}
        x: Any = inputs if len(inputs) < 2 else _ordered(inputs, self.backend.inputs())
        if processor is not None and ("preprocess" in hooks or "run_model" in hooks):
            x = _view(x, self._batched)  # a hook sees it; else the model takes the dict
        if processor is not None and "preprocess" in hooks:
            x = processor.call("preprocess", (x,), parameters, self.backend)
        return self.to_model(x)

    def _named_outputs(self, y: Any) -> dict[str, np.ndarray]:
        """The run's result as named arrays (the module docstring's rule)."""
        pairs = _names(y, self.backend.outputs(), "output", self.backend)
        return {name: _array(name, self.to_numpy(value), "output") for name, value in pairs}


def hook_keywords(parameters: dict[str, Any]) -> dict[str, Any]:
    """What a hook's ``**kwargs`` receive: the parameters, and ``meta={"tags": ...}`` holding
    them as the seed's Seldon wrapper passes them. A parameter named ``meta`` would be
    lost, so it is refused as the client's error."""
    if META in parameters:
        raise InvalidInput(
            f"request parameter {META!r} is reserved: {FILE}'s hooks receive the request's "
            f"parameters as {META}['tags']; send it under another name"
        )
    return {**parameters, META: {"tags": dict(parameters)}}


def tags_for_model(parameters: dict[str, Any]) -> dict[str, Any] | None:
    """The keywords the model is called with when ``processor.py`` has no ``run_model``:
    the parameters when there is more than one (the seed's rule: its clients always send
    ``taskId``), else ``None`` (the model is called as ``model(x)``)."""
    return parameters if len(parameters) > 1 else None


def predict_call(backend: Backend) -> ParameterCall:
    """``backend.predict(inputs, **parameters)``, safe for any parameter name."""
    return ParameterCall(backend.predict, 1, f"the {backend.name} backend's predict()")


def _ordered(
    inputs: dict[str, np.ndarray], specs: list[TensorSpec] | None
) -> dict[str, np.ndarray]:
    """Several inputs in the declared order (then any others), as hooks receive them."""
    if not specs:
        return inputs
    declared = [spec.name for spec in specs if spec.name in inputs]
    return {name: inputs[name] for name in declared + [n for n in inputs if n not in declared]}


def _view(named: Any, batched: bool) -> Any:
    """Named values as hooks see them: one alone (a lone BYTES element of a model that
    does not batch as its ``bytes``), several as the dict. Anything else as it is."""
    if not isinstance(named, dict) or len(named) != 1:
        return named
    value = next(iter(named.values()))
    if (
        not batched
        and isinstance(value, np.ndarray)
        and value.dtype == np.object_
        and value.size == 1
    ):
        return value.reshape(-1)[0]
    return value


def _names(
    data: Any, specs: list[TensorSpec] | None, kind: str, backend: Backend
) -> list[tuple[str, Any]]:
    """``data`` as (name, value) pairs: a dict's own names, else the specs' in order."""
    if isinstance(data, dict):
        return [(str(name), value) for name, value in data.items()]
    values = list(data) if _several(data, kind) else [data]
    names = [spec.name for spec in specs or []]
    if names and len(names) != len(values):
        raise BackendError(
            f"model {backend.model_name!r}: {len(values)} {kind} value(s) handed on, but "
            f"its {kind}s are {', '.join(names)}; give one value per {kind}, or a dict of "
            f"{kind} name -> value"
        )
    names = names or [f"{kind}__{i}" for i in range(len(values))]
    return list(zip(names, values, strict=True))


def _several(data: Any, kind: str) -> bool:
    """A tuple; for outputs also a list whose items are all arrays/tensors."""
    if isinstance(data, tuple):
        return True
    return (
        kind == "output"
        and isinstance(data, list)
        and bool(data)
        and all(
            hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)
            for v in data
        )
    )


def _array(name: str, value: Any, kind: str) -> np.ndarray:
    """One value as an array of a datatype the protocols carry (``bytes`` and ``str``
    as a one-element BYTES array)."""
    if isinstance(value, bytes | str):
        array = np.empty(1, dtype=np.object_)
        array[0] = value.encode() if isinstance(value, str) else value
        return array
    try:
        array = np.asarray(value)
        if array.dtype.kind == "U":
            array = np.vectorize(str.encode, otypes=[np.object_])(array)
        from_numpy_dtype(array.dtype)
    except (ValueError, TypeError, DlInferenceError) as exc:
        raise BackendError(
            f"{kind} {name!r} ({type(value).__name__}) is not an array, tensor, bytes or "
            f"list of numbers: {exc}"
        ) from exc
    return array


def _location(exc: BaseException, path: Path) -> str:
    """`` (processor.py:LINE)``: the innermost frame in ``path``, if any."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename) == path:
            return f" ({path.name}:{frame.lineno})"
    return ""
