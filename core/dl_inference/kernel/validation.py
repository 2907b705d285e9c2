"""Checks a request's tensors against a model's declared inputs before the model sees them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dl_inference.spi.datatypes import from_numpy_dtype
from dl_inference.spi.errors import InvalidInput
from dl_inference.spi.types import TensorSpec


def shape_matches(shape: Sequence[int], expected: Sequence[int]) -> bool:
    """Whether ``shape`` fits ``expected``, where -1 accepts any size."""
    return len(shape) == len(expected) and all(
        e in (-1, s) for s, e in zip(shape, expected, strict=True)
    )


def validate_inputs(
    model: str, inputs: dict[str, np.ndarray], specs: list[TensorSpec] | None
) -> None:
    """Raise InvalidInput naming the tensor and what was expected, on the first mismatch."""
    if specs is None:
        return
    expected = {spec.name: spec for spec in specs}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise InvalidInput(
            f"model {model!r} has no input named {unknown[0]!r}; its inputs are: "
            f"{', '.join(sorted(expected))}"
        )
    missing = sorted(set(expected) - set(inputs))
    if missing:
        spec = expected[missing[0]]
        raise InvalidInput(
            f"model {model!r} needs input {spec.name!r} ({spec.datatype} {list(spec.shape)}), "
            "which the request does not carry"
        )
    for name, array in inputs.items():
        spec = expected[name]
        datatype = from_numpy_dtype(array.dtype)
        if datatype != spec.datatype:
            raise InvalidInput(
                f"input {name!r} of model {model!r}: datatype {datatype} given, "
                f"{spec.datatype} expected"
            )
        if not shape_matches(array.shape, spec.shape):
            raise InvalidInput(
                f"input {name!r} of model {model!r}: shape {list(array.shape)} given, "
                f"{list(spec.shape)} expected (-1 is any size)"
            )


def select_outputs(
    model: str, outputs: dict[str, np.ndarray], requested: list[str] | None
) -> dict[str, np.ndarray]:
    """The requested outputs (all when ``requested`` is None), in the order the model gave
    them, as Triton answers: a client reading outputs by position sees the same order
    whichever order it asked in."""
    if requested is None:
        return outputs
    missing = [name for name in requested if name not in outputs]
    if missing:
        raise InvalidInput(
            f"model {model!r} has no output named {missing[0]!r}; its outputs are: "
            f"{', '.join(sorted(outputs))}"
        )
    wanted = set(requested)
    return {name: value for name, value in outputs.items() if name in wanted}
