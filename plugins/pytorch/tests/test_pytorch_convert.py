"""``dl-inference convert`` to ``.pt2`` / ``.pt``, run as users run it (a subprocess), on a
trusted model.pth."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _torch_models import digits, reference, write_cnn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parents[3]


def convert(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dl_inference", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def pickle_module(folder: Path, module_name: str, source: str, class_name: str) -> torch.nn.Module:
    """``folder/model.pth``: an instance of ``class_name`` from ``folder/<module_name>.py``, pickled
    whole, as users keep it (the class importable from beside the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module_name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    try:
        torch.manual_seed(0)
        module = getattr(importlib.import_module(module_name), class_name)().eval()
        torch.save(module, folder / "model.pth")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(module_name, None)
    return module


BERT_LIKE = """
import torch


class TinyBert(torch.nn.Module):
    # input_ids [batch, seq] int64 -> [batch, seq, 4]: embedding, then a linear head.

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(30, 8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, input_ids):
        return self.head(self.embed(input_ids))
"""


def ids(batch: int, seq: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seq).integers(0, 30, (batch, seq)))


@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_converted_model_matches_and_is_served_without_trust(tmp_path, load_backend, suffix):
    module = write_cnn(tmp_path, "cnn", "pth", {"trust_pickle": True})
    source = tmp_path / "cnn" / "1" / "model.pth"
    written = source.with_suffix(suffix)
    result = convert(source, written, "--trust-pickle", "--input", "x:FP32:1,1,28,28")
    assert result.returncode == 0, result.stderr
    assert "outputs match the original on inputs x [1, 1, 28, 28] and x [4, 1, 28, 28]" in (
        result.stdout
    )
    assert written.is_file()
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".converting")]
    # The folder now holds the converted file, which the backend prefers, needing no trust.
    (tmp_path / "cnn" / "config.yaml").write_text("backend: pytorch\n")
    backend = load_backend(tmp_path, "cnn")
    assert backend.file.path == written
    x = digits(3, seed=3)  # another batch size than the samples: the batch is dynamic
    np.testing.assert_allclose(
        backend.predict({"x": x})["output__0"], reference(module, x), rtol=1e-5, atol=1e-5
    )


def test_sequence_axis_is_dynamic_when_named(tmp_path: Path) -> None:
    folder = tmp_path / "bert" / "1"
    module = pickle_module(folder, "tiny_bert", BERT_LIKE, "TinyBert")
    target = folder / "model.pt2"
    done = convert(
        folder / "model.pth", target, "--trust-pickle", "--input", "input_ids:INT64:1,7",
        "--dynamic", "input_ids:0,1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "input_ids [1, 7] and input_ids [4, 10]" in done.stdout
    assert "dynamic axes: input_ids:0,1" in done.stdout
    program = torch.export.load(str(target)).module()
    with torch.inference_mode():
        for batch, seq in [(1, 5), (3, 9)]:
            x = ids(batch, seq)
            torch.testing.assert_close(program(x), module(x), rtol=1e-5, atol=1e-6)
    # Without --dynamic only the batch is free: the sequence keeps the sample's length.
    fixed = convert(
        folder / "model.pth", target, "--trust-pickle", "--input", "input_ids:INT64:2,7"
    )
    assert fixed.returncode == 0, fixed.stderr
    assert "dynamic axes: input_ids:0" in fixed.stdout
    program = torch.export.load(str(target)).module()
    with torch.inference_mode():
        torch.testing.assert_close(program(ids(3, 7)), module(ids(3, 7)))
        with pytest.raises(Exception, match="7"):
            program(ids(3, 9))


def test_refuses_without_trust_and_without_samples(tmp_path):
    write_cnn(tmp_path, "cnn", "pth")
    source = tmp_path / "cnn" / "1" / "model.pth"
    result = convert(source, source.with_suffix(".pt2"), "--input", "x:FP32:1,1,28,28")
    assert result.returncode == 2
    assert "pass --trust-pickle if you trust it" in result.stderr
    result = convert(source, source.with_suffix(".pt2"), "--trust-pickle")
    assert result.returncode == 2 and "--input NAME:DATATYPE:SHAPE" in result.stderr
    result = convert(tmp_path / "missing.pth", tmp_path / "m.pt2", "--trust-pickle")
    assert result.returncode == 2 and "no such file" in result.stderr
    assert not source.with_suffix(".pt2").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dynamic", "x"], "--dynamic 'x': write NAME:AXIS[,AXIS...]"),
        (["--dynamic", "y:0"], "--dynamic y: no sample input has that name; the inputs are x"),
        (["--dynamic", "x:4"], "--dynamic x:4: x has 4 axes (shape [1, 1, 28, 28])"),
        (["--dynamic", "x:0", "--dynamic", "x:1"], "give all of x's axes in one --dynamic"),
        (["--sample", "x.npy"], "--sample 'x.npy': write NAME=FILE.npy"),
        (["--option", "static=true"], "--option static: pytorch-pth has no such option"),
        (["--option", "trust_pickle=true"], "its options: script, rtol"),
    ],
)
def test_usage_errors_say_what_to_write(tmp_path, args, message):
    write_cnn(tmp_path, "cnn", "pth")
    source = tmp_path / "cnn" / "1" / "model.pth"
    result = convert(source, tmp_path / "m.pt2", "--input", "x:FP32:1,1,28,28", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_reports_a_mismatch(tmp_path):
    """A module whose output depends on Python-side state that tracing freezes."""
    folder = tmp_path / "stateful" / "1"
    counter = """
        import torch


        class Counter(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.calls = 0

            def forward(self, x):
                self.calls += 1
                return x + self.calls
    """
    pickle_module(folder, "counter", counter, "Counter")
    target = folder / "model.pt"
    result = convert(folder / "model.pth", target, "--trust-pickle", "--input", "x:FP32:2,3")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "outputs differ from model.pth's on inputs x [2, 3]" in result.stderr
    assert "model.pt was not written" in result.stderr and not target.exists()


def test_sample_files_and_script_option(tmp_path: Path):
    module = write_cnn(tmp_path, "cnn", "pth", {"trust_pickle": True})
    sample = tmp_path / "x.npy"
    np.save(sample, digits(2, seed=1))
    output = tmp_path / "out" / "scripted.pt"
    result = convert(
        tmp_path / "cnn" / "1" / "model.pth", output, "--trust-pickle", "--sample",
        f"x={sample}", "--option", "script=true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "inputs x [2, 1, 28, 28] and x [5, 1, 28, 28]" in result.stdout
    scripted = torch.jit.load(str(output))
    assert "forward" in scripted.code  # scripted, not traced: the Python code is kept
    x = digits(5, seed=2)
    with torch.inference_mode():
        np.testing.assert_allclose(
            scripted(torch.from_numpy(x)).numpy(), reference(module, x), rtol=1e-5, atol=1e-5
        )


def test_help_lists_the_flags_and_the_converters_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "convert", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--input", "--sample", "--dynamic", "--static", "--trust-pickle", "--option"):
        assert flag in result.stdout
    assert "pytorch-pth: *.pth -> .pt2, .pt" in result.stdout
    assert "--option script:" in result.stdout and "--option rtol:" in result.stdout


def test_one_converter_command_everywhere() -> None:
    """The plugin's own ``dl-inference-convert`` script is gone: no message, doc or packaging
    file names it, and no converter message suggests a flag spelling the command lacks."""
    files = [
        *REPO.glob("core/**/*.py"),
        *REPO.glob("plugins/*/*/**/*.py"),
        *REPO.glob("plugins/*/pyproject.toml"),
        *REPO.glob("plugins/*/README.md"),
        *REPO.glob("docs/**/*.md"),
        REPO / "README.md",
        REPO / "pyproject.toml",
    ]
    stale = re.compile(r"dl-inference-convert|--option trust_pickle|--input-shape")
    found = [
        f"{path.relative_to(REPO)}: {match[0]}"
        for path in files
        if "/tests/" not in str(path) and path.is_file()
        for match in [stale.search(path.read_text(errors="replace"))]
        if match
    ]
    assert not found


def test_a_torchscript_failure_is_reported_by_its_reason(tmp_path: Path) -> None:
    """The traced file fixes the batch it was traced with; running it on the other sample
    fails inside the TorchScript interpreter, whose first line names no reason."""
    folder = tmp_path / "baked" / "1"
    baked = """
        import torch


        class Baked(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(12, 2)

            def forward(self, x):
                return self.fc(x.reshape(int(x.shape[0]), -1))
    """
    pickle_module(folder, "baked", baked, "Baked")
    target = folder / "model.pt"
    result = convert(folder / "model.pth", target, "--trust-pickle", "--input", "x:FP32:1,3,4")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the converted model does not run on inputs" in result.stderr
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in result.stderr
    assert "TorchScript interpreter" not in result.stderr and not target.exists()
