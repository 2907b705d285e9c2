"""Start ``dl-inference serve`` as users do, in a subprocess on 127.0.0.1, for end-to-end tests."""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_READY = re.compile(r"^(gRPC|HTTP|Metrics) listening on (\S+):(\d+)$")


# Ports free_port() handed out lately: the kernel may offer a port again once its probe
# socket is closed, and two listeners of one server given the same port fail to start.
_handed_out: collections.deque[int] = collections.deque(maxlen=1024)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now and not handed out by an earlier call of this
    process, so the ports asked for one server's listeners differ (prefer port 0 where the
    server reports back)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.append(port)
            return port


class ServerProcess:
    """``dl-inference serve ARGS --host 127.0.0.1 --grpc-port 0 --http-port 0`` in a subprocess.

    Waits until the server prints its listening addresses; ``grpc_address`` and
    ``http_url`` then point at it (``metrics_port`` at the metrics listener, when the
    server has one: ``--metrics-port``). Leaving the ``with`` block sends SIGTERM and waits.
    ``output()`` returns everything the process printed so far (stdout and stderr).
    ``python`` runs the server with another interpreter (another venv's ``bin/python``)
    instead of the one running the test.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
        cwd: str | Path | None = None,
        extra_flags: bool = True,
        expect_http: bool = True,
        python: str | Path | None = None,
    ) -> None:
        self.args = list(args)
        self.python = str(python) if python is not None else sys.executable
        if extra_flags:
            self.args += ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.timeout = timeout
        self.cwd = cwd
        self.expect_http = expect_http  # False when the config turns the HTTP listener off
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0  # printed before the gRPC and HTTP lines, when there is one
        self.process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._seen = threading.Condition()

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def output(self) -> str:
        with self._seen:
            return "".join(self._lines)

    def wait_for_output(self, *texts: str, timeout: float = 30.0) -> str:
        """Everything printed so far, once it holds each of ``texts``. A line the server
        logs for a request may reach us after its reply: wait for it rather than read
        ``output()`` at once. Raises AssertionError with the output after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                printed = "".join(self._lines)
                if all(text in printed for text in texts):
                    return printed
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader_alive:
                    missing = [text for text in texts if text not in printed]
                    raise AssertionError(f"never printed: {missing!r}\n{printed[-4000:]}")
                self._seen.wait(min(left, 0.2))

    def start(self) -> ServerProcess:
        command = [self.python, "-m", "dl_inference", "serve", *self.args]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.timeout
        with self._seen:
            while not (self.grpc_port and (self.http_port or not self.expect_http)):
                if self.process.poll() is not None and not self._reader_alive:
                    raise RuntimeError(
                        f"server exited with {self.process.returncode} before it was ready:\n"
                        + "".join(self._lines)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise TimeoutError("server not ready in time:\n" + "".join(self._lines))
                self._seen.wait(min(left, 0.2))
        return self

    _reader_alive = True

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._seen:
                self._lines.append(line)
                match = _READY.match(line.strip())
                if match:
                    port = int(match.group(3))
                    kind = match.group(1)
                    if kind == "gRPC":
                        self.grpc_port = port
                    elif kind == "HTTP":
                        self.http_port = port
                    else:
                        self.metrics_port = port
                self._seen.notify_all()
        with self._seen:
            self._reader_alive = False
            self._seen.notify_all()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for exit (then SIGKILL); returns the exit code."""
        if self.process is None:
            return 0
        return stop_process(self.process, timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM ``process`` (if it still runs), wait up to ``timeout`` seconds for it to
    exit, SIGKILL it past that; returns its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
