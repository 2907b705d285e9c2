"""``serve --workers N``: N server processes sharing the ports through SO_REUSEPORT.

The kernel balances connections between processes, which spreads the Python-bound work
(decoding, pre/post-processing) over cores. The parent picks the ports (a free one when
0 was asked for), makes the private folder of the worker link
(:mod:`dl_inference.server.worker_link`), starts the workers, prints the listening lines once
every worker is ready, forwards SIGTERM / SIGINT and SIGHUP (a config reload), and exits
with the first non-zero worker status. A worker that fails to start stops them all: a
server with fewer workers than configured would pass for healthy. A worker that dies
later is replaced (the same index, so its siblings find it again); if the replacement
cannot start, all stop.
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

from dl_inference.server.worker_link import WorkerLink

_LISTENING = re.compile(r"^((?:Management )?(?:gRPC|HTTP)|Metrics) listening on (\S+)$")
_ORDER = ("Management gRPC", "Management HTTP", "Metrics", "gRPC", "HTTP")
# Printed before the gRPC and HTTP lines, whose arrival means "ready".
_ANNOUNCED_FIRST = ("Management gRPC", "Management HTTP", "Metrics")


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
        return _Supervisor(count, argv, folder, expect_http).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Worker:
    """One worker process, its output relayed to ours but for the listening lines."""

    def __init__(self, command: list[str], env: dict[str, str], listens: int) -> None:
        self.listens = listens  # listening lines that mean "ready"
        self.lines: dict[str, str] = {}
        self.ready = threading.Event()
        self.settled = threading.Event()  # ready, or exited before it was
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._relay, daemon=True).start()

    def _relay(self) -> None:
        assert self.process.stdout is not None
        seen = 0
        for line in self.process.stdout:
            match = _LISTENING.match(line.strip())
            if match is None:
                sys.stdout.write(line)
                continue
            self.lines[match.group(1)] = line
            if match.group(1) not in _ANNOUNCED_FIRST:
                seen += 1
                if seen == self.listens:
                    self.ready.set()
                    self.settled.set()
        self.settled.set()


class _Supervisor:
    """Starts the workers, announces them once all listen, replaces any that dies."""

    def __init__(self, count: int, argv: Sequence[str], folder: Path, expect_http: bool) -> None:
        self.count, self.folder = count, folder
        self.command = [sys.executable, "-m", "dl_inference", "serve", *argv, "--reuse-port"]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.listens = 2 if expect_http else 1
        self.workers: list[_Worker] = []
        self.stopping = threading.Event()

    def spawn(self, index: int) -> _Worker:
        env = {**self.env, **WorkerLink.environment(self.folder, index, self.count)}
        return _Worker(self.command, env, self.listens)

    def relay(self, signum: int, _frame: object = None) -> None:
        """Pass a signal on to every live worker."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    def stop_all(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        self.stopping.set()
        self.relay(signum)

    def wait_all(self, default: int) -> int:
        """The first non-zero exit status of the workers, else ``default``."""
        codes = [worker.process.wait() for worker in self.workers]
        return next((code for code in codes if code), default)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop_all)
        signal.signal(signal.SIGINT, self.stop_all)
        # SIGHUP means "reload the config" to each worker; its default would end the parent.
        signal.signal(signal.SIGHUP, self.relay)
        for index in range(self.count):
            self.workers.append(self.spawn(index))  # one by one: a signal reaches each
        for worker in self.workers:
            worker.settled.wait()
        if not all(worker.ready.is_set() for worker in self.workers):
            return self.give_up(f"a worker exited while starting; stopping all {self.count}")
        for kind in _ORDER:
            line = self.workers[0].lines.get(kind)
            if line is not None:
                sys.stdout.write(line)
        sys.stdout.flush()
        while not self.stopping.wait(0.5):
            for index, worker in enumerate(self.workers):
                code = worker.process.poll()
                if code is None or self.stopping.is_set():
                    continue
                # As gunicorn does: the server keeps its size; the others serve meanwhile.
                print(
                    f"dl-inference: worker {index} (pid {worker.process.pid}) exited with "
                    f"status {code}; starting a new one",
                    file=sys.stderr,
                    flush=True,
                )
                self.workers[index] = replacement = self.spawn(index)
                replacement.settled.wait()
                if not replacement.ready.is_set() and not self.stopping.is_set():
                    return self.give_up(f"worker {index} could not start again; stopping all")
        return self.wait_all(0)

    def give_up(self, reason: str) -> int:
        print(f"dl-inference: error: {reason}", file=sys.stderr, flush=True)
        self.stop_all()
        return self.wait_all(1)
