"""``dl-inference-convert``, run as users run it (a subprocess), on a trusted model.pth."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _torch_models import digits, reference, write_cnn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def convert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dl_inference_pytorch.convert", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("target,suffix", [("pt2", ".pt2"), ("torchscript", ".pt")])
def test_converted_model_matches_and_is_served_without_trust(
    tmp_path, load_backend, target, suffix
):
    module = write_cnn(tmp_path, "cnn", "pth", {"trust_pickle": True})
    source = tmp_path / "cnn" / "1" / "model.pth"
    result = convert(str(source), "--trust-pickle", "--to", target, "--input-shape", "1,1,28,28")
    assert result.returncode == 0, result.stderr
    assert "outputs match the original on 2 sample input set(s)" in result.stdout
    written = source.with_suffix(suffix)
    assert written.is_file()
    # The folder now holds the converted file, which the backend prefers, needing no trust.
    (tmp_path / "cnn" / "config.yaml").write_text("backend: pytorch\n")
    backend = load_backend(tmp_path, "cnn")
    assert backend.file.path == written
    x = digits(4, seed=3)  # another batch size than the samples: the batch is dynamic
    np.testing.assert_allclose(
        backend.predict({"x": x})["output__0"], reference(module, x), rtol=1e-5, atol=1e-5
    )


def test_refuses_without_trust_and_without_samples(tmp_path):
    write_cnn(tmp_path, "cnn", "pth")
    source = str(tmp_path / "cnn" / "1" / "model.pth")
    result = convert(source, "--to", "pt2", "--input-shape", "1,1,28,28")
    assert result.returncode == 2 and "--trust-pickle" in result.stderr
    result = convert(source, "--trust-pickle")
    assert result.returncode == 2 and "--input-shape" in result.stderr
    result = convert(str(tmp_path / "missing.pth"), "--trust-pickle")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_reports_a_mismatch(tmp_path):
    """A module whose output depends on Python-side state that tracing freezes."""
    folder = tmp_path / "stateful" / "1"
    folder.mkdir(parents=True)
    (folder / "counter.py").write_text(
        textwrap.dedent(
            """
            import torch


            class Counter(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.calls = 0

                def forward(self, x):
                    self.calls += 1
                    return x + self.calls
            """
        )
    )
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("counter").Counter()
        torch.save(module, folder / "model.pth")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("counter", None)
    result = convert(
        str(folder / "model.pth"), "--trust-pickle", "--to", "torchscript", "--input-shape", "2,3"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH" in result.stderr


def test_sample_files_are_used(tmp_path: Path):
    module = write_cnn(tmp_path, "cnn", "pth", {"trust_pickle": True})
    sample = tmp_path / "x.npy"
    np.save(sample, digits(2, seed=1))
    output = tmp_path / "exported.pt2"
    result = convert(
        str(tmp_path / "cnn" / "1" / "model.pth"),
        "--trust-pickle",
        "--sample",
        str(sample),
        "-o",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    program = torch.export.load(str(output)).module()
    x = digits(5, seed=2)
    with torch.inference_mode():
        np.testing.assert_allclose(
            program(torch.from_numpy(x)).numpy(), reference(module, x), rtol=1e-5, atol=1e-5
        )


def test_the_kernel_convert_command_reaches_this_converter(tmp_path: Path, load_backend) -> None:
    module = write_cnn(tmp_path, "cnn", "pth", {"trust_pickle": True})
    source = tmp_path / "cnn" / "1" / "model.pth"
    target = source.with_suffix(".pt2")

    def kernel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dl_inference", "convert", str(source), str(target), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    refused = kernel("--input", "x:FP32:1,1,28,28")
    assert refused.returncode == 2 and "--trust-pickle" in refused.stderr
    done = kernel("--input", "x:FP32:2,1,28,28", "--option", "trust_pickle=true")
    assert done.returncode == 0, done.stderr
    assert "(pytorch-pth): outputs match the original" in done.stdout
    (tmp_path / "cnn" / "config.yaml").write_text("backend: pytorch\n")
    x = digits(3, seed=5)
    np.testing.assert_allclose(
        load_backend(tmp_path, "cnn").predict({"x": x})["output__0"],
        reference(module, x),
        rtol=1e-5,
        atol=1e-5,
    )
