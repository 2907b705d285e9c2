"""Per-model settings: ``<repo>/<model>/config.yaml`` merged with the server's ``models.<name>``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dl_inference.spi.datatypes import DATATYPES


class TensorConfig(BaseModel):
    """One declared input or output: ``{name, datatype, shape}`` (Triton-like, -1 = variable).

    With ``max_batch_size > 0`` the shape leaves out the batch dimension, as in Triton.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    datatype: str
    shape: list[int]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}; use one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, value: list[int]) -> list[int]:
        if any(dim < -1 for dim in value):
            raise ValueError("dimensions are >= 0, or -1 for a variable dimension")
        return value


class VersionPolicy(BaseModel):
    """Which numeric versions to serve: the latest N (default 1), all, or specific ones."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: list[int] | None = None

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        chosen = [self.latest is not None, self.all, self.specific is not None]
        if sum(chosen) > 1:
            raise ValueError("give one of latest, all, specific")
        return self

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve out of those found on disk, in ascending order."""
        ordered = sorted(versions)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1) :]


# Keys the kernel owns; every other key of a model's config belongs to its backend's Settings.
KERNEL_KEYS = frozenset(
    {
        "backend",
        "max_batch_size",
        "max_queue_delay_ms",
        "max_queue_size",
        "dynamic_batching",
        "timeout_ms",
        "instances",
        "inputs",
        "outputs",
        "version_policy",
        "version_labels",
        "parameters",
    }
)


class ModelConfig(BaseModel):
    """The kernel's part of a model's configuration; ``backend_options`` holds the rest."""

    model_config = ConfigDict(extra="forbid")

    backend: str | None = None
    max_batch_size: int = Field(default=0, ge=0)
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    max_queue_size: int | None = Field(default=None, ge=1)
    dynamic_batching: bool = True  # merge concurrent requests (only when max_batch_size > 0)
    # Longest a request may take when the client sets no shorter deadline.
    timeout_ms: float | None = Field(default=None, gt=0)
    instances: int = Field(default=1, ge=1)
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    version_labels: dict[str, int] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)
    backend_options: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ModelConfig:
        """Split a raw mapping into kernel keys (validated here) and backend options."""
        kernel = {k: v for k, v in data.items() if k in KERNEL_KEYS}
        options = {k: v for k, v in data.items() if k not in KERNEL_KEYS}
        return cls(**kernel, backend_options=options)
