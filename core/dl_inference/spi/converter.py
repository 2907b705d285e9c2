"""The base class model-format converters subclass (``dl-inference convert``)."""

from __future__ import annotations

import abc
import fnmatch
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class Converter(abc.ABC):
    """Turns a model file of one format into another and checks the outputs still match.

    ``sources`` are glob patterns of the files it reads (``"*.pth"``), ``targets`` the
    suffixes it writes (``".pt2"``). :meth:`convert` runs the original and the converted
    model on ``sample_inputs`` and raises :class:`~dl_inference.BackendError` when they
    differ beyond ``tolerance``. Import the framework inside :meth:`convert`.
    """

    name: ClassVar[str] = ""
    sources: ClassVar[tuple[str, ...]] = ()
    targets: ClassVar[tuple[str, ...]] = ()

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
    ) -> str:
        """Write ``target``; return a one-line report (e.g. the largest output difference)."""
