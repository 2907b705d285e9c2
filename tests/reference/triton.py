"""A real Triton 2.51 server for side-by-side tests: the C++ server and its python backend
as the ``nvidia-pytriton`` wheel bundles them, installed by
``scripts/install_reference_servers.sh`` in a venv of its own
(``$DLI_REFERENCE_DIR/triton``, default ``<repo>/.reference/triton``).

:func:`triton_home` finds the bundled server and checks that it runs on this machine (or
says why not, for a ``pytest.skip``); :class:`TritonServer` runs it on free ports of 127.0.0.1 in a
subprocess and waits until it answers ready.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

from dl_inference.testing import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def reference_venv(name: str) -> Path:
    """The venv of reference server ``name`` (``seldon``, ``triton``)."""
    return Path(os.environ.get("DLI_REFERENCE_DIR", REPO_ROOT / ".reference")) / name


def triton_home() -> tuple[Path, Path] | str:
    """``(venv, tritonserver folder)``, or the reason Triton cannot run here."""
    venv = reference_venv("triton")
    found = sorted(venv.glob("lib/python3.*/site-packages/pytriton/tritonserver"))
    if not found:
        return f"no Triton reference server in {venv} (scripts/install_reference_servers.sh)"
    home = found[-1]
    if not (home / "bin" / "tritonserver").is_file():
        return f"{home}/bin/tritonserver is missing"
    if not (home / "backends" / "python" / "triton_python_backend_stub").is_file():
        return f"Triton's python backend stub is missing in {home}/backends/python"
    # The binary needs this machine's loader and libraries: ask it for its usage text.
    try:
        probe = subprocess.run(
            [str(home / "bin" / "tritonserver"), "--help"],
            env={**os.environ, "LD_LIBRARY_PATH": _library_path(home)},
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{home}/bin/tritonserver does not run here: {exc}"
    if b"Usage: tritonserver" not in probe.stdout + probe.stderr:
        output = (probe.stdout + probe.stderr).decode(errors="replace").strip()
        return f"{home}/bin/tritonserver does not run here: {output[-500:]}"
    return venv, home


def _library_path(home: Path) -> str:
    return f"{home}/external_libs:{home}/lib"


def skip_without_triton() -> None:
    """Skip the calling test or fixture, saying why, when Triton cannot run here."""
    found = triton_home()
    if isinstance(found, str):
        pytest.skip(f"the Triton reference server cannot run here: {found}")


class TritonServer:
    """``tritonserver`` serving ``repository`` (config.pbtxt + python-backend model.py).

    ``http_url``, ``grpc_address`` and ``http_address`` point at it once started; leaving
    the ``with`` block ends its process group. ``output()`` is what it printed. ``args``
    are more ``tritonserver`` flags; ``wait_for`` is the path that must answer 200 before
    ``start`` returns (``/v2/health/live`` for a server that may never be ready).
    """

    def __init__(
        self,
        repository: Path,
        log_path: Path,
        timeout: float = 90.0,
        *,
        args: Sequence[str] = (),
        wait_for: str = "/v2/health/ready",
    ) -> None:
        found = triton_home()
        if isinstance(found, str):
            raise RuntimeError(found)
        self.venv, self.home = found
        self.repository = repository
        self.log_path = log_path
        self.timeout = timeout
        self.args = list(args)
        self.wait_for = wait_for
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> TritonServer:
        home = self.home
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": _library_path(home),
            # The python backend's stub runs the models with the venv's python and numpy.
            "PATH": f"{self.venv}/bin:{os.environ.get('PATH', '')}",
        }
        command = [
            str(home / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={home / 'backends'}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--log-verbose=0",
            *self.args,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                with urllib.request.urlopen(f"{self.http_url}{self.wait_for}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"tritonserver not ready in {self.timeout} s:\n{self.output()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop Triton's process group (it and its python stubs)."""
        stop_process_group(self.process, timeout)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process_group(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM to the process group a reference server was started in (the server and the
    processes it runs its models in), then SIGKILL when it has not ended within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def file_hashes(*paths: Path) -> dict[str, str]:
    """sha256 of each file under ``paths`` (or of the file itself), by path; folders listed
    as ``"folder"``: what a test compares to show a server changed and added nothing."""
    found = {}
    for root in paths:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            found[str(path)] = (
                hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
            )
    return found
