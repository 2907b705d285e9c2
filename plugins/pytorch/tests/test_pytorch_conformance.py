"""The kernel's backend conformance suite, run on the pytorch backend in its three formats."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from _torch_models import forget_net, import_net

from dl_inference.testing import BackendConformance, ModelSpec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODULES = """
import torch
from torch import nn


class AddOne(nn.Module):
    def forward(self, x):
        return x + 1


class Identity(nn.Module):
    def forward(self, x):
        return x.clone()


class Fails(nn.Module):
    def forward(self, x):
        if x.numel() >= 0:
            raise RuntimeError("{message}")
        return x
"""

# BYTES tensors are not torch tensors: the processor hands them through untouched.
BYTES_PROCESSOR = """
def preprocess(x, **kwargs):
    return x


def run_model(model, x, **kwargs):
    return x
"""


def build(folder: Path, spec: ModelSpec) -> torch.nn.Module:
    """The spec's module, from a net.py written into ``folder`` (importable for pickling)."""
    folder.mkdir(parents=True)
    (folder / "net.py").write_text(MODULES.replace("{message}", spec.fail_with or ""))
    net = import_net(folder)
    if spec.fail_with:
        return net.Fails()
    return net.Identity() if spec.operation == "identity" else net.AddOne()


class PyTorchConformance(BackendConformance):
    backend_name = "pytorch"
    fmt: ClassVar[str] = "pt"

    def make_model(self, root: Path, spec: ModelSpec) -> None:
        folder = root / spec.name / "1"
        module = build(folder, spec)
        try:
            # A module that always raises cannot be exported: such specs use TorchScript.
            fmt = "pt" if spec.fail_with and self.fmt == "pt2" else self.fmt
            if fmt == "pth":
                torch.save(module, folder / "model.pth")
            elif fmt == "pt2":
                example = spec.sample_input(batch=2, variable=3)
                dims = {
                    i: torch.export.Dim.DYNAMIC for i, d in enumerate(spec.full_shape) if d == -1
                }
                program = torch.export.export(
                    module, (torch.from_numpy(example),), dynamic_shapes=(dims,)
                )
                torch.export.save(program, folder / "model.pt2")
            else:
                torch.jit.save(torch.jit.script(module), folder / "model.pt")
        finally:
            forget_net()
        if spec.datatype == "BYTES":
            (folder / "processor.py").write_text(textwrap.dedent(BYTES_PROCESSOR))

    def model_options(self, spec: ModelSpec) -> dict[str, Any]:
        return {"trust_pickle": True} if self.fmt == "pth" else {}


class TestTorchScriptConformance(PyTorchConformance):
    supported_datatypes = (
        "BOOL",
        "UINT8",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    )


class TestExportConformance(PyTorchConformance):
    fmt = "pt2"
    supported_datatypes = ("FP32", "INT64")


class TestPickleConformance(PyTorchConformance):
    fmt = "pth"
    supported_datatypes = ("FP32",)
