"""Per-model settings: ``<repo>/<model>/config.yaml`` merged with the server's ``models.<name>``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dl_inference.spi.datatypes import DATATYPES


class TensorConfig(BaseModel):
    """One declared input or output: ``{name, datatype, shape}`` (Triton-like, -1 = variable).

    With ``max_batch_size > 0`` the shape leaves out the batch dimension, as in Triton.
    ``reshape`` (Triton's ``reshape.shape``): the shape the model works with, ``shape``
    being what clients send (an input) or receive (an output); same element count, the
    same number of variable dimensions. ``optional`` (inputs only): a request may leave
    the input out, and the model then runs without it.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    datatype: str
    shape: list[int]
    reshape: list[int] | None = None
    optional: bool = False

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

    @field_validator("reshape")
    @classmethod
    def _valid_reshape(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(dim < -1 for dim in value):
            raise ValueError("reshape: dimensions are >= 0, or -1 for a variable dimension")
        return value

    @model_validator(mode="after")
    def _same_elements(self) -> TensorConfig:
        # Triton's load-time rule: cut at the variable dimensions, the fixed runs of both
        # shapes hold the same number of elements, run for run (so [-1, 4] may become
        # [-1, 2, 2], not [4, -1]); a request's variable sizes then carry over one for one.
        if self.reshape is None:
            return self
        if _runs(self.shape) != _runs(self.reshape):
            raise ValueError(
                f"reshape {self.reshape} does not hold the elements of shape {self.shape} "
                "(Triton's rule: the same element count between, before and after the "
                "variable dimensions, -1)"
            )
        return self


def _runs(shape: list[int]) -> list[int]:
    """The element counts of the fixed runs of ``shape`` between its -1 dimensions."""
    runs = [1]
    for dim in shape:
        if dim == -1:
            runs.append(1)
        else:
            runs[-1] *= dim
    return runs


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


class WarmupInput(BaseModel):
    """One input of a warm-up sample: its datatype and shape (without the batch dimension
    when the model batches) and exactly one source of data, as Triton's ``model_warmup``.

    ``zero_data``: zeros (empty strings for BYTES); ``random_data``: random values;
    ``input_data_file``: a ``.npy`` file (``numpy.save``), relative to the version folder or,
    failing that, the model folder; its array carries its own datatype and shape, which
    ``datatype`` / ``shape``, when given, must match.
    """

    model_config = ConfigDict(extra="forbid")

    datatype: str | None = None
    shape: list[int] | None = None
    zero_data: bool = False
    random_data: bool = False
    input_data_file: str | None = None

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str | None) -> str | None:
        if value is not None and value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}; use one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _fixed_dims(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(dim < 0 for dim in value):
            raise ValueError("a warm-up sample has fixed dimensions (>= 0); -1 is not allowed")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> WarmupInput:
        sources = [self.zero_data, self.random_data, self.input_data_file is not None]
        if sum(sources) != 1:
            raise ValueError(
                "give exactly one of zero_data: true, random_data: true, input_data_file"
            )
        if self.input_data_file is None and (self.datatype is None or self.shape is None):
            raise ValueError("zero_data and random_data need a datatype and a shape")
        return self


class WarmupSample(BaseModel):
    """One warm-up sample set (Triton's ``model_warmup`` entry), run ``count`` times after
    the model loads and before it turns ready.

    ``batch_size``: rows of the request when the model batches (``max_batch_size > 0``;
    at most that), else 1. ``inputs`` omitted: zeros for every input the model declares
    (config.yaml's ``inputs`` or what the backend reads from the model file), each variable
    dimension 1.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    batch_size: int = Field(default=1, ge=1)
    count: int = Field(default=1, ge=1)
    inputs: dict[str, WarmupInput] | None = None


# Keys the kernel owns; every other key of a model's config belongs to its backend's Settings.
KERNEL_KEYS = frozenset(
    {
        "backend",
        "max_batch_size",
        "max_queue_delay_ms",
        "preferred_batch_sizes",
        "max_queue_size",
        "dynamic_batching",
        "timeout_ms",
        "instances",
        "execution",
        "inputs",
        "outputs",
        "version_policy",
        "version_labels",
        "parameters",
        "warmup",
    }
)


class ModelConfig(BaseModel):
    """The kernel's part of a model's configuration; ``backend_options`` holds the rest."""

    model_config = ConfigDict(extra="forbid")

    backend: str | None = None
    max_batch_size: int = Field(default=0, ge=0)
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    # Batch sizes the batcher forms as soon as it can (Triton's preferred_batch_size).
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int | None = Field(default=None, ge=1)
    dynamic_batching: bool = True  # merge concurrent requests (only when max_batch_size > 0)
    # Longest a request may take when the client sets no shorter deadline.
    timeout_ms: float | None = Field(default=None, gt=0)
    instances: int = Field(default=1, ge=1)
    # Where the instances run: threads of the server process, or a child process each
    # (kernel/process_instances.py: the model's compute off the server's interpreter).
    execution: Literal["thread", "process"] = "thread"
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    version_labels: dict[str, int] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)
    # Samples run through the model before it turns ready (kernel/warmup.py).
    warmup: list[WarmupSample] = Field(default_factory=list)
    backend_options: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="after")
    def _preferred_sizes(self) -> ModelConfig:
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_sizes: {size} is not between 1 and max_batch_size "
                    f"({self.max_batch_size}); give sizes the model's batches may have"
                )
        self.preferred_batch_sizes = sorted(set(self.preferred_batch_sizes))
        return self

    @model_validator(mode="after")
    def _warmup_batches(self) -> ModelConfig:
        for index, sample in enumerate(self.warmup):
            if not sample.name:
                sample.name = f"warmup[{index}]"
            if self.max_batch_size == 0 and sample.batch_size != 1:
                raise ValueError(
                    f"warmup[{index}].batch_size is {sample.batch_size}, but the model does not "
                    "batch (max_batch_size: 0): leave batch_size out or set it to 1"
                )
            if sample.batch_size > max(self.max_batch_size, 1):
                raise ValueError(
                    f"warmup[{index}].batch_size is {sample.batch_size}, over max_batch_size "
                    f"{self.max_batch_size}"
                )
        return self

    @model_validator(mode="after")
    def _optional_inputs_only(self) -> ModelConfig:
        for tensor in self.outputs or []:
            if tensor.optional:
                raise ValueError(f"outputs: {tensor.name}: optional applies to inputs only")
        return self

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ModelConfig:
        """Split a raw mapping into kernel keys (validated here) and backend options."""
        kernel = {k: v for k, v in data.items() if k in KERNEL_KEYS}
        options = {k: v for k, v in data.items() if k not in KERNEL_KEYS}
        return cls(**kernel, backend_options=options)
