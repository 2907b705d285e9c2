"""``serve --workers N``: N server processes sharing the ports through SO_REUSEPORT.

The kernel balances connections between processes, which spreads the Python-bound work
(decoding, pre/post-processing) over cores. The parent picks the ports (a free one when
0 was asked for), makes the private folder of the worker link
(:mod:`dl_inference.worker_link`), starts the workers, prints the listening lines once
every worker is ready, forwards SIGTERM / SIGINT and exits with the first non-zero worker
status. A worker that fails to start stops them all: a server with fewer workers than
configured would pass for healthy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from dl_inference.worker_link import WorkerLink

_LISTENING = re.compile(r"^((?:Management )?(?:gRPC|HTTP)) listening on (\S+)$")
_ORDER = ("Management gRPC", "Management HTTP", "gRPC", "HTTP")


def reserve_port(host: str, port: int) -> int:
    """``port``, or a free port on ``host`` when it is 0."""
    if port:
        return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        return sock.getsockname()[1]


def run_workers(count: int, argv: Sequence[str], *, expect_http: bool = True) -> int:
    """Start ``count`` ``serve`` processes with ``argv`` (ports already fixed); wait for them."""
    folder = Path(tempfile.mkdtemp(prefix="dli-workers-"))  # mode 0700: this user only
    try:
        return _supervise(count, argv, folder, expect_http)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _supervise(count: int, argv: Sequence[str], folder: Path, expect_http: bool) -> int:
    command = [sys.executable, "-m", "dl_inference", "serve", *argv, "--reuse-port"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            text=True,
            env={**env, **WorkerLink.environment(folder, index, count)},
        )
        for index in range(count)
    ]
    # One release per child: when it listens, or when it exits without doing so.
    settled = threading.Semaphore(0)
    lines: dict[str, str] = {}
    failed_to_start: list[subprocess.Popen[str]] = []

    def relay(child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        seen = 0
        released = False
        for line in child.stdout:
            match = _LISTENING.match(line.strip())
            if match:
                lines[match.group(1)] = line
                if match.group(1).startswith("Management"):
                    continue
                seen += 1
                if seen == (2 if expect_http else 1) and not released:
                    settled.release()
                    released = True
            else:
                sys.stdout.write(line)
        if not released:
            failed_to_start.append(child)
            settled.release()

    for child in children:
        threading.Thread(target=relay, args=(child,), daemon=True).start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in children:
        settled.acquire()
    if not failed_to_start:
        for kind in _ORDER:
            if kind in lines:
                sys.stdout.write(lines[kind])
        sys.stdout.flush()
    else:
        print(
            f"dl-inference: error: a worker exited while starting; stopping all {count}",
            file=sys.stderr,
            flush=True,
        )
        forward(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    return next((code for code in codes if code), 0)
