"""A handlers server (handlers_server.py) per engine, as a subprocess on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dl_inference.testing import stop_process

SCRIPT = Path(__file__).with_name("handlers_server.py")
ENGINES = ["grpcio", "asyncio"]


class HandlersServer:
    def __init__(self, engine: str, *extra: str) -> None:
        self.engine = engine
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--engine", engine, *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"the handlers server did not start: {line!r}")
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="module", params=ENGINES)
def handlers(request: pytest.FixtureRequest) -> Iterator[HandlersServer]:
    server = HandlersServer(request.param)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def asyncio_handlers() -> Iterator[HandlersServer]:
    server = HandlersServer("asyncio")
    yield server
    server.stop()
