"""``serve --workers N``: N server processes sharing the ports through SO_REUSEPORT.

The kernel balances connections between processes, which spreads the Python-bound work
(decoding, pre/post-processing) over cores. The parent picks the ports (a free one when
0 was asked for), starts the workers, prints the listening lines once every worker is
ready, forwards SIGTERM / SIGINT and exits with the first non-zero worker status.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

_READY = re.compile(r"^(gRPC|HTTP) listening on (\S+)$")


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
    command = [sys.executable, "-m", "dl_inference", "serve", *argv, "--reuse-port"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(count)
    ]
    # One release per child: when it listens, or when it exits without doing so.
    settled = threading.Semaphore(0)
    lines: dict[str, str] = {}

    def relay(child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        seen = 0
        released = False
        for line in child.stdout:
            match = _READY.match(line.strip())
            if match:
                lines[match.group(1)] = line
                seen += 1
                if seen == (2 if expect_http else 1) and not released:
                    settled.release()
                    released = True
            else:
                sys.stdout.write(line)
        if not released:
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
    if all(child.poll() is None for child in children):
        for kind in ("gRPC", "HTTP"):
            if kind in lines:
                sys.stdout.write(lines[kind])
        sys.stdout.flush()
    codes = [child.wait() for child in children]
    return next((code for code in codes if code), 0)
