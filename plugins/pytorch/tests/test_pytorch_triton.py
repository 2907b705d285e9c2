"""Triton ``pytorch_libtorch`` models in process: how config.pbtxt's tensors meet
``forward()`` (Triton 2.51's rules) and what Triton refuses, refused here too.
tests/test_triton_repository_platforms.py serves such models with tritonclient."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dl_inference import BackendError
from dl_inference.kernel.models import ModelState
from dl_inference.testing import ConformanceEnv


class Dict(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["a"] - inputs["b"]


class Pair(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + y, x - y


def tensor(name: str, data_type: str = "TYPE_FP32") -> str:
    return f'{{ name: "{name}" data_type: {data_type} dims: [ 2 ] }}'


def write(root: Path, name: str, module: torch.nn.Module, inputs: str, outputs: str) -> None:
    (root / name / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(module), str(root / name / "1" / "model.pt"))
    config = f"""
        platform: "pytorch_libtorch"
        input [ {inputs} ]
        output [ {outputs} ]
    """
    (root / name / "config.pbtxt").write_text(textwrap.dedent(config))


X = np.array([5.0, 7.0], dtype=np.float32)
Y = np.array([1.0, 2.0], dtype=np.float32)


def test_dict_input_config_order_and_strict_outputs(
    tmp_path: Path, serve_models: Callable[[Path], ConformanceEnv]
) -> None:
    """A Dict[str, Tensor] forward gets the inputs by name; names that are neither
    forward()'s arguments nor <name>__<index> go in config order; so do such outputs."""
    write(tmp_path, "dict", Dict(), f"{tensor('b')}, {tensor('a')}", tensor("diff"))
    # "second" is listed first and is neither x nor y: config order makes it x.
    write(
        tmp_path,
        "ordered",
        Pair(),
        f"{tensor('second')}, {tensor('first')}",
        f"{tensor('minus')}, {tensor('plus')}",
    )
    env = serve_models(tmp_path)
    out = env.infer("dict", {"a": X, "b": Y}).outputs
    np.testing.assert_array_equal(out["diff"], X - Y)
    out = env.infer("ordered", {"first": Y, "second": X}).outputs
    # Config order: "second" is x, "first" is y; "minus" is the first result, x + y.
    np.testing.assert_array_equal(out["minus"], X + Y)
    np.testing.assert_array_equal(out["plus"], X - Y)


def test_outputs_the_model_does_not_return_as_declared_fail_the_request(
    tmp_path: Path, serve_models: Callable[[Path], ConformanceEnv]
) -> None:
    inputs = f"{tensor('INPUT__0')}, {tensor('INPUT__1')}"
    write(tmp_path, "beyond", Pair(), inputs, tensor("OUTPUT__2"))
    write(tmp_path, "typed", Pair(), inputs, tensor("OUTPUT__0", "TYPE_INT32"))
    env = serve_models(tmp_path)
    with pytest.raises(BackendError, match=r"returned 2 output\(s\), but config.pbtxt's output"):
        env.infer("beyond", {"INPUT__0": X, "INPUT__1": Y})
    with pytest.raises(BackendError, match=r"output 'OUTPUT__0' is FP32, but config\.pbtxt"):
        env.infer("typed", {"INPUT__0": X, "INPUT__1": Y})


def test_what_triton_refuses_fails_the_load(
    tmp_path: Path, serve_models: Callable[[Path], ConformanceEnv]
) -> None:
    write(tmp_path, "twice", Pair(), f"{tensor('A__0')}, {tensor('B__0')}", tensor("OUT__0"))
    (tmp_path / "pickle" / "1").mkdir(parents=True)
    torch.save(Pair(), str(tmp_path / "pickle" / "1" / "model.pt"))
    (tmp_path / "pickle" / "config.pbtxt").write_text((tmp_path / "twice/config.pbtxt").read_text())
    env = serve_models(tmp_path)
    reasons = {}
    for name in ("twice", "pickle"):
        (version,) = env.models.versions(name)
        assert version.state is ModelState.UNAVAILABLE
        reasons[name] = version.reason
    assert "name argument indices [0, 0]" in reasons["twice"]
    assert "model.pt is not a TorchScript archive" in reasons["pickle"]


def test_libtorch_parameters_reach_the_settings(
    tmp_path: Path, serve_models: Callable[[Path], ConformanceEnv]
) -> None:
    inputs = f"{tensor('INPUT__0')}, {tensor('INPUT__1')}"
    write(tmp_path, "tuned", Pair(), inputs, tensor("OUTPUT__0"))
    write(tmp_path, "wrong", Pair(), inputs, tensor("OUTPUT__0"))
    for name, mode in (("tuned", "Off"), ("wrong", "maybe")):
        with (tmp_path / name / "config.pbtxt").open("a") as config:
            config.write(
                f'parameters {{ key: "INFERENCE_MODE" value: {{ string_value: "{mode}" }} }}\n'
                'parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }\n'
            )
    env = serve_models(tmp_path)
    settings = env.models.resolve("tuned").backend.settings
    assert (settings.inference_mode, settings.threads) == (False, 1)
    np.testing.assert_array_equal(
        env.infer("tuned", {"INPUT__0": X, "INPUT__1": Y}).outputs["OUTPUT__0"], X + Y
    )
    (version,) = env.models.versions("wrong")
    assert "parameter INFERENCE_MODE is 'maybe'; use true or false" in version.reason
