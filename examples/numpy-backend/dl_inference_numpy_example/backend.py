"""The ``numpy`` backend: a stack of linear layers stored in ``model.npz``, run with numpy.

``model.npz`` holds ``w0, b0, w1, b1, ...``. Layer ``i`` computes ``x @ w{i} + b{i}`` when
``w{i}`` is 2-D (a dense layer) and ``x * w{i} + b{i}`` otherwise (element-wise, any
broadcastable shape). ``activation`` runs between layers, ``output_activation`` after the
last. Weights are cast to the request's dtype, so an integer model stays integer.

Write one with::

    np.savez("models/iris/1/model.npz", w0=w0, b0=b0, w1=w1, b1=b1)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dl_inference import (
    Backend,
    BackendError,
    BackendSettings,
    ConfigError,
    InvalidInput,
    TensorSpec,
    from_numpy_dtype,
)

_KEY = re.compile(r"^([wb])(\d+)$")
ACTIVATIONS = {
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0).astype(x.dtype),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
}


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class NumpySettings(BackendSettings):
    """The ``numpy`` backend's keys in a model's config.yaml (unknown keys are errors)."""

    activation: Literal["relu", "tanh", "sigmoid", "identity"] = "relu"
    """Between layers."""
    output_activation: Literal["identity", "softmax", "sigmoid"] = "identity"
    """After the last layer."""
    input_name: str = "x"
    """The input's name when config.yaml declares no ``inputs``."""
    output_name: str = "y"
    """The output's name when config.yaml declares no ``outputs``."""


class NumpyBackend(Backend):
    """Serves one ``model.npz`` of linear layers."""

    name = "numpy"
    Settings = NumpySettings
    model_files = ("*.npz",)
    settings: NumpySettings

    def load(self) -> None:
        path = self.path / "model.npz"
        if not path.is_file():
            raise ConfigError(f"{self.path} holds no model.npz")
        # allow_pickle=False: an .npz from elsewhere cannot run code when it is loaded.
        with np.load(path, allow_pickle=False) as data:
            self.layers = _layers(path, {key: data[key] for key in data.files})
        # declared_*(), not config.inputs: with a processor.py in front, those describe
        # requests, not this model.
        declared_in, declared_out = self.declared_inputs(), self.declared_outputs()
        self.input_name = declared_in[0].name if declared_in else self.settings.input_name
        self.output_name = declared_out[0].name if declared_out else self.settings.output_name

    def model_inputs(self) -> list[TensorSpec] | None:
        declared = super().model_inputs()
        if declared is not None or not getattr(self, "layers", None):
            return declared
        first = self.layers[0][0]
        if first.ndim != 2:
            return None  # an element-wise first layer takes any shape: nothing to check
        return [TensorSpec(self.input_name, from_numpy_dtype(first.dtype), (-1, first.shape[0]))]

    def model_outputs(self) -> list[TensorSpec] | None:
        declared = super().model_outputs()
        if declared is not None or not getattr(self, "layers", None):
            return declared
        dense = [w for w, _ in self.layers if w.ndim == 2]
        if self.layers[0][0].ndim != 2 or not dense:
            return None
        width = dense[-1].shape[1]
        return [TensorSpec(self.output_name, from_numpy_dtype(dense[-1].dtype), (-1, width))]

    def predict(self, inputs: dict[str, np.ndarray], /, **parameters: Any) -> dict[str, np.ndarray]:
        if self.input_name not in inputs:
            raise InvalidInput(
                f"model {self.model_name!r} takes input {self.input_name!r}; "
                f"got {', '.join(inputs) or 'none'}"
            )
        x = inputs[self.input_name]
        hidden = ACTIVATIONS[self.settings.activation]
        try:
            for index, (w, b) in enumerate(self.layers):
                w, b = w.astype(x.dtype, copy=False), b.astype(x.dtype, copy=False)
                x = x @ w + b if w.ndim == 2 else x * w + b
                if index < len(self.layers) - 1:
                    x = hidden(x)
        except ValueError as exc:
            # numpy's "matmul: Input operand 1 has a mismatch in its core dimension ..."
            raise InvalidInput(f"model {self.model_name!r}, layer {index}: {exc}") from None
        if self.settings.output_activation == "softmax":
            x = _softmax(x)
        elif self.settings.output_activation == "sigmoid":
            x = ACTIVATIONS["sigmoid"](x)
        return {self.output_name: x}

    def unload(self) -> None:
        self.layers = []


def _layers(path: Path, arrays: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    indexed: dict[int, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        match = _KEY.match(key)
        if match is None:
            raise ConfigError(
                f"{path.name}: unexpected array {key!r}; expected w0, b0, w1, b1, ..."
            )
        indexed.setdefault(int(match.group(2)), {})[match.group(1)] = array
    if sorted(indexed) != list(range(len(indexed))) or not indexed:
        raise ConfigError(
            f"{path.name}: layers must be numbered 0, 1, 2, ... (found {sorted(indexed)})"
        )
    layers = []
    width = None
    for index in range(len(indexed)):
        pair = indexed[index]
        if set(pair) != {"w", "b"}:
            raise ConfigError(f"{path.name}: layer {index} needs both w{index} and b{index}")
        w, b = pair["w"], pair["b"]
        if w.dtype.kind not in "iuf":
            raise BackendError(f"{path.name}: w{index} is {w.dtype}; weights must be numeric")
        if w.ndim == 2:
            if width is not None and w.shape[0] != width:
                raise ConfigError(
                    f"{path.name}: w{index} takes {w.shape[0]} features but the layer before "
                    f"gives {width}"
                )
            width = w.shape[1]
        layers.append((w, b))
    return layers
