"""What a failed model call tells the client: torch's message in one clean line, as
InvalidInput when it is about the data given, else BackendError; and config.yaml inputs
that ``forward()`` cannot take fail the load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _torch_models import EAGER_SOURCE, features, write_config, write_eager

from dl_inference import BackendError, ConfigError, InvalidInput
from dl_inference_pytorch.backend import is_input_error, torch_message

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def raised(call) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def test_torchscript_traceback_becomes_its_last_line_without_paths(tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(4, 8))
    exc = raised(lambda: scripted(torch.zeros(1, 7)))
    assert "Traceback of TorchScript" in str(exc) and "site-packages" in str(exc)
    assert torch_message(exc) == (
        "RuntimeError",
        "mat1 and mat2 shapes cannot be multiplied (1x7 and 4x8)",
    )


def test_torchscript_raise_keeps_the_original_type_name():
    class Check(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] != 4:
                raise ValueError("expected 4 features")
            return x

    exc = raised(lambda: torch.jit.script(Check())(torch.zeros(1, 2)))
    assert type(exc).__name__ == "Error"  # torch.jit.Error, not a RuntimeError
    assert torch_message(exc) == ("ValueError", "expected 4 features")


def test_paths_are_hidden_and_long_messages_cut():
    kind, line = torch_message(RuntimeError("cannot open /srv/models/m/1/extra.bin: gone"))
    assert (kind, line) == ("RuntimeError", "cannot open <path>: gone")
    assert "1x7 and 4x8" in torch_message(RuntimeError("shapes (1x7 and 4x8)"))[1]
    _, long = torch_message(RuntimeError("x" * 1000))
    assert len(long) <= 240 and long.endswith("...")


def test_eager_model_errors(tmp_path, load_backend):
    source = EAGER_SOURCE.replace(
        "        return self.fc2(torch.relu(self.fc1(x)))",
        "        if x.shape[0] == 3:\n"
        "            raise KeyError('label table missing')\n"
        "        return self.fc2(torch.relu(self.fc1(x)))",
    )
    write_eager(tmp_path, "tiny", {"backend": "pytorch"}, source=source)
    backend = load_backend(tmp_path, "tiny")
    with pytest.raises(InvalidInput) as caught:
        backend.predict({"x": features(2)[:, :3]})
    assert str(caught.value) == (
        "model 'tiny' rejected the input x [2, 3] (float32): "
        "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x8)"
    )
    # Not about the input: the model's error, with its own line and no server path.
    with pytest.raises(BackendError) as caught:
        backend.predict({"x": features(3)})
    assert str(caught.value) == (
        "model 'tiny' (model.pth) raised KeyError: 'label table missing' (model.py:16)"
    )


@pytest.mark.parametrize(
    ("kind", "message", "client"),
    [
        ("RuntimeError", "mat1 and mat2 shapes cannot be multiplied (1x7 and 4x8)", True),
        ("RuntimeError", "The size of tensor a (3) must match the size of tensor b (4)", True),
        ("RuntimeError", "shape '[-1, 784]' is invalid for input of size 10", True),
        (
            "RuntimeError",
            "Given groups=1, weight of size [4, 1, 3, 3], expected input"
            "[1, 3, 28, 28] to have 1 channels, but got 3 channels instead",
            True,
        ),
        ("IndexError", "index out of range in self", True),
        ("RuntimeError", "\"addmm_impl_cpu_\" not implemented for 'Long'", True),
        (
            "RuntimeError",
            "Expected all tensors to be on the same device, but found at least "
            "two devices, cuda:0 and cpu!",
            False,
        ),
        ("RuntimeError", "CUDA out of memory. Tried to allocate 2.00 GiB", False),
        ("KeyError", "'expected key', got none", False),
        ("RuntimeError", "the model's lookup table is empty", False),
        ("IndexError", "list index out of range", False),
        ("TypeError", "TinyNet.forward() takes 2 positional arguments but 3 were given", True),
        ("RuntimeError", "forward() is missing value for argument 'y'", True),
        ("TypeError", "helper() missing 1 required positional argument: 'scale'", False),
        ("RuntimeError", "Input type (double) and bias type (float) should be the same", True),
        ("IndexError", "index 7 is out of bounds for dimension 0 with size 3", True),
    ],
)
def test_which_errors_are_the_clients(kind, message, client):
    assert is_input_error(kind, message) is client


def write_script(root: Path, name: str, module: torch.nn.Module, config: dict) -> None:
    (root / name / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(module), root / name / "1" / "model.pt")
    write_config(root, name, {"backend": "pytorch", **config})


TWO = [
    {"name": "a", "datatype": "FP32", "shape": [4]},
    {"name": "b", "datatype": "FP32", "shape": [4]},
]


@pytest.mark.parametrize("fmt", ["torchscript", "eager"])
def test_declared_inputs_forward_cannot_take_fail_the_load(tmp_path, load_backend, fmt):
    if fmt == "torchscript":
        write_script(tmp_path, "m", torch.nn.Linear(4, 8), {"inputs": TWO})
        file, signature = "model.pt", "forward(input)"
    else:
        write_eager(tmp_path, "m", {"backend": "pytorch", "inputs": TWO})
        file, signature = "model.pth", "forward(x)"
    with pytest.raises(ConfigError) as caught:
        load_backend(tmp_path, "m")
    assert str(caught.value) == (
        f"config.yaml declares 2 input(s) (a, b), passed to forward() in that order, but "
        f"{file}'s {signature} takes 1; declare one input per argument of forward()"
    )
    write_config(tmp_path, "m", {"backend": "pytorch", "inputs": TWO[:1]})
    backend = load_backend(tmp_path, "m")
    assert backend.predict({"a": np.zeros((1, 4), np.float32)})["output__0"].shape[0] == 1
