"""scripts/gpu_check.sh's CPU-safe paths (the plan, the clean exit where no GPU is) and its
side-by-side's server CPU accounting."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
    )


def gpu_here() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


def test_dry_run_prints_every_step_and_runs_nothing(tmp_path: Path) -> None:
    done = run("--dry-run")
    assert done.returncode == 0, done.stderr
    for step in ("1. GPU", "2. install", "3. Triton 2.51", "4. GPU tests", "5. side by side"):
        assert step in done.stdout
    assert "pytest -k cuda plugins/pytorch/tests/test_pytorch_backend.py" in done.stdout
    assert "bench/gpu_side_by_side.py" in done.stdout and "--device cuda:0" in done.stdout
    assert "GPU: " in done.stdout


@pytest.mark.skipif(gpu_here(), reason="this machine has a GPU: the script would run for real")
def test_without_a_gpu_it_says_so_and_exits_0() -> None:
    done = run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gpu_check: no GPU to check on this machine (")
    assert "nothing to run" in done.stdout


def test_unknown_option_is_refused_with_the_usage() -> None:
    done = run("--gpu")
    assert done.returncode == 2
    assert "usage: scripts/gpu_check.sh [--wheels | --dry-run]" in done.stderr


def test_side_by_side_counts_the_cpu_of_the_servers_descendants() -> None:
    """Triton's model runs in a stub process under the server: its CPU must count."""
    import sys

    module = load_script("gpu_side_by_side")
    spin = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
    spin += "time.sleep(30)"
    # A shell that only waits, and under it a python that burns 0.4 s of CPU, then sleeps.
    shell = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "$0"', spin], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while module.tree_cpu_s(shell.pid) < 0.39 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert module.tree_cpu_s(shell.pid) >= 0.39
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
