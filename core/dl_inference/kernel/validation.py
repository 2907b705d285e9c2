"""Checks a request's tensors against a model's declared inputs before the model sees them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dl_inference.spi.datatypes import from_numpy_dtype
from dl_inference.spi.errors import BackendError, InvalidInput
from dl_inference.spi.types import TensorSpec


def shape_matches(shape: Sequence[int], expected: Sequence[int]) -> bool:
    """Whether ``shape`` fits ``expected``, where -1 accepts any size."""
    if len(shape) != len(expected):
        return False
    # A loop rather than all(generator): it runs for every input of every request.
    for size, want in zip(shape, expected, strict=True):
        if want != size and want != -1:
            return False
    return True


def validate_inputs(
    model: str, inputs: dict[str, np.ndarray], specs: list[TensorSpec] | None
) -> None:
    """Raise InvalidInput naming the tensor and what was expected, on the first mismatch."""
    if specs is None:
        return
    if len(inputs) == len(specs):
        # The usual request: every input once, each fitting. Any doubt falls through to
        # the checks below, which name the first problem in their order.
        for spec in specs:
            array = inputs.get(spec.name)
            if array is None or not shape_matches(array.shape, spec.shape):
                break
            try:
                if from_numpy_dtype(array.dtype) != spec.datatype:
                    break
            except InvalidInput:  # a dtype without a V2 name: said below, in its turn
                break
        else:
            return
    expected = {spec.name: spec for spec in specs}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise InvalidInput(
            f"model {model!r} has no input named {unknown[0]!r}; its inputs are: "
            f"{', '.join(sorted(expected))}"
        )
    missing = sorted(n for n, spec in expected.items() if n not in inputs and not spec.optional)
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


def reshape_tensors(
    model: str,
    arrays: dict[str, np.ndarray],
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
    batched: bool,
    *,
    outputs: bool = False,
) -> dict[str, np.ndarray]:
    """``arrays`` with each tensor named in ``shapes`` (``name -> (from, to)``, config's
    ``shape`` and ``reshape`` or the other way round, without the batch dimension) reshaped
    to ``to`` (numpy views: no copy for contiguous arrays), as Triton's ``reshape`` does.

    Variable dimensions of ``to`` take the sizes of those of ``from``, in order; the batch
    dimension, when ``batched``, stays. An element count that does not fit is the client's
    error for an input (InvalidInput) and the model's for an output (BackendError)."""
    reshaped = dict(arrays)
    for name, (source, target) in shapes.items():
        array = arrays.get(name)
        if array is None:
            continue
        lead = array.shape[:1] if batched else ()
        given = array.shape[len(lead) :]
        sizes = iter(s for s, d in zip(given, source, strict=False) if d == -1)
        shape = lead + tuple(next(sizes, 1) if d == -1 else d for d in target)
        if len(given) != len(source) or math.prod(shape) != array.size:
            what = "output" if outputs else "input"
            message = (
                f"{what} {name!r} of model {model!r}: shape {list(array.shape)} "
                f"cannot be reshaped to {list(shape)} (config's reshape of {list(source)})"
            )
            raise (BackendError if outputs else InvalidInput)(message)
        reshaped[name] = array.reshape(shape)
    return reshaped
