"""The base classes backend plugins subclass: :class:`Backend` and :class:`BackendSettings`."""

from __future__ import annotations

import abc
import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from dl_inference.types import TensorSpec

if TYPE_CHECKING:
    from dl_inference.config.model_config import ModelConfig, TensorConfig


class BackendSettings(BaseModel):
    """Backend-specific keys of a model's config; subclass it to add yours.

    Unknown keys are errors, so a typo in config.yaml never passes silently.
    """

    model_config = ConfigDict(extra="forbid")

    device: str = "cpu"


class Backend(abc.ABC):
    """One loaded model version, served by a backend plugin.

    Subclasses set ``name`` (what config.yaml's ``backend:`` names), optionally ``Settings``
    and ``model_files`` (glob patterns that identify their model files for auto-detection),
    and implement :meth:`load` and :meth:`predict`. Both run in a worker thread, never on
    the event loop, so they may block. Import your framework inside :meth:`load`.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[BackendSettings]] = BackendSettings
    model_files: ClassVar[tuple[str, ...]] = ()
    handles_processor: ClassVar[bool] = False
    """True when the backend runs a model's ``processor.py`` itself; else the kernel does."""

    def __init__(
        self,
        model_name: str,
        version: str,
        path: Path,
        config: ModelConfig,
        settings: BackendSettings,
    ) -> None:
        self.model_name = model_name
        self.version = version
        self.path = path
        self.config = config
        self.settings = settings
        # The processor.py hooks the kernel runs around this model (set before load()).
        # With "preprocess", config.yaml's inputs describe requests, not the model's own
        # tensors (likewise outputs with "postprocess"): do not check them against the model.
        self.processor_hooks: frozenset[str] = frozenset()

    @classmethod
    def can_load(cls, path: Path) -> bool:
        """Whether the version folder ``path`` holds files this backend serves."""
        names = [p.name for p in path.iterdir()] if path.is_dir() else []
        return any(fnmatch.fnmatch(n, pattern) for pattern in cls.model_files for n in names)

    @property
    def platform(self) -> str:
        """The ``platform`` string metadata reports (Triton style, e.g. ``pytorch_libtorch``)."""
        return self.name

    def load(self) -> None:  # noqa: B027 - loading is optional for trivial backends
        """Load the model from ``self.path``. Raise to report a failed load."""

    @abc.abstractmethod
    def predict(self, inputs: dict[str, np.ndarray], **parameters: Any) -> dict[str, np.ndarray]:
        """Run the model on named arrays; return named arrays.

        With ``max_batch_size > 0`` every input carries the batch as its first dimension.
        ``parameters`` are the request's parameters (protocol-neutral, JSON-like values).
        Inputs may be read-only views of the request's bytes: copy before writing to them.
        """

    def unload(self) -> None:  # noqa: B027 - nothing to release by default
        """Release what :meth:`load` took (GPU memory, sessions)."""

    def inputs(self) -> list[TensorSpec] | None:
        """Input specs for metadata and validation; ``None`` when unknown (no checking)."""
        return _specs(self.config.inputs, self.config.max_batch_size)

    def outputs(self) -> list[TensorSpec] | None:
        """Output specs for metadata; ``None`` when unknown."""
        return _specs(self.config.outputs, self.config.max_batch_size)


def _specs(tensors: list[TensorConfig] | None, max_batch_size: int) -> list[TensorSpec] | None:
    if tensors is None:
        return None
    batch = (-1,) if max_batch_size > 0 else ()
    return [TensorSpec(t.name, t.datatype, batch + tuple(t.shape)) for t in tensors]
