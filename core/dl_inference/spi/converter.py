"""The base class model-format converters subclass (``dl-inference convert``)."""

from __future__ import annotations

import abc
import contextlib
import fnmatch
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dl_inference.spi.errors import ConfigError

DynamicAxes = Mapping[str, Sequence[int]]
"""Per input name, the axes of that input that the converted model must accept at any size."""


class Converter(abc.ABC):
    """Turns a model file of one format into another and checks the outputs still match.

    ``sources`` are glob patterns of the files it reads (``"*.pth"``), ``targets`` the
    suffixes it writes (``".pt2"``), ``options`` the ``--option KEY=VALUE`` keys it takes,
    each with a one-line description (``dl-inference convert --help`` lists them; the
    command refuses any other key). :meth:`convert` exports with ``dynamic_axes`` free,
    runs the original and the converted model on :meth:`check_inputs` (the samples and
    the samples resized along every dynamic axis) and raises
    :class:`~dl_inference.BackendError` when they differ beyond ``tolerance``. Import the
    framework inside :meth:`convert`.
    """

    name: ClassVar[str] = ""
    sources: ClassVar[tuple[str, ...]] = ()
    targets: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def handles(cls, source: Path, target: Path) -> bool:
        """Whether this converter reads ``source`` and writes ``target``'s format."""
        return any(fnmatch.fnmatch(source.name, p) for p in cls.sources) and any(
            target.name.endswith(suffix) for suffix in cls.targets
        )

    @abc.abstractmethod
    def convert(
        self,
        source: Path,
        target: Path,
        *,
        sample_inputs: dict[str, np.ndarray],
        options: dict[str, Any],
        tolerance: float = 1e-4,
        trust_pickle: bool = False,
        dynamic_axes: DynamicAxes | None = None,
    ) -> str:
        """Write ``target``; return a one-line report (e.g. the largest output difference).

        ``trust_pickle``: the user allows unpickling ``source`` (which runs code from it).
        ``dynamic_axes``: as :meth:`dynamic_axes` returns; ``None`` means its default
        (axis 0 of every input dynamic).
        """

    @staticmethod
    def dynamic_axes(
        samples: Mapping[str, np.ndarray],
        named: DynamicAxes | None = None,
        *,
        static: bool = False,
    ) -> dict[str, tuple[int, ...]]:
        """Every input's dynamic axes: ``named`` ones exactly as given; the others axis 0
        (the batch), or none when ``static`` or the input is a scalar."""
        named = dict(named or {})
        unknown = sorted(set(named) - set(samples))
        if unknown:
            raise ConfigError(
                f"--dynamic {unknown[0]}: no sample input has that name; the inputs are "
                f"{', '.join(samples) or 'none (give --input NAME:DATATYPE:SHAPE first)'}"
            )
        axes: dict[str, tuple[int, ...]] = {}
        for name, array in samples.items():
            if name in named:
                chosen = tuple(sorted({int(a) for a in named[name]}))
                bad = [a for a in chosen if not 0 <= a < array.ndim]
                if bad:
                    raise ConfigError(
                        f"--dynamic {name}:{bad[0]}: {name} has {array.ndim} axes "
                        f"(shape {list(array.shape)}); give axes from 0 to {array.ndim - 1}"
                    )
                axes[name] = chosen
            else:
                axes[name] = () if static or array.ndim == 0 else (0,)
        return axes

    @staticmethod
    def export_inputs(
        samples: Mapping[str, np.ndarray], axes: Mapping[str, Sequence[int]]
    ) -> dict[str, np.ndarray]:
        """The samples to export on: a dynamic axis of size 1 doubled (repeating the values),
        because exporters treat a size-1 axis as the constant 1."""
        return {
            name: _resize(array, {a: 2 for a in axes.get(name, ()) if array.shape[a] == 1})
            for name, array in samples.items()
        }

    @staticmethod
    def check_inputs(
        samples: Mapping[str, np.ndarray], axes: Mapping[str, Sequence[int]]
    ) -> list[dict[str, np.ndarray]]:
        """The sample sets to compare outputs on: ``samples`` and, when any axis is dynamic,
        the samples with every dynamic axis 3 longer (values repeated), which proves that the
        converted model accepts other sizes there. Inputs sharing a size keep sharing it."""
        checks = [dict(samples)]
        if any(axes.get(name) for name in samples):
            checks.append(
                {
                    name: _resize(array, {a: array.shape[a] + 3 for a in axes.get(name, ())})
                    for name, array in samples.items()
                }
            )
        return checks

    @staticmethod
    @contextlib.contextmanager
    def staged(target: Path) -> Iterator[Path]:
        """A path to write ``target`` to; it becomes ``target`` only when the block ends
        without an error, so a file that failed its check is never left to be served.
        Files written beside it (an ONNX model's external weights) move along with it."""
        target.parent.mkdir(parents=True, exist_ok=True)
        # Beside the target (same file system, so the moves are atomic), in a hidden folder
        # that keeps the target's name: exporters check file suffixes.
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".converting-") as folder:
            path = Path(folder) / target.name
            yield path
            # The target last: once it appears, the files it refers to are there.
            for written in sorted(Path(folder).iterdir(), key=lambda p: p.name == target.name):
                os.replace(written, target.parent / written.name)

    @classmethod
    def describe(cls) -> str:
        """One paragraph for ``dl-inference convert --help``: formats and options."""
        line = f"{cls.name}: {', '.join(cls.sources)} -> {', '.join(cls.targets)}"
        for key, text in cls.options.items():
            line += f"\n    --option {key}: {text}"
        return line


def _resize(array: np.ndarray, sizes: Mapping[int, int]) -> np.ndarray:
    """``array`` with each ``axis: size`` in ``sizes`` made that long by cycling its values."""
    for axis, size in sizes.items():
        if array.shape[axis] == 0:
            continue
        array = np.take(array, np.arange(size) % array.shape[axis], axis=axis)
    return array
