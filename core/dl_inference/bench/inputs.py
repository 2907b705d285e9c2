"""The tensors a benchmark sends: given on the command line, read from a file, or made up
from the model's declared inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dl_inference.spi.datatypes import DATATYPES, from_numpy_dtype, to_numpy_dtype
from dl_inference.spi.errors import ConfigError, InvalidInput


@dataclass(frozen=True)
class InputSpec:
    """One input as the model metadata declares it (``-1`` for a variable dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def parse_input_spec(text: str) -> InputSpec:
    """``x:FP32:1,3,64,64`` -> InputSpec; the error says how to write it."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise ConfigError(f"--input {text!r}: write NAME:DATATYPE:SHAPE, e.g. x:FP32:1,256")
    name, datatype, shape_text = parts
    datatype = datatype.upper()
    if datatype not in DATATYPES:
        raise ConfigError(
            f"--input {text!r}: unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        )
    try:
        shape = tuple(int(dim) for dim in shape_text.split(",") if dim.strip())
    except ValueError:
        raise ConfigError(
            f"--input {text!r}: the shape is comma-separated integers, e.g. 1,3,64,64"
        ) from None
    if any(dim < 0 for dim in shape):
        raise ConfigError(f"--input {text!r}: give concrete dimensions (no -1) on the command line")
    return InputSpec(name, datatype, shape)


def concrete_shape(shape: Sequence[int], batch_size: int) -> tuple[int, ...]:
    """Variable dimensions made concrete: the first becomes the batch size, others 1."""
    return tuple(
        (batch_size if index == 0 else 1) if dim < 0 else dim for index, dim in enumerate(shape)
    )


def synthesize(spec: InputSpec, seed: int = 0) -> np.ndarray:
    """A seeded random tensor of the spec's datatype and (concrete) shape."""
    rng = np.random.default_rng(seed)
    if spec.datatype == "BYTES":
        return np.full(spec.shape, b"benchmark", dtype=object)
    try:
        dtype = to_numpy_dtype(spec.datatype)
    except InvalidInput as exc:
        raise ConfigError(f"input {spec.name!r}: {exc}") from None
    if dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, spec.shape).astype(dtype)
    return rng.integers(0, 10, spec.shape).astype(dtype)


def from_specs(specs: Sequence[InputSpec], batch_size: int) -> dict[str, np.ndarray]:
    """Tensors for declared inputs, variable dimensions filled in (see concrete_shape)."""
    return {
        spec.name: synthesize(
            InputSpec(spec.name, spec.datatype, concrete_shape(spec.shape, batch_size)), seed=i
        )
        for i, spec in enumerate(specs)
    }


def load_input_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, keyed by input name."""
    if not path.is_file():
        raise ConfigError(f"--input-file {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"--input-file {path}: not a numpy .npz file ({exc}); write one with "
            "numpy.savez(path, input_name=array, ...)"
        ) from None
    if not arrays:
        raise ConfigError(f"--input-file {path}: holds no arrays")
    for name, array in arrays.items():
        if array.dtype.kind == "U":
            arrays[name] = np.vectorize(lambda s: s.encode(), otypes=[object])(array)
        else:
            try:
                from_numpy_dtype(array.dtype)
            except InvalidInput as exc:
                raise ConfigError(f"--input-file {path}: array {name!r}: {exc}") from None
    return arrays


def describe(inputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """``[{name, datatype, shape}]`` for reports."""
    return [
        {"name": name, "datatype": from_numpy_dtype(array.dtype), "shape": list(array.shape)}
        for name, array in inputs.items()
    ]


def batch_of(inputs: dict[str, np.ndarray]) -> int:
    """Rows per request (the first dimension of the first input; 1 for scalars)."""
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1
